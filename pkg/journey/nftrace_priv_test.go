package journey

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/nft"
)

// In nftables mode the journey says which of kube-proxy's nftables rules
// the probe met, from the kernel's own trace events: the service-ips
// lookup with its key, the numgen choice, the endpoint chain's DNAT,
// flannel's chains; and leaves no tracing table behind.
func TestJourneyNFTablesTrace(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "nfjny")
	state := t.TempDir()
	c, err := cluster.Open(state, lab, &cluster.Options{ProxyMode: cluster.ProxyNFTables}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := cluster.Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	for _, n := range []string{"node1", "node2"} {
		if _, err := c.AddNode(cluster.NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range [][2]string{{"pod-a", "node1"}, {"pod-c", "node2"}} {
		if _, err := c.AddPod(cluster.PodSpec{Name: p[0], Node: p[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AddService(cluster.ServiceSpec{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"), Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"pod-c"}}); err != nil {
		t.Fatal(err)
	}
	l := c.Lab
	listen(t, l, "pod-c")
	rep := run(t, l, "pod-a", "10.96.0.10:80", TCP, 0, Options{})
	if rep.Probe != "connected" {
		t.Fatalf("probe %q", rep.Probe)
	}
	svcChain := nft.ServicePrefix + nft.PortChainBase("default", "web", nat.TCP, "")
	var lookup, pick, dnat, flannel bool
	for _, h := range rep.NFTrace {
		if h.Node != "node1" {
			continue
		}
		lookup = lookup || (h.Chain == "services" && h.Key == "10.96.0.10 . tcp . 80" && h.Verdict == "goto "+svcChain)
		pick = pick || (h.Chain == svcChain && strings.HasPrefix(h.Rule, "numgen random mod 1 vmap") && strings.HasPrefix(h.Verdict, "goto endpoint-"))
		dnat = dnat || (strings.HasPrefix(h.Chain, "endpoint-") && h.Rule == "meta l4proto tcp dnat to 10.244.2.2:8080" && h.Verdict == "accept")
		flannel = flannel || (h.Table == nft.FlannelTable && h.Chain == "postrtg")
	}
	if !lookup || !pick || !dnat || !flannel {
		t.Errorf("trace lacks the service-ips lookup (%v), the numgen pick (%v), the DNAT (%v), flannel's postrtg (%v):\n%s", lookup, pick, dnat, flannel, rep)
	}
	if !strings.Contains(rep.String(), "[key 10.96.0.10 . tcp . 80]  => goto "+svcChain) {
		t.Errorf("report does not show the vmap key and verdict:\n%s", rep)
	}
	for _, n := range l.Nodes {
		if ok, err := nft.TableExists("klab."+l.Name+"."+n.Name, nft.TraceTableName); err != nil || ok {
			t.Errorf("%s: tracing table left behind (%v, %v)", n.Name, ok, err)
		}
	}
}
