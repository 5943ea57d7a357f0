package journey

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/trace"
	"github.com/vishvananda/netlink"
)

// testLab is seed 003's lab as state: two nodes, pod-a and pod-b on node1,
// pod-c on node2.
func testLab(backend string) *cluster.Lab {
	l := &cluster.Lab{Name: "t-jny-unit", Backend: backend, VNI: 1}
	l.Nodes = []*cluster.Node{
		{Name: "node1", IP: netip.MustParseAddr("192.168.1.101"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		{Name: "node2", IP: netip.MustParseAddr("192.168.1.102"), PodCIDR: netip.MustParsePrefix("10.244.2.0/24")},
	}
	l.Pods = []*cluster.Pod{
		{Name: "pod-a", Node: "node1", IP: netip.MustParseAddr("10.244.1.2"), HostVeth: "vetha"},
		{Name: "pod-b", Node: "node1", IP: netip.MustParseAddr("10.244.1.3"), HostVeth: "vethb"},
		{Name: "pod-c", Node: "node2", IP: netip.MustParseAddr("10.244.2.2"), HostVeth: "vethc"},
	}
	return l
}

// fakeLinks is the interface list of each namespace of testLab.
func fakeLinks(ns string) ([]string, error) {
	obj := ns[strings.LastIndexByte(ns, '.')+1:]
	switch obj {
	case "node1":
		return []string{"lo", "eth0", "cni0", "flannel.1", "vetha", "vethb"}, nil
	case "node2":
		return []string{"lo", "eth0", "cni0", "flannel.1", "vethc"}, nil
	case "underlay":
		return []string{"lo", "underlay0", "node1", "node2"}, nil
	case "pod-a", "pod-b", "pod-c":
		return []string{"lo", "eth0"}, nil
	}
	return nil, errors.New("no such namespace")
}

func labels(ps []trace.Point) string {
	var s []string
	for _, p := range ps {
		l := p.Label
		if p.Promisc {
			l += "(p)"
		}
		s = append(s, l)
	}
	return strings.Join(s, " ")
}

func TestResolve(t *testing.T) {
	l := testLab(cluster.BackendVXLAN)
	for _, tc := range []struct {
		specs []string
		want  string // labels, or the error's substring after "ERR "
	}{
		{[]string{"node1:eth0"}, "node1/eth0"},
		{[]string{"pod-a"}, "pod-a/eth0"},
		{[]string{"pod-a:eth0", "pod-a"}, "pod-a/eth0"},
		{[]string{"node1"}, "node1/eth0"},
		{[]string{"pod-a:host"}, "node1/vetha"},
		{[]string{"pod-c:veth"}, "node2/vethc"},
		{[]string{"node1:cni0"}, "node1/cni0(p)"},
		{[]string{"node2:underlay"}, "underlay/node2"},
		{[]string{"node2:*"}, "node2/eth0 node2/cni0(p) node2/flannel.1 node2/vethc"},
		{[]string{"underlay:*"}, "underlay/underlay0(p) underlay/node1 underlay/node2"},
		{[]string{"underlay"}, "underlay/underlay0(p) underlay/node1 underlay/node2"},
		{[]string{"pod-a", "pod-a:host", "node1:flannel.1", "node2:flannel.1", "pod-c"}, "pod-a/eth0 node1/vetha node1/flannel.1 node2/flannel.1 pod-c/eth0"},
		{[]string{"bogus:eth0"}, "ERR unknown capture point \"bogus:eth0\": lab t-jny-unit has no node or pod named bogus; valid points are OBJECT:INTERFACE or OBJECT:* with OBJECT one of node1, node2, pod-a, pod-b, pod-c, underlay"},
		{[]string{"pod-a:eth9"}, "ERR pod-a has no interface eth9; its interfaces are eth0 (or write pod-a:* for all of them)"},
		{[]string{"node1:"}, "ERR is not OBJECT:INTERFACE"},
		{[]string{":eth0"}, "ERR is not OBJECT:INTERFACE"},
		{[]string{"external:*"}, "ERR cannot list the interfaces of external"},
	} {
		ps, err := Resolve(l, tc.specs, fakeLinks)
		if want, ok := strings.CutPrefix(tc.want, "ERR "); ok {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%v: error %v, want %q", tc.specs, err, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.specs, err)
			continue
		}
		if got := labels(ps); got != tc.want {
			t.Errorf("%v:\n got %s\nwant %s", tc.specs, got, tc.want)
		}
		for _, p := range ps {
			obj, _, _ := strings.Cut(p.Label, "/")
			if p.NS != "klab.t-jny-unit."+obj {
				t.Errorf("%v: point %s in namespace %s", tc.specs, p.Label, p.NS)
			}
		}
	}
}

func TestPlanPath(t *testing.T) {
	vx, hg := testLab(cluster.BackendVXLAN), testLab(cluster.BackendHostGW)
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name     string
		lab      *cluster.Lab
		from     string
		dst      string
		proto    string
		port     int
		kind     string
		expected bool
		want     string
	}{
		{"cross-node vxlan", vx, "pod-a", "10.244.2.2", ICMP, 0, KindVXLAN, true,
			"pod-a/eth0 node1/vetha node1/cni0(p) node1/flannel.1 node1/eth0 underlay/node1 underlay/node2 node2/eth0 node2/flannel.1 node2/cni0(p) node2/vethc pod-c/eth0"},
		{"cross-node host-gw", hg, "pod-a", "10.244.2.2", TCP, 80, KindHostGW, true,
			"pod-a/eth0 node1/vetha node1/cni0(p) node1/eth0 underlay/node1 underlay/node2 node2/eth0 node2/cni0(p) node2/vethc pod-c/eth0"},
		{"same node", vx, "pod-a", "10.244.1.3", ICMP, 0, KindSameNode, true,
			"pod-a/eth0 node1/vetha node1/cni0(p) node1/vethb pod-b/eth0"},
		{"node to remote pod", vx, "node1", "10.244.2.2", ICMP, 0, KindVXLAN, true,
			"node1/flannel.1 node1/eth0 underlay/node1 underlay/node2 node2/eth0 node2/flannel.1 node2/cni0(p) node2/vethc pod-c/eth0"},
		{"node to local pod", vx, "node1", "10.244.1.2", ICMP, 0, KindLocal, true,
			"node1/cni0(p) node1/vetha pod-a/eth0"},
		{"pod to own node", vx, "pod-a", "192.168.1.101", ICMP, 0, KindLocal, true,
			"pod-a/eth0 node1/vetha node1/cni0(p)"},
		{"pod to other node", vx, "pod-a", "192.168.1.102", ICMP, 0, KindUnderlay, true,
			"pod-a/eth0 node1/vetha node1/cni0(p) node1/eth0 underlay/node1 underlay/node2 node2/eth0"},
		{"node to node", hg, "node2", "192.168.1.101", ICMP, 0, KindUnderlay, true,
			"node2/eth0 underlay/node2 underlay/node1 node1/eth0"},
		{"clusterip", vx, "pod-a", "10.96.0.10", TCP, 80, KindAnyWhere, false,
			"pod-a/eth0 node1/vetha node1/cni0(p) node1/vethb pod-b/eth0 node1/flannel.1 node1/eth0 underlay/node1 underlay/node2 node2/eth0 node2/flannel.1 node2/cni0(p) node2/vethc pod-c/eth0 underlay/external external/eth0"},
		{"clusterip from a node, host-gw", hg, "node2", "10.96.0.10", TCP, 80, KindAnyWhere, false,
			"node2/cni0(p) node2/vethc pod-c/eth0 node2/eth0 underlay/node2 underlay/node1 node1/eth0 node1/cni0(p) node1/vetha pod-a/eth0 node1/vethb pod-b/eth0 underlay/external external/eth0"},
	} {
		p, err := PlanPath(tc.lab, tc.from, tc.dst, a(tc.dst), tc.proto, tc.port)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := labels(p.Points); got != tc.want || p.Kind != tc.kind || p.Expected != tc.expected {
			t.Errorf("%s: kind %s expected %v\n got %s\nwant %s", tc.name, p.Kind, p.Expected, got, tc.want)
		}
		if p.Describe() == "" || len(p.Labels()) != len(p.Points) {
			t.Errorf("%s: describe/labels", tc.name)
		}
	}
	for _, tc := range []struct {
		from, dst, proto string
		port             int
		want             string
	}{
		{"pod-a", "10.244.1.2", ICMP, 0, "same object"},
		{"node1", "192.168.1.101", ICMP, 0, "same object"},
		{"pod-z", "10.244.1.2", ICMP, 0, `journey source "pod-z" is neither a pod nor a node of lab t-jny-unit: use one of [node1 node2 pod-a pod-b pod-c]`},
		{"pod-a", "10.244.2.2", TCP, 0, "a tcp journey needs the destination port"},
		{"pod-a", "10.244.2.2", "sctp", 53, `probe protocol "sctp" is not known: use --proto icmp, tcp or udp`},
		{"pod-a", "10.244.2.2", UDP, 0, "a udp journey needs the destination port"},
		{"pod-a", "fd00::1", ICMP, 0, "not an IPv4 address"},
	} {
		_, err := PlanPath(vx, tc.from, tc.dst, a(tc.dst), tc.proto, tc.port)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s -> %s: error %v, want %q", tc.from, tc.dst, err, tc.want)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		bad  bool
	}{
		{"pod-b", "pod-b", 0, false},
		{"10.96.0.10:80", "10.96.0.10", 80, false},
		{"web:8080", "web", 8080, false},
		{"web:", "", 0, true},
		{":80", "", 0, true},
		{"web:99999", "", 0, true},
		{"web:http", "", 0, true},
	} {
		h, p, err := SplitTarget(tc.in)
		if (err != nil) != tc.bad || h != tc.host || p != tc.port {
			t.Errorf("%q: %q %d %v", tc.in, h, p, err)
		}
	}
}

func TestParseAndDiffCounters(t *testing.T) {
	before := ParseCounters(`# Generated by iptables-save
*nat
:PREROUTING ACCEPT [3:180]
:KUBE-SERVICES - [0:0]
[3:180] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
[0:0] -A KUBE-SVC-X -j KUBE-SEP-Y
[0:0] -A KUBE-SEP-Y -p tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
*filter
[7:420] -A FORWARD -j ACCEPT
[0:0] -A KUBE-FORWARD -j ACCEPT
COMMIT
`)
	after := ParseCounters(`*nat
[4:240] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[1:60] -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
[1:60] -A KUBE-SVC-X -j KUBE-SEP-Y
[1:60] -A KUBE-SEP-Y -p tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
*filter
[9:520] -A FORWARD -j ACCEPT
[2:100] -A KUBE-FORWARD -j ACCEPT
garbage [x:y] line
COMMIT
`)
	if len(before) != 6 || len(after) != 6 {
		t.Fatalf("parsed %d and %d rules", len(before), len(after))
	}
	hits := diffCounters(map[string]counters{"node1": before}, map[string]counters{"node1": after, "node2": nil})
	var got []string
	for _, h := range hits {
		got = append(got, h.Table+":"+h.Chain)
	}
	want := "nat:PREROUTING nat:KUBE-SERVICES nat:KUBE-SVC-X nat:KUBE-SEP-Y filter:KUBE-FORWARD"
	if strings.Join(got, " ") != want {
		t.Errorf("hits %s, want %s", strings.Join(got, " "), want)
	}
	if !strings.Contains(hits[3].String(), "node1 nat: -A KUBE-SEP-Y -p tcp -j DNAT --to-destination 10.244.2.2:8080  (+1)") {
		t.Errorf("hit text: %s", hits[3])
	}
}

func TestDescribeFlow(t *testing.T) {
	tup := func(s, d string, sp, dp uint16) netlink.IPTuple {
		return netlink.IPTuple{SrcIP: net.ParseIP(s), DstIP: net.ParseIP(d), SrcPort: sp, DstPort: dp, Protocol: 6}
	}
	for _, tc := range []struct {
		fw, rv netlink.IPTuple
		nat    string
	}{
		{tup("10.244.1.2", "10.244.2.2", 40000, 8080), tup("10.244.2.2", "10.244.1.2", 8080, 40000), ""},
		{tup("10.244.1.2", "10.96.0.10", 40000, 80), tup("10.244.2.2", "10.244.1.2", 8080, 40000), "dnat"},
		{tup("10.244.1.2", "203.0.113.10", 40000, 80), tup("203.0.113.10", "192.168.1.101", 80, 40000), "snat"},
		{tup("192.168.1.101", "10.96.0.10", 40000, 80), tup("10.244.2.2", "10.244.1.0", 8080, 40000), "dnat+snat"},
	} {
		f := describeFlow("node1", TCP, tc.fw, tc.rv)
		if f.NAT != tc.nat {
			t.Errorf("%s / %s: nat %q, want %q", f.Original, f.Reply, f.NAT, tc.nat)
		}
	}
	f := describeFlow("node1", TCP, tup("10.244.1.2", "10.96.0.10", 40000, 80), tup("10.244.2.2", "10.244.1.2", 8080, 40000))
	if s := f.String(); s != "node1 tcp: original 10.244.1.2:40000 -> 10.96.0.10:80, reply 10.244.2.2:8080 -> 10.244.1.2:40000 (DNAT: the reply comes from another address than the original destination)" {
		t.Errorf("flow text: %s", s)
	}
}
