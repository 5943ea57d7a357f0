package main

import (
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// BenchmarkExecSandbox is what the sandbox adds to one 'klab exec node1 --
// true', as a lab runs it: each iteration runs the same command three
// ways, interleaved so that they see the same machine: 'ip netns exec'
// (the baseline a student would type), 'klab exec' (full root) and 'klab
// exec --sandbox'. Metrics are medians in ms: ipnetns-ms, plain-ms,
// sandbox-ms, and added-ms (sandbox-ms - plain-ms; the target is < 5).
func BenchmarkExecSandbox(b *testing.B) {
	testutil.RequireRoot(b)
	bin := klabBinary(b)
	state := benchStateDir(b)
	lab := testutil.LabName(b, "bnsb")
	klab := func(args ...string) *exec.Cmd {
		return exec.Command(bin, append([]string{"--state-dir", state, "--lab", lab}, args...)...)
	}
	if out, err := klab("node", "add", "node1").CombinedOutput(); err != nil {
		b.Fatalf("node add: %v\n%s", err, out)
	}
	b.Cleanup(func() { klab("destroy", lab).Run() })
	ns := netns.Name(lab, "node1")
	run := func(c *exec.Cmd) time.Duration {
		t0 := time.Now()
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", c.Args, err, out)
		}
		return time.Since(t0)
	}
	var base, plain, sb []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		base = append(base, run(exec.Command("ip", "netns", "exec", ns, "true")))
		plain = append(plain, run(klab("exec", "node1", "--", "true")))
		sb = append(sb, run(klab("exec", "--sandbox", "node1", "--", "true")))
	}
	b.StopTimer()
	med := func(d []time.Duration) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	p, s := med(plain), med(sb)
	b.ReportMetric(med(base), "ipnetns-ms")
	b.ReportMetric(p, "plain-ms")
	b.ReportMetric(s, "sandbox-ms")
	b.ReportMetric(s-p, "added-ms")
}
