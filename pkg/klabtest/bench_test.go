package klabtest_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/cni"
	"github.com/klab-dev/klab/pkg/klabtest"
	"github.com/klab-dev/klab/pkg/netns"
)

// median of the figures, in milliseconds.
func median(ds []time.Duration) float64 {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return float64(ds[len(ds)/2]) / float64(time.Millisecond)
}

func quiet(b *testing.B) *bench.Quiet {
	q, err := bench.NewQuiet(testutil.LabName(b, "kt-quiet"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	return q
}

// BenchmarkNew builds the 2-node, 2-pods-per-node flannel lab with
// klabtest.New (target: usable in <= 25 ms) next to the baseline, the
// bare cluster.Build of the same lab (BenchmarkFlannel/2x2/klab in
// pkg/cluster), in the same run. up-ms is the median time until the call
// returns with every namespace, link, address, route, neighbour, FDB entry
// and rule in place; the teardown and the kernel's asynchronous cleanup
// after it are not timed (bench.Quiet waits for them).
func BenchmarkNew(b *testing.B) {
	klabtest.RequireRoot(b)
	q := quiet(b)
	b.Run("klabtest.New/2x2", func(b *testing.B) {
		var ups []time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			lab := klabtest.New(b, klabtest.Nodes(2), klabtest.PodsPerNode(2))
			ups = append(ups, time.Since(t0))
			b.StopTimer()
			t1 := time.Now()
			lab.Destroy()
			q.Wait(t1)
			b.StartTimer()
		}
		b.ReportMetric(median(ups), "up-ms")
	})
	b.Run("cluster.Build/2x2", func(b *testing.B) {
		state := b.TempDir()
		spec := bench.FlannelSpec(2, 2)
		var ups []time.Duration
		for i := 0; i < b.N; i++ {
			lab := testutil.LabName(b, "kt")
			t0 := time.Now()
			c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			_, _, err = c.Build(spec)
			c.Close()
			if err != nil {
				b.Fatal(err)
			}
			ups = append(ups, time.Since(t0))
			b.StopTimer()
			t1 := time.Now()
			cluster.Destroy(state, lab, nil, nil)
			q.Wait(t1)
			b.StartTimer()
		}
		b.ReportMetric(median(ups), "up-ms")
	})
}

// BenchmarkPodAdd is the cost of one more pod on a node of a running lab,
// three ways, in the same run: klab's own wiring (AddPod), the real CNI
// plugins through libcni (AddPodCNI: loopback, bridge with host-local,
// portmap), and the same plugin chain run by hand from a shell, as
// --explain prints it (ip netns add, then each plugin with CNI_* and its
// config on stdin). pod-ms is the median time per pod; the deletions are
// not timed.
func BenchmarkPodAdd(b *testing.B) {
	klabtest.RequireRoot(b)
	klabtest.RequireCNIPlugins(b)
	q := quiet(b)
	lab := klabtest.New(b, klabtest.Nodes(1), klabtest.PodsPerNode(0))
	node := lab.Node("node1")
	measure := func(b *testing.B, add, del func(name string) error) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("bp-%d", i)
			t0 := time.Now()
			if err := add(name); err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
			b.StopTimer()
			t1 := time.Now()
			if err := del(name); err != nil {
				b.Fatal(err)
			}
			q.Wait(t1)
			b.StartTimer()
		}
		b.ReportMetric(median(ds), "pod-ms")
	}
	delPod := func(name string) error {
		return lab.Update(func(c *cluster.Cluster) error { return c.DelPod(name) })
	}
	b.Run("native", func(b *testing.B) {
		measure(b, func(name string) error {
			return lab.Update(func(c *cluster.Cluster) error {
				_, err := c.AddPod(cluster.PodSpec{Name: name, Node: "node1"})
				return err
			})
		}, delPod)
	})
	b.Run("cni", func(b *testing.B) {
		measure(b, func(name string) error {
			return lab.Update(func(c *cluster.Cluster) error {
				_, err := c.AddPodCNI(cluster.PodSpec{Name: name, Node: "node1"})
				return err
			})
		}, delPod)
	})
	b.Run("shell", func(b *testing.B) {
		list := node.Conflist()
		dir := filepath.Join(lab.StateDir, lab.Name, "cni")
		confDir := filepath.Join(dir, "node1", "conf")
		sh := func(name, command string) error {
			a := cni.Attachment{HostNS: node.NS, NetNS: netns.Name(lab.Name, name), ContainerID: name, IfName: "eth0",
				Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}}}
			var script string
			if command == "ADD" {
				script = "set -e\nip netns add " + a.NetNS + "\n" + cni.ShellCommand("ADD", dir, cni.LoopbackConf(), a, nil) + " >/dev/null\n" +
					cni.ShellCommand("ADD", confDir, list, a, nil) + " >/dev/null\n"
			} else {
				script = cni.ShellCommand("DEL", confDir, list, a, nil) + "\n" + cni.ShellCommand("DEL", dir, cni.LoopbackConf(), a, nil) + "\nip netns del " + a.NetNS + "\n"
			}
			out, err := exec.Command("sh", "-c", script).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}
		measure(b, func(name string) error { return sh(name, "ADD") }, func(name string) error { return sh(name, "DEL") })
	})
}
