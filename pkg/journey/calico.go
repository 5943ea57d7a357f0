package journey

import (
	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/trace"
)

// Path kinds of the calico backend.
const (
	KindCalicoSameNode = "calico-same-node" // pod to pod on one node: routed between two cali veths
	KindCalicoBGP      = "calico-bgp"       // to another node's block, by the route BIRD learned
	KindCalicoVXLAN    = "calico-vxlan"     // to another node's block through vxlan.calico
)

// calicoPath adapts a planned path to the calico backend: there is no
// cni0 (a pod's host veth is routed directly) and no tunnel.
func calicoPath(lab *cluster.Lab, pl *Plan) {
	if lab.Backend != cluster.BackendCalico {
		return
	}
	pts := pl.Points[:0:0]
	for _, p := range pl.Points {
		if p.Iface != bridge.DefaultName {
			pts = append(pts, p)
		}
	}
	pl.Points = pts
	switch pl.Kind {
	case KindSameNode:
		pl.Kind = KindCalicoSameNode
	case KindHostGW:
		pl.Kind = KindCalicoBGP
	}
	calicoTunnel(lab, pl)
}

func describeCalico(kind string) (string, bool) {
	switch kind {
	case KindCalicoSameNode:
		return "same node with Calico: routed by the node from one cali veth to the other (a /32 route each), no bridge", true
	case KindCalicoVXLAN:
		return "cross-node with Calico's VXLAN mode: routed into vxlan.calico, wrapped in UDP 4789 (VNI 4096) between the nodes' eth0", true
	case KindCalicoBGP:
		return "cross-node with Calico: routed via the peer node's eth0 address by the route BIRD learned over BGP, no encapsulation", true
	}
	return "", false
}

// calicoTunnel adds vxlan.calico to a cross-node path in Calico's VXLAN
// mode: after the source node's routing, before its eth0; after the far
// node's eth0.
func calicoTunnel(lab *cluster.Lab, pl *Plan) {
	if lab.Calico == nil || lab.Calico.Encapsulation != cluster.EncapVXLAN || pl.Kind != KindCalicoBGP {
		return
	}
	pl.Kind = KindCalicoVXLAN
	first, last := -1, -1
	for i, p := range pl.Points {
		if p.Iface == cluster.NodeUplink && lab.Node(nodeOf(lab, p.NS)) != nil {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 || first == last {
		return
	}
	var out []trace.Point
	for i, p := range pl.Points {
		if i == first {
			out = append(out, point(lab, nodeOf(lab, p.NS), cluster.CalicoVXLANDevice))
		}
		out = append(out, p)
		if i == last {
			out = append(out, point(lab, nodeOf(lab, p.NS), cluster.CalicoVXLANDevice))
		}
	}
	pl.Points = out
}

// nodeOf is the node whose namespace is ns, or "".
func nodeOf(lab *cluster.Lab, ns string) string {
	for _, n := range lab.Nodes {
		if netns.Name(lab.Name, n.Name) == ns {
			return n.Name
		}
	}
	return ""
}
