package nat

import "github.com/klab-dev/klab/pkg/plan"

// testApply is Apply with a fresh Applier when a is nil.
func testApply(a *plan.Applier, ns string, desired, prev *Ruleset) (ApplyResult, error) {
	if a == nil {
		a = &plan.Applier{}
	}
	return Apply(a, ns, desired, prev)
}

// testDelete plans and applies PlanDelete.
func testDelete(a *plan.Applier, ns, lab string) error {
	if a == nil {
		a = &plan.Applier{}
	}
	p, err := PlanDelete(ns, lab)
	if err != nil {
		return err
	}
	return a.Apply(p)
}

// restore runs one iptables-restore through the applier (the baseline of
// the benchmarks).
func restore(ns string, input []byte, noflush bool, _ any) error {
	return (&plan.Applier{}).Apply(plan.Plan{{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: string(input), NoFlush: noflush}}})
}
