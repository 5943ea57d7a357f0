package veth

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"

	"github.com/klab-dev/klab/pkg/plan"
)

// MaxNameLen is the kernel's limit for interface names (IFNAMSIZ - 1).
const MaxNameLen = 15

// HostName returns the outer-end name for an attachment identified by key,
// "veth" + 8 hex digits, like the CNI plugins' generated names. It is
// deterministic so that klab finds the same link again after a crash.
func HostName(key string) string {
	sum := sha1.Sum([]byte(key))
	return "veth" + hex.EncodeToString(sum[:4])
}

// Route is a route installed inside the namespace through its eth0.
type Route struct {
	Dst netip.Prefix // invalid means the default route
	Gw  netip.Addr
}

// Attachment describes one veth pair between an outer namespace (holding
// a bridge) and an inner one (a pod or a node).
type Attachment struct {
	OuterNS    string // namespace name of the bridge side
	OuterIface string // outer end name, e.g. veth1a2b3c4d or node1
	Bridge     string // bridge to enslave the outer end to ("" for none)
	Hairpin    bool   // hairpin mode on the bridge port
	// OuterAddr is an address on the outer end, for a routed link (no
	// Bridge): the outer namespace is then the inner one's gateway.
	OuterAddr  netip.Prefix
	InnerNS    string // namespace name of the inner side
	InnerIface string // inner end name, usually eth0
	Addr       netip.Prefix
	MTU        int
	MAC        net.HardwareAddr // inner end MAC; nil lets the kernel choose
	// OuterMAC is the outer end's MAC (Calico's ee:ee:ee:ee:ee:ee); nil
	// lets the kernel choose.
	OuterMAC net.HardwareAddr
	Routes   []Route
}

// Validate checks names against the kernel's limit.
func (a Attachment) Validate() error {
	for _, n := range []string{a.OuterIface, a.InnerIface} {
		if len(n) == 0 || len(n) > MaxNameLen {
			return fmt.Errorf("interface name %q must be 1-%d bytes long (the kernel's limit): choose a shorter name", n, MaxNameLen)
		}
	}
	return nil
}

// Plan returns the operations that make the pair exist and be configured,
// given the current state of the outer and inner namespaces: the pair
// created in one request with its inner end placed straight into the inner
// namespace, the outer end enslaved and in hairpin mode, lo and eth0 up,
// the address and the routes inside. Only what is missing or wrong is in
// the plan.
func Plan(a Attachment, outer, inner *plan.State) (plan.Plan, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	var p plan.Plan
	l := outer.Link(a.OuterIface)
	in := inner.Link(a.InnerIface)
	if l != nil && l.Type == "veth" && in == nil {
		// A leftover outer end whose peer is not in the inner namespace:
		// the inner namespace was deleted and the kernel has not freed the
		// pair yet (it does so asynchronously), or the peer went
		// elsewhere. Replace the pair.
		p.Add(plan.Op{Verb: plan.LinkDel, NS: a.OuterNS, Link: &plan.Link{Name: a.OuterIface}, Why: "a stale end without its peer"})
		outer.Drop(a.OuterIface)
		l = nil
	}
	created := l == nil
	switch {
	case created:
		if in != nil {
			return nil, fmt.Errorf("create veth %s in %s: an interface named %s already exists in %s: delete it and try again", a.OuterIface, a.OuterNS, a.InnerIface, a.InnerNS)
		}
		p.Add(plan.Op{Verb: plan.LinkAdd, NS: a.OuterNS, New: true, Link: &plan.Link{
			Name: a.OuterIface, Type: "veth", MTU: a.MTU, MAC: a.OuterMAC, Master: a.Bridge, Up: true,
			PeerName: a.InnerIface, PeerNS: a.InnerNS, PeerMTU: a.MTU, PeerMAC: a.MAC,
		}})
	case l.Type != "veth":
		return nil, fmt.Errorf("%s in namespace %s is a %s, not a veth: delete it and try again", a.OuterIface, a.OuterNS, l.Type)
	default:
		if a.Bridge != "" && l.Master != a.Bridge {
			p.Add(plan.Op{Verb: plan.LinkSetMaster, NS: a.OuterNS, Link: &plan.Link{Name: a.OuterIface, Master: a.Bridge}})
		}
		if !l.Up {
			p.Add(plan.Op{Verb: plan.LinkSetUp, NS: a.OuterNS, Link: &plan.Link{Name: a.OuterIface}})
		}
	}
	if a.OuterAddr.IsValid() && (created || !outer.HasAddr(a.OuterIface, a.OuterAddr)) {
		p.Add(plan.Op{Verb: plan.AddrAdd, NS: a.OuterNS, Addr: &plan.Addr{Dev: a.OuterIface, Prefix: a.OuterAddr}})
	}
	if a.Hairpin && (created || !l.Hairpin) {
		p.Add(plan.Op{Verb: plan.LinkSetHairpin, NS: a.OuterNS, Link: &plan.Link{Name: a.OuterIface}})
	}
	// Inside: a new pair's inner end is down and bare; an existing one is
	// checked like any other state.
	if created {
		in = nil
	}
	if lo := inner.Link("lo"); lo == nil || !lo.Up {
		p.Add(plan.Op{Verb: plan.LinkSetUp, NS: a.InnerNS, Link: &plan.Link{Name: "lo"}})
	}
	if a.Addr.IsValid() && (in == nil || !inner.HasAddr(a.InnerIface, a.Addr)) {
		p.Add(plan.Op{Verb: plan.AddrAdd, NS: a.InnerNS, Addr: &plan.Addr{Dev: a.InnerIface, Prefix: a.Addr}})
	}
	if in == nil || !in.Up {
		p.Add(plan.Op{Verb: plan.LinkSetUp, NS: a.InnerNS, Link: &plan.Link{Name: a.InnerIface}})
	}
	for _, r := range a.Routes {
		rt := plan.Route{Dst: r.Dst, Gw: r.Gw, Dev: a.InnerIface}
		if in == nil || !inner.HasRoute(rt) {
			p.Add(plan.Op{Verb: plan.RouteReplace, NS: a.InnerNS, Route: &rt})
		}
	}
	return p, nil
}

// PlanDelete returns the operation that removes the pair by deleting its
// outer end (the kernel deletes the peer with it); nothing when st has no
// such device.
func PlanDelete(ns, iface string, st *plan.State) (plan.Plan, error) {
	l := st.Link(iface)
	if l == nil {
		return nil, nil
	}
	if l.Type != "veth" {
		return nil, fmt.Errorf("%s in namespace %s is a %s, not a veth: not deleting it", iface, ns, l.Type)
	}
	return plan.Plan{{Verb: plan.LinkDel, NS: ns, Link: &plan.Link{Name: iface}}}, nil
}
