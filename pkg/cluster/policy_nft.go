package cluster

// NetworkPolicy on a lab in kube-proxy's nftables mode: the same compiled
// plan, rendered by policy.RenderNFT as `table ip klab-policy` and sent as
// one nf_tables transaction per node and change (plan.NFT), so such a node
// holds no iptables rules and no ipsets at all. The plan applied is kept in
// <lab dir>/policy/<node>.nft.json (the iptables form's file is
// <node>.json): the next change is nft.Diff of the two renderings, after a
// check over netlink that the kernel's table still has prev's shape (rules
// per chain, elements per set); a table that drifted, or a node without the
// file, gets its table replaced whole in the same transaction. A mode
// switch moves the policies: the first nftables sync removes the iptables
// form it finds (policy.ReadKernel), the first iptables sync deletes the
// table.

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
)

// policyNFTFile is where the plan applied to an nftables node is kept.
func (c *Cluster) policyNFTFile(node string) string {
	return filepath.Join(c.Dir(), "policy", node+".nft.json")
}

func (c *Cluster) loadPolicyNFTPlan(node string) (*policy.Plan, error) {
	b, err := os.ReadFile(c.policyNFTFile(node))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p policy.Plan
	if json.Unmarshal(b, &p) != nil {
		return nil, nil // a damaged file only costs a full table
	}
	return &p, nil
}

// planNodePoliciesNFT plans an nftables node's change to next, and the
// plan file.
func (c *Cluster) planNodePoliciesNFT(node string, next *policy.Plan) (plan.Plan, error) {
	ns := c.NS(node)
	prev, err := c.loadPolicyNFTPlan(node)
	if err != nil {
		return nil, err
	}
	inKernel := false
	var k *policy.Kernel
	if !c.A.Simulate && netns.Exists(ns) {
		if prev != nil {
			inKernel = policyNFTMatches(ns, prev)
		} else if k, err = policy.ReadKernel(ns, c.Lab.Name); err != nil {
			return nil, err
		}
	} else if c.A.Simulate {
		inKernel = prev != nil
	}
	p, err := policy.PlanApplyNFT(ns, prev, next, inKernel, k)
	if err != nil {
		return nil, err
	}
	if prev != nil && inKernel && len(p) == 0 {
		return nil, nil
	}
	data, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(c.policyFile(node)); err == nil {
		p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.policyFile(node)}})
	}
	p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: c.policyNFTFile(node), Data: data, Mode: 0o600, Atomic: true}})
	return p, nil
}

// policyNFTMatches reports whether the kernel's policy table in ns has the
// shape of prev's rendering (rules per chain, elements per set, over
// netlink).
func policyNFTMatches(ns string, prev *policy.Plan) bool {
	t, err := policy.RenderNFT(prev)
	if err != nil {
		return false
	}
	have, err := nft.ReadSummary(ns, policy.NFTTable)
	if err != nil || have == nil {
		return false
	}
	return len(nft.Drift(t.Summarize(), have, nil)) == 0
}

// PolicyDrift lists how node's policy table differs from the plan last
// applied there (nftables mode; nil in iptables mode, or when it matches).
func (c *Cluster) PolicyDrift(node string) []string {
	if !c.Lab.NFTables() {
		return nil
	}
	prev, err := c.loadPolicyNFTPlan(node)
	if err != nil || prev == nil {
		return nil
	}
	t, err := policy.RenderNFT(prev)
	if err != nil {
		return []string{err.Error()}
	}
	have, err := nft.ReadSummary(c.NS(node), policy.NFTTable)
	if err != nil {
		return []string{err.Error()}
	}
	if have == nil {
		return []string{"table ip " + policy.NFTTable + " missing"}
	}
	return nft.Drift(t.Summarize(), have, nil)
}

// planNodePoliciesIPTablesPre is what an iptables-mode sync does first on a
// node that was in nftables mode: delete the policy table and its file.
func (c *Cluster) planNodePoliciesIPTablesPre(node string) plan.Plan {
	if _, err := os.Stat(c.policyNFTFile(node)); err != nil {
		return nil
	}
	p := policy.PlanRemoveNFT(c.NS(node))
	p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.policyNFTFile(node)}})
	return p
}

// clearPoliciesNFT removes the policy table and its file from node.
func (c *Cluster) clearPoliciesNFT(node string) plan.Plan {
	var p plan.Plan
	if _, err := os.Stat(c.policyNFTFile(node)); err != nil && !c.Lab.NFTables() {
		return nil
	}
	if netns.Exists(c.NS(node)) || c.A.Simulate {
		p = policy.PlanRemoveNFT(c.NS(node))
	}
	p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.policyNFTFile(node)}})
	return p
}

// dropCounters reads the drop rules' counters of node namespace ns in the
// lab's mode: iptables-save -c, or the policy table over netlink.
func (c *Cluster) dropCounters(ns string) (map[string]uint64, error) {
	if c.Lab.NFTables() {
		return policy.DropCountersNFT(ns)
	}
	return policy.DropCounters(ns)
}

// movePolicies re-applies, after a proxy mode switch, the plan each node
// last applied in the other mode's form, in the new mode's form: the same
// compiled policies, the old form's objects removed in the same plan.
func (c *Cluster) movePolicies() error {
	var plans []plan.Plan
	for _, n := range c.Lab.Nodes {
		var prev *policy.Plan
		var err error
		if c.Lab.NFTables() {
			prev, err = c.loadPolicyPlan(n.Name)
		} else {
			prev, err = c.loadPolicyNFTPlan(n.Name)
		}
		if err != nil {
			return err
		}
		if prev == nil {
			continue
		}
		p, err := c.planNodePolicies(n.Name, prev)
		if err != nil {
			return err
		}
		plans = append(plans, p)
	}
	if len(plans) == 0 {
		return nil
	}
	c.states = nil
	c.A.Ctx = c.Ctx
	return c.A.ApplyAll(plans, len(plans))
}

// policyDriftNFT is policyDrift on an nftables node: its table ip
// klab-policy against the rendering of next (rules per chain, elements per
// set, over netlink), and any iptables form left from iptables mode.
func policyDriftNFT(l *Lab, n *Node, next *policy.Plan) []string {
	ns := netns.Name(l.Name, n.Name)
	t, err := policy.RenderNFT(next)
	if err != nil {
		return []string{err.Error()}
	}
	have, err := nft.ReadSummary(ns, policy.NFTTable)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	if have == nil {
		out = append(out, "table ip "+policy.NFTTable+" missing")
	} else {
		for _, d := range nft.Drift(t.Summarize(), have, nil) {
			out = append(out, "ip "+policy.NFTTable+" "+d)
		}
	}
	if k, err := policy.ReadKernel(ns, l.Name); err == nil && (k.Jump || len(k.Chains) > 0 || len(k.Sets) > 0) {
		out = append(out, "iptables policy chains or ipsets left from iptables mode")
	}
	return out
}

// repairPolicyNFT plans rebuilding an nftables node's policies when they
// drifted (or its namespace is being rebuilt): the whole table replaced in
// one transaction, any iptables form removed, the plan file.
func (c *Cluster) repairPolicyNFT(n *Node, next *policy.Plan, rep *RepairReport) (plan.Plan, error) {
	ns := c.NS(n.Name)
	var k *policy.Kernel
	if netns.Exists(ns) {
		d := policyDriftNFT(c.Lab, n, next)
		if len(d) == 0 {
			return nil, nil
		}
		for _, s := range d {
			rep.Policies = append(rep.Policies, "node "+n.Name+": "+s)
		}
		var err error
		if k, err = policy.ReadKernel(ns, c.Lab.Name); err != nil {
			return nil, err
		}
	}
	p, err := policy.PlanApplyNFT(ns, nil, next, false, k)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: c.policyNFTFile(n.Name), Data: data, Mode: 0o600, Atomic: true}})
	return p, nil
}
