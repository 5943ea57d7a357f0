package bridge

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/klab-dev/klab/pkg/plan"
)

// DefaultName is the bridge name the CNI bridge plugin uses in flannel's
// default configuration (cbr0 network, bridge cni0).
const DefaultName = "cni0"

// Config describes one bridge in one namespace.
type Config struct {
	NS      string           // namespace name
	Name    string           // bridge name, e.g. cni0
	Gateway netip.Prefix     // address of the bridge, e.g. 10.244.1.1/24; invalid for none
	MTU     int              // 0 leaves the kernel default
	MAC     net.HardwareAddr // pinned MAC; nil lets the kernel choose
}

// Plan returns the operations that make the bridge described by cfg exist
// in st's namespace, up, with its MTU, MAC and address; nothing when it
// already does. A link that holds the name but is not a bridge is an
// error: klab never deletes what it does not recognise.
func Plan(cfg Config, st *plan.State) (plan.Plan, error) {
	var p plan.Plan
	l := st.Link(cfg.Name)
	switch {
	case l == nil:
		p.Add(plan.Op{Verb: plan.LinkAdd, NS: cfg.NS, New: true, Link: &plan.Link{Name: cfg.Name, Type: "bridge", MTU: cfg.MTU, MAC: cfg.MAC, Up: true}})
	case l.Type != "bridge":
		return nil, fmt.Errorf("%s in namespace %s is a %s, not a bridge: delete it (ip -n %s link del %s) and try again", cfg.Name, cfg.NS, l.Type, cfg.NS, cfg.Name)
	default:
		if cfg.MTU != 0 && l.MTU != cfg.MTU {
			p.Add(plan.Op{Verb: plan.LinkSetMTU, NS: cfg.NS, Link: &plan.Link{Name: cfg.Name, MTU: cfg.MTU}})
		}
		if cfg.MAC != nil && l.MAC.String() != cfg.MAC.String() {
			p.Add(plan.Op{Verb: plan.LinkSetMAC, NS: cfg.NS, Link: &plan.Link{Name: cfg.Name, MAC: cfg.MAC}})
		}
		if !l.Up {
			p.Add(plan.Op{Verb: plan.LinkSetUp, NS: cfg.NS, Link: &plan.Link{Name: cfg.Name}})
		}
	}
	if cfg.Gateway.IsValid() && !st.HasAddr(cfg.Name, cfg.Gateway) {
		p.Add(plan.Op{Verb: plan.AddrAdd, NS: cfg.NS, New: l != nil, Addr: &plan.Addr{Dev: cfg.Name, Prefix: cfg.Gateway}})
	}
	return p, nil
}

// PlanDelete returns the operation that removes the bridge, if st has it
// (its ports are released, not deleted).
func PlanDelete(ns, name string, st *plan.State) (plan.Plan, error) {
	l := st.Link(name)
	if l == nil {
		return nil, nil
	}
	if l.Type != "bridge" {
		return nil, fmt.Errorf("%s in namespace %s is a %s, not a bridge: not deleting it", name, ns, l.Type)
	}
	return plan.Plan{{Verb: plan.LinkDel, NS: ns, Link: &plan.Link{Name: name}}}, nil
}
