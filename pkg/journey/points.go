package journey

import (
	"fmt"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/trace"
)

// HostAlias is the interface name that stands for a pod's host-side veth
// in its node ("pod-a:host").
const HostAlias = "host"

// Links lists the interface names inside namespace ns (lo may be
// included; it is skipped). Resolve takes it as a parameter so that the
// path logic needs no root to be tested.
type Links func(ns string) ([]string, error)

// NetlinkLinks lists a namespace's interfaces over netlink.
func NetlinkLinks(ns string) ([]string, error) {
	h, err := netns.Handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces in %s: %w", ns, err)
	}
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Attrs().Name)
	}
	return out, nil
}

// isBridge reports whether an interface of a lab is a bridge, which
// needs promiscuous mode to show bridged frames.
func isBridge(iface string) bool {
	return iface == bridge.DefaultName || iface == cluster.UnderlayBridge
}

// point builds a trace point for an interface of a lab object.
func point(lab *cluster.Lab, obj, iface string) trace.Point {
	return trace.Point{Label: obj + "/" + iface, NS: netns.Name(lab.Name, obj), Iface: iface, Promisc: isBridge(iface)}
}

// Resolve turns capture point specs into trace points, using the lab's
// state for names and aliases:
//
//	node1:eth0, pod-a:eth0   an interface of a node or pod
//	node1:*, underlay:*      every interface of it (lo excepted)
//	pod-a                    the pod's eth0 (a node alone: its eth0)
//	pod-a:host               the pod's host-side veth in its node
//	node1:underlay           node1's port on the underlay bridge
//	underlay, external       every interface of that namespace
//
// Bridges (cni0, underlay0) are captured in promiscuous mode. Duplicates
// are dropped. An unknown object or interface is one sentence naming the
// valid points.
func Resolve(lab *cluster.Lab, specs []string, links Links) ([]trace.Point, error) {
	var out []trace.Point
	seen := map[string]bool{}
	add := func(p trace.Point) {
		k := p.NS + "\x00" + p.Iface
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	for _, spec := range specs {
		obj, iface, hasIface := strings.Cut(spec, ":")
		if obj == "" || (hasIface && iface == "") {
			return nil, fmt.Errorf("capture point %q is not OBJECT:INTERFACE: %s", spec, validPoints(lab))
		}
		pod, node := lab.Pod(obj), lab.Node(obj)
		isNet := obj == cluster.UnderlayName || obj == cluster.ExternalName
		if pod == nil && node == nil && !isNet {
			return nil, fmt.Errorf("unknown capture point %q: lab %s has no node or pod named %s; %s", spec, lab.Name, obj, validPoints(lab))
		}
		if !hasIface {
			switch {
			case pod != nil:
				iface = cluster.PodIface
			case node != nil:
				iface = cluster.NodeUplink
			default:
				iface = "*"
			}
		}
		// Aliases living in another namespace.
		switch {
		case pod != nil && (iface == HostAlias || iface == "veth"):
			add(point(lab, pod.Node, pod.HostVeth))
			continue
		case node != nil && iface == cluster.UnderlayName:
			add(point(lab, cluster.UnderlayName, node.Name))
			continue
		}
		ns := netns.Name(lab.Name, obj)
		names, err := links(ns)
		if err != nil {
			return nil, fmt.Errorf("capture point %q: cannot list the interfaces of %s (is the lab up? 'klab show %s'): %w", spec, obj, obj, err)
		}
		names = slices.DeleteFunc(names, func(n string) bool { return n == "lo" })
		if iface == "*" {
			for _, n := range names {
				add(point(lab, obj, n))
			}
			continue
		}
		if !slices.Contains(names, iface) {
			return nil, fmt.Errorf("unknown capture point %q: %s has no interface %s; its interfaces are %s (or write %s:* for all of them)", spec, obj, iface, strings.Join(names, ", "), obj)
		}
		add(point(lab, obj, iface))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no interfaces to capture on in %s: %s", strings.Join(specs, " "), validPoints(lab))
	}
	return out, nil
}

// validPoints is the "valid points are ..." part of an error.
func validPoints(lab *cluster.Lab) string {
	objs := lab.Names()
	objs = append(objs, cluster.UnderlayName)
	ex := []string{}
	if len(lab.Nodes) > 0 {
		n := lab.Nodes[0].Name
		ex = append(ex, n+":eth0", n+":cni0", n+":*")
	}
	if len(lab.Pods) > 0 {
		p := lab.Pods[0].Name
		ex = append(ex, p+" (its eth0)", p+":host (its veth in the node)")
	}
	ex = append(ex, "underlay:*")
	return fmt.Sprintf("valid points are OBJECT:INTERFACE or OBJECT:* with OBJECT one of %s, e.g. %s", strings.Join(objs, ", "), strings.Join(ex, ", "))
}
