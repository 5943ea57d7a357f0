package journey

import (
	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/cluster"
)

// Path kinds of the calico backend.
const (
	KindCalicoSameNode = "calico-same-node" // pod to pod on one node: routed between two cali veths
	KindCalicoBGP      = "calico-bgp"       // to another node's block, by the route BIRD learned
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
}

func describeCalico(kind string) (string, bool) {
	switch kind {
	case KindCalicoSameNode:
		return "same node with Calico: routed by the node from one cali veth to the other (a /32 route each), no bridge", true
	case KindCalicoBGP:
		return "cross-node with Calico: routed via the peer node's eth0 address by the route BIRD learned over BGP, no encapsulation", true
	}
	return "", false
}
