package cluster

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/veth"
	"github.com/vishvananda/netlink"
)

// RepairReport says what Repair changed.
type RepairReport struct {
	Removed  []string `json:"removed,omitempty"`  // namespaces the state did not know
	Rebuilt  []string `json:"rebuilt,omitempty"`  // nodes and pods whose namespace was missing
	Stopped  []int    `json:"stopped,omitempty"`  // servers of the lab the state did not know, or outside their namespace
	Forgot   []string `json:"forgot,omitempty"`   // servers the state listed that no longer run
	Released []string `json:"released,omitempty"` // addresses held by pods the state does not know
	Policies []string `json:"policies,omitempty"` // NetworkPolicy chains and sets that drifted (rebuilt)
	Started  []string `json:"started,omitempty"`  // control-plane servers (etcd, agents) started again
}

// Repair reconciles the kernel with the lab's state, the way a controller
// does: what the kernel has and the state does not know is removed
// (namespaces of interrupted builds, with their processes and, for a half
// added node, its entries in the other nodes; servers the state does not
// know), and everything the state has is ensured again with the same
// idempotent steps that build it, so missing or half-built nodes and pods
// are completed, peers re-programmed and iptables rules that drifted
// rewritten from what the kernel holds. Servers that died are forgotten.
// The lab must have a readable state; without one, only destroy helps.
//
// Repair is one plan: computed from the state file and the kernel, so a
// healthy lab gets an empty one (and --explain prints nothing).
func (c *Cluster) Repair() (*RepairReport, error) {
	rep := &RepairReport{}
	l := c.Lab
	// Cached handles may point at namespaces deleted behind klab's back.
	c.A.ForgetAll()
	c.states = nil
	known := map[string]bool{UnderlayName: true, ExternalName: true, ControlPlaneName: l.hasCPNode()}
	for _, n := range l.Names() {
		known[netns.Object(n)] = true
	}
	nss, err := netns.List(l.Name)
	if err != nil {
		return rep, err
	}
	var p plan.Plan
	for _, ns := range nss {
		_, obj, _ := netns.Parse(ns)
		if known[obj] {
			continue
		}
		if isUnderlayPort(l.Name, obj) {
			if n := c.orphanNode(obj); n != nil {
				for _, o := range l.Nodes {
					if st, err := c.read(o.Name); err == nil {
						p.Add(c.planUnpeer(o, n, st)...)
					}
				}
			}
			if u, err := c.read(UnderlayName); err == nil {
				if vp, err := veth.PlanDelete(c.NS(UnderlayName), obj, u); err == nil {
					p.Add(vp...)
				}
			}
		}
		if procs, _ := ProcessesIn([]string{ns}); len(procs) > 0 {
			p.Add(killOp(procs))
		}
		p.Add(plan.Op{Verb: plan.NetnsDel, NS: ns})
		rep.Removed = append(rep.Removed, ns)
	}
	if len(l.Nodes) > 0 {
		up, err := c.planUnderlay()
		if err != nil {
			return rep, err
		}
		p.Add(up...)
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return rep, err
	}
	states := map[string]*plan.State{}
	for _, n := range l.Nodes {
		st, err := c.read(n.Name, ipForward)
		if err != nil {
			return rep, err
		}
		states[n.Name] = st
		if !st.Exists {
			rep.Rebuilt = append(rep.Rebuilt, "node "+n.Name)
		}
		np, err := c.planNode(n, u, st)
		if err != nil {
			return rep, err
		}
		p.Add(np...)
	}
	for _, n := range l.Nodes {
		var others []*Node
		for _, o := range l.Nodes {
			if o.Name != n.Name {
				others = append(others, o)
			}
		}
		p.Add(c.planPeers(n, others, states[n.Name])...)
	}
	for _, pod := range l.Pods {
		if pod.CNI {
			continue // the CNI plugins' wiring: 'klab list' runs their CHECK (cni.go)
		}
		if !netns.Exists(c.NS(pod.Name)) {
			rep.Rebuilt = append(rep.Rebuilt, "pod "+pod.Name)
		}
		pp, err := c.planPod(pod)
		if err != nil {
			return rep, err
		}
		p.Add(pp...)
	}
	for _, n := range l.Nodes {
		store := c.ipamStore(n)
		used, _ := store.Used()
		for a, owner := range used {
			if l.Pod(owner) == nil {
				rep.Released = append(rep.Released, fmt.Sprintf("%s (%s)", a, owner))
			}
		}
		rp, _, err := c.releaseStale(store)
		if err != nil {
			return rep, err
		}
		p.Add(rp...)
	}
	pp, err := c.repairPolicies(rep)
	if err != nil {
		return rep, err
	}
	p.Add(pp...)
	p.Add(c.repairServers(rep)...)
	p.Add(c.repairBird(rep)...)
	sort.Strings(rep.Released)
	p.Add(c.savePlan()...)
	if err := c.apply(p); err != nil {
		return rep, err
	}
	return rep, c.cpRepair(rep)
}

// repairServers plans stopping the lab's servers the state does not know
// or that run outside their target's namespace, and forgets the ones that
// died.
func (c *Cluster) repairServers(rep *RepairReport) plan.Plan {
	l := c.Lab
	recorded := map[int]bool{}
	keep := l.Servers[:0]
	for _, s := range l.Servers {
		in, _ := ProcessesIn([]string{c.NS(s.Target)})
		if _, ok := in[s.PID]; ok {
			keep = append(keep, s)
			recorded[s.PID] = true
			continue
		}
		rep.Forgot = append(rep.Forgot, fmt.Sprintf("%s %s/%d (pid %d)", s.Target, s.Proto, s.Port, s.PID))
	}
	l.Servers = keep
	stray := map[int]string{}
	for _, pid := range serverProcesses()[l.Name] {
		if !recorded[pid] {
			stray[pid] = "a server of lab " + l.Name + " the state does not know"
			rep.Stopped = append(rep.Stopped, pid)
		}
	}
	if len(stray) == 0 {
		return nil
	}
	return plan.Plan{killOp(stray)}
}

// orphanNode reconstructs a half-added node from its namespace (eth0's
// address, cni0's subnet; the VTEP MAC is derived from the names), so that
// its entries in the other nodes can be removed; nil if it is too
// incomplete to have any.
func (c *Cluster) orphanNode(name string) *Node {
	h, err := c.Handle(name)
	if err != nil {
		return nil
	}
	defer c.A.Forget(c.NS(name))
	addrOf := func(link string) (netip.Prefix, bool) {
		lk, err := h.LinkByName(link)
		if err != nil {
			return netip.Prefix{}, false
		}
		addrs, err := h.AddrList(lk, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return netip.Prefix{}, false
		}
		a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		ones, _ := addrs[0].Mask.Size()
		return netip.PrefixFrom(a, ones), true
	}
	ip, ok1 := addrOf(NodeUplink)
	sub, ok2 := addrOf(bridge.DefaultName)
	if !ok1 || !ok2 {
		return nil
	}
	n := &Node{Name: name, IP: ip.Addr(), PodCIDR: sub.Masked()}
	if c.Lab.Backend == BackendVXLAN {
		n.VtepMAC = MAC(c.Lab.Name, name, "vtep").String()
	}
	return n
}
