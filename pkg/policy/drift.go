package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// Content is what a node's namespace holds of the policies, rule by rule
// and member by member (ReadContent): the drift check and `klab repair`
// compare it with the plan the node should enforce, so a chain or a rule
// deleted by hand, or a set member added or removed with ipset, is found
// even when the plan file says all was applied.
type Content struct {
	Kernel
	// Rules holds each KLAB-NP* chain's rules in nat.Canon form, in order.
	Rules map[string][]string
	// Members holds each KLAB-* set's members as ipset save prints them
	// ("10.244.1.2", "10.0.0.0/24 nomatch"), sorted.
	Members map[string][]string
}

// ReadContent reads the policy objects of namespace ns with their
// contents: iptables-save of the filter table, ipset save, the sysctl.
func ReadContent(ns, lab string) (*Content, error) {
	k, err := ReadKernel(ns, lab)
	if err != nil {
		return nil, err
	}
	c := &Content{Kernel: *k, Rules: map[string][]string{}, Members: map[string][]string{}}
	for _, ch := range k.Chains {
		c.Rules[ch] = []string{}
	}
	for _, s := range k.Sets {
		c.Members[s] = []string{}
	}
	var save, sets bytes.Buffer
	err = netns.Do(ns, func() error {
		for _, run := range []struct {
			out  *bytes.Buffer
			argv []string
		}{{&save, []string{"iptables-save", "-t", "filter"}}, {&sets, []string{"ipset", "save"}}} {
			var stderr bytes.Buffer
			cmd := exec.Command(run.argv[0], run.argv[1:]...)
			cmd.Stdout, cmd.Stderr = run.out, &stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s: %w: %s", run.argv[0], err, strings.TrimSpace(stderr.String()))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read policies in %s: %w", ns, err)
	}
	sc := bufio.NewScanner(&save)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		chain, rule, ok := ruleOf(sc.Text())
		if !ok {
			continue
		}
		if _, mine := c.Rules[chain]; mine {
			c.Rules[chain] = append(c.Rules[chain], rule)
		}
	}
	for _, l := range strings.Split(sets.String(), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == "add" {
			if _, mine := c.Members[f[1]]; mine {
				c.Members[f[1]] = append(c.Members[f[1]], member(strings.Join(f[2:], " ")))
			}
		}
	}
	for s := range c.Members {
		slices.Sort(c.Members[s])
	}
	return c, nil
}

// member is a set member as ipset save prints it: a hash:net /32 is
// printed as the bare address.
func member(m string) string {
	addr, rest, _ := strings.Cut(m, " ")
	addr = strings.TrimSuffix(addr, "/32")
	if rest != "" {
		return addr + " " + rest
	}
	return addr
}

// ruleOf splits an "-A CHAIN ..." line into the chain and the rule in
// nat.Canon form.
func ruleOf(line string) (chain, rule string, ok bool) {
	if !strings.HasPrefix(line, "-A ") {
		return "", "", false
	}
	tok := splitQuoted(line)
	if len(tok) < 2 {
		return "", "", false
	}
	return tok[1], nat.Canon(tok[2:]), true
}

// splitQuoted splits a rule line at spaces, keeping "..." together
// (iptables-save quotes comments and prefixes that contain spaces).
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	in, started := false, false
	for _, r := range s {
		switch {
		case r == '"':
			in, started = !in, true
		case r == ' ' && !in:
			if started {
				out = append(out, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteRune(r)
			started = true
		}
	}
	if started {
		out = append(out, cur.String())
	}
	return out
}

// Drift lists, one sentence each, how the content differs from what next
// (the plan the node should enforce) renders: a missing FORWARD jump or
// bridge sysctl, a missing, extra or different chain, a missing or extra
// set or set member. An empty list means the node enforces next exactly.
func (c *Content) Drift(next *Plan) []string {
	var out []string
	if len(next.Pods) > 0 || len(next.Sets) > 0 {
		if !c.Jump {
			out = append(out, fmt.Sprintf("the FORWARD jump to %s is missing", DispatchChain))
		}
		if c.BridgeNF != "1" {
			out = append(out, fmt.Sprintf("%s is %q, not 1: same-node traffic bypasses the policies", BridgeNFKey, c.BridgeNF))
		}
	}
	want := map[string]bool{}
	for _, ct := range chainsOf(next) {
		want[ct.name] = true
		got, ok := c.Rules[ct.name]
		if !ok {
			out = append(out, fmt.Sprintf("chain %s is missing", ct.name))
			continue
		}
		var w []string
		for _, l := range ct.lines {
			_, r, _ := ruleOf(l)
			w = append(w, r)
		}
		if !slices.Equal(got, w) {
			out = append(out, fmt.Sprintf("chain %s has %d rule(s) that differ from the %d the policies give", ct.name, len(got), len(w)))
		}
	}
	for _, ch := range c.Chains {
		if !want[ch] {
			out = append(out, fmt.Sprintf("chain %s is not one of the policies'", ch))
		}
	}
	wantSet := map[string]bool{}
	for _, s := range next.Sets {
		wantSet[s.Name] = true
		got, ok := c.Members[s.Name]
		if !ok {
			out = append(out, fmt.Sprintf("set %s (%s) is missing", s.Name, s.What))
			continue
		}
		w := make([]string, 0, len(s.Entries))
		for _, e := range s.Entries {
			w = append(w, member(entryText(e)))
		}
		slices.Sort(w)
		for _, m := range w {
			if _, found := slices.BinarySearch(got, m); !found {
				out = append(out, fmt.Sprintf("set %s (%s) lacks %s", s.Name, s.What, m))
			}
		}
		for _, m := range got {
			if _, found := slices.BinarySearch(w, m); !found {
				out = append(out, fmt.Sprintf("set %s (%s) has %s, which the policies do not give", s.Name, s.What, m))
			}
		}
	}
	for s := range c.Members {
		if !wantSet[s] && !strings.HasSuffix(s, "-T") {
			out = append(out, fmt.Sprintf("set %s is not one of the policies'", s))
		}
	}
	slices.Sort(out)
	return out
}

// PlanRepair returns the plan that makes namespace ns enforce next again
// when the content drifted from it (nil when it did not): every set built
// anew and swapped in, every chain rewritten, stale chains and sets
// removed, the jump and the sysctl ensured — PlanApply without a previous
// plan, in its atomic order.
func PlanRepair(ns string, next *Plan, c *Content) plan.Plan {
	if len(c.Drift(next)) == 0 {
		return nil
	}
	return PlanApply(ns, nil, next, &c.Kernel)
}
