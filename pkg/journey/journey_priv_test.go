package journey

import (
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/klabtest"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/klab-dev/klab/trace"
)

// seed003 builds the two-node flannel network of seed 003 with klabtest:
// node1 192.168.1.101 (pod-a, pod-b) and node2 192.168.1.102 (pod-c). The
// lab is destroyed in Cleanup; the returned state is a copy, unlocked.
func seed003(t *testing.T, backend string) *cluster.Lab {
	t.Helper()
	lab := klabtest.New(t, klabtest.Prefix("t-jny"), klabtest.Backend(backend), klabtest.Nodes(2), klabtest.PodsPerNode(0))
	for _, p := range [][2]string{{"pod-a", "node1"}, {"pod-b", "node1"}, {"pod-c", "node2"}} {
		lab.AddPod(p[0], p[1])
	}
	if n := lab.Node("node2"); n.IP != netip.MustParseAddr("192.168.1.102") || n.PodCIDR != netip.MustParsePrefix("10.244.2.0/24") {
		t.Fatalf("node2 is %s with %s; the journeys expect seed 003's 192.168.1.102 and 10.244.2.0/24", n.IP, n.PodCIDR)
	}
	l, err := cluster.Load(lab.StateDir, lab.Name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func run(t *testing.T, l *cluster.Lab, from, target, proto string, port int, o Options) *Report {
	t.Helper()
	host, tport, err := SplitTarget(target)
	if err != nil {
		t.Fatal(err)
	}
	if tport != 0 {
		port = tport
	}
	dst, err := netip.ParseAddr(host)
	if err != nil {
		dst = l.Pod(host).IP
	}
	plan, err := PlanPath(l, from, target, dst, proto, port)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), l, plan, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	if rep.Journey == nil {
		t.Fatalf("no journey: %+v", rep)
	}
	return rep
}

func hopKinds(hs []Hop) string {
	var s []string
	for _, h := range hs {
		var k []string
		for _, c := range h.Changes {
			k = append(k, c.Kind)
		}
		s = append(s, h.Point+"["+strings.Join(k, ",")+"]")
	}
	return strings.Join(s, " ")
}

// listen serves TCP port 8080 in a pod until the test ends.
func listen(t *testing.T, l *cluster.Lab, pod string) {
	t.Helper()
	ln, err := probe.Listen("klab."+l.Name+"."+pod, ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, pod+"\n")
			c.Close()
		}
	}()
}

// A cross-node ping captured at pod eth0, the host veth, cni0, flannel.1,
// node eth0, the underlay ports and the same on the far side, decoded at
// each point; the journey shows +vxlan/-vxlan and TTL; the pcapng file is
// read back by tshark with the points as interface names, as VXLAN.
func TestJourneyCrossNodePing(t *testing.T) {
	l := seed003(t, cluster.BackendVXLAN)
	pcap := filepath.Join(t.TempDir(), "j.pcapng")
	f, err := os.Create(pcap)
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, l, "pod-a", "pod-c", ICMP, 0, Options{Pcap: f})
	f.Close()
	if rep.Probe != "reply" || len(rep.Missing) != 0 {
		t.Errorf("probe %q, missing %v", rep.Probe, rep.Missing)
	}
	veth := map[string]string{"pod-a": l.Pod("pod-a").HostVeth, "pod-c": l.Pod("pod-c").HostVeth}
	want := "pod-a/eth0[] node1/" + veth["pod-a"] + "[] node1/cni0[] node1/flannel.1[ttl,mac] node1/eth0[+vxlan] underlay/node1[] underlay/node2[] node2/eth0[] node2/flannel.1[-vxlan] node2/cni0[ttl,mac] node2/" + veth["pod-c"] + "[] pod-c/eth0[]"
	if got := hopKinds(rep.Journey.Hops); got != want {
		t.Errorf("hops\n got %s\nwant %s", got, want)
	}
	wantReply := "pod-c/eth0[] node2/" + veth["pod-c"] + "[] node2/cni0[] node2/flannel.1[ttl,mac] node2/eth0[+vxlan] underlay/node2[] underlay/node1[] node1/eth0[] node1/flannel.1[-vxlan] node1/cni0[ttl,mac] node1/" + veth["pod-a"] + "[] pod-a/eth0[]"
	if got := hopKinds(rep.Journey.Reply); got != wantReply {
		t.Errorf("reply\n got %s\nwant %s", got, wantReply)
	}
	// Decoded correctly at each point.
	for i, h := range rep.Journey.Hops {
		p := &h.Packet
		in := p.Innermost()
		if in.Proto != trace.ProtoICMP || in.ICMPType != 8 || in.SrcIP.String() != "10.244.1.2" || in.DstIP.String() != "10.244.2.2" {
			t.Errorf("%s: inner %s", h.Point, in.Summary())
		}
		wantTTL := uint8(64)
		switch {
		case i >= 9:
			wantTTL = 62
		case i >= 3:
			wantTTL = 63
		}
		if in.TTL != wantTTL {
			t.Errorf("%s: ttl %d, want %d", h.Point, in.TTL, wantTTL)
		}
		onWire := i >= 4 && i <= 7
		if p.VXLAN != onWire {
			t.Errorf("%s: vxlan=%v", h.Point, p.VXLAN)
		}
		if onWire && (p.VNI != 1 || p.Outer.Proto != trace.ProtoUDP || p.Outer.DstPort != 8472 ||
			p.Outer.SrcIP.String() != "192.168.1.101" || p.Outer.DstIP.String() != "192.168.1.102") {
			t.Errorf("%s: outer %s vni %d", h.Point, p.Outer.Summary(), p.VNI)
		}
	}
	s := rep.String()
	for _, w := range []string{"+vxlan encapsulated in VXLAN: outer 192.168.1.101:", "> 192.168.1.102 udp/8472 vni=1", "-vxlan decapsulated from VXLAN", "ttl 64 -> 63 (routed)", "ttl 63 -> 62 (routed)"} {
		if !strings.Contains(s, w) {
			t.Errorf("report lacks %q", w)
		}
	}

	// tshark reads the file back: interface names are the points, 8472 is VXLAN.
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("tshark not installed")
	}
	out, err := exec.Command("tshark", "-r", pcap, "-d", "udp.port==8472,vxlan", "-T", "fields",
		"-e", "frame.interface_name", "-e", "vxlan.vni", "-e", "ip.src", "-e", "icmp.type").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	names := map[string]bool{}
	vx := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fs := strings.Split(line, "\t")
		if len(fs) < 4 {
			continue
		}
		names[fs[0]] = true
		if fs[0] == "node1/eth0" && fs[1] == "1" && fs[2] == "192.168.1.101,10.244.1.2" && fs[3] == "8" {
			vx++
		}
	}
	for _, p := range rep.Points {
		if !names[p] {
			t.Errorf("tshark shows no packet on interface %s (has %v)", p, names)
		}
	}
	if vx != 1 {
		t.Errorf("tshark decoded %d VXLAN echo requests (vni 1, inner 10.244.1.2) on node1/eth0, want 1:\n%s", vx, out)
	}
}

// One TCP connection across nodes: the SYN's journey, and the SYN-ACK's.
func TestJourneyTCPCrossNode(t *testing.T) {
	l := seed003(t, cluster.BackendVXLAN)
	listen(t, l, "pod-c")
	rep := run(t, l, "pod-a", "10.244.2.2:8080", TCP, 0, Options{})
	if rep.Probe != "connected" || len(rep.Missing) != 0 {
		t.Errorf("probe %q, missing %v", rep.Probe, rep.Missing)
	}
	hops := hopKinds(rep.Journey.Hops)
	for _, w := range []string{"node1/flannel.1[ttl,mac]", "node1/eth0[+vxlan]", "node2/flannel.1[-vxlan]", "node2/cni0[ttl,mac]"} {
		if !strings.Contains(hops, w) {
			t.Errorf("hops lack %s: %s", w, hops)
		}
	}
	first, last := rep.Journey.Hops[0], rep.Journey.Hops[len(rep.Journey.Hops)-1]
	if first.Point != "pod-a/eth0" || last.Point != "pod-c/eth0" || first.Packet.Outer.TCPFlags != trace.TCPSyn || last.Packet.Outer.TTL != 62 {
		t.Errorf("first %s %s, last %s %s", first.Point, first.Packet.String(), last.Point, last.Packet.String())
	}
	r := rep.Journey.Reply
	if len(r) != 12 || r[0].Point != "pod-c/eth0" || r[0].Packet.Outer.TCPFlags != trace.TCPSyn|trace.TCPAck || r[11].Point != "pod-a/eth0" {
		t.Errorf("reply:\n%s", rep.Journey)
	}
}

// host-gw: the same pod on the wire with its own addresses, no flannel.1;
// and between pods of one node only cni0, no routing.
func TestJourneyHostGWAndSameNode(t *testing.T) {
	l := seed003(t, cluster.BackendHostGW)
	rep := run(t, l, "pod-a", "pod-c", ICMP, 0, Options{})
	veth := map[string]string{"pod-a": l.Pod("pod-a").HostVeth, "pod-b": l.Pod("pod-b").HostVeth, "pod-c": l.Pod("pod-c").HostVeth}
	want := "pod-a/eth0[] node1/" + veth["pod-a"] + "[] node1/cni0[] node1/eth0[ttl,mac] underlay/node1[] underlay/node2[] node2/eth0[] node2/cni0[ttl,mac] node2/" + veth["pod-c"] + "[] pod-c/eth0[]"
	if got := hopKinds(rep.Journey.Hops); got != want || len(rep.Missing) != 0 {
		t.Errorf("host-gw hops (missing %v)\n got %s\nwant %s", rep.Missing, got, want)
	}
	for _, h := range rep.Journey.Hops {
		if h.Packet.VXLAN || h.Packet.Outer.SrcIP.String() != "10.244.1.2" {
			t.Errorf("%s: %s", h.Point, h.Packet.String())
		}
	}
	rep = run(t, l, "pod-a", "pod-b", ICMP, 0, Options{NoEnrich: true})
	want = "pod-a/eth0[] node1/" + veth["pod-a"] + "[] node1/cni0[] node1/" + veth["pod-b"] + "[] pod-b/eth0[]"
	if got := hopKinds(rep.Journey.Hops); got != want || len(rep.Journey.Reply) != 5 {
		t.Errorf("same-node hops\n got %s\nwant %s\n%s", got, want, rep.Journey)
	}
}

// A ClusterIP (kube-proxy's chains programmed with pkg/nat in every node):
// pod -> ClusterIP shows the DNAT hop before the tunnel, the reply un-DNATed,
// the conntrack entry and the KUBE-SEP rule; node -> ClusterIP is also
// masqueraded (its source is outside the cluster CIDR).
func TestJourneyClusterIP(t *testing.T) {
	l := seed003(t, cluster.BackendVXLAN)
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("needs iptables-restore")
	}
	svc := nat.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []nat.ServicePort{{Port: 80, TargetPort: 8080}},
		Endpoints: []nat.Endpoint{{IP: l.Pod("pod-c").IP, PodName: "pod-c", NodeName: "node2"}}}
	for _, n := range l.Nodes {
		rs, err := nat.Render(nat.Config{Lab: l.Name, Flannel: &nat.FlannelMasq{PodCIDR: n.PodCIDR}}, []nat.Service{svc})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nat.Apply(&plan.Applier{}, "klab."+l.Name+"."+n.Name, rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	listen(t, l, "pod-c")

	rep := run(t, l, "pod-a", "10.96.0.10:80", TCP, 0, Options{})
	if rep.Plan.Expected || rep.Probe != "connected" {
		t.Errorf("plan expected=%v probe %q", rep.Plan.Expected, rep.Probe)
	}
	hops := hopKinds(rep.Journey.Hops)
	for _, w := range []string{"pod-a/eth0[]", "node1/eth0[+vxlan]", "node2/flannel.1[-vxlan]", "pod-c/eth0[]"} {
		if !strings.Contains(hops, w) {
			t.Errorf("hops lack %s: %s", w, hops)
		}
	}
	// The DNAT hop is node1/cni0 when br_netfilter runs PREROUTING for
	// bridged frames before cni0 sees them, else node1/flannel.1.
	if !strings.Contains(hops, "node1/cni0[dnat] node1/flannel.1[ttl,mac]") && !strings.Contains(hops, "node1/cni0[] node1/flannel.1[dnat,ttl,mac]") {
		t.Errorf("no DNAT hop on node1: %s", hops)
	}
	s := rep.String()
	for _, w := range []string{"dnat   dst 10.96.0.10:80 -> 10.244.2.2:8080",
		"(reply: conntrack reverses the forward DNAT)",
		"node1 tcp: original " + rep.Src + " -> 10.96.0.10:80, reply 10.244.2.2:8080 -> " + rep.Src + " (DNAT"} {
		if !strings.Contains(s, w) {
			t.Errorf("report lacks %q", w)
		}
	}
	var sep, svcHit bool
	for _, h := range rep.Rules {
		sep = sep || (h.Node == "node1" && strings.HasPrefix(h.Chain, "KUBE-SEP-") && strings.Contains(h.Rule, "DNAT"))
		svcHit = svcHit || (h.Node == "node1" && strings.HasPrefix(h.Chain, "KUBE-SVC-"))
	}
	if !sep || !svcHit {
		t.Errorf("rule hits lack node1's KUBE-SVC / KUBE-SEP DNAT: %v", rep.Rules)
	}

	// From node1 itself: DNAT and MASQUERADE both happen in node1 before
	// the first capture point; conntrack shows both rewrites.
	rep = run(t, l, "node1", "10.96.0.10:80", TCP, 0, Options{})
	first := rep.Journey.Hops[0].Packet.Innermost()
	if rep.Probe != "connected" || first.SrcIP.String() != "10.244.1.0" || first.DstIP.String() != "10.244.2.2" || first.DstPort != 8080 {
		t.Errorf("probe %q, first hop %s", rep.Probe, first.Summary())
	}
	var masq bool
	for _, f := range rep.Conntrack {
		masq = masq || (f.Node == "node1" && f.NAT == "dnat+snat" && strings.HasSuffix(f.Reply, "-> 10.244.1.0:"+strings.Split(f.Original, ":")[1][:strings.Index(strings.Split(f.Original, ":")[1], " ")]))
	}
	if !masq {
		t.Errorf("no node1 conntrack entry with DNAT and MASQUERADE to 10.244.1.0: %v", rep.Conntrack)
	}
	var masqRule bool
	for _, h := range rep.Rules {
		masqRule = masqRule || (h.Node == "node1" && strings.Contains(h.Rule, "MASQUERADE"))
	}
	if !masqRule {
		t.Errorf("rule hits lack node1's MASQUERADE: %v", rep.Rules)
	}
}
