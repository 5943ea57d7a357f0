package trace

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// topo is a self-contained two-node flannel-style VXLAN network:
//
//	pod-a(eth0 10.244.1.2) -- vethpa(10.244.1.1) node1 flannel.1 -- eth0 192.168.1.101
//	                                                                 | veth
//	pod-b(eth0 10.244.2.2) -- vethpb(10.244.2.1) node2 flannel.1 -- eth0 192.168.1.102
type topo struct {
	lab string
	ns  map[string]string // object -> namespace name
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and VXLAN devices")
	}
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tp := &topo{lab: "t-trace-" + hex.EncodeToString(b), ns: map[string]string{}}
	for _, o := range []string{"node1", "node2", "pod-a", "pod-b"} {
		name := netns.Name(tp.lab, o)
		tp.ns[o] = name
		t.Cleanup(func() {
			if err := netns.Delete(name); err != nil {
				t.Errorf("cleanup %s: %v", name, err)
			}
		})
		if _, err := netns.Ensure(name); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	h := map[string]*netlink.Handle{}
	for o, name := range tp.ns {
		hh, err := netns.Handle(name)
		must(err, "handle "+o)
		t.Cleanup(hh.Close)
		h[o] = hh
		lo, err := hh.LinkByName("lo")
		must(err, "lo")
		must(hh.LinkSetUp(lo), "lo up")
	}
	nsfd := func(o string) netlink.NsFd {
		f, err := os.Open(netns.Path(tp.ns[o]))
		must(err, "open ns")
		t.Cleanup(func() { f.Close() })
		return netlink.NsFd(int(f.Fd()))
	}
	addr := func(o, link, cidr string) netlink.Link {
		l, err := h[o].LinkByName(link)
		must(err, o+" "+link)
		a, err := netlink.ParseAddr(cidr)
		must(err, cidr)
		must(h[o].AddrAdd(l, a), "addr "+cidr)
		must(h[o].LinkSetUp(l), "up "+link)
		return l
	}
	must(h["node1"].LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0", PeerNamespace: nsfd("node2")}), "underlay veth")
	eth := map[string]netlink.Link{
		"node1": addr("node1", "eth0", "192.168.1.101/24"),
		"node2": addr("node2", "eth0", "192.168.1.102/24"),
	}
	macs := map[string]net.HardwareAddr{"node1": {0x0e, 0, 0, 0, 0, 1}, "node2": {0x0e, 0, 0, 0, 0, 2}}
	for i, n := range []string{"node1", "node2"} {
		must(netns.Sysctl(tp.ns[n], "net/ipv4/ip_forward", "1"), "ip_forward")
		pod := []string{"pod-a", "pod-b"}[i]
		veth := []string{"vethpa", "vethpb"}[i]
		must(h[n].LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth, MTU: 1450}, PeerName: "eth0", PeerNamespace: nsfd(pod)}), "pod veth")
		addr(n, veth, fmt.Sprintf("10.244.%d.1/24", i+1))
		pl := addr(pod, "eth0", fmt.Sprintf("10.244.%d.2/24", i+1))
		must(h[pod].LinkSetMTU(pl, 1450), "pod mtu")
		must(h[pod].RouteAdd(&netlink.Route{Gw: net.ParseIP(fmt.Sprintf("10.244.%d.1", i+1)), LinkIndex: pl.Attrs().Index}), "pod default route")

		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: 1450, HardwareAddr: macs[n]},
			VxlanId: 1, VtepDevIndex: eth[n].Attrs().Index, SrcAddr: net.ParseIP(fmt.Sprintf("192.168.1.10%d", i+1)), Port: 8472}
		must(h[n].LinkAdd(vx), "vxlan")
		vl := addr(n, "flannel.1", fmt.Sprintf("10.244.%d.0/32", i+1))
		peer := []string{"node2", "node1"}[i]
		pi := 2 - i
		must(h[n].NeighSet(&netlink.Neigh{LinkIndex: vl.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(fmt.Sprintf("10.244.%d.0", pi)), HardwareAddr: macs[peer]}), "neigh")
		must(h[n].NeighAppend(&netlink.Neigh{LinkIndex: vl.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: net.ParseIP(fmt.Sprintf("192.168.1.10%d", pi)), HardwareAddr: macs[peer]}), "fdb")
		_, dst, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", pi))
		must(h[n].RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(fmt.Sprintf("10.244.%d.0", pi)), LinkIndex: vl.Attrs().Index,
			Flags: int(netlink.FLAG_ONLINK)}), "route")
	}
	return tp
}

func (tp *topo) points() []Point {
	var ps []Point
	for _, s := range []string{"pod-a/eth0", "node1/vethpa", "node1/flannel.1", "node1/eth0", "node2/eth0", "node2/flannel.1", "node2/vethpb", "pod-b/eth0"} {
		o, i, _ := strings.Cut(s, "/")
		ps = append(ps, Point{Label: s, NS: tp.ns[o], Iface: i})
	}
	return ps
}

// ping sends n ICMP echo requests from ns to dst and waits for the replies.
func ping(t testing.TB, ns, dst string, id, n int) int {
	t.Helper()
	var c *icmp.PacketConn
	if err := netns.Do(ns, func() (err error) { c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := 0
	for seq := 1; seq <= n; seq++ {
		m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("klab trace probe........................................")}}
		b, _ := m.Marshal(nil)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
			t.Fatalf("ping write: %v", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 1500)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			r, err := icmp.ParseMessage(1, buf[:k])
			if e, ok := r.Body.(*icmp.Echo); err == nil && ok && r.Type == ipv4.ICMPTypeEchoReply && e.ID == id && e.Seq == seq {
				got++
				break
			}
		}
	}
	return got
}

func TestCaptureVXLANPing(t *testing.T) {
	needRoot(t)
	tp := newTopo(t)
	points := tp.points()
	flt := MustParseFilter("icmp and inner host 10.244.2.2 or outer icmp")
	c, err := Open(points, Options{Filter: flt, Duration: 10 * time.Second, Count: 3 * 2 * len(points)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pkts []Packet
	done := make(chan error, 1)
	go func() {
		done <- c.Run(context.Background(), func(p *Packet) error { pkts = append(pkts, p.Clone()); return nil })
	}()
	if got := ping(t, tp.ns["pod-a"], "10.244.2.2", 0x4b4c, 3); got != 3 {
		t.Fatalf("%d of 3 pings answered: the test topology is broken", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := range pkts {
		lines = append(lines, pkts[i].String())
	}
	t.Logf("captured:\n%s", strings.Join(lines, "\n"))
	if len(pkts) != 48 {
		t.Errorf("captured %d packets, want 48 (3 pings x 2 directions x 8 points)", len(pkts))
	}
	// Outer UDP 8472, VNI 1, inner ICMP between the pods, on the underlay.
	var vx int
	for _, p := range pkts {
		if p.Point != "node1/eth0" || p.Dir != DirOut {
			continue
		}
		vx++
		if !p.VXLAN || p.VNI != 1 || p.Outer.Proto != ProtoUDP || p.Outer.DstPort != 8472 ||
			p.Outer.SrcIP.String() != "192.168.1.101" || p.Outer.DstIP.String() != "192.168.1.102" ||
			p.Inner.Proto != ProtoICMP || p.Inner.ICMPType != 8 || p.Inner.SrcIP.String() != "10.244.1.2" ||
			p.Inner.DstIP.String() != "10.244.2.2" || p.Inner.TTL != 63 || p.Inner.ICMPID != 0x4b4c {
			t.Errorf("node1/eth0 out: %s", p.String())
		}
	}
	if vx != 3 {
		t.Errorf("%d VXLAN echo requests leaving node1/eth0, want 3", vx)
	}
	for _, st := range c.Stats() {
		if st.Drops != 0 {
			t.Errorf("%s dropped %d", st.Point, st.Drops)
		}
	}

	// Following the first echo request across these points is package
	// journey's (TestJourneyCrossNodePing there, over a real lab).

	// pcapng, checked by tshark.
	path := filepath.Join(t.TempDir(), "ping.pcapng")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewPcapngWriter(f, points, DefaultSnapLen, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range pkts {
		if err := w.Write(&pkts[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tl := tsharkCheck(t, path)
	if tl != nil {
		n := 0
		for _, l := range tl {
			if strings.HasPrefix(l, "node1/eth0\t1\t192.168.1.101,10.244.1.2\t8") {
				n++
			}
		}
		if len(tl) != len(pkts) || n != 3 {
			t.Errorf("tshark saw %d packets (%d VXLAN echo requests on node1/eth0):\n%s", len(tl), n, strings.Join(tl, "\n"))
		}
	}
}

// The kernel pre-filter really runs in the kernel: a socket filtered on
// "outer port 8472" receives nothing else (ARP, plain ICMP) at node1/eth0.
func TestCaptureKernelFilter(t *testing.T) {
	needRoot(t)
	tp := newTopo(t)
	pt := []Point{{Label: "node1/eth0", NS: tp.ns["node1"], Iface: "eth0"}}
	c, err := Open(pt, Options{Filter: MustParseFilter("outer udp and outer dst port 8472"), Duration: 3 * time.Second, Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	var got []string
	go func() {
		done <- c.Run(context.Background(), func(p *Packet) error { got = append(got, p.String()); return nil })
	}()
	// Underlay ICMP first (unfiltered by userspace would show up), then a pod ping.
	if n := ping(t, tp.ns["node1"], "192.168.1.102", 1, 1); n != 1 {
		t.Fatal("underlay ping failed")
	}
	ping(t, tp.ns["pod-a"], "10.244.2.2", 2, 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := c.Stats()[0]
	if len(got) != 2 || st.Received != st.Matched {
		t.Errorf("got %d packets, socket received %d, matched %d (kernel filter let non-VXLAN through?):\n%s",
			len(got), st.Received, st.Matched, strings.Join(got, "\n"))
	}
}

func TestCaptureErrors(t *testing.T) {
	needRoot(t)
	tp := newTopo(t)
	if _, err := Open(nil, Options{}); err == nil {
		t.Error("no points accepted")
	}
	_, err := Open([]Point{{Label: "node1/nope", NS: tp.ns["node1"], Iface: "nope"}}, Options{})
	if err == nil || !strings.Contains(err.Error(), `capture at node1/nope: no interface "nope"`) {
		t.Errorf("unknown interface: %v", err)
	}
	_, err = Open([]Point{{Label: "x/eth0", NS: "klab.t-trace-missing.x", Iface: "eth0"}}, Options{})
	if err == nil {
		t.Error("missing namespace accepted")
	}
	// Cancel stops a capture that sees nothing.
	c, err := Open([]Point{{Label: "pod-a/eth0", NS: tp.ns["pod-a"], Iface: "eth0"}}, Options{Promisc: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Run(ctx, func(*Packet) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancel took %v", d)
	}
}
