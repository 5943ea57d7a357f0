package cluster

// Calico's VXLAN mode, as Felix programs it (felix/dataplane/linux/
// vxlan_mgr.go): a vxlan.calico device per node (VNI 4096, UDP 4789, MTU
// 50 below the underlay's) holding a /32 tunnel address from the node's
// block, and per other node a permanent ARP entry for its tunnel address,
// an FDB entry sending its VTEP MAC to its node IP, and one route per
// block `<block> via <tunnel ip> dev vxlan.calico onlink`. calico-node
// runs no BIRD in this mode: Felix computes the routes from the
// datastore, as flanneld does.

import (
	"crypto/sha1"
	"fmt"
	"net"

	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/vxlan"
)

// Calico's VXLAN constants.
const (
	CalicoVXLANDevice = "vxlan.calico"
	CalicoVXLANVNI    = 4096
	CalicoVXLANPort   = 4789
)

func (l *Lab) calicoVXLAN() bool {
	return l.Backend == BackendCalico && l.Calico != nil && l.Calico.Encapsulation == EncapVXLAN
}

func (l *Lab) noBGPInVXLAN() error {
	if l.calicoVXLAN() {
		return fmt.Errorf("lab %s runs Calico's VXLAN mode, where calico-node runs no BIRD (Felix programs vxlan.calico's routes itself): build a lab with --encapsulation none for BGP", l.Name)
	}
	return nil
}

// calicoVTEPMAC is a node's VTEP MAC: 0x66 then the first five bytes of
// sha1(node name) (klab/shared REFERENCE §11, calico-node's tunnel MAC).
func calicoVTEPMAC(node string) net.HardwareAddr {
	sum := sha1.Sum([]byte(node))
	return net.HardwareAddr{0x66, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// planCalicoTunnel gives a new node its tunnel address (the first address
// of its first block, which Calico's IPAM assigns before any pod) and its
// VTEP MAC.
func (c *Cluster) planCalicoTunnel(n *Node) {
	n.TunnelIP = n.Blocks[0].Addr()
	n.VtepMAC = calicoVTEPMAC(n.Name).String()
}

// planCalicoVXLANDevice plans vxlan.calico with its /32 tunnel address,
// and the node's blocks blackholed.
func (c *Cluster) planCalicoVXLANDevice(n *Node, st *plan.State) plan.Plan {
	mac, _ := parseMAC(n.VtepMAC)
	p := vxlan.PlanDevice(vxlan.Config{
		NS: c.NS(n.Name), Name: CalicoVXLANDevice, VNI: CalicoVXLANVNI, Port: CalicoVXLANPort, Local: n.IP,
		Underlay: NodeUplink, MTU: c.Lab.MTU(), MAC: mac, Subnet: n.Blocks[0],
	}, st)
	return append(p, c.planCalicoBlackholes(n, st)...)
}

// planCalicoBlackholes blackholes each of the node's blocks, as Felix does
// in VXLAN mode (in BGP mode BIRD's static protocol does it): an address of
// a block with no pod behind it is dropped on the node instead of
// following its default route; the pods' /32s are more specific.
func (c *Cluster) planCalicoBlackholes(n *Node, st *plan.State) plan.Plan {
	var p plan.Plan
	for _, b := range n.Blocks {
		rt := plan.Route{Dst: b, Blackhole: true}
		if !st.HasRoute(rt) {
			p.Add(plan.Op{Verb: plan.RouteReplace, NS: c.NS(n.Name), New: true, Route: &rt, Why: "Felix: the node's own block"})
		}
	}
	return p
}

// calicoEntries are node n's entries for peer o in VXLAN mode: ARP, FDB,
// then one route per block of o (route last, so the kernel never ARPs).
func calicoEntries(o *Node) (arp, fdb plan.Neigh, routes []plan.Route) {
	mac, _ := parseMAC(o.VtepMAC)
	arp = plan.Neigh{Dev: CalicoVXLANDevice, IP: o.TunnelIP, MAC: mac}
	fdb = plan.Neigh{Dev: CalicoVXLANDevice, IP: o.IP, MAC: mac}
	for _, b := range o.Blocks {
		routes = append(routes, plan.Route{Dst: b, Gw: o.TunnelIP, Dev: CalicoVXLANDevice, Onlink: true})
	}
	return arp, fdb, routes
}

// planCalicoPeers plans node n's VXLAN entries for others; nothing in BGP
// mode, where BIRD learns the routes.
func (c *Cluster) planCalicoPeers(n *Node, others []*Node, st *plan.State) plan.Plan {
	if !c.Lab.calicoVXLAN() {
		return nil
	}
	ns := c.NS(n.Name)
	var p plan.Plan
	for _, o := range others {
		arp, fdb, routes := calicoEntries(o)
		if !st.HasNeigh(arp) {
			p.Add(plan.Op{Verb: plan.NeighReplace, NS: ns, New: st.NeighOf(arp.Dev, arp.IP) == nil, Neigh: &arp, Why: "Felix: " + o.Name + "'s tunnel address"})
		}
		if !st.HasFDB(fdb) {
			p.Add(plan.Op{Verb: plan.FDBReplace, NS: ns, New: true, Neigh: &fdb})
		}
		for i := range routes {
			rt := routes[i]
			if !st.HasRoute(rt) {
				p.Add(plan.Op{Verb: plan.RouteReplace, NS: ns, New: st.RouteTo(rt.Dst) == nil, Route: &rt})
			}
		}
	}
	return p
}

// planCalicoUnpeer removes node n's VXLAN entries for o.
func (c *Cluster) planCalicoUnpeer(n, o *Node, st *plan.State) plan.Plan {
	if !c.Lab.calicoVXLAN() || st.Link(CalicoVXLANDevice) == nil {
		return nil
	}
	ns := c.NS(n.Name)
	arp, fdb, routes := calicoEntries(o)
	var p plan.Plan
	for i := range routes {
		rt := routes[i]
		if r := st.RouteTo(rt.Dst); r != nil && r.Dev == CalicoVXLANDevice {
			p.Add(plan.Op{Verb: plan.RouteDel, NS: ns, Route: &rt})
		}
	}
	if st.HasFDB(fdb) {
		p.Add(plan.Op{Verb: plan.FDBDel, NS: ns, Neigh: &fdb})
	}
	if st.NeighOf(arp.Dev, arp.IP) != nil {
		p.Add(plan.Op{Verb: plan.NeighDel, NS: ns, Neigh: &arp})
	}
	return p
}

// announceBlock spreads a block node n just claimed: BIRD announces it
// (a new static route in its configuration), or in VXLAN mode every other
// node gets its route, as Felix adds it.
func (c *Cluster) announceBlock(n *Node) error {
	if !c.Lab.calicoVXLAN() {
		return c.SyncBird()
	}
	var p plan.Plan
	for _, o := range c.Lab.Nodes {
		st, err := c.read(o.Name)
		if err != nil {
			return err
		}
		if o.Name == n.Name {
			p.Add(c.planCalicoBlackholes(n, st)...)
			continue
		}
		p.Add(c.planCalicoPeers(o, []*Node{n}, st)...)
	}
	return c.apply(p)
}
