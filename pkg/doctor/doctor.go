// Package doctor checks that a machine can run klab labs and says how to
// fix what is missing.
//
// klab needs root, a kernel with network namespaces, veth, bridge and vxlan
// support, and the iptables binaries (iptables-restore in particular) for
// the Service labs. Distributions differ in ways that matter to pod
// networking — iptables-nft versus iptables-legacy, br_netfilter loaded or
// not, no IPVS — so each check reports what it found and, for a problem,
// one command that fixes it. Kernel features are tried for real inside a
// throwaway namespace, never in the host's own.
package doctor

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// Status of one check.
type Status string

// Check statuses.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Check is one finding.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Failed reports whether any check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// Run performs every check.
func Run() []Check {
	var out []Check
	root := os.Geteuid() == 0
	if root {
		out = append(out, Check{"root", OK, "running as root", ""})
	} else {
		out = append(out, Check{"root", Fail, "not running as root: klab creates namespaces and links", "run klab with sudo"})
	}
	if root {
		out = append(out, kernelChecks()...)
	} else {
		out = append(out, Check{"kernel features", Warn, "not checked (needs root)", "run 'sudo klab doctor'"})
	}
	out = append(out, IptablesChecks()...)
	out = append(out, ContainerChecks()...) // container.go
	out = append(out, CNIChecks()...)
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		out = append(out, Check{"br_netfilter", OK, "loaded: bridged pod-to-pod traffic traverses iptables (needed for same-node ClusterIP hairpin)", ""})
	} else {
		out = append(out, Check{"br_netfilter", Warn, "not loaded: a pod reaching a ClusterIP whose endpoint is on its own bridge may not be un-NATed correctly", "modprobe br_netfilter"})
	}
	if b, err := os.ReadFile("/proc/modules"); err == nil && strings.Contains(string(b), "ip_vs ") {
		out = append(out, Check{"ipvs", OK, "ip_vs loaded, but klab does not implement kube-proxy's ipvs mode: use --proxy-mode nftables or iptables", ""})
	} else if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		out = append(out, Check{"ipvs", OK, "IPVS available, but klab does not implement kube-proxy's ipvs mode: use --proxy-mode nftables or iptables", ""})
	} else {
		out = append(out, Check{"ipvs", Warn, "this kernel has no IP_VS, so --proxy-mode ipvs is refused: use --proxy-mode nftables or iptables (the default)", "modprobe ip_vs (if your kernel has it)"})
	}
	out = append(out, CalicoChecks()...)
	out = append(out, EtcdChecks()...) // etcd.go
	if _, err := exec.LookPath("conntrack"); err == nil {
		out = append(out, Check{"conntrack tool", OK, "conntrack is installed (to list NAT entries)", ""})
	} else {
		out = append(out, Check{"conntrack tool", Warn, "conntrack is not installed: labs cannot list connection-tracking entries with it", "apt-get install conntrack"})
	}
	return out
}

// kernelChecks creates a throwaway namespace and tries each link type there.
func kernelChecks() []Check {
	name := netns.Name("doctor", fmt.Sprintf("probe%d", os.Getpid()))
	if _, err := netns.Ensure(name); err != nil {
		return []Check{{"network namespaces", Fail, err.Error(), "use a kernel with CONFIG_NET_NS and run as root (in a container: --privileged)"}}
	}
	defer netns.Delete(name)
	out := []Check{{"network namespaces", OK, "can create named namespaces under /run/netns", ""}}
	h, err := netns.Handle(name)
	if err != nil {
		return append(out, Check{"netlink", Fail, err.Error(), "run as root"})
	}
	defer h.Close()
	try := func(what, mod string, l netlink.Link) {
		if err := h.LinkAdd(l); err != nil {
			out = append(out, Check{what, Fail, fmt.Sprintf("cannot create a %s device: %v", what, err), "modprobe " + mod})
			return
		}
		out = append(out, Check{what, OK, what + " devices work", ""})
	}
	try("veth", "veth", &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dv0"}, PeerName: "dv1"})
	try("bridge", "bridge", &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dbr0"}})
	try("vxlan", "vxlan", &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "dvx0"}, VxlanId: 1, Port: 8472})
	out = append(out, ipipCheck(h))
	return out
}

// IptablesChecks finds iptables and iptables-restore and their backend.
func IptablesChecks() []Check {
	var out []Check
	for _, bin := range []string{"iptables", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			out = append(out, Check{bin, Fail, bin + " is not installed: the Service and egress labs need it", "apt-get install iptables"})
			return out
		}
	}
	b, err := exec.Command("iptables", "--version").CombinedOutput()
	v := strings.TrimSpace(string(b))
	switch {
	case err != nil:
		out = append(out, Check{"iptables", Fail, fmt.Sprintf("iptables --version failed: %v", err), "apt-get install --reinstall iptables"})
	case strings.Contains(v, "nf_tables"):
		out = append(out, Check{"iptables", OK, v + ": the nft backend (rules live in nftables tables named like the iptables ones)", ""})
	case strings.Contains(v, "legacy"):
		out = append(out, Check{"iptables", OK, v + ": the legacy x_tables backend", ""})
	default:
		out = append(out, Check{"iptables", OK, v, ""})
	}
	return out
}
