package cluster

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
)

// benchLabOf opens a lab of the backend for a benchmark, destroyed at the
// end.
func benchLabOf(b *testing.B, backend string) *Cluster {
	b.Helper()
	testutil.RequireRoot(b)
	if backend == BackendCalico {
		if err := checkBird(); err != nil {
			b.Skip(err)
		}
	}
	lab := testutil.LabName(b, "ca")
	state, err := os.MkdirTemp("", "ca")
	if err != nil {
		b.Fatal(err)
	}
	opts := &Options{Backend: backend}
	if backend == BackendCalico {
		opts.Calico.GracefulRestart = 2
	}
	c, err := Open(state, lab, opts, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		Destroy(state, lab, nil, nil)
		os.RemoveAll(state)
	})
	return c
}

// BenchmarkCalicoPodAdd is the cost of one pod add (AddPod: IPAM, the
// namespace, the veth, routes, neighbour, sysctls, state) on a two-node
// calico lab, beside the same on a two-node flannel (vxlan) lab, in the
// same run. Run with -benchtime=Nx, N <= 400 (flannel's two /24s).
func BenchmarkCalicoPodAdd(b *testing.B) {
	for _, backend := range []string{BackendCalico, BackendVXLAN} {
		b.Run(backend, func(b *testing.B) {
			c := benchLabOf(b, backend)
			for _, n := range []string{"node1", "node2"} {
				if _, err := c.AddNode(NodeSpec{Name: n}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.AddPod(PodSpec{Name: fmt.Sprintf("p%d", i), Node: []string{"node1", "node2"}[i%2]}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCalicoBuild is a 20 nodes x 10 pods build (Build) on calico,
// until every node has every other node's block by BGP, beside the same
// build on flannel; it also reports the BIRDs' resident memory per node.
func BenchmarkCalicoBuild(b *testing.B) {
	for _, backend := range []string{BackendCalico, BackendVXLAN} {
		b.Run(backend+"/20x10", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				c := benchLabOf(b, backend)
				var spec Spec
				for n := 1; n <= 20; n++ {
					spec.Nodes = append(spec.Nodes, NodeSpec{Name: fmt.Sprintf("node%d", n)})
					for p := 0; p < 10; p++ {
						spec.Pods = append(spec.Pods, PodSpec{Name: fmt.Sprintf("p%d-%d", n, p), Node: fmt.Sprintf("node%d", n)})
					}
				}
				b.StartTimer()
				if _, _, err := c.Build(spec); err != nil {
					b.Fatal(err)
				}
				if backend == BackendCalico {
					waitRoutes(b, c, 60*time.Second)
				}
				b.StopTimer()
				if backend == BackendCalico {
					var total int
					for _, n := range c.Lab.Nodes {
						total += rssKiB(c.BirdPID(n.Name))
					}
					b.ReportMetric(float64(total)/float64(len(c.Lab.Nodes)), "KiB-RSS/BIRD")
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkCalicoJoin measures convergence, full mesh and route reflector
// (node1): a lab of n-1 calico nodes,
// then one node more, timed from AddNode until every node has every other
// node's block (the new one's included) and the new node has them all.
func BenchmarkCalicoJoin(b *testing.B) {
	for _, mode := range []string{"mesh", "rr"} {
		for _, n := range []int{2, 10, 20} {
			b.Run(fmt.Sprintf("%s/nodes=%d", mode, n), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					c := benchLabOf(b, BackendCalico)
					if mode == "rr" {
						s := c.Lab.calico()
						s.RouteReflector = true
						c.Lab.Calico = &s
					}
					var spec Spec
					for k := 1; k < n; k++ {
						spec.Nodes = append(spec.Nodes, NodeSpec{Name: fmt.Sprintf("node%d", k)})
					}
					if _, _, err := c.Build(spec); err != nil {
						b.Fatal(err)
					}
					waitRoutes(b, c, 60*time.Second)
					b.StartTimer()
					if _, err := c.AddNode(NodeSpec{Name: fmt.Sprintf("node%d", n)}); err != nil {
						b.Fatal(err)
					}
					waitRoutes(b, c, 60*time.Second)
				}
			})
		}
	}
}

// rssKiB is a process's resident set size from /proc/PID/status.
func rssKiB(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return 0
}
