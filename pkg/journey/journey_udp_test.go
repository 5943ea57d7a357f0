package journey

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
)

// TestJourneyDNSLookup follows one DNS query (UDP 53) from a pod to the
// kube-dns ClusterIP: the probe is answered by the cluster DNS, the
// journey shows the DNAT to a coredns pod and the reply's reverse
// rewrite, and conntrack in node1 holds the UDP flow with both tuples.
func TestJourneyDNSLookup(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "dp")
	state := t.TempDir()
	c, err := cluster.Open(state, lab, &cluster.Options{Backend: cluster.BackendVXLAN, DNS: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The DNS pods run klab's own server worker, as the CLI starts them.
	self := testutil.Klab(t)
	c.Serve = func(target, proto string, port int) []string {
		return []string{self, "__serve", "--name", target, "--port", strconv.Itoa(port), "--proto", proto, "--lab", lab, "--state-dir", state}
	}
	t.Cleanup(func() {
		c.Close()
		if err := cluster.Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	for i, n := range []string{"node1", "node2"} {
		ip := netip.AddrFrom4([4]byte{192, 168, 1, byte(101 + i)})
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 0}), 24)
		if _, err := c.AddNode(cluster.NodeSpec{Name: n, IP: ip, PodCIDR: sub}); err != nil {
			t.Fatalf("add %s: %v", n, err)
		}
	}
	if _, err := c.AddPod(cluster.PodSpec{Name: "pod-a", Node: "node1"}); err != nil {
		t.Fatal(err)
	}
	l := c.Lab
	c.Close()
	var dnsIPs []string
	for _, p := range l.Pods {
		if strings.HasPrefix(p.Name, "kube-system/coredns-") {
			dnsIPs = append(dnsIPs, p.IP.String())
		}
	}
	if len(dnsIPs) != 2 {
		t.Fatalf("DNS pods: %v", dnsIPs)
	}
	rep := run(t, l, "pod-a", "10.96.0.10:53", UDP, 0, Options{})
	if rep.Probe != "answered (DNS NOERROR, 1 answer(s))" {
		t.Errorf("probe %q, want the DNS answer", rep.Probe)
	}
	s := rep.String()
	var to string
	for _, ip := range dnsIPs {
		if strings.Contains(s, "dnat   dst 10.96.0.10:53 -> "+ip+":53") {
			to = ip
		}
	}
	if to == "" {
		t.Fatalf("no DNAT hop to a DNS pod (%v):\n%s", dnsIPs, s)
	}
	for _, w := range []string{
		"snat   src " + to + ":53 -> 10.96.0.10:53 (reply: conntrack reverses the forward DNAT)",
		"node1 udp: original " + rep.Src + " -> 10.96.0.10:53, reply " + to + ":53 -> " + rep.Src + " (DNAT",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("report lacks %q:\n%s", w, s)
		}
	}
	if strings.HasPrefix(to, "10.244.2.") && !strings.Contains(hopKinds(rep.Journey.Hops), "node1/eth0[+vxlan]") {
		t.Errorf("the DNS pod on node2 answered but the query did not cross the tunnel: %s", hopKinds(rep.Journey.Hops))
	}
}
