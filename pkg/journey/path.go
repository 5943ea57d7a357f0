package journey

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/vxlan"
	"github.com/klab-dev/klab/trace"
)

// Probe protocols.
const (
	ICMP = "icmp"
	TCP  = "tcp"
	UDP  = "udp" // one datagram and its answer (a DNS query to port 53)
)

// Path kinds: how the probe is expected to travel.
const (
	KindSameNode = "same-node" // pod to pod on one node: bridged by cni0
	KindVXLAN    = "vxlan"     // to another node's pod subnet through flannel.1
	KindHostGW   = "host-gw"   // to another node's pod subnet, routed via its eth0
	KindLocal    = "local"     // to the source's own node (or from a node to its pod)
	KindUnderlay = "underlay"  // to another node's address, over the underlay
	KindAnyWhere = "unknown"   // a Service or outside address: every point armed
)

// Plan is where a journey's probe goes and where it will be captured.
type Plan struct {
	From   string     `json:"from"`   // the source object (pod or node)
	FromNS string     `json:"fromNS"` // its namespace
	Target string     `json:"target"` // as given
	Dst    netip.Addr `json:"dst"`    // the probe's destination address
	Port   int        `json:"port"`   // TCP or UDP destination port (0 for ICMP)
	Proto  string     `json:"proto"`  // ICMP, TCP or UDP
	Kind   string     `json:"kind"`
	// Points are the capture points, in the order the probe crosses them.
	Points []trace.Point `json:"-"`
	// Expected is true when Points is the exact path (the destination is a
	// known pod or node); false when it is every point of the lab, because
	// a rewrite (a Service's DNAT) decides where the probe goes.
	Expected bool `json:"expected"`
}

// Labels are the capture point labels in path order, for Follow.
func (p *Plan) Labels() []string {
	return pointLabels(p.Points)
}

// Describe says in one sentence what path the plan expects.
func (p *Plan) Describe() string {
	if d, ok := describeCalico(p.Kind); ok {
		return d
	}
	switch p.Kind {
	case KindSameNode:
		return "same node: bridged by cni0, no routing"
	case KindVXLAN:
		return "cross-node over VXLAN: routed into flannel.1, wrapped in UDP 8472 between the nodes' eth0"
	case KindHostGW:
		return "cross-node with host-gw: routed via the peer node's eth0 address, no encapsulation"
	case KindLocal:
		return "to the node itself: through the pod's veth and cni0"
	case KindUnderlay:
		return "node to node over the underlay bridge"
	}
	return "destination not a pod or node (a Service or outside address): every capture point of the lab is armed"
}

// SplitTarget splits "10.96.0.10:80", "web:80" or "pod-b:8080" into host
// and port; a target without ":" has port 0.
func SplitTarget(s string) (host string, port int, err error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return s, 0, nil
	}
	n, err := strconv.Atoi(p)
	if h == "" || err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("target %q is not HOST or HOST:PORT with a port 1-65535: write it like pod-b, 10.96.0.10:80 or web:80", s)
	}
	return h, n, nil
}

// Where is the lab's view of an address: the pod or node it belongs to.
type Where struct {
	Pod  *cluster.Pod
	Node *cluster.Node
}

// Locate finds the pod or node owning addr: a pod IP, a node's eth0
// address, or a node's cni0/flannel.1 address in its pod subnet (.1/.0).
func Locate(lab *cluster.Lab, addr netip.Addr) Where {
	for _, p := range lab.Pods {
		if p.IP == addr {
			return Where{Pod: p, Node: lab.Node(p.Node)}
		}
	}
	for _, n := range lab.Nodes {
		if n.IP == addr {
			return Where{Node: n}
		}
		if n.PodCIDR.IsValid() {
			base := n.PodCIDR.Masked().Addr()
			if addr == base || addr == base.Next() {
				return Where{Node: n}
			}
		}
	}
	return Where{}
}

// PlanPath computes the capture points of a journey from the object from
// (a pod or node) to dst, in path order. port is the TCP port (ignored for
// ICMP).
func PlanPath(lab *cluster.Lab, from, target string, dst netip.Addr, proto string, port int) (*Plan, error) {
	switch proto {
	case ICMP:
		port = 0
	case TCP, UDP:
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("a %s journey needs the destination port: write the target as %s:PORT or add --port", proto, target)
		}
	default:
		return nil, fmt.Errorf("probe protocol %q is not known: use --proto icmp, tcp or udp", proto)
	}
	if !dst.Is4() {
		return nil, fmt.Errorf("destination %s is not an IPv4 address: klab labs are IPv4 only", dst)
	}
	pl := &Plan{From: from, FromNS: netns.Name(lab.Name, from), Target: target, Dst: dst, Port: port, Proto: proto}
	var srcPod *cluster.Pod
	srcNode := lab.Node(from)
	if srcNode == nil {
		if srcPod = lab.Pod(from); srcPod == nil {
			return nil, fmt.Errorf("journey source %q is neither a pod nor a node of lab %s: use one of %v", from, lab.Name, lab.Names())
		}
		if srcNode = lab.Node(srcPod.Node); srcNode == nil {
			return nil, fmt.Errorf("pod %s is on node %s, which lab %s does not have: the lab state is inconsistent ('klab doctor')", from, srcPod.Node, lab.Name)
		}
	}
	vx := lab.Backend != cluster.BackendHostGW && lab.Backend != cluster.BackendCalico
	tunnel := vxlan.DeviceName(lab.VNI)
	if lab.VNI == 0 {
		tunnel = vxlan.DeviceName(1)
	}
	cni := bridge.DefaultName
	p := func(obj, iface string) trace.Point { return point(lab, obj, iface) }

	// The source's way out of the pod, into its node.
	var up []trace.Point
	if srcPod != nil {
		up = []trace.Point{p(srcPod.Name, cluster.PodIface), p(srcNode.Name, srcPod.HostVeth), p(srcNode.Name, cni)}
	}
	// down: from a node's cni0 into one of its pods.
	down := func(n *cluster.Node, q *cluster.Pod) []trace.Point {
		return []trace.Point{p(n.Name, cni), p(n.Name, q.HostVeth), p(q.Name, cluster.PodIface)}
	}
	// Node n's way onto the underlay, and node m's way off it.
	out := func(n *cluster.Node, tun bool) []trace.Point {
		var ps []trace.Point
		if tun {
			ps = append(ps, p(n.Name, tunnel))
		}
		return append(ps, p(n.Name, cluster.NodeUplink), p(cluster.UnderlayName, n.Name))
	}
	in := func(m *cluster.Node, tun bool) []trace.Point {
		ps := []trace.Point{p(cluster.UnderlayName, m.Name), p(m.Name, cluster.NodeUplink)}
		if tun {
			ps = append(ps, p(m.Name, tunnel))
		}
		return ps
	}
	w := Locate(lab, dst)
	pl.Expected = true
	switch {
	case w.Pod != nil && w.Pod.Name == from, w.Pod == nil && w.Node != nil && w.Node.Name == from:
		return nil, errors.New("the journey's source and target are the same object: its packets never leave it (they go through lo); pick another target")
	case w.Pod != nil && w.Node != nil && w.Node.Name == srcNode.Name:
		pl.Kind = KindSameNode
		if srcPod == nil {
			pl.Kind = KindLocal
		}
		pl.Points = dedupe(append(up, down(srcNode, w.Pod)...))
	case w.Pod != nil && w.Node != nil:
		pl.Kind = KindVXLAN
		if !vx {
			pl.Kind = KindHostGW
		}
		pl.Points = append(up, out(srcNode, vx)...)
		pl.Points = append(pl.Points, in(w.Node, vx)...)
		pl.Points = dedupe(append(pl.Points, down(w.Node, w.Pod)...))
	case w.Node != nil && w.Node.Name == srcNode.Name:
		pl.Kind = KindLocal
		pl.Points = up
	case w.Node != nil && dst == w.Node.IP:
		pl.Kind = KindUnderlay
		pl.Points = append(up, out(srcNode, false)...)
		pl.Points = append(pl.Points, in(w.Node, false)...)
	case w.Node != nil:
		// The far node's cni0/flannel.1 address: routed like its pods.
		pl.Kind = KindVXLAN
		if !vx {
			pl.Kind = KindHostGW
		}
		pl.Points = append(up, out(srcNode, vx)...)
		pl.Points = append(pl.Points, in(w.Node, vx)...)
		if !vx {
			pl.Points = append(pl.Points, p(w.Node.Name, cni))
		}
	default:
		pl.Kind, pl.Expected = KindAnyWhere, false
		pl.Points = everywhere(lab, srcNode, up, vx, tunnel)
	}
	calicoPath(lab, pl)
	return pl, nil
}

// everywhere is every capture point of the lab in an order that is a path
// order for whichever pod a rewrite picks: the source's way out, the
// source node's other pods (a DNAT to a local endpoint), then its tunnel
// and uplink, then every other node from its uplink down to its pods.
func everywhere(lab *cluster.Lab, src *cluster.Node, up []trace.Point, vx bool, tunnel string) []trace.Point {
	p := func(obj, iface string) trace.Point { return point(lab, obj, iface) }
	ps := append([]trace.Point(nil), up...)
	ps = append(ps, p(src.Name, bridge.DefaultName))
	for _, q := range lab.PodsOn(src.Name) {
		ps = append(ps, p(src.Name, q.HostVeth), p(q.Name, cluster.PodIface))
	}
	if vx {
		ps = append(ps, p(src.Name, tunnel))
	}
	ps = append(ps, p(src.Name, cluster.NodeUplink), p(cluster.UnderlayName, src.Name))
	for _, m := range lab.Nodes {
		if m.Name == src.Name {
			continue
		}
		ps = append(ps, p(cluster.UnderlayName, m.Name), p(m.Name, cluster.NodeUplink))
		if vx {
			ps = append(ps, p(m.Name, tunnel))
		}
		ps = append(ps, p(m.Name, bridge.DefaultName))
		for _, q := range lab.PodsOn(m.Name) {
			ps = append(ps, p(m.Name, q.HostVeth), p(q.Name, cluster.PodIface))
		}
	}
	// Last, the way to the lab's external host, beyond the underlay's
	// gateway: where egress from a pod ends (masqueraded or not).
	ps = append(ps, p(cluster.UnderlayName, cluster.ExternalName), p(cluster.ExternalName, cluster.NodeUplink))
	return dedupe(ps)
}

func dedupe(ps []trace.Point) []trace.Point {
	seen := map[string]bool{}
	out := ps[:0:0]
	for _, p := range ps {
		k := p.NS + "\x00" + p.Iface
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}
