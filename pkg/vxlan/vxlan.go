package vxlan

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/klab-dev/klab/pkg/plan"
)

const (
	// DefaultPort is the Linux kernel's VXLAN port, flannel's default.
	DefaultPort = 8472
	// DefaultVNI is flannel's default VXLAN network identifier.
	DefaultVNI = 1
	// Overhead is the encapsulation cost in bytes: outer Ethernet, IPv4,
	// UDP and VXLAN headers.
	Overhead = 50
)

// DeviceName returns flannel's device name for a VNI: flannel.<VNI>.
func DeviceName(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// Config describes a node's VTEP.
type Config struct {
	NS       string           // namespace name
	VNI      int              //
	Port     int              //
	Local    netip.Addr       // the node's underlay address
	Underlay string           // the underlay device name, e.g. eth0
	MTU      int              //
	MAC      net.HardwareAddr // VtepMAC, fixed at creation
	Subnet   netip.Prefix     // the node's pod subnet: the device gets its .0/32
	// Name is the device's name; empty means flannel's flannel.<VNI>
	// (Calico's VXLAN mode uses vxlan.calico).
	Name string
	// Miss makes old flannel's device (proxy l2miss l3miss): see miss.go.
	Miss bool
}

// Peer is what a node learns about another node from its lease.
type Peer struct {
	Subnet   netip.Prefix     // the peer's pod subnet, 10.244.M.0/24
	VtepMAC  net.HardwareAddr // MAC of the peer's flannel.1
	PublicIP netip.Addr       // the peer's underlay address
}

// Gateway is the peer subnet's .0, the address of its flannel.1.
func (p Peer) Gateway() netip.Addr { return p.Subnet.Masked().Addr() }

// want is the device cfg describes, as plan data.
func (cfg Config) want() *plan.Link {
	name := cfg.Name
	if name == "" {
		name = DeviceName(cfg.VNI)
	}
	return &plan.Link{Name: name, Type: "vxlan", MTU: cfg.MTU, MAC: cfg.MAC, VNI: cfg.VNI, Local: cfg.Local, Dev: cfg.Underlay, Port: cfg.Port, Proxy: cfg.Miss, L2Miss: cfg.Miss, L3Miss: cfg.Miss}
}

// PlanDevice returns the operations that make flannel.<VNI> exist as cfg
// describes in st's namespace, in flannel's order: the device (created, or
// an existing compatible one reused, an incompatible one replaced: like
// flannel's ensureLink, no stale attribute survives), its address, then
// link up.
func PlanDevice(cfg Config, st *plan.State) plan.Plan {
	var p plan.Plan
	want := cfg.want()
	l := st.Link(want.Name)
	if l != nil {
		if why := incompatible(l, want); why != "" {
			p.Add(plan.Op{Verb: plan.LinkDel, NS: cfg.NS, Link: &plan.Link{Name: want.Name}, Why: "incompatible " + why + ": replaced"})
			st.Drop(want.Name)
			l = nil
		}
	}
	if l == nil {
		p.Add(plan.Op{Verb: plan.LinkAdd, NS: cfg.NS, New: true, Link: want})
	}
	// A /32: it keeps the kernel from adding a connected route for the
	// whole cluster network through the tunnel.
	addr := netip.PrefixFrom(cfg.Subnet.Masked().Addr(), 32)
	if cfg.Subnet.IsValid() && !st.HasAddr(want.Name, addr) {
		p.Add(plan.Op{Verb: plan.AddrAdd, NS: cfg.NS, New: l != nil, Addr: &plan.Addr{Dev: want.Name, Prefix: addr}})
	}
	if l == nil || !l.Up {
		p.Add(plan.Op{Verb: plan.LinkSetUp, NS: cfg.NS, Link: &plan.Link{Name: want.Name}})
	}
	return p
}

// incompatible names the first attribute of the existing device that
// differs from the wanted one, or "".
func incompatible(old *plan.LinkState, want *plan.Link) string {
	switch {
	case old.Type != "vxlan":
		return "type " + old.Type
	case old.VNI != want.VNI:
		return "vni"
	case want.Port > 0 && old.Port != want.Port:
		return "port"
	case want.Local.IsValid() && old.Local != want.Local:
		return "local address"
	case want.Dev != "" && old.Dev != want.Dev:
		return "underlay device"
	case old.Learning != want.Learning:
		return "learning"
	case old.L2Miss != want.L2Miss || old.L3Miss != want.L3Miss || old.Proxy != want.Proxy:
		return "miss mode"
	case want.MTU != 0 && old.MTU != want.MTU:
		return "mtu"
	case want.MAC != nil && old.MAC.String() != want.MAC.String():
		return "mac"
	}
	return ""
}

// entries are a peer's three entries on dev: ARP, FDB, route.
func entries(dev string, p Peer) (arp, fdb plan.Neigh, rt plan.Route) {
	gw := p.Gateway()
	return plan.Neigh{Dev: dev, IP: gw, MAC: p.VtepMAC},
		plan.Neigh{Dev: dev, IP: p.PublicIP, MAC: p.VtepMAC},
		plan.Route{Dst: p.Subnet.Masked(), Gw: gw, Dev: dev, Onlink: true}
}

// PlanPeers returns the entries that let the node in st's namespace reach
// each peer's pods, each peer in flannel's order — ARP, FDB, then the
// route (see the package comment for why) — leaving out the entries the
// kernel already has.
func PlanPeers(ns string, vni int, peers []Peer, st *plan.State) plan.Plan {
	dev := DeviceName(vni)
	var p plan.Plan
	for _, peer := range peers {
		arp, fdb, rt := entries(dev, peer)
		if !st.HasNeigh(arp) {
			p.Add(plan.Op{Verb: plan.NeighReplace, NS: ns, New: st.NeighOf(dev, arp.IP) == nil, Neigh: &arp})
		}
		if !st.HasFDB(fdb) {
			p.Add(plan.Op{Verb: plan.FDBReplace, NS: ns, New: true, Neigh: &fdb})
		}
		if !st.HasRoute(rt) {
			p.Add(plan.Op{Verb: plan.RouteReplace, NS: ns, New: st.RouteTo(rt.Dst) == nil, Route: &rt})
		}
	}
	return p
}

// PlanDelPeer removes a peer's entries, route first, so no packet is
// routed into the tunnel towards a VTEP whose entries are half gone.
// Entries the kernel does not have are left out.
func PlanDelPeer(ns string, vni int, peer Peer, st *plan.State) plan.Plan {
	dev := DeviceName(vni)
	if st.Link(dev) == nil {
		return nil
	}
	arp, fdb, rt := entries(dev, peer)
	var p plan.Plan
	if r := st.RouteTo(rt.Dst); r != nil && r.Dev == dev {
		p.Add(plan.Op{Verb: plan.RouteDel, NS: ns, Route: &rt})
	}
	if st.HasFDB(fdb) {
		p.Add(plan.Op{Verb: plan.FDBDel, NS: ns, Neigh: &fdb})
	}
	if st.NeighOf(dev, arp.IP) != nil {
		p.Add(plan.Op{Verb: plan.NeighDel, NS: ns, Neigh: &arp})
	}
	return p
}

// HostGWRoute is the host-gw backend's only entry per peer: the peer's pod
// subnet via its underlay address, on the underlay device.
func HostGWRoute(underlay string, p Peer) plan.Route {
	return plan.Route{Dst: p.Subnet.Masked(), Gw: p.PublicIP, Dev: underlay}
}

// PlanHostGW returns the host-gw routes for peers that st lacks.
func PlanHostGW(ns, underlay string, peers []Peer, st *plan.State) plan.Plan {
	var p plan.Plan
	for _, peer := range peers {
		rt := HostGWRoute(underlay, peer)
		if !st.HasRoute(rt) {
			p.Add(plan.Op{Verb: plan.RouteReplace, NS: ns, New: st.RouteTo(rt.Dst) == nil, Route: &rt})
		}
	}
	return p
}

// PlanDelHostGW removes the host-gw route for a peer, if st has it.
func PlanDelHostGW(ns, underlay string, peer Peer, st *plan.State) plan.Plan {
	rt := HostGWRoute(underlay, peer)
	if !st.HasRoute(rt) {
		return nil
	}
	return plan.Plan{{Verb: plan.RouteDel, NS: ns, Route: &rt}}
}

// SubnetEnv renders flannel's /run/flannel/subnet.env for a node.
func SubnetEnv(network, subnet netip.Prefix, mtu int, ipMasq bool) string {
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", network, subnet.Masked().Addr().Next(), subnet.Bits(), mtu, ipMasq)
}

// WriteSubnetEnv is the operation that writes subnet.env at path
// atomically (write, then rename), as flanneld does.
func WriteSubnetEnv(path string, network, subnet netip.Prefix, mtu int, ipMasq bool) plan.Op {
	return plan.Op{Verb: plan.WriteFile, New: true, File: &plan.File{Path: path, Data: []byte(SubnetEnv(network, subnet, mtu, ipMasq)), Atomic: true}}
}
