package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/cluster"
)

// flannelSizes are the benchmarked labs: nodes x pods per node.
var flannelSizes = []struct{ nodes, pods int }{{2, 2}, {10, 10}, {100, 10}}

// BenchmarkFlannel brings the flannel VXLAN network of seed 003 (two nodes,
// two pods per node) and larger ones up and down, with klab and with the
// hand-written baseline script building the identical topology
// (TestBaselineScriptMatchesKlab), in the same run:
//
//	<size>/klab       cluster.Build: the whole lab in one call
//	<size>/klab-each  one AddNode / AddPod call per object, as the CLI verbs do
//	<size>/iproute2   scripts/baseline/flannel.sh, one ip/bridge command at a time
//
// Each iteration builds a fresh lab (metric up-ms), destroys it (down-ms:
// until the call returns; the kernel frees the namespaces afterwards,
// asynchronously) and waits, untimed, until the kernel has finished that
// teardown (kernel-ms: from the start of the teardown to the last moment
// the RTNL lock was seen busy; see bench.Quiet), so every build starts on
// a quiet kernel. cpu-ms is the CPU time (user + system) the build used,
// in this process and its children (iptables-restore, or the script's ip
// commands). klab's rows also report the process's peak RSS during the
// build (peak-MB). Run one size with -bench 'Flannel/2x2'.
func BenchmarkFlannel(b *testing.B) {
	testutil.RequireRoot(b)
	q := newQuiet(b)
	for _, sz := range flannelSizes {
		size := fmt.Sprintf("%dx%d", sz.nodes, sz.pods)
		spec := bench.FlannelSpec(sz.nodes, sz.pods)
		b.Run(size+"/klab", func(b *testing.B) {
			benchLab(b, q, len(spec.Pods), true, func(state, lab string) error {
				c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
				if err != nil {
					return err
				}
				defer c.Close()
				_, _, err = c.Build(spec)
				return err
			}, func(state, lab string) error { return cluster.Destroy(state, lab, nil, nil) })
		})
		if sz.nodes*sz.pods <= 100 {
			b.Run(size+"/klab-each", func(b *testing.B) {
				benchLab(b, q, len(spec.Pods), true, func(state, lab string) error {
					c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
					if err != nil {
						return err
					}
					defer c.Close()
					for _, n := range spec.Nodes {
						if _, err := c.AddNode(n); err != nil {
							return err
						}
					}
					for _, p := range spec.Pods {
						if _, err := c.AddPod(p); err != nil {
							return err
						}
					}
					return nil
				}, func(state, lab string) error { return cluster.Destroy(state, lab, nil, nil) })
			})
		}
		b.Run(size+"/iproute2", func(b *testing.B) {
			benchLab(b, q, len(spec.Pods), false, func(state, lab string) error {
				return script("up", lab, fmt.Sprint(sz.nodes), fmt.Sprint(sz.pods), state)
			}, func(state, lab string) error { return script("down", lab, state) })
		})
	}
}

func script(args ...string) error {
	out, err := exec.Command(baselineScript, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %v\n%s", baselineScript, args, err, out)
	}
	return nil
}

// newQuiet makes the RTNL probe, removed when the benchmark ends.
func newQuiet(b *testing.B) *bench.Quiet {
	q, err := bench.NewQuiet(testutil.LabName(b, "bn-quiet"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	return q
}

// benchLab times up and down of b.N fresh labs (see BenchmarkFlannel) and
// reports the median of each figure over the iterations (other programs
// on the machine make single runs slow; ns/op is the mean of up+down);
// inProcess says that up runs in this process, so its peak RSS is klab's.
func benchLab(b *testing.B, q *bench.Quiet, pods int, inProcess bool, up, down func(state, lab string) error) {
	state := benchStateDir(b)
	var runs bench.Runs
	var cpus []float64 // ms, one per iteration
	var peak int64
	if _, err := q.Wait(time.Now()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		lab := testutil.LabName(b, "bn")
		runtime.GC()
		if err := bench.ResetPeakRSS(); err != nil {
			b.Fatal(err)
		}
		c0 := bench.CPUTime()
		b.StartTimer()
		t0 := time.Now()
		if err := up(state, lab); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		b.StopTimer()
		cpus = append(cpus, ms(bench.CPUTime()-c0))
		rss, err := bench.PeakRSS()
		if err != nil {
			b.Fatal(err)
		}
		peak = max(peak, rss)
		b.StartTimer()
		t2 := time.Now()
		if err := down(state, lab); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		b.StopTimer()
		k, err := q.Wait(t2)
		if err != nil {
			b.Fatal(err)
		}
		runs.Add(t1.Sub(t0), t3.Sub(t2), k)
		b.StartTimer()
	}
	b.StopTimer()
	runs.Report(b, pods)
	b.ReportMetric(bench.Median(cpus), "cpu-ms")
	if inProcess {
		b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

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
