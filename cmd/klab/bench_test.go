package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
)

// BenchmarkFlannel/2x2/klab-cli brings the seed-003 network (two nodes, two
// pods each: pkg/cluster's BenchmarkFlannel has the library and the
// baseline script) up and down with the klab binary, one process per
// command, as a student types them: 'klab node add' per node, 'klab pod
// add' per pod, then 'klab destroy'. The binary is $KLAB_BIN (make bench
// passes bin/klab) or built for the run. Metrics as in pkg/cluster: medians
// of up-ms, down-ms, kernel-ms.
func BenchmarkFlannel(b *testing.B) {
	testutil.RequireRoot(b)
	bin := klabBinary(b)
	q, err := bench.NewQuiet(testutil.LabName(b, "bn-quiet"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	b.Run("2x2/klab-cli", func(b *testing.B) {
		state := benchStateDir(b)
		spec := bench.FlannelSpec(2, 2)
		var runs bench.Runs
		if _, err := q.Wait(time.Now()); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			lab := testutil.LabName(b, "bn")
			klab := func(args ...string) {
				out, err := exec.Command(bin, append([]string{"--state-dir", state, "--lab", lab}, args...)...).CombinedOutput()
				if err != nil {
					b.Fatalf("klab %v: %v\n%s", args, err, out)
				}
			}
			b.StartTimer()
			t0 := time.Now()
			for _, n := range spec.Nodes {
				klab("node", "add", n.Name)
			}
			for _, p := range spec.Pods {
				klab("pod", "add", p.Name, "--node", p.Node)
			}
			t1 := time.Now()
			klab("destroy", lab)
			t2 := time.Now()
			b.StopTimer()
			k, err := q.Wait(t1)
			if err != nil {
				b.Fatal(err)
			}
			runs.Add(t1.Sub(t0), t2.Sub(t1), k)
			b.StartTimer()
		}
		b.StopTimer()
		runs.Report(b, len(spec.Pods))
	})
}

// klabBinary is $KLAB_BIN, or klab built into a temporary directory.
func klabBinary(b *testing.B) string {
	if p := os.Getenv("KLAB_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := os.Stat(abs); err != nil {
			b.Fatalf("KLAB_BIN=%s: %v: give an absolute path (go test runs in the package's directory) or leave it unset to build klab", p, err)
		}
		return abs
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		b.Skip("needs $KLAB_BIN or a Go toolchain to build klab")
	}
	bin := filepath.Join(b.TempDir(), "klab")
	cmd := exec.Command(gobin, "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build klab: %v\n%s", err, out)
	}
	return bin
}

// benchStateDir is a temporary state directory (see bench.TempStateDir),
// removed when the benchmark ends.
func benchStateDir(b *testing.B) string {
	d, err := bench.TempStateDir()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}
