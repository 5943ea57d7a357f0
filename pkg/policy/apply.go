package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// BridgeNFKey is the sysctl that sends bridged IPv4 frames through
// iptables (br_netfilter). It is per network namespace on current kernels:
// without it, traffic between two pods of one node crosses cni0 without
// ever reaching FORWARD, and same-node policies would not be enforced.
const BridgeNFKey = "net/bridge/bridge-nf-call-iptables"

// JumpComment is the comment of the FORWARD rule that sends forwarded
// traffic into DispatchChain. It is not "klab:<lab> ..." on purpose: that
// form belongs to pkg/nat, which removes lab-commented jumps it does not
// render.
func JumpComment(lab string) string { return "klab " + lab + " network policies" }

// JumpRule is that rule's match and target, as go-iptables takes them.
func JumpRule(lab string) []string {
	return []string{"-m", "comment", "--comment", JumpComment(lab), "-j", DispatchChain}
}

// Kernel is what a node's namespace holds of the policies, read back with
// ReadKernel: the FORWARD jump, the policy chains and sets, the bridge
// sysctl. Planning against it (instead of a previous Plan) is the resync
// path: after a crash, a reboot of the state, or `klab repair`.
type Kernel struct {
	Jump     bool
	Chains   []string // the dispatch chains and pod chains (KLAB-NP*) present
	Sets     []string // KLAB-* sets present (a node namespace is the lab's own)
	BridgeNF string   // BridgeNFKey's value ("" when the file is missing)
}

// ReadKernel reads the policy objects of namespace ns: one iptables-save
// of the filter table, one `ipset list -n`, one sysctl.
func ReadKernel(ns, lab string) (*Kernel, error) {
	k := &Kernel{}
	var save, sets bytes.Buffer
	err := netns.Do(ns, func() error {
		var stderr bytes.Buffer
		cmd := exec.Command("iptables-save", "-t", "filter")
		cmd.Stdout, cmd.Stderr = &save, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("iptables-save: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		stderr.Reset()
		cmd = exec.Command("ipset", "list", "-n")
		cmd.Stdout, cmd.Stderr = &sets, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("ipset list: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read policies in %s: %w", ns, err)
	}
	jump := fmt.Sprintf("--comment %q -j %s", JumpComment(lab), DispatchChain)
	sc := bufio.NewScanner(&save)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, ":"+DispatchChain) || strings.HasPrefix(l, ":KLAB-NPI-") || strings.HasPrefix(l, ":KLAB-NPE-"):
			k.Chains = append(k.Chains, strings.Fields(l[1:])[0])
		case strings.HasPrefix(l, "-A FORWARD ") && strings.Contains(l, jump):
			k.Jump = true
		}
	}
	for _, s := range strings.Fields(sets.String()) {
		if strings.HasPrefix(s, "KLAB-") {
			k.Sets = append(k.Sets, s)
		}
	}
	sort.Strings(k.Sets)
	if v, err := netns.ReadSysctl(ns, BridgeNFKey); err == nil {
		k.BridgeNF = v
	}
	return k, nil
}

// PlanApply returns the plan that takes node namespace ns from prev — the
// plan applied there last, nil when not known — to next, in the order
// that leaves no window (see doc.go):
//
//  1. sysctl BridgeNFKey=1, so bridged (same-node) traffic crosses FORWARD;
//  2. one `ipset restore` of RenderIPSets: new sets built and swapped in,
//     then all removals, then all additions;
//  3. one `iptables-restore --noflush` rewriting only the chains whose
//     rules changed (every chain when prev is nil), deleting stale ones,
//     and, when k says the jump is missing, inserting FORWARD ->
//     DispatchChain at position 1 in the same transaction;
//  4. when neither prev nor k is known, the jump as a check-or-insert
//     (go-iptables), at position 1, before kube-proxy's and flannel's
//     accepts;
//  5. one `ipset restore` destroying the sets no rule names any more.
//
// k is the kernel read back (ReadKernel), or nil. With prev and k both
// nil every step is planned; with prev equal to next nothing is.
func PlanApply(ns string, prev, next *Plan, k *Kernel) plan.Plan {
	var p plan.Plan
	if k != nil && k.BridgeNF != "1" || k == nil && prev == nil {
		p.Add(plan.Op{Verb: plan.Sysctl, NS: ns, Key: BridgeNFKey, Value: "1", Why: "bridged pod-to-pod traffic through FORWARD"})
	}
	// Without prev every set is built anew and swapped in, also those the
	// kernel already has (their content is not read back).
	if s := RenderIPSets(prev, next); s != "" {
		p.Add(plan.Op{Verb: plan.IPSet, NS: ns, Sets: s, Why: "policy peers"})
	}
	var stale, extra []string
	if k != nil {
		stale = k.Chains
		if !k.Jump {
			extra = append(extra, fmt.Sprintf("-I FORWARD 1 -m comment --comment %q -j %s", JumpComment(next.Lab), DispatchChain))
		}
	}
	if r := renderIPTables(prev, next, true, stale, extra); r != "" {
		p.Add(plan.Op{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: r, NoFlush: true}})
	}
	if prev == nil && k == nil {
		p.Add(plan.Op{Verb: plan.IPTables, NS: ns, Rules: &plan.Rules{Table: "filter", Chain: "FORWARD", Action: "-I", Rule: JumpRule(next.Lab)}})
	}
	var destroy strings.Builder
	destroy.WriteString(RenderIPSetDestroy(prev, next))
	if k != nil {
		for _, s := range k.Sets {
			if next.Set(s) == nil && (prev == nil || prev.Set(s) == nil) {
				fmt.Fprintf(&destroy, "destroy %s\n", s)
			}
		}
	}
	if destroy.Len() > 0 {
		p.Add(plan.Op{Verb: plan.IPSet, NS: ns, Sets: destroy.String(), Why: "sets no rule names"})
	}
	return p
}

// PlanRemove returns the plan that removes every policy object from node
// namespace ns: the FORWARD jump, then (one transaction) the dispatch and
// pod chains, then the sets. What is removed is prev's and, when k is
// given, what the kernel holds. The bridge sysctl stays (it changes nothing
// without rules). A node that is deleted needs none of this: its sets and
// chains go with its namespace.
func PlanRemove(ns, lab string, prev *Plan, k *Kernel) plan.Plan {
	chains := map[string]bool{}
	sets := map[string]bool{}
	if prev != nil {
		for _, c := range chainsOf(prev) {
			chains[c.name] = true
		}
		for _, s := range prev.Sets {
			sets[s.Name] = true
		}
	}
	if k != nil {
		for _, c := range k.Chains {
			chains[c] = true
		}
		for _, s := range k.Sets {
			sets[s] = true
		}
	}
	var p plan.Plan
	if k == nil || k.Jump {
		p.Add(plan.Op{Verb: plan.IPTables, NS: ns, Rules: &plan.Rules{Table: "filter", Chain: "FORWARD", Action: "-D", Rule: JumpRule(lab)}})
	}
	if len(chains) > 0 {
		names := sortedKeys(chains)
		var b strings.Builder
		b.WriteString("*filter\n")
		for _, c := range names {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range names {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
		p.Add(plan.Op{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: b.String(), NoFlush: true}})
	}
	if len(sets) > 0 {
		var b strings.Builder
		for _, s := range sortedKeys(sets) {
			fmt.Fprintf(&b, "destroy %s\n", s)
		}
		p.Add(plan.Op{Verb: plan.IPSet, NS: ns, Sets: b.String()})
	}
	return p
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DropCounters reads the packet counters of the drop rules of namespace ns
// (iptables-save -c): DropComment -> packets dropped by that rule so far.
func DropCounters(ns string) (map[string]uint64, error) {
	var out bytes.Buffer
	err := netns.Do(ns, func() error {
		var stderr bytes.Buffer
		cmd := exec.Command("iptables-save", "-c", "-t", "filter")
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("iptables-save -c: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read counters in %s: %w", ns, err)
	}
	m := map[string]uint64{}
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// [12:720] -A KLAB-NPI-... -m comment --comment "klab lab drop ingress x/a" -j DROP
		l := sc.Text()
		if !strings.HasPrefix(l, "[") || !strings.HasSuffix(l, " -j DROP") {
			continue
		}
		i := strings.Index(l, `--comment "`+DropCommentPrefix)
		if i < 0 {
			continue
		}
		rest := l[i+len(`--comment "`):]
		end := strings.IndexByte(rest, '"')
		if end < 0 {
			continue
		}
		pk, _, ok := strings.Cut(strings.TrimPrefix(l[:strings.IndexByte(l, ']')], "["), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(pk, 10, 64)
		if err != nil {
			continue
		}
		m[rest[:end]] += n
	}
	return m, sc.Err()
}
