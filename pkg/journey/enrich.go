package journey

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/trace"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Flow is one conntrack entry of the probe's connection in a node: the
// original tuple (as the first packet looked) and the reply tuple (as the
// answer is expected to look). When they are not mirror images, NAT
// happened, and the difference is the rewrite.
type Flow struct {
	Node     string `json:"node"`
	Proto    string `json:"proto"`
	Original string `json:"original"` // "src -> dst"
	Reply    string `json:"reply"`    // "src -> dst"
	NAT      string `json:"nat"`      // "dnat", "snat", "dnat+snat" or ""
}

func (f Flow) String() string {
	s := fmt.Sprintf("%s %s: original %s, reply %s", f.Node, f.Proto, f.Original, f.Reply)
	switch f.NAT {
	case "dnat":
		s += " (DNAT: the reply comes from another address than the original destination)"
	case "snat":
		s += " (SNAT: the reply goes to another address than the original source)"
	case "dnat+snat":
		s += " (DNAT and SNAT/MASQUERADE)"
	}
	return s
}

// RuleHit is an iptables rule whose packet counter the probe raised.
type RuleHit struct {
	Node    string `json:"node"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Rule    string `json:"rule"` // as iptables-save prints it, without counters
	Packets uint64 `json:"packets"`
	pos     int
}

func (r RuleHit) String() string {
	return fmt.Sprintf("%s %s: %s  (+%d)", r.Node, r.Table, r.Rule, r.Packets)
}

// conntrackFor lists, in every node, the conntrack entries of the probe:
// its protocol, its destination before DNAT, and its source — the local
// address of the TCP connection (src, "addr:port"), or for ICMP the
// source the first capture point saw, before or after SNAT. Nodes whose
// conntrack is not active (no NAT rule loaded) have none.
func conntrackFor(lab *cluster.Lab, plan *Plan, src string, first *trace.Header) []Flow {
	var out []Flow
	for _, n := range lab.Nodes {
		h, err := netns.Handle(netns.Name(lab.Name, n.Name))
		if err != nil {
			continue
		}
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		h.Close()
		if err != nil {
			continue
		}
		for _, f := range flows {
			if fl, ok := matchFlow(n.Name, f, plan, src, first); ok {
				out = append(out, fl)
			}
		}
	}
	return out
}

func ip4(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

func matchFlow(node string, f *netlink.ConntrackFlow, plan *Plan, src string, first *trace.Header) (Flow, bool) {
	proto := map[string]uint8{ICMP: unix.IPPROTO_ICMP, TCP: unix.IPPROTO_TCP, UDP: unix.IPPROTO_UDP}[plan.Proto]
	fw, rv := f.Forward, f.Reverse
	if fw.Protocol != proto || ip4(fw.DstIP) != plan.Dst {
		return Flow{}, false
	}
	if proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_UDP {
		ap, err := netip.ParseAddrPort(src)
		if fw.DstPort != uint16(plan.Port) || err != nil || ip4(fw.SrcIP) != ap.Addr() || fw.SrcPort != ap.Port() {
			return Flow{}, false
		}
	} else if first != nil && ip4(fw.SrcIP) != first.SrcIP && ip4(rv.DstIP) != first.SrcIP {
		return Flow{}, false
	}
	return describeFlow(node, plan.Proto, fw, rv), true
}

func describeFlow(node, proto string, fw, rv netlink.IPTuple) Flow {
	tuple := func(t netlink.IPTuple) string {
		if proto == TCP || proto == UDP {
			return addrPort(ip4(t.SrcIP), t.SrcPort) + " -> " + addrPort(ip4(t.DstIP), t.DstPort)
		}
		return ip4(t.SrcIP).String() + " -> " + ip4(t.DstIP).String()
	}
	fl := Flow{Node: node, Proto: proto, Original: tuple(fw), Reply: tuple(rv)}
	ports := proto == TCP || proto == UDP
	dnat := !ip4(rv.SrcIP).IsValid() || ip4(rv.SrcIP) != ip4(fw.DstIP) || (ports && rv.SrcPort != fw.DstPort)
	snat := ip4(rv.DstIP) != ip4(fw.SrcIP) || (ports && rv.DstPort != fw.SrcPort)
	switch {
	case dnat && snat:
		fl.NAT = "dnat+snat"
	case dnat:
		fl.NAT = "dnat"
	case snat:
		fl.NAT = "snat"
	}
	return fl
}

// counters maps "table\x00rule" to its packet counter and its position in
// iptables-save's output, for one node.
type counters map[string]counter

type counter struct {
	packets uint64
	pos     int
}

// readCounters runs iptables-save -c in every node. It lists only the
// tables that exist (it never loads one, which would switch conntrack on).
// Nodes without iptables or rules give no counters.
func readCounters(lab *cluster.Lab) map[string]counters {
	if _, err := exec.LookPath("iptables-save"); err != nil {
		return nil
	}
	out := map[string]counters{}
	for _, n := range lab.Nodes {
		var b []byte
		err := netns.Do(netns.Name(lab.Name, n.Name), func() (err error) {
			b, err = exec.Command("iptables-save", "-c").Output()
			return err
		})
		if err == nil {
			out[n.Name] = ParseCounters(string(b))
		}
	}
	return out
}

// ParseCounters parses `iptables-save -c` output into the packet counter
// of each rule, keyed by table and the rule line without its counters.
func ParseCounters(text string) counters {
	c := counters{}
	table := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, "["):
			end := strings.IndexByte(line, ']')
			if end < 0 {
				continue
			}
			pk, _, _ := strings.Cut(line[1:end], ":")
			n, err := strconv.ParseUint(pk, 10, 64)
			rule := strings.TrimSpace(line[end+1:])
			if err != nil || !strings.HasPrefix(rule, "-A ") {
				continue
			}
			k := table + "\x00" + rule
			if old, ok := c[k]; ok {
				c[k] = counter{old.packets + n, old.pos}
			} else {
				c[k] = counter{n, len(c)}
			}
		}
	}
	return c
}

// diffCounters lists the rules whose counter rose, in the nat table and in
// kube-proxy's and flannel's chains of other tables, by node, in
// iptables-save's order (tables, then chains as the kernel lists them).
func diffCounters(before, after map[string]counters) []RuleHit {
	var out []RuleHit
	for node, a := range after {
		b := before[node]
		for k, n := range a {
			if n.packets <= b[k].packets {
				continue
			}
			table, rule, _ := strings.Cut(k, "\x00")
			chain := strings.Fields(rule)[1]
			if table != "nat" && !strings.HasPrefix(chain, "KUBE-") && !strings.HasPrefix(chain, "FLANNEL-") && !strings.HasPrefix(chain, "KLAB-N") {
				continue
			}
			out = append(out, RuleHit{Node: node, Table: table, Chain: chain, Rule: rule, Packets: n.packets - b[k].packets, pos: n.pos})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.Node != y.Node {
			return x.Node < y.Node
		}
		return x.pos < y.pos
	})
	return out
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
