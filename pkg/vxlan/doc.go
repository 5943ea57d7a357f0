// Package vxlan programs a node the way flannel's vxlan backend does, and
// its no-overlay sibling host-gw.
//
// Each node owns a /24 of the cluster network and a VXLAN device,
// flannel.<VNI>, whose address is the subnet's .0 and whose MAC (the
// "VtepMAC") is published with the node's lease. For every other node,
// flannel programs three kernel entries, in this order, and so does klab:
//
//  1. ARP:   10.244.M.0 dev flannel.1 lladdr <VtepMAC of M> PERMANENT
//     (the next hop's MAC, so the kernel never has to ARP across the tunnel)
//  2. FDB:   <VtepMAC of M> dev flannel.1 dst <underlay IP of M> self permanent
//     (which underlay host that MAC lives behind: where to send the UDP packet)
//  3. Route: 10.244.M.0/24 via 10.244.M.0 dev flannel.1 onlink
//     ("onlink" because 10.244.M.0 is not inside flannel.1's own /32)
//
// The route comes last on purpose: once it exists, traffic flows, and if
// the neighbour entry were still missing the kernel would send an ARP
// request that nobody answers (the device is nolearning and flannel no
// longer answers L3MISS events), leaving a FAILED entry that delays the
// first packets. Removal goes the other way round for the same reason.
// Older flannel versions did not pre-program entries: they answered the
// kernel's L2MISS/L3MISS netlink events from userspace instead.
//
// The device listens on UDP 8472, the Linux kernel's historical VXLAN port
// (flannel's default), not IANA's 4789, and has learning off: every entry is
// put there by the control plane. Its MTU is the underlay's minus the 50
// bytes of VXLAN encapsulation (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN
// 8). PlanDevice reuses a compatible device and replaces an incompatible
// one (wrong VNI, port, local address, underlay device), like flannel's
// ensureLink. The host-gw backend needs none of this: each peer's subnet is
// simply routed via the peer's underlay address, which requires all nodes to
// share one L2 segment. Like every building block, this package computes
// plans (pkg/plan) from the desired entries and the kernel's State; it
// never changes the kernel itself.
package vxlan
