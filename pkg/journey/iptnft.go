package journey

// Journeys in iptables mode where iptables is iptables-nft (`iptables -V`
// says "(nf_tables)"): kube-proxy's and flannel's iptables rules are then
// nf_tables rules in the tables `ip nat`, `ip filter` (and `ip mangle`),
// so the nftrace tracing of nftables mode (klab-trace's `meta nftrace set
// 1` on the probe, the kernel's trace events) names exactly the rules the
// probe's packets hit, instead of a counter diff that also counts
// unrelated traffic crossing the same rules meanwhile. Each traced rule is
// shown as iptables-save prints it: a trace event names table, chain and
// rule handle; the chain's rules listed over netlink give the handle's
// position, and the rule at that position among the chain's "-A" lines of
// `iptables-save -t TABLE` is its text (iptables-save lists an iptables-nft
// chain's rules in the kernel's order). klab maps by position, not by the
// rule's userdata comment: iptables-nft keeps an iptables comment as an xt
// "comment" match, and most of kube-proxy's rules have none. With
// iptables-legacy the rules are not nf_tables rules: the counter diff
// stays.

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"sync"

	"github.com/google/nftables"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/nft"
)

var (
	iptNFTOnce sync.Once
	iptNFT     bool
)

// iptablesNFT reports whether this machine's iptables is iptables-nft.
func iptablesNFT() bool {
	iptNFTOnce.Do(func() {
		out, err := exec.Command("iptables", "--version").Output()
		iptNFT = err == nil && strings.Contains(string(out), "(nf_tables)")
	})
	return iptNFT
}

// iptablesHits turns one node's trace events into the iptables rules they
// name, with how many traced packets each rule matched, in the order the
// probe met them.
func iptablesHits(node, ns string, evs []nft.TraceEvent) []RuleHit {
	type key struct {
		table, chain string
		handle       uint64
	}
	var order []key
	count := map[key]uint64{}
	for _, ev := range evs {
		if ev.Table == nft.TraceTableName || ev.Type != "rule" || ev.Handle == 0 {
			continue
		}
		k := key{ev.Table, ev.Chain, ev.Handle}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	if len(order) == 0 {
		return nil
	}
	h, err := netns.Open(ns)
	if err != nil {
		return nil
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return nil
	}
	saves := map[string]map[string][]string{} // table -> chain -> "-A" lines
	handles := map[string][]uint64{}          // table/chain -> handles in order
	var out []RuleHit
	for i, k := range order {
		lines, ok := saves[k.table]
		if !ok {
			lines = iptablesSave(ns, k.table)
			saves[k.table] = lines
		}
		hk := k.table + "/" + k.chain
		hs, ok := handles[hk]
		if !ok {
			rules, err := conn.GetRules(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: k.table}, &nftables.Chain{Name: k.chain})
			if err == nil {
				for _, r := range rules {
					hs = append(hs, r.Handle)
				}
			}
			handles[hk] = hs
		}
		text := ""
		for j, x := range hs {
			if x == k.handle && j < len(lines[k.chain]) {
				text = lines[k.chain][j]
			}
		}
		if text == "" {
			continue // not an iptables rule (another nf_tables user's)
		}
		out = append(out, RuleHit{Node: node, Table: k.table, Chain: k.chain, Rule: text, Packets: count[k], pos: i})
	}
	return out
}

// iptablesSave is `iptables-save -t table` in ns as chain -> its "-A"
// lines in order; empty when it fails.
func iptablesSave(ns, table string) map[string][]string {
	m := map[string][]string{}
	var out bytes.Buffer
	err := netns.Do(ns, func() error {
		cmd := exec.Command("iptables-save", "-t", table)
		cmd.Stdout = &out
		return cmd.Run()
	})
	if err != nil {
		return m
	}
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		f := strings.Fields(l)
		m[f[1]] = append(m[f[1]], l)
	}
	return m
}
