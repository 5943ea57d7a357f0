package nat

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// ApplyResult says what a rules plan changes.
type ApplyResult struct {
	// Rewritten and Deleted list chains as "table/CHAIN".
	Rewritten []string
	Deleted   []string
	// JumpsChecked is the number of built-in-chain jumps verified (and
	// inserted when missing) one by one with go-iptables, or written with
	// the chains; 0 when they were known to be in place already.
	JumpsChecked int
	// Input is the iptables-restore input; empty when nothing changes.
	Input string
}

// Changed reports whether the plan changes anything.
func (r ApplyResult) Changed() bool { return r.Input != "" || r.JumpsChecked > 0 }

// Plan returns the operations that program desired into the node
// namespace ns: ONE `iptables-restore --noflush --wait` transaction, run
// inside the namespace, plus the jumps from the built-in chains. (An empty
// namespace gets the chains and the jumps in one iptables-restore.)
//
// prev is the ruleset applied last time (nil if unknown). With prev, only
// chains whose rules differ are rewritten and chains that disappeared are
// deleted, and the jumps are only checked when they changed: that keeps a
// one-service change cheap at 10,000 services (kube-proxy keeps its last
// rendering in memory for the same reason). Without prev, Plan reads the
// namespace's current rules with iptables-save and compares them with
// desired rule by rule (Canon): only chains that differ are rewritten,
// klab chains desired lacks are removed, and missing jumps are inserted in
// the same transaction; a namespace that already matches gets no
// operation. That recovers from crashes, drift and state lost by a
// restart.
func Plan(ns string, desired, prev *Ruleset) (plan.Plan, ApplyResult, error) {
	var res ApplyResult
	if desired == nil {
		return nil, res, errors.New("nat.Plan: no ruleset given: render one with nat.Render")
	}
	if prev != nil && prev.lab != desired.lab {
		return nil, res, fmt.Errorf("previous ruleset belongs to lab %q, not %q: pass the ruleset last applied to this node or nil", prev.lab, desired.lab)
	}
	if prev == nil {
		st, err := readKernel(ns, desired.lab)
		if err != nil {
			return nil, res, err
		}
		if st.empty {
			// iptables-nft-restore --noflush is O(n^2)-ish in the number of
			// rules (1,000 x 10 services: 14.8 s, against 1.8 s without
			// --noflush). When the namespace's filter and nat tables are
			// empty (a fresh node) flushing them changes nothing, so skip
			// --noflush; and write the jumps in the same transaction
			// instead of one iptables call per jump (each is an nf_tables
			// transaction whose commit re-validates every chain reachable
			// from the table's base chains: 20-80 ms apiece at 10,000
			// services).
			return PlanNew(ns, desired), newResult(desired), nil
		}
		input, rewritten, deleted, jumps := desired.repairInput(st)
		res.Rewritten, res.Deleted, res.JumpsChecked = rewritten, deleted, jumps
		if len(input) == 0 {
			return nil, res, nil
		}
		res.Input = string(input)
		return plan.Plan{{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: res.Input, NoFlush: true}}}, res, nil
	}
	var p plan.Plan
	// Jumps that disappeared (e.g. flannel masquerade turned off) are
	// removed before their target chains are deleted.
	for _, j := range prev.jumps {
		if !slices.ContainsFunc(desired.jumps, func(d Jump) bool { return jumpEqual(d, j) }) {
			p.Add(jumpOp(ns, j, "-D"))
		}
	}
	input, rewritten, deleted := desired.restoreInput(prev, nil, nil)
	res.Rewritten, res.Deleted = rewritten, deleted
	if len(input) > 0 {
		res.Input = string(input)
		p.Add(plan.Op{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: res.Input, NoFlush: true}})
	}
	if !slices.EqualFunc(prev.jumps, desired.jumps, jumpEqual) {
		// Prepended jumps are inserted at position 1 in reverse order, so
		// they end up in the listed order.
		for i := len(desired.jumps) - 1; i >= 0; i-- {
			if desired.jumps[i].Prepend {
				p.Add(jumpOp(ns, desired.jumps[i], "-I"))
			}
		}
		for _, j := range desired.jumps {
			if !j.Prepend {
				p.Add(jumpOp(ns, j, "-A"))
			}
		}
		res.JumpsChecked = len(desired.jumps)
	}
	return p, res, nil
}

func newResult(desired *Ruleset) ApplyResult {
	var res ApplyResult
	for _, t := range tables {
		for _, c := range desired.chains {
			if c.table == t {
				res.Rewritten = append(res.Rewritten, string(t)+"/"+c.name)
			}
		}
	}
	res.Input, res.JumpsChecked = desired.TextWithJumps(), len(desired.jumps)
	return res
}

func jumpOp(ns string, j Jump, action string) plan.Op {
	return plan.Op{Verb: plan.IPTables, NS: ns, Rules: &plan.Rules{Table: string(j.Table), Chain: j.Chain, Action: action, Rule: slices.Clone(j.Rule)}}
}

// Apply plans and applies desired (see Plan) with a.
func Apply(a *plan.Applier, ns string, desired, prev *Ruleset) (ApplyResult, error) {
	p, res, err := Plan(ns, desired, prev)
	if err != nil {
		return res, err
	}
	return res, a.Apply(p)
}

func jumpEqual(a, b Jump) bool {
	return a.Table == b.Table && a.Chain == b.Chain && a.Prepend == b.Prepend && slices.Equal(a.Rule, b.Rule)
}

// PlanDelete returns the operation that removes everything lab owns in the
// namespace's iptables: the jumps in the built-in chains that carry the
// lab's comment, and every klab chain whose rules all carry it. One
// iptables-restore transaction; nothing when there is nothing, or no
// namespace.
func PlanDelete(ns, lab string) (plan.Plan, error) {
	if err := netns.ValidateLab(lab); err != nil {
		return nil, err
	}
	if !netns.Exists(ns) {
		return nil, nil
	}
	st, err := readKernel(ns, lab)
	if err != nil {
		return nil, err
	}
	return planDrop(ns, st, func(kernelJump) bool { return true }, ""), nil
}

// planDrop is the one iptables-restore transaction that flushes and
// deletes the lab's chains in st and deletes the built-in-chain jumps
// for which jump is true (nil when there is nothing to remove).
func planDrop(ns string, st kernelState, jump func(kernelJump) bool, why string) plan.Plan {
	var b bytes.Buffer
	for _, t := range tables {
		var chains []string
		for _, c := range st.chains {
			if c.table == t && !st.foreign[c] {
				chains = append(chains, c.name)
			}
		}
		var jumps []string
		for _, j := range st.jumps {
			if j.table == t && jump(j) {
				jumps = append(jumps, "-D"+strings.TrimPrefix(j.line, "-A"))
			}
		}
		if len(chains) == 0 && len(jumps) == 0 {
			continue
		}
		b.WriteString("*" + string(t) + "\n")
		for _, c := range chains {
			b.WriteString(":" + c + " - [0:0]\n") // flush
		}
		for _, j := range jumps {
			b.WriteString(j + "\n")
		}
		for _, c := range chains {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return plan.Plan{{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: b.String(), NoFlush: true}, Why: why}}
}

// kernelJump is a rule of a built-in chain that carries the lab's comment.
type kernelJump struct {
	table  Table
	line   string // as iptables-save prints it: "-A POSTROUTING ..."
	target string
	chain  string
	canon  string // Canon of the rule
}

type kernelState struct {
	chains  []chainKey            // klab-named chains present in the kernel
	foreign map[chainKey]bool     // ... of which some rule is not the lab's
	rules   map[chainKey][]string // ... their rules, Canon
	jumps   []kernelJump
	empty   bool // filter and nat have no rules and no user chains
}

var builtin = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// readKernel runs iptables-save for the filter and nat tables inside ns and
// collects the klab chains and lab-owned jumps found there.
func readKernel(ns, lab string) (kernelState, error) {
	st := kernelState{foreign: map[chainKey]bool{}, rules: map[chainKey][]string{}}
	out, err := save(ns)
	if err != nil {
		return st, err
	}
	st.empty = true
	scanSave(out, func(t Table, name string, user bool) {
		if user {
			st.empty = false
		}
		if ownedChain(name) {
			st.chains = append(st.chains, chainKey{t, name})
		}
	}, func(t Table, line string, tok []string) {
		st.empty = false
		if len(tok) < 2 {
			return
		}
		mine := hasLabComment(tok, lab)
		chain := tok[1]
		if builtin[chain] {
			if mine {
				st.jumps = append(st.jumps, kernelJump{table: t, line: line, target: jumpTarget(tok), chain: chain, canon: Canon(tok[2:])})
			}
		} else if ownedChain(chain) {
			k := chainKey{t, chain}
			st.rules[k] = append(st.rules[k], Canon(tok[2:]))
			if !mine {
				st.foreign[k] = true
			}
		}
	})
	return st, nil
}

// save runs iptables-save for the filter and nat tables inside ns.
func save(ns string) (string, error) {
	var out []byte
	err := netns.Do(ns, func() error {
		var stderr bytes.Buffer
		for _, t := range tables {
			cmd := exec.Command("iptables-save", "-t", string(t))
			cmd.Stderr = &stderr
			b, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
			}
			out = append(out, b...)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("iptables-save in namespace %s: %w", ns, err)
	}
	return string(out), nil
}

func hasLabComment(tok []string, lab string) bool {
	for i := 0; i+1 < len(tok); i++ {
		if tok[i] == "--comment" {
			c := tok[i+1]
			return c == "klab:"+lab || strings.HasPrefix(c, "klab:"+lab+" ")
		}
	}
	return false
}

func jumpTarget(tok []string) string {
	for i := 0; i+1 < len(tok); i++ {
		if tok[i] == "-j" {
			return tok[i+1]
		}
	}
	return ""
}

// Backend reports which iptables backend the installed iptables uses:
// "nf_tables" (iptables-nft) or "legacy", from `iptables --version`
// ("iptables v1.8.9 (nf_tables)"). Old versions print no backend; that is
// reported as "legacy". klab doctor shows it: rules written by one backend
// are invisible to the other.
func Backend() (string, error) {
	out, err := exec.Command("iptables", "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables --version: %w: install iptables (apt-get install iptables)", err)
	}
	return parseBackend(string(out))
}

func parseBackend(version string) (string, error) {
	switch {
	case strings.Contains(version, "(nf_tables)"):
		return "nf_tables", nil
	case strings.Contains(version, "(legacy)"):
		return "legacy", nil
	case strings.HasPrefix(version, "iptables v"):
		return "legacy", nil
	}
	return "", fmt.Errorf("cannot tell the iptables backend from %q", strings.TrimSpace(version))
}

// PlanNew returns the operation that programs desired into a namespace
// klab creates, whose filter and nat tables are known to be empty: ONE
// iptables-restore without --noflush, carrying the chains and the
// built-in-chain jumps together (TextWithJumps). It skips the iptables-save
// read and the per-jump checks that Plan needs when the namespace's
// contents are unknown, which is what keeps a node's bring-up at one exec.
// Never use it on a namespace that may hold other rules: without --noflush
// the tables are replaced.
func PlanNew(ns string, desired *Ruleset) plan.Plan {
	return plan.Plan{{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: desired.TextWithJumps()}}}
}
