package nat

import (
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
	return planDrop(ns, st, func(j kernelJump) bool { return ownedChain(j.target) }, "iptables mode's chains"), nil
}

func lookIptablesSave() (string, error) { return exec.LookPath("iptables-save") }
