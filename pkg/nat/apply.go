package nat

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/klab-dev/klab/pkg/netns"
)

// lockWait is how long iptables commands wait for the xtables lock
// (--wait), in seconds.
const lockWait = 10

// ApplyResult says what Apply changed.
type ApplyResult struct {
	// Rewritten and Deleted list chains as "table/CHAIN".
	Rewritten []string
	Deleted   []string
	// JumpsChecked is the number of built-in-chain jumps verified (and
	// inserted when missing) with go-iptables, or written with the chains
	// into an empty namespace; 0 when they were known to be in place
	// already.
	JumpsChecked int
	// Input is the iptables-restore input that was run; empty when nothing
	// changed.
	Input string
}

// Apply programs desired into the node namespace ns with ONE
// `iptables-restore --noflush --wait` transaction, run inside the
// namespace, then makes sure the jumps from the built-in chains exist. (An
// empty namespace gets the chains and the jumps in one iptables-restore.)
//
// prev is the ruleset the caller applied last time (nil if unknown). With
// prev, only chains whose rules differ are rewritten and chains that
// disappeared are deleted, and the jumps are only checked when they
// changed: that keeps a one-service change cheap at 10,000 services
// (kube-proxy keeps its last rendering in memory for the same reason).
// Without prev, Apply reads the namespace's current chains with
// iptables-save: every desired chain is rewritten and every klab chain the
// kernel has that desired lacks is removed, which recovers from crashes and
// from state lost by a restart. The equivalent commands are recorded in log.
func Apply(ns string, desired, prev *Ruleset, log *explain.Log) (ApplyResult, error) {
	var res ApplyResult
	if desired == nil {
		return res, errors.New("nat.Apply: no ruleset given: render one with nat.Render")
	}
	if prev != nil && prev.lab != desired.lab {
		return res, fmt.Errorf("previous ruleset belongs to lab %q, not %q: pass the ruleset last applied to this node or nil", prev.lab, desired.lab)
	}
	var existing []chainKey
	var drop map[Table][]string
	noflush := true
	if prev == nil {
		st, err := readKernel(ns, desired.lab)
		if err != nil {
			return res, err
		}
		if st.empty {
			// iptables-nft-restore --noflush is O(n^2)-ish in the number of
			// rules (1,000 x 10 services: 14.8 s, against 1.8 s without
			// --noflush). When the namespace's filter and nat tables are
			// empty (a fresh node) flushing them changes nothing, so skip
			// --noflush; and write the jumps in the same transaction, as
			// ApplyNew does, instead of one iptables call per jump (each
			// is an nf_tables transaction whose commit re-validates every
			// chain reachable from the table's base chains: 20-80 ms
			// apiece at 10,000 services).
			input := desired.TextWithJumps()
			if err := restore(ns, []byte(input), false, log); err != nil {
				return res, err
			}
			for _, t := range tables {
				for _, c := range desired.chains {
					if c.table == t {
						res.Rewritten = append(res.Rewritten, string(t)+"/"+c.name)
					}
				}
			}
			res.Input, res.JumpsChecked = input, len(desired.jumps)
			return res, nil
		}
		existing = st.chains
		noflush = true
		// Jumps of this lab into chains that are about to be deleted must go
		// first, in the same transaction.
		drop = map[Table][]string{}
		for _, j := range st.jumps {
			if !slices.ContainsFunc(desired.jumps, func(d Jump) bool { return d.Table == j.table && d.Target() == j.target }) {
				drop[j.table] = append(drop[j.table], "-D"+strings.TrimPrefix(j.line, "-A"))
			}
		}
	} else {
		// Jumps that disappeared (e.g. flannel masquerade turned off) are
		// removed before their target chains are deleted.
		var stale []Jump
		for _, j := range prev.jumps {
			if !slices.ContainsFunc(desired.jumps, func(d Jump) bool { return jumpEqual(d, j) }) {
				stale = append(stale, j)
			}
		}
		if len(stale) > 0 {
			if err := deleteJumps(ns, stale, log); err != nil {
				return res, err
			}
		}
	}
	input, rewritten, deleted := desired.restoreInput(prev, existing, drop)
	res.Rewritten, res.Deleted = rewritten, deleted
	if len(input) > 0 {
		if err := restore(ns, input, noflush, log); err != nil {
			return res, err
		}
		res.Input = string(input)
	}
	if prev == nil || !slices.EqualFunc(prev.jumps, desired.jumps, jumpEqual) {
		if err := ensureJumps(ns, desired.jumps, log); err != nil {
			return res, err
		}
		res.JumpsChecked = len(desired.jumps)
	}
	return res, nil
}

func jumpEqual(a, b Jump) bool {
	return a.Table == b.Table && a.Chain == b.Chain && a.Prepend == b.Prepend && slices.Equal(a.Rule, b.Rule)
}

// Delete removes everything lab owns in the namespace's iptables: the jumps
// in the built-in chains that carry the lab's comment, and every klab chain
// whose rules all carry it. One iptables-restore transaction; idempotent,
// and a missing namespace is not an error.
func Delete(ns, lab string, log *explain.Log) error {
	if err := netns.ValidateLab(lab); err != nil {
		return err
	}
	if !netns.Exists(ns) {
		return nil
	}
	st, err := readKernel(ns, lab)
	if err != nil {
		return err
	}
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
			if j.table == t {
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
	return restore(ns, b.Bytes(), true, log)
}

// restore runs iptables-restore [--noflush] --wait with input inside ns.
func restore(ns string, input []byte, noflush bool, log *explain.Log) error {
	args := []string{"--noflush", "--wait"}
	if !noflush {
		args = args[1:]
	}
	log.NSExec(ns, "iptables-restore %s <<'EOF'\n%sEOF", strings.Join(args, " "), input)
	var stderr bytes.Buffer
	err := netns.Do(ns, func() error {
		// Exec'd from the locked thread, the child inherits the namespace.
		cmd := exec.Command("iptables-restore", args...)
		cmd.Stdin = bytes.NewReader(input)
		cmd.Stderr = &stderr
		return cmd.Run()
	})
	if err != nil {
		return fmt.Errorf("iptables-restore in namespace %s: %w: %s", ns, err, strings.TrimSpace(stderr.String()))
	}
	explain.CrashPoint() // the log above counted the point before the change
	return nil
}

// kernelJump is a rule of a built-in chain that carries the lab's comment.
type kernelJump struct {
	table  Table
	line   string // as iptables-save prints it: "-A POSTROUTING ..."
	target string
}

type kernelState struct {
	chains  []chainKey        // klab-named chains present in the kernel
	foreign map[chainKey]bool // ... of which some rule is not the lab's
	jumps   []kernelJump
	empty   bool // filter and nat have no rules and no user chains
}

var builtin = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// readKernel runs iptables-save for the filter and nat tables inside ns and
// collects the klab chains and lab-owned jumps found there.
func readKernel(ns, lab string) (kernelState, error) {
	st := kernelState{foreign: map[chainKey]bool{}}
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
				st.jumps = append(st.jumps, kernelJump{table: t, line: line, target: jumpTarget(tok)})
			}
		} else if ownedChain(chain) && !mine {
			st.foreign[chainKey{t, chain}] = true
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

// ensureJumps checks each jump with `iptables -C` and inserts the missing
// ones, with go-iptables, inside ns. Prepended jumps are inserted at
// position 1 in reverse order, so they end up in the listed order.
func ensureJumps(ns string, jumps []Jump, log *explain.Log) error {
	return netns.Do(ns, func() error {
		ipt, err := iptables.New(iptables.Timeout(lockWait))
		if err != nil {
			return fmt.Errorf("iptables in namespace %s: %w", ns, err)
		}
		for i := len(jumps) - 1; i >= 0; i-- {
			j := jumps[i]
			if !j.Prepend {
				continue
			}
			log.NSExec(ns, "iptables --wait -t %s -C %s || iptables --wait -t %s -I %s 1 %s", j.Table, ruleArgs(j), j.Table, j.Chain, ruleArgs(j)[len(j.Chain)+1:])
			if err := ipt.InsertUnique(string(j.Table), j.Chain, 1, j.Rule...); err != nil {
				return fmt.Errorf("ensure jump %s in namespace %s: %w", j, ns, err)
			}
		}
		for _, j := range jumps {
			if j.Prepend {
				continue
			}
			log.NSExec(ns, "iptables --wait -t %s -C %s || iptables --wait -t %s -A %s", j.Table, ruleArgs(j), j.Table, ruleArgs(j))
			if err := ipt.AppendUnique(string(j.Table), j.Chain, j.Rule...); err != nil {
				return fmt.Errorf("ensure jump %s in namespace %s: %w", j, ns, err)
			}
		}
		return nil
	})
}

// deleteJumps removes jumps (if present) inside ns with go-iptables.
func deleteJumps(ns string, jumps []Jump, log *explain.Log) error {
	return netns.Do(ns, func() error {
		ipt, err := iptables.New(iptables.Timeout(lockWait))
		if err != nil {
			return fmt.Errorf("iptables in namespace %s: %w", ns, err)
		}
		for _, j := range jumps {
			log.NSExec(ns, "iptables --wait -t %s -D %s", j.Table, ruleArgs(j))
			if err := ipt.DeleteIfExists(string(j.Table), j.Chain, j.Rule...); err != nil {
				return fmt.Errorf("delete jump %s in namespace %s: %w", j, ns, err)
			}
		}
		return nil
	})
}

// ruleArgs is "CHAIN args..." of a jump, shell-quoted.
func ruleArgs(j Jump) string {
	return strings.TrimPrefix(strings.ReplaceAll(j.String(), `"`, `'`), "-A ")
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

// ApplyNew programs desired into a namespace klab has just created, whose
// filter and nat tables are known to be empty: ONE iptables-restore without
// --noflush, carrying the chains and the built-in-chain jumps together
// (TextWithJumps). It skips the iptables-save read and the per-jump checks
// that Apply needs when the namespace's contents are unknown, which is what
// keeps a node's bring-up at one exec. Never use it on a namespace that may
// hold other rules: without --noflush the tables are replaced.
func ApplyNew(ns string, desired *Ruleset, log *explain.Log) error {
	if desired == nil {
		return errors.New("nat.ApplyNew: no ruleset given: render one with nat.Render")
	}
	return restore(ns, []byte(desired.TextWithJumps()), false, log)
}
