package vxlan

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// AddPeers leaves the entries AddPeer leaves, over several batches, and
// names the request that failed.
func TestAddPeersBatches(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "bn-vx")
	var devs []*Device
	var nss []string
	for _, obj := range []string{"one", "batch"} {
		name := netns.Name(lab, obj)
		if _, err := netns.Ensure(name); err != nil {
			t.Fatal(err)
		}
		h, err := netns.Handle(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}
		if err := h.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(br); err != nil {
			t.Fatal(err)
		}
		// (Without an IPv4 address the kernel refuses onlink gateways.)
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{192, 168, 1, 101}, Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		d, err := EnsureDevice(h, Config{NS: name, VNI: 1, Port: 8472, Local: net.IP{192, 168, 1, 101}, Underlay: "eth0", MTU: 1450, MAC: net.HardwareAddr{2, 1, 2, 3, 4, 5}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		devs, nss = append(devs, d), append(nss, name)
	}
	var peers []Peer
	for i := 1; i <= 100; i++ { // 300 requests: three batches
		peers = append(peers, Peer{Subnet: &net.IPNet{IP: net.IP{10, 244, byte(i), 0}, Mask: net.CIDRMask(24, 32)},
			VtepMAC: net.HardwareAddr{2, 9, 0, 0, 0, byte(i)}, PublicIP: net.IP{192, 168, 1, byte(i)}})
	}
	for _, p := range peers {
		if err := devs[0].AddPeer(p); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := netns.Open(nss[1])
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := devs[1].AddPeers(ns, peers); err != nil {
		t.Fatal(err)
	}
	// The entries, sorted: the kernel lists neighbours in hash order.
	dump := func(d *Device) string {
		var b strings.Builder
		arp, _ := d.h.NeighList(d.link.Index, netlink.FAMILY_V4)
		fdb, _ := d.h.NeighList(d.link.Index, syscall.AF_BRIDGE)
		routes, _ := d.h.RouteList(d.link, netlink.FAMILY_V4)
		for _, n := range append(arp, fdb...) {
			fmt.Fprintf(&b, "neigh %s %s state=%d flags=%d type=%d\n", n.IP, n.HardwareAddr, n.State, n.Flags, n.Type)
		}
		for _, r := range routes {
			fmt.Fprintf(&b, "route %s via %s flags=%d scope=%d proto=%d table=%d type=%d\n", r.Dst, r.Gw, r.Flags, r.Scope, r.Protocol, r.Table, r.Type)
		}
		lines := strings.Split(b.String(), "\n")
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	one, batch := dump(devs[0]), dump(devs[1])
	if one != batch || strings.Count(one, "\n") < 300 {
		t.Errorf("AddPeer and AddPeers differ:\n%s\n---\n%s", one, batch)
	}
	// A device that is gone: the first request fails, and says which.
	gone := *devs[1]
	gone.link = &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: 9999, Name: "flannel.1"}}
	err = gone.AddPeers(ns, peers[:2])
	if err == nil || !strings.Contains(err.Error(), "add ARP entry 10.244.1.0") || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("got %v", err)
	}
}
