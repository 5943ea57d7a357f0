package cluster

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
)

// Policy drift: `klab list` and `klab repair` compare each node's policy
// chains and sets, rule by rule and member by member (policy.ReadContent),
// with what the lab's NetworkPolicies compile to for that node. A chain
// flushed or a set member deleted by hand is named, and repair rebuilds
// the node's policies in PlanApply's atomic order.

// policyDrift lists node n's differences from the lab's policies ("" node
// prefix not included), nil when it enforces them exactly or the lab has
// none.
func policyDrift(l *Lab, n *Node) []string {
	if len(l.Policies) == 0 {
		return nil
	}
	next, err := policy.Compile(l.PolicyState(), policy.CompileOptions{Lab: l.Name, Node: n.Name})
	if err != nil {
		return []string{fmt.Sprintf("the policies do not compile: %v", err)}
	}
	if l.NFTables() {
		return policyDriftNFT(l, n, next) // policy_nft.go
	}
	c, err := policy.ReadContent(netns.Name(l.Name, n.Name), l.Name)
	if err != nil {
		return []string{err.Error()}
	}
	return c.Drift(next)
}

// policyProblems is `klab list`'s sentence per drifted node.
func policyProblems(l *Lab, have map[string]bool) []string {
	var out []string
	for _, n := range l.Nodes {
		if !have[n.Name] {
			continue
		}
		if d := policyDrift(l, n); len(d) > 0 {
			out = append(out, fmt.Sprintf("node %s's NetworkPolicy chains and sets differ from the lab's policies (%s): 'klab repair %s' rebuilds them", n.Name, strings.Join(d, "; "), l.Name))
		}
	}
	return out
}

// repairPolicies plans rebuilding the policies of every node that drifted
// (or whose namespace the repair rebuilds), with its plan file, and
// records what it found in rep.
func (c *Cluster) repairPolicies(rep *RepairReport) (plan.Plan, error) {
	l := c.Lab
	if len(l.Policies) == 0 {
		return nil, nil
	}
	ev, err := policy.NewEvaluator(l.PolicyState())
	if err != nil {
		return nil, err
	}
	var p plan.Plan
	for _, n := range l.Nodes {
		ns := c.NS(n.Name)
		next := ev.Compile(policy.CompileOptions{Lab: l.Name, Node: n.Name})
		if l.NFTables() {
			np, err := c.repairPolicyNFT(n, next, rep) // policy_nft.go
			if err != nil {
				return nil, err
			}
			p.Add(np...)
			continue
		}
		var np plan.Plan
		if !netns.Exists(ns) {
			np = policy.PlanApply(ns, nil, next, nil)
		} else {
			k, err := policy.ReadContent(ns, l.Name)
			if err != nil {
				return nil, err
			}
			d := k.Drift(next)
			for _, s := range d {
				rep.Policies = append(rep.Policies, "node "+n.Name+": "+s)
			}
			np = policy.PlanRepair(ns, next, k)
		}
		if np == nil {
			continue
		}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		np.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: c.policyFile(n.Name), Data: data, Mode: 0o600, Atomic: true}})
		p.Add(np...)
	}
	return p, nil
}
