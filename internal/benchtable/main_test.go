package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/klab-dev/klab/pkg/cluster
cpu: AMD EPYC
BenchmarkFlannel/2x2/klab-2         	      10	  22720447 ns/op	        19.69 cpu-ms	         0.9905 down-ms	       133.3 kernel-ms	        12.84 peak-MB	       154.2 pods/s	        14.00 up-ms
BenchmarkFlannel/2x2/klab-2         	      10	  22720447 ns/op	        19.69 cpu-ms	         0.9905 down-ms	       133.3 kernel-ms	        12.84 peak-MB	       154.2 pods/s	        16.00 up-ms
BenchmarkFlannel/2x2/klab-2         	      10	  22720447 ns/op	        19.69 cpu-ms	         0.9905 down-ms	       133.3 kernel-ms	        12.84 peak-MB	       154.2 pods/s	        90.00 up-ms
BenchmarkFlannel/2x2/iproute2-2     	      10	 222062517 ns/op	       202.4 cpu-ms	        18.12 down-ms	       141.1 kernel-ms	        19.84 pods/s	       300.0 up-ms
--- BENCH: BenchmarkFlannel/2x2/klab-2
    bench_test.go:1: a log line
PASS
ok  	github.com/klab-dev/klab/pkg/cluster	95.050s
pkg: github.com/klab-dev/klab/pkg/nat
BenchmarkServices/10000x2/klab-2         	       5	2399428654 ns/op	      2407 ms
BenchmarkServices/10000x2/restore-2      	       5	2183836749 ns/op	      2179 ms
`

func TestParseAndRender(t *testing.T) {
	r, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := r.get("pkg/cluster/BenchmarkFlannel/2x2/klab", "up-ms"); !ok || v != 16 {
		t.Errorf("median up-ms = %v %v, want 16", v, ok)
	}
	if v, _ := r.get("pkg/nat/BenchmarkServices/10000x2/restore", "ms"); v != 2179 {
		t.Errorf("restore ms = %v", v)
	}
	var b strings.Builder
	met, missed := render(&b, r)
	out := b.String()
	for _, want := range []string{
		"| 2 nodes x 2 pods up: klab library (cluster.Build) | 16.0 ms | iproute2 script | 300 ms | 18.8x faster | <= 25 ms, >= 20x | **no** |",
		"| 10,000 services x 2 endpoints into a node | 2.41 s | iptables-restore | 2.18 s | 1.105x | <= 1.1x restore | **no**",
		"| 100 x 10 up (1,102 namespaces) | not run |",
	} {
		if !strings.Contains(out, strings.TrimSuffix(want, " no")) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if met < 1 || missed < 1 {
		t.Errorf("met %d missed %d", met, missed)
	}
}
