package cluster

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/vishvananda/netlink"
)

// twoNodes opens a lab with o (lab-name prefix prefix) holding seed 003's
// two nodes, node1 192.168.1.101 / 10.244.1.0/24 and node2 192.168.1.102 /
// 10.244.2.0/24, destroyed at cleanup, also when the test fails.
func twoNodes(t *testing.T, prefix string, o Options) *Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, prefix)
	state := t.TempDir()
	c, err := Open(state, lab, &o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	for i, n := range []string{"node1", "node2"} {
		ip := netip.MustParseAddr("192.168.1.10" + string(rune('1'+i)))
		sub := netip.MustParsePrefix("10.244." + string(rune('1'+i)) + ".0/24")
		if _, err := c.AddNode(NodeSpec{Name: n, IP: ip, PodCIDR: sub}); err != nil {
			t.Fatalf("add %s: %v", n, err)
		}
	}
	return c
}

// seed003 builds the seed-003 topology: twoNodes with two pods per node.
func seed003(t *testing.T, backend string) *Cluster {
	t.Helper()
	c := twoNodes(t, "t-core", Options{Backend: backend})
	for _, p := range [][2]string{{"pod-a", "node1"}, {"pod-b", "node1"}, {"pod-c", "node2"}, {"pod-d", "node2"}} {
		if _, err := c.AddPod(PodSpec{Name: p[0], Node: p[1]}); err != nil {
			t.Fatalf("add %s: %v", p[0], err)
		}
	}
	return c
}

func handle(t *testing.T, c *Cluster, obj string) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(c.NS(obj))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestFlannelVXLANKernelState(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	h := handle(t, c, "node1")
	link, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("flannel.1 is a %s", link.Type())
	}
	if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || vx.MTU != 1450 || !vx.SrcAddr.Equal(net.ParseIP("192.168.1.101")) {
		t.Errorf("flannel.1: vni=%d port=%d learning=%v mtu=%d local=%s", vx.VxlanId, vx.Port, vx.Learning, vx.MTU, vx.SrcAddr)
	}
	eth0, _ := h.LinkByName("eth0")
	if vx.VtepDevIndex != eth0.Attrs().Index {
		t.Errorf("flannel.1 underlay dev index %d, want eth0 (%d)", vx.VtepDevIndex, eth0.Attrs().Index)
	}
	if vx.HardwareAddr.String() != c.Lab.Node("node1").VtepMAC {
		t.Errorf("flannel.1 MAC %s, want VtepMAC %s", vx.HardwareAddr, c.Lab.Node("node1").VtepMAC)
	}
	addrs, _ := h.AddrList(vx, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.0/32" {
		t.Errorf("flannel.1 addresses %v, want 10.244.1.0/32", addrs)
	}
	// cni0: bridge, gateway address, MTU 1450, pinned MAC.
	br, err := h.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := br.(*netlink.Bridge); !ok || br.Attrs().MTU != 1450 || br.Attrs().HardwareAddr.String() != MAC(c.Lab.Name, "node1", "cni0").String() {
		t.Errorf("cni0: %s mtu %d mac %s", br.Type(), br.Attrs().MTU, br.Attrs().HardwareAddr)
	}
	addrs, _ = h.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.1/24" {
		t.Errorf("cni0 addresses %v", addrs)
	}
	// Per-peer entries for node2: ARP PERMANENT, FDB dst, route onlink.
	peerMAC := c.Lab.Node("node2").VtepMAC
	neighs, _ := h.NeighList(vx.Index, netlink.FAMILY_V4)
	found := false
	for _, n := range neighs {
		if n.IP.String() == "10.244.2.0" && n.HardwareAddr.String() == peerMAC && n.State == netlink.NUD_PERMANENT {
			found = true
		}
	}
	if !found {
		t.Errorf("no PERMANENT ARP entry 10.244.2.0 lladdr %s on flannel.1: %v", peerMAC, neighs)
	}
	fdb, _ := h.NeighList(vx.Index, syscall.AF_BRIDGE)
	found = false
	for _, n := range fdb {
		if n.HardwareAddr.String() == peerMAC && n.IP.String() == "192.168.1.102" && n.State&netlink.NUD_PERMANENT != 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("no FDB entry %s dst 192.168.1.102 on flannel.1: %v", peerMAC, fdb)
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
	want := map[string]bool{}
	for _, r := range routes {
		dst := "default"
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				dst = r.Dst.String()
			}
		}
		name := ""
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		s := dst + " dev " + name
		if r.Gw != nil {
			s += " via " + r.Gw.String()
		}
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		want[s] = true
	}
	for _, r := range []string{"10.244.2.0/24 dev flannel.1 via 10.244.2.0 onlink", "10.244.1.0/24 dev cni0", "default dev eth0 via 192.168.1.1"} {
		if !want[r] {
			t.Errorf("node1 lacks route %q; has %v", r, want)
		}
	}
	// ip_forward on in the node.
	if v, _ := netns.ReadSysctl(c.NS("node1"), "net/ipv4/ip_forward"); v != "1" {
		t.Errorf("ip_forward in node1 = %q", v)
	}
	// subnet.env.
	b, err := os.ReadFile(c.SubnetEnvPath("node1"))
	if err != nil || !strings.Contains(string(b), "FLANNEL_SUBNET=10.244.1.1/24") || !strings.Contains(string(b), "FLANNEL_MTU=1450") {
		t.Errorf("subnet.env: %q %v", b, err)
	}
	// Pod: eth0 with MTU 1450 and the two routes; host side on cni0 with hairpin.
	ph := handle(t, c, "pod-a")
	peth, err := ph.LinkByName("eth0")
	if err != nil || peth.Attrs().MTU != 1450 {
		t.Fatalf("pod eth0: %v", err)
	}
	proutes, _ := ph.RouteList(peth, netlink.FAMILY_V4)
	var got []string
	for _, r := range proutes {
		if r.Gw != nil {
			got = append(got, r.Gw.String())
		}
	}
	if len(got) != 2 || got[0] != "10.244.1.1" || got[1] != "10.244.1.1" {
		t.Errorf("pod routes via %v, want default and 10.244.0.0/16 via 10.244.1.1", got)
	}
	hv, err := h.LinkByName(c.Lab.Pod("pod-a").HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if hv.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("host veth not enslaved to cni0")
	}
	pi, err := h.LinkGetProtinfo(hv)
	if err != nil || !pi.Hairpin {
		t.Errorf("hairpin off on %s: %v", hv.Attrs().Name, err)
	}
}

func ping(t *testing.T, c *Cluster, from, to string) {
	t.Helper()
	var dst netip.Addr
	if p := c.Lab.Pod(to); p != nil {
		dst = p.IP
	} else {
		dst = netip.MustParseAddr(to)
	}
	res, err := probe.Ping(context.Background(), c.NS(from), dst, probe.PingOptions{Count: 2, Interval: 10 * time.Millisecond, Timeout: 2 * time.Second})
	if err != nil || res.Received == 0 {
		t.Errorf("ping %s -> %s (%s): %+v %v", from, to, dst, res, err)
	}
}

// tcp opens a listener in one namespace and exchanges a line with it from
// another.
func tcp(t *testing.T, c *Cluster, from, to string) {
	t.Helper()
	p := c.Lab.Pod(to)
	l, err := probe.Listen(c.NS(to), ":9090")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err == nil {
			io.WriteString(conn, to+"\n")
			conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := probe.Dial(ctx, c.NS(from), "tcp4", p.IP.String()+":9090")
	if err != nil {
		t.Fatalf("tcp %s -> %s: %v", from, to, err)
	}
	defer conn.Close()
	b, _ := io.ReadAll(conn)
	if strings.TrimSpace(string(b)) != to {
		t.Errorf("tcp %s -> %s: got %q", from, to, b)
	}
}

func TestTrafficVXLAN(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	ping(t, c, "pod-a", "pod-b") // same node, through cni0
	ping(t, c, "pod-a", "pod-c") // cross node, through flannel.1
	ping(t, c, "pod-d", "pod-a")
	ping(t, c, "node2", "pod-a") // node to remote pod
	tcp(t, c, "pod-a", "pod-c")
	tcp(t, c, "pod-b", "pod-a")
}

func TestHostGW(t *testing.T) {
	c := seed003(t, BackendHostGW)
	h := handle(t, c, "node1")
	if _, err := h.LinkByName("flannel.1"); err == nil {
		t.Error("host-gw node has a flannel.1")
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
	found := false
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "10.244.2.0/24" && r.Gw.String() == "192.168.1.102" {
			found = true
		}
	}
	if !found {
		t.Errorf("no host-gw route 10.244.2.0/24 via 192.168.1.102: %v", routes)
	}
	ping(t, c, "pod-a", "pod-c")
	ping(t, c, "pod-a", "pod-b")
	tcp(t, c, "pod-c", "pod-a")
}

func TestAddThirdNodeLaterAndDelete(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	n3, err := c.AddNode(NodeSpec{Name: "node3"})
	if err != nil {
		t.Fatal(err)
	}
	if n3.IP.String() != "192.168.1.103" || n3.PodCIDR.String() != "10.244.3.0/24" {
		t.Errorf("node3 got %s %s", n3.IP, n3.PodCIDR)
	}
	if _, err := c.AddPod(PodSpec{Name: "pod-e", Node: "node3"}); err != nil {
		t.Fatal(err)
	}
	ping(t, c, "pod-e", "pod-a")
	ping(t, c, "pod-c", "pod-e")
	// Delete a pod: namespace, host veth and address gone.
	hv := c.Lab.Pod("pod-b").HostVeth
	if err := c.DelPod("pod-b"); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(c.NS("pod-b")) {
		t.Error("pod-b namespace still exists")
	}
	if _, err := handle(t, c, "node1").LinkByName(hv); err == nil {
		t.Errorf("host veth %s still exists", hv)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "ipam", "node1", "10.244.1.3")); err == nil {
		t.Error("pod-b address still allocated")
	}
	// Delete node3: every other node forgets it.
	if err := c.DelNode("node3"); err != nil {
		t.Fatal(err)
	}
	routes, _ := handle(t, c, "node1").RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "10.244.3.0/24" {
			t.Error("node1 still routes to node3's subnet")
		}
	}
	if netns.Exists(c.NS("node3")) || netns.Exists(c.NS("pod-e")) {
		t.Error("node3 or its pod still exists")
	}
}

func TestDestroyLeavesNothing(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	// A background process inside a pod, as 'klab serve' starts.
	s, err := c.StartServer("pod-a", "tcp", 1, []string{"/bin/sh", "-c", "echo listening; exec sleep 300"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
	if nss, _ := netns.List(c.Lab.Name); len(nss) != 0 {
		t.Errorf("namespaces left: %v", nss)
	}
	if _, err := os.Stat(c.Dir()); err == nil {
		t.Errorf("state dir %s left", c.Dir())
	}
	time.Sleep(50 * time.Millisecond)
	if alive(s.PID) {
		t.Errorf("server process %d still alive", s.PID)
	}
	// Idempotent.
	if err := Destroy(c.StateDir, c.Lab.Name, nil, nil); err != nil {
		t.Errorf("second destroy: %v", err)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	before, _ := netns.List(c.Lab.Name)
	for _, tc := range []struct {
		name string
		err  string
		f    func() error
	}{
		{"duplicate node", "already taken by a node", func() error { _, err := c.AddNode(NodeSpec{Name: "node1"}); return err }},
		{"node named like a pod", "already taken by a pod", func() error { _, err := c.AddNode(NodeSpec{Name: "pod-a"}); return err }},
		{"duplicate node IP", "already used", func() error {
			_, err := c.AddNode(NodeSpec{Name: "node9", IP: netip.MustParseAddr("192.168.1.101")})
			return err
		}},
		{"overlapping pod CIDR", "overlaps", func() error {
			_, err := c.AddNode(NodeSpec{Name: "node9", PodCIDR: netip.MustParsePrefix("10.244.1.0/25")})
			return err
		}},
		{"pod CIDR outside cluster", "not inside the cluster network", func() error {
			_, err := c.AddNode(NodeSpec{Name: "node9", PodCIDR: netip.MustParsePrefix("10.245.1.0/24")})
			return err
		}},
		{"node name too long for an interface", "limited to 15 bytes", func() error {
			_, err := c.AddNode(NodeSpec{Name: "a-very-long-node-name"})
			return err
		}},
		{"reserved name", "reserved", func() error { _, err := c.AddNode(NodeSpec{Name: "underlay"}); return err }},
		{"bad name", "not valid", func() error { _, err := c.AddNode(NodeSpec{Name: "Node_1"}); return err }},
		{"unknown node", "does not exist", func() error { _, err := c.AddPod(PodSpec{Name: "pod-x", Node: "node7"}); return err }},
		{"duplicate pod", "already taken by a pod", func() error { _, err := c.AddPod(PodSpec{Name: "pod-a", Node: "node1"}); return err }},
		{"duplicate pod IP", "already used", func() error {
			_, err := c.AddPod(PodSpec{Name: "pod-x", Node: "node1", IP: c.Lab.Pod("pod-a").IP})
			return err
		}},
		{"pod IP outside node subnet", "outside the node's pod subnet", func() error {
			_, err := c.AddPod(PodSpec{Name: "pod-x", Node: "node1", IP: netip.MustParseAddr("10.244.2.50")})
			return err
		}},
		{"unknown pod", "does not exist", func() error { return c.DelPod("nope") }},
	} {
		err := tc.f()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: got %v, want error containing %q", tc.name, err, tc.err)
		}
		if err != nil && strings.Count(strings.TrimSpace(err.Error()), "\n") > 0 {
			t.Errorf("%s: error is not one sentence: %q", tc.name, err)
		}
	}
	after, _ := netns.List(c.Lab.Name)
	if len(after) != len(before) {
		t.Errorf("namespaces changed: %v -> %v", before, after)
	}
	if len(c.Lab.Nodes) != 2 || len(c.Lab.Pods) != 4 {
		t.Errorf("state changed: %d nodes %d pods", len(c.Lab.Nodes), len(c.Lab.Pods))
	}
}

func TestRollbackWhenKernelFails(t *testing.T) {
	c := seed003(t, BackendVXLAN)
	// Sabotage: a bridge (this kernel has no dummy driver) holding the host-veth name the next pod will
	// get makes AddPod fail after it created the namespace and allocated
	// the address; both must be rolled back.
	h := handle(t, c, "node1")
	hv := vethName(c.Lab.Name, "pod-x")
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: hv}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPod(PodSpec{Name: "pod-x", Node: "node1"}); err == nil {
		t.Fatal("AddPod succeeded over a conflicting link")
	}
	if netns.Exists(c.NS("pod-x")) {
		t.Error("rollback left the pod-x namespace")
	}
	if c.Lab.Pod("pod-x") != nil {
		t.Error("rollback left pod-x in the state")
	}
	used, _ := c.ipamStore(c.Lab.Node("node1")).Used()
	for a, id := range used {
		if id == "pod-x" {
			t.Errorf("rollback left address %s allocated", a)
		}
	}
}
