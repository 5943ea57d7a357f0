package cluster

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/nat"
)

// BenchmarkProxyEndpointChange changes one service's endpoints in a lab of
// 10 nodes x 2 pods holding 1,000 services, in direct mode (the CLI
// rewrites that service's chains in every node: one iptables-restore
// --noflush per node, in parallel) and in control-plane mode (the CLI
// writes the EndpointSlice to etcd; every node's agent renders its rules
// with planNodeRules against its kernel, applies the changed chains and
// acks), in the same run. ms/op is until SetEndpoints returns: every node
// has the new rules (direct: the restores returned; etcd: every agent
// acked the revision, after its apply). Both proxy modes, iptables and
// nftables. Run with -benchtime 10x.
func BenchmarkProxyEndpointChange(b *testing.B) {
	testutil.RequireRoot(b)
	bin := testutil.Klab(b)
	const nodes, services = 10, 1000
	for _, row := range [][2]string{{ProxyIPTables, "direct"}, {ProxyIPTables, "etcd"}, {ProxyNFTables, "direct"}, {ProxyNFTables, "etcd"}} {
		proxy, mode := row[0], row[1]
		b.Run(fmt.Sprintf("%dnodes-%dsvc/%s/%s", nodes, services, proxy, mode), func(b *testing.B) {
			c := modeLab(b, bin, "kp", proxy, mode)
			var err error
			if _, _, err := c.Build(flannelSpec(nodes, 2)); err != nil {
				b.Fatal(err)
			}
			// 1,000 services of two endpoints each, added in one change.
			err = c.changeServices(func(l *Lab) {
				for i := range services {
					ip := netip.AddrFrom4([4]byte{10, 96, byte(1 + i/250), byte(1 + i%250)})
					l.Services = append(l.Services, &Service{Name: fmt.Sprintf("svc-%d", i), ClusterIP: ip,
						Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Affinity: nat.AffinityNone,
						Endpoints: []string{fmt.Sprintf("pod-%d-1", 1+i%nodes), fmt.Sprintf("pod-%d-2", 1+(i+1)%nodes)}})
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			sets := [][]string{{"pod-1-1", "pod-2-1", "pod-3-1"}, {"pod-4-2"}}
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if err := c.SetEndpoints("svc-500", sets[i%2]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(t0).Microseconds())/1000/float64(b.N), "ms/change")
			if mode == "etcd" {
				if log, err := c.AgentLog("node3"); err == nil {
					b.Log(tailOf(log, 3))
				}
			}
		})
	}
}

// flannelSpec is bench.FlannelSpec (pkg/bench imports this package).
func flannelSpec(nodes, podsPerNode int) Spec {
	var s Spec
	for i := 1; i <= nodes; i++ {
		s.Nodes = append(s.Nodes, NodeSpec{Name: fmt.Sprintf("node%d", i)})
		for k := 1; k <= podsPerNode; k++ {
			s.Pods = append(s.Pods, PodSpec{Name: fmt.Sprintf("pod-%d-%d", i, k), Node: fmt.Sprintf("node%d", i)})
		}
	}
	return s
}

func tailOf(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// modeLab opens a new lab (prefix, proxy mode, "direct" or "etcd" for a
// control plane) whose servers are bin's, removed when b ends.
func modeLab(b *testing.B, bin, prefix, proxy, mode string) *Cluster {
	b.Helper()
	state := b.TempDir()
	lab := testutil.LabName(b, prefix)
	opts := &Options{ProxyMode: proxy}
	if mode == "etcd" {
		opts.ControlPlane = ControlPlaneEtcd
	}
	c, err := Open(state, lab, opts, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		Destroy(state, lab, nil, nil)
	})
	c.Serve = func(target, proto string, port int) []string {
		return []string{bin, "__serve", "--name", target, "--port", strconv.Itoa(port), "--proto", proto, "--lab", lab, "--state-dir", state}
	}
	return c
}
