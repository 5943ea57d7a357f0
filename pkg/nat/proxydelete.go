package nat

import (
	"bytes"
	"os/exec"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// ProxyChain reports whether an iptables chain is one of kube-proxy's or
// flannel's that Render writes (KUBE-*, FLANNEL-*), as opposed to other
// klab chains such as NetworkPolicy's.
func ProxyChain(name string) bool { return ownedChain(name) }

// PlanDeleteProxy returns the operation that removes kube-proxy's and
// flannel's iptables rules of lab from the namespace — the lab's chains
// Render writes and the built-in-chain jumps into them — as kube-proxy's
// CleanupLeftovers does when a node switches to nftables mode. Other rules
// (NetworkPolicy's chains and jump) stay. One iptables-restore
// transaction; nothing when there is nothing, no namespace, or no
// iptables-save (an nftables-only machine has no iptables rules to remove).
func PlanDeleteProxy(ns, lab string) (plan.Plan, error) {
	if err := netns.ValidateLab(lab); err != nil {
		return nil, err
	}
	if !netns.Exists(ns) {
		return nil, nil
	}
	if _, err := lookIptablesSave(); err != nil {
		return nil, nil
	}
	st, err := readKernel(ns, lab)
	if err != nil {
		return nil, err
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
			if j.table == t && ownedChain(j.target) {
				jumps = append(jumps, "-D"+j.line[len("-A"):])
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
		return nil, nil
	}
	return plan.Plan{{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{Input: b.String(), NoFlush: true}, Why: "iptables mode's chains"}}, nil
}

func lookIptablesSave() (string, error) { return exec.LookPath("iptables-save") }
