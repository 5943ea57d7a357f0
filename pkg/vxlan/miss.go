package vxlan

// Old flannel's miss mode (flannel <= 0.9, seed 003's description): the
// device is created with proxy, l2miss and l3miss and nothing is
// programmed per peer but a route into the tunnel. The kernel then asks
// userspace, with an RTM_GETNEIGH notification on the device, for what it
// lacks: an L3MISS names an IP (a pod behind a peer) whose MAC it needs,
// answered with a neighbour entry "IP lladdr <peer's VtepMAC>"; an L2MISS
// names a MAC (a peer's VtepMAC) whose VTEP it needs, answered with an FDB
// entry "MAC dst <peer's underlay IP>". Mirrored from flannel v0.9.x
// backend/vxlan/vxlan_network.go (handleMiss, handleL3Miss) and device.go
// (the vxlan device with L2miss/L3miss/Proxy); flannel 0.9 itself had
// already moved the FDB entries to lease time and answered L3 misses only,
// klab answers both as the earlier releases did.

import (
	"net"
	"net/netip"

	"github.com/klab-dev/klab/pkg/plan"
)

// MissRoute is a peer's route in miss mode: the peer's pod subnet straight
// onto flannel.<VNI>, no gateway, so the kernel resolves each pod IP
// itself on the device and raises an L3MISS for it.
func MissRoute(vni int, p Peer) plan.Route {
	return plan.Route{Dst: p.Subnet.Masked(), Dev: DeviceName(vni)}
}

// PlanMissRoutes returns the miss-mode routes for peers that st lacks.
func PlanMissRoutes(ns string, vni int, peers []Peer, st *plan.State) plan.Plan {
	var p plan.Plan
	for _, peer := range peers {
		rt := MissRoute(vni, peer)
		if !st.HasRoute(rt) {
			p.Add(plan.Op{Verb: plan.RouteReplace, NS: ns, New: st.RouteTo(rt.Dst) == nil, Route: &rt})
		}
	}
	return p
}

// L3Answer is the answer to an L3MISS for ip: a neighbour entry on the
// device with the VtepMAC of the peer whose subnet holds ip.
func L3Answer(ns string, vni int, ip netip.Addr, vtepMAC net.HardwareAddr) plan.Op {
	return plan.Op{Verb: plan.NeighReplace, NS: ns, New: true, Neigh: &plan.Neigh{Dev: DeviceName(vni), IP: ip, MAC: vtepMAC}}
}

// L2Answer is the answer to an L2MISS for a VtepMAC: the FDB entry that
// sends frames for it to the peer's underlay address.
func L2Answer(ns string, vni int, vtepMAC net.HardwareAddr, publicIP netip.Addr) plan.Op {
	return plan.Op{Verb: plan.FDBReplace, NS: ns, New: true, Neigh: &plan.Neigh{Dev: DeviceName(vni), IP: publicIP, MAC: vtepMAC}}
}

// PlanDelMissPeer removes what miss mode holds for a peer whose lease is
// gone: its route, the FDB entry of its VtepMAC and every answered
// neighbour entry inside its subnet (route first, as PlanDelPeer does).
func PlanDelMissPeer(ns string, vni int, peer Peer, st *plan.State) plan.Plan {
	dev := DeviceName(vni)
	if st.Link(dev) == nil {
		return nil
	}
	var p plan.Plan
	rt := MissRoute(vni, peer)
	if r := st.RouteTo(rt.Dst); r != nil && r.Dev == dev {
		p.Add(plan.Op{Verb: plan.RouteDel, NS: ns, Route: r})
	}
	for i := range st.FDB {
		f := st.FDB[i]
		if f.Dev == dev && (f.MAC.String() == peer.VtepMAC.String() || f.IP == peer.PublicIP) {
			p.Add(plan.Op{Verb: plan.FDBDel, NS: ns, Neigh: &f})
		}
	}
	for i := range st.Neighs {
		n := st.Neighs[i]
		if n.Dev == dev && peer.Subnet.Contains(n.IP) {
			p.Add(plan.Op{Verb: plan.NeighDel, NS: ns, Neigh: &n})
		}
	}
	return p
}

// AppSolicitKey is the sysctl that makes the kernel ask userspace: with
// app_solicit N, the first N probes for an unresolved neighbour on the
// device are RTM_GETNEIGH notifications instead of ARP requests. That is
// the L3MISS of routed traffic (the device's own l3miss fires only for
// ARP requests it proxies with no entry at all); old flannel set it to 3.
func AppSolicitKey(vni int) string { return "net/ipv4/neigh/" + DeviceName(vni) + "/app_solicit" }

// PlanAppSolicit sets app_solicit to 3 on flannel.<VNI> unless st has it.
func PlanAppSolicit(ns string, vni int, st *plan.State) plan.Plan {
	if st.Sysctls[AppSolicitKey(vni)] == "3" {
		return nil
	}
	return plan.Plan{{Verb: plan.Sysctl, NS: ns, Key: AppSolicitKey(vni), Value: "3"}}
}
