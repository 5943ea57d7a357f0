package doctor

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// CalicoChecks look for what the calico backend needs: BIRD 2 (Debian's
// bird2: bird and birdc).
func CalicoChecks() []Check {
	for _, b := range []string{"/usr/sbin/bird", "/usr/sbin/birdc"} {
		if _, err := os.Stat(b); err != nil {
			return []Check{{"bird2", Warn, b + " is not installed: the calico backend (--backend calico) runs BIRD on every node", "apt-get install bird2"}}
		}
	}
	v, _ := exec.Command("/usr/sbin/bird", "--version").CombinedOutput()
	ver := strings.TrimSpace(string(v))
	if !strings.Contains(ver, "version 2.") {
		return []Check{{"bird2", Warn, fmt.Sprintf("%s is not BIRD 2: klab renders calico-node's configuration in BIRD 2 syntax", ver), "apt-get install bird2"}}
	}
	return []Check{{"bird2", OK, ver + ": the calico backend can run BIRD on every node", ""}}
}

// ipipCheck tries Calico's IPIP device type (tunl0 comes with the ipip
// module) in the probe namespace.
func ipipCheck(h *netlink.Handle) Check {
	if err := h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "dip0"}}); err != nil {
		return Check{"ipip", Warn, fmt.Sprintf("no IPIP in this kernel (CONFIG_NET_IPIP off: %v): Calico's IPIP mode (tunl0) cannot be built; --backend calico routes by BGP without a tunnel", err), "use a kernel with CONFIG_NET_IPIP (modprobe ipip)"}
	}
	return Check{"ipip", OK, "ipip devices work", ""}
}
