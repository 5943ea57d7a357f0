package cluster

// kube-proxy's proxy mode, lab-wide: iptables (the default) or nftables.
// In nftables mode every node's kube-proxy state is pkg/nft's `table ip
// kube-proxy` and flannel's is `table ip flannel-ipv4` (flannel's
// EnableNFTables), both sent over netlink as one nf_tables transaction per
// sync through the plan applier (plan.NFT): such a node has no iptables
// KUBE-* or FLANNEL-* chains. NetworkPolicy follows the mode too: table ip
// klab-policy with nftables sets on an nftables node (policy_nft.go),
// iptables chains and ipsets otherwise. ipvs mode is refused: it needs the kernel's IP_VS, and klab does
// not fake kernel features.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
)

// Proxy modes (kube-proxy's --proxy-mode).
const (
	ProxyIPTables = "iptables"
	ProxyNFTables = "nftables"
	ProxyIPVS     = "ipvs"
)

// ErrIPVS is the refusal of --proxy-mode ipvs.
var ErrIPVS = errors.New("proxy mode ipvs needs the kernel's IP_VS (the ip_vs module), which this kernel does not have, and klab does not fake it: use --proxy-mode nftables (hash-map lookups, like ipvs) or iptables")

// errIPVSNotBuilt is the refusal on a kernel that has IP_VS.
var errIPVSNotBuilt = errors.New("proxy mode ipvs is not implemented by klab (it would need kube-ipvs0 and IPVS virtual servers): use --proxy-mode nftables or iptables")

// HasIPVS reports whether this kernel offers IP_VS.
func HasIPVS() bool {
	if b, err := os.ReadFile("/proc/modules"); err == nil && strings.Contains(string(b), "ip_vs ") {
		return true
	}
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

// ValidateProxyMode accepts "", iptables and nftables, and refuses ipvs and
// anything else in one sentence.
func ValidateProxyMode(m string) error {
	switch m {
	case "", ProxyIPTables, ProxyNFTables:
		return nil
	case ProxyIPVS:
		if HasIPVS() {
			return errIPVSNotBuilt
		}
		return ErrIPVS
	}
	return fmt.Errorf("proxy mode %q does not exist: use iptables or nftables", m)
}

// Mode is the lab's proxy mode (iptables when none was chosen).
func (l *Lab) Mode() string {
	if l.ProxyMode == "" {
		return ProxyIPTables
	}
	return l.ProxyMode
}

// NFTables reports whether the lab's nodes run kube-proxy's nftables mode.
func (l *Lab) NFTables() bool { return l.Mode() == ProxyNFTables }

// NFTConfig is the rendering input of kube-proxy's nftables table: the
// same on every node (flannel's lease is in flannel's own table), except
// for services with the Local external traffic policy, whose local- chain
// holds node n's own endpoints (n nil: rendered for no node).
func (l *Lab) nftServices(n *Node) (*nft.Table, error) {
	cfg := nat.Config{Lab: l.Name, ClusterCIDR: l.ClusterCIDR, ServiceCIDR: l.ServiceCIDR}
	if n != nil {
		cfg.NodeName = n.Name
	}
	return nft.Render(cfg, l.natServices())
}

// hasLocalPolicy reports whether a service has the Local external traffic
// policy (kube-proxy's table then differs from node to node).
func (l *Lab) hasLocalPolicy() bool {
	for _, s := range l.Services {
		if s.ExternalTrafficPolicy == nat.PolicyLocal {
			return true
		}
	}
	return false
}

// NFTTables renders node n's two nftables tables as the lab stands:
// kube-proxy's and flannel's.
func (l *Lab) NFTTables(n *Node) (kubeProxy, flannel *nft.Table, err error) {
	kp, err := l.nftServices(n)
	if err != nil {
		return nil, nil, err
	}
	return kp, l.flannelTable(n), nil
}

func (l *Lab) flannelTable(n *Node) *nft.Table {
	cfg := l.natConfig(n)
	return nft.RenderFlannel(l.ClusterCIDR, n.PodCIDR, cfg.Flannel != nil && cfg.Flannel.TCPOnly)
}

// nftOp wraps a batch as the plan operation, or nothing when it is empty.
func nftOp(ns string, b *nft.Batch, why string) plan.Plan {
	if b.Empty() {
		return nil
	}
	return plan.Plan{{Verb: plan.NFT, NS: ns, NFT: b, Why: why}}
}

// planNodeNFT plans an nftables-mode node's rules. A new namespace gets both
// tables in one transaction. An existing one loses the iptables chains of
// iptables mode (a mode switch, or a repair after an interrupted one) and
// gets each table that is missing or differs from the rendering (rules per
// chain, elements per set, read back over netlink) written afresh; a node
// that matches gets nothing.
func (c *Cluster) planNodeNFT(n *Node, st *plan.State) (plan.Plan, error) {
	ns := c.NS(n.Name)
	kp, fl, err := c.proxyLab(st).NFTTables(n) // a control-plane lab's agents add the services
	if err != nil {
		return nil, err
	}
	var p plan.Plan
	b := &nft.Batch{}
	if !st.Exists {
		// A new node: its tables may load in stages (nft.Batch.Staged;
		// services become reachable in the last one).
		b.Changes, b.Staged = []*nft.Change{nft.Diff(nil, kp), nft.Diff(nil, fl)}, true
		return nftOp(ns, b, "kube-proxy (nftables mode) and flannel"), nil
	}
	dp, err := nat.PlanDeleteProxy(ns, c.Lab.Name)
	if err != nil {
		return nil, err
	}
	p.Add(dp...)
	for _, t := range []*nft.Table{kp, fl} {
		have, err := nft.ReadSummary(ns, t.Name)
		if err != nil {
			return nil, err
		}
		if have != nil && nft.Drift(t.Summarize(), have, nil) == nil {
			continue
		}
		if have == nil && t == kp {
			b.Staged = true // no table to keep serving meanwhile (a mode switch)
		}
		b.Changes = append(b.Changes, nft.Diff(nil, t))
	}
	p.Add(nftOp(ns, b, "kube-proxy (nftables mode) and flannel")...)
	return p, nil
}

// planNFTCleanup removes the nftables tables of nftables mode from an
// iptables-mode node that has them (a mode switch back, or its repair).
func (c *Cluster) planNFTCleanup(n *Node, st *plan.State) (plan.Plan, error) {
	if !st.Exists {
		return nil, nil
	}
	ns := c.NS(n.Name)
	b := &nft.Batch{}
	for _, t := range []string{nft.TableName, nft.FlannelTable} {
		ok, err := nft.TableExists(ns, t)
		if err != nil {
			return nil, err
		}
		if ok {
			b.DelTables = append(b.DelTables, t)
		}
	}
	return nftOp(ns, b, "nftables mode's tables"), nil
}

// syncNFT is syncRules in nftables mode: kube-proxy's table is the same on
// every node (except with a Local service), so the change is computed once
// (before against after, from the changed services only, as kube-proxy's
// partial sync does), and every node gets that one partial-sync
// transaction. The nodes that took it are rolled back when one fails.
func (c *Cluster) syncNFT(before, after *Lab) error {
	// With a Local service the table is rendered and diffed per node. Only
	// the changed services are rendered and diffed (pkg/nft partial.go),
	// both ways; the whole table only when the kernel's is not before's
	// nftables table (a switch from iptables mode) or before does not
	// render.
	perNode := after.hasLocalPolicy() || before.hasLocalPolicy()
	diff := func(n *Node) (fwd, back *nft.Change, err error) {
		if before.NFTables() {
			cfg := nat.Config{Lab: after.Name, ClusterCIDR: after.ClusterCIDR, ServiceCIDR: after.ServiceCIDR}
			if n != nil {
				cfg.NodeName = n.Name
			}
			bs, as := before.natServices(), after.natServices()
			if back, err = nft.DiffServices(cfg, as, bs); err == nil {
				fwd, err = nft.DiffServices(cfg, bs, as)
				return fwd, back, err
			}
		}
		cur, err := after.nftServices(n)
		if err != nil {
			return nil, nil, err
		}
		return nft.Diff(nil, cur), nil, nil
	}
	fwd, back, err := diff(nil)
	if err != nil {
		return err
	}
	if !perNode && fwd.Empty() {
		return nil
	}
	plans := make([]plan.Plan, 0, len(after.Nodes))
	var nodes []*Node
	backs := map[string]*nft.Change{}
	for _, n := range after.Nodes {
		if before.Node(n.Name) == nil {
			continue // a node being added is planned whole (planNodeNFT)
		}
		nf, nb := fwd, back
		if perNode {
			if nf, nb, err = diff(n); err != nil {
				return err
			}
			if nf.Empty() {
				continue
			}
		}
		nodes = append(nodes, n)
		backs[n.Name] = nb
		plans = append(plans, nftOp(c.NS(n.Name), &nft.Batch{Changes: []*nft.Change{nf}}, "kube-proxy partial sync"))
	}
	c.A.Ctx = c.Ctx
	err = c.A.ApplyAll(plans, len(plans))
	if err == nil {
		return err
	}
	for _, n := range nodes {
		// A node whose transaction did not commit refuses the reverse
		// change as a whole (nothing to delete): no harm.
		if b := backs[n.Name]; b != nil {
			c.A.Apply(nftOp(c.NS(n.Name), &nft.Batch{Changes: []*nft.Change{b}}, "roll back"))
		}
	}
	return err
}

// nftDrift compares an nftables-mode node's two tables, read back over
// netlink, with the lab's rendering; plus any iptables chain of kube-proxy
// or flannel left behind (an interrupted mode switch).
func nftDrift(l *Lab, n *Node) []string {
	ns := netns.Name(l.Name, n.Name)
	kp, fl, err := l.NFTTables(n)
	if err != nil {
		return nil
	}
	var out []string
	for _, t := range []*nft.Table{kp, fl} {
		have, err := nft.ReadSummary(ns, t.Name)
		if err != nil {
			return nil
		}
		if have == nil {
			out = append(out, "table ip "+t.Name+" missing")
			continue
		}
		for _, d := range nft.Drift(t.Summarize(), have, nil) {
			out = append(out, "ip "+t.Name+" "+d)
		}
	}
	if chains, err := nat.ReadOwned(ns, l.Name); err == nil {
		for _, ch := range chains {
			if nat.ProxyChain(ch.Name) {
				out = append(out, fmt.Sprintf("iptables %s/%s left from iptables mode", ch.Table, ch.Name))
			}
		}
	}
	return out
}

// iptablesNFTDrift: an iptables-mode node holding nftables mode's tables.
func iptablesNFTDrift(l *Lab, n *Node) []string {
	var out []string
	for _, t := range []string{nft.TableName, nft.FlannelTable} {
		if ok, err := nft.TableExists(netns.Name(l.Name, n.Name), t); err == nil && ok {
			out = append(out, "nftables table ip "+t+" left from nftables mode")
		}
	}
	return out
}

// SetProxyMode switches every node of the lab to mode, as kube-proxy (and
// flannel) do when their mode changes: the old mode's rules are removed and
// the new mode's written, per node, in one plan that also saves the state
// (so --dry-run prints it). It refuses while a node's rules differ from the
// lab's state (a service change or a switch interrupted and not repaired).
func (c *Cluster) SetProxyMode(mode string) error {
	if err := ValidateProxyMode(mode); err != nil {
		return err
	}
	if mode == "" {
		mode = ProxyIPTables
	}
	l := c.Lab
	if l.Mode() == mode {
		return nil
	}
	if c.agentsProgram() {
		return c.cpSetProxyMode(mode) // kube-proxy's config in etcd (controlplane_proxy.go)
	}
	if err := c.interrupted(); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if !netns.Exists(c.NS(n.Name)) {
			return fmt.Errorf("node %s has no namespace (an interrupted build): run 'klab repair %s' first, then switch the proxy mode", n.Name, l.Name)
		}
		if d := rulesDrift(l, n); len(d) > 0 {
			return fmt.Errorf("node %s's rules differ from the lab's state (%s), so a service change or mode switch was interrupted: run 'klab repair %s' first, then switch the proxy mode", n.Name, strings.Join(d, ", "), l.Name)
		}
	}
	old := l.ProxyMode
	l.ProxyMode = mode
	var p plan.Plan
	for _, n := range l.Nodes {
		st, err := c.read(n.Name)
		if err != nil {
			l.ProxyMode = old
			return err
		}
		rp, err := c.planNodeRules(n, st)
		if err != nil {
			l.ProxyMode = old
			return err
		}
		p.Add(rp...)
	}
	p.Add(c.savePlan()...)
	if err := c.apply(p); err != nil {
		l.ProxyMode = old
		return err
	}
	return c.movePolicies() // the policies move to the new mode's form (policy_nft.go)
}

// proxyModes lists the modes a flag accepts (completion, help).
var proxyModes = []string{ProxyIPTables, ProxyNFTables}

// ProxyModes lists the proxy modes klab builds.
func ProxyModes() []string { return slices.Clone(proxyModes) }
