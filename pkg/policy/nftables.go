package policy

// NetworkPolicy on an nftables node: the same compiled Plan rendered as one
// nftables table instead of iptables chains and ipsets, so that a node in
// kube-proxy's nftables mode holds no iptables rules at all. The table is
// `table ip klab-policy`, klab's own, the way sigs.k8s.io/kube-network-
// policies keeps its rules in a table of its own (pkg/networkpolicy
// Config.Defaults: NFTableName "kube-network-policies", with its pod
// addresses in named sets "podips-v4"), rather than hooking into
// kube-proxy's:
//
//	table ip klab-policy {
//	  chain forward { type filter hook forward priority -5
//	    ct state established,related accept; jump egress; jump ingress }
//	  chain egress  { ip saddr POD jump KLAB-NPE-... }        # isolated pods
//	  chain ingress { ip daddr POD jump KLAB-NPI-... }
//	  chain KLAB-NPI-... { ip saddr @KLAB-P-... tcp dport 80 return ...
//	    log prefix "klab lab I ns/pod" group G; counter drop }
//	  set KLAB-P-... { type ipv4_addr; elements = { ... } }  # peer pods
//	}
//
// The chain and set names are the Plan's (hashes of what they select), so
// a pod appearing or changing labels is a set element change, and a policy
// change a flush-and-refill of the pod chains whose rules changed: nft.Diff
// computes that, and the whole change is ONE nf_tables transaction
// (plan.NFT), so no packet ever sees half of it — the ipset swap dance of
// the iptables form is not needed. An ipBlock (ipset hash:net with nomatch
// excepts) is no named set here: its CIDRs minus their excepts are an
// anonymous interval set inside the rule (`ip saddr { a-b, c-d }`), which
// only a policy change changes. The priority -5 runs the chain before
// flannel's forward chain (filter, 0); an accept elsewhere does not undo a
// drop here, since every base chain of the hook must accept. The drop rule
// carries a counter and DropComment as its comment, read back over netlink
// (DropCountersNFT) by `klab policy explain`.

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
)

// NFTTable is the nftables table of the policies (family ip).
const NFTTable = "klab-policy"

// nftCommentMax is the longest comment nft accepts (its parser's limit,
// NFT_USERDATA_MAXLEN is 256 but nft refuses more than 128 characters):
// longer comments are cut so that the plan's `nft -f` text loads too.
const nftCommentMax = 128

// nftPriority is the forward base chain's priority (filter - 5).
const nftPriority = -5

// Chain names inside NFTTable for the dispatch chains.
const (
	nftForward = "forward"
	nftEgress  = "egress"
	nftIngress = "ingress"
)

// RenderNFT renders the plan as the `table ip klab-policy` (see above).
func RenderNFT(p *Plan) (*nft.Table, error) { return renderNFT(p, nil) }

// renderNFT renders the plan, leaving out the pod chains skip names (a
// partial rendering for a diff: chains equal in both plans).
func renderNFT(p *Plan, skip map[string]bool) (*nft.Table, error) {
	t := &nft.Table{Family: "ip", Name: NFTTable}
	lab := p.Lab
	fwd := &nft.Chain{Name: nftForward, Type: "filter", Hook: "forward", Priority: nftPriority, Rules: []nft.Rule{
		{Stmts: []nft.Stmt{nft.CtStateEstablishedRelated{}, nft.Verdict{Kind: "accept"}}, Comment: "klab " + lab + ": replies of allowed connections pass"},
		{Stmts: []nft.Stmt{nft.Jump(nftEgress)}, Comment: "klab " + lab + ": egress of isolated pods"},
		{Stmts: []nft.Stmt{nft.Jump(nftIngress)}, Comment: "klab " + lab + ": ingress of isolated pods"},
	}}
	eg, in := &nft.Chain{Name: nftEgress}, &nft.Chain{Name: nftIngress}
	t.Chains = append(t.Chains, fwd, eg, in)
	ranges := map[string][]nft.IPRange{}
	for _, s := range p.Sets {
		switch s.Type {
		case HashIP:
			ns := &nft.Set{Name: s.Name, Type: "ipv4_addr", Comment: clip(s.What, nftCommentMax)}
			for _, e := range s.Entries {
				a, err := netip.ParseAddr(strings.TrimSuffix(e.Addr, "/32"))
				if err != nil {
					return nil, fmt.Errorf("set %s: %q is not an address", s.Name, e.Addr)
				}
				ns.Elements = append(ns.Elements, nft.Element{Key: []string{a.String()}})
			}
			t.Sets = append(t.Sets, ns)
		case HashNet:
			r, err := netRanges(s.Entries)
			if err != nil {
				return nil, fmt.Errorf("set %s: %w", s.Name, err)
			}
			ranges[s.Name] = r
		default:
			return nil, fmt.Errorf("set %s: type %s has no nftables form", s.Name, s.Type)
		}
	}
	for _, pp := range p.Pods {
		for _, dc := range []struct {
			dir string
			c   *Chain
		}{{"egress", pp.Egress}, {"ingress", pp.Ingress}} {
			if dc.c == nil {
				continue
			}
			field, list, peer := nft.Daddr, in, nft.Saddr
			if dc.dir == "egress" {
				field, list, peer = nft.Saddr, eg, nft.Daddr
			}
			list.Rules = append(list.Rules, nft.Rule{
				Stmts:   []nft.Stmt{nft.IPMatch{Field: field, Prefix: netip.PrefixFrom(pp.IP, 32)}, nft.Jump(dc.c.Name)},
				Comment: clip(fmt.Sprintf("klab %s: %s of %s isolated by %s", lab, dc.dir, pp.Pod, strings.Join(dc.c.Selecting, ",")), nftCommentMax),
			})
			if skip[dc.c.Name] {
				continue
			}
			ch := &nft.Chain{Name: dc.c.Name}
			for _, r := range dc.c.Rules {
				var st []nft.Stmt
				if r.Set != "" {
					if rg, ok := ranges[r.Set]; ok {
						if len(rg) == 0 {
							continue // an ipBlock whose excepts cover it admits nothing
						}
						st = append(st, nft.IPInRanges{Field: peer, Ranges: rg})
					} else {
						st = append(st, nft.IPInSet{Field: peer, Set: r.Set})
					}
				}
				if r.Protocol != "" {
					ps, err := protoStmt(r.Protocol, r.Ports)
					if err != nil {
						return nil, fmt.Errorf("chain %s: %w", dc.c.Name, err)
					}
					st = append(st, ps)
				}
				st = append(st, nft.Verdict{Kind: "return"})
				ch.Rules = append(ch.Rules, nft.Rule{Stmts: st, Comment: clip("klab "+lab+": "+r.Comment, nftCommentMax)})
			}
			dcm := DropComment(lab, dc.dir, pp.Pod)
			ch.Rules = append(ch.Rules,
				nft.Rule{Stmts: []nft.Stmt{nft.Log{Prefix: NFLOGPrefix(lab, dc.dir, pp.Pod), Group: p.NFLOGGroup}}, Comment: clip(dcm+" (log)", nftCommentMax)},
				nft.Rule{Stmts: []nft.Stmt{nft.Counter{}, nft.Verdict{Kind: "drop"}}, Comment: clip(dcm, nftCommentMax)})
			t.Chains = append(t.Chains, ch)
		}
	}
	return t, nil
}

// protoStmt is "meta l4proto tcp" or "tcp dport 80[-81]".
func protoStmt(proto corev1.Protocol, ports string) (nft.Stmt, error) {
	pr := strings.ToLower(string(proto))
	if ports == "" {
		return nft.L4Proto{Proto: pr}, nil
	}
	lo, hi, isRange := strings.Cut(ports, ":")
	from, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q is not a port or range", ports)
	}
	to := from
	if isRange {
		if to, err = strconv.ParseUint(hi, 10, 16); err != nil || to < from {
			return nil, fmt.Errorf("port %q is not a port or range", ports)
		}
	}
	return nft.PortRange{Proto: pr, From: uint16(from), To: uint16(to)}, nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

// netRanges turns ipset hash:net entries into the disjoint ranges they
// match: as in the kernel's hash:net, the most specific entry containing
// an address decides, and a nomatch entry refuses it (an ipBlock's excepts).
func netRanges(es []Entry) ([]nft.IPRange, error) {
	type pfx struct {
		lo, hi uint64 // [lo, hi)
		bits   int
		no     bool
	}
	var ps []pfx
	bounds := map[uint64]bool{}
	for _, e := range es {
		pr, err := netip.ParsePrefix(e.Addr)
		if err != nil {
			a, aerr := netip.ParseAddr(e.Addr)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR", e.Addr)
			}
			pr = netip.PrefixFrom(a, 32)
		}
		if !pr.Addr().Is4() {
			return nil, fmt.Errorf("%q is not IPv4", e.Addr)
		}
		a := pr.Masked().Addr().As4()
		lo := uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3])
		x := pfx{lo: lo, hi: lo + 1<<(32-pr.Bits()), bits: pr.Bits(), no: e.NoMatch}
		ps = append(ps, x)
		bounds[x.lo], bounds[x.hi] = true, true
	}
	cuts := make([]uint64, 0, len(bounds))
	for b := range bounds {
		cuts = append(cuts, b)
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i] < cuts[j] })
	var out []nft.IPRange
	var open bool
	var start uint64
	for i := 0; i+1 < len(cuts); i++ {
		lo := cuts[i]
		best, match := -1, false
		for _, x := range ps {
			if x.lo <= lo && lo < x.hi && (x.bits > best || x.bits == best && x.no) {
				best, match = x.bits, !x.no
			}
		}
		switch {
		case match && !open:
			open, start = true, lo
		case !match && open:
			open = false
			out = append(out, nft.IPRange{From: addrOf(start), To: addrOf(lo - 1)})
		}
	}
	if open {
		out = append(out, nft.IPRange{From: addrOf(start), To: addrOf(cuts[len(cuts)-1] - 1)})
	}
	return out, nil
}

func addrOf(v uint64) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// PlanApplyNFT returns the plan that takes node namespace ns from prev (the
// plan applied last; nil when unknown) to next on an nftables node: the
// bridge sysctl (br_netfilter hands bridged frames to the ip family's
// forward hook under the same key), then ONE nf_tables transaction —
// nft.Diff of the two renderings, or the whole table replaced when prev is
// unknown or drift says the kernel's table is not prev's — that also
// deletes the iptables form (the FORWARD jump and KLAB-NP* chains, ipsets)
// when k shows it (a mode switch). inKernel reports whether the table
// exists and matches prev's rendering (nft.Drift over netlink).
func PlanApplyNFT(ns string, prev, next *Plan, inKernel bool, k *Kernel) (plan.Plan, error) {
	nt, err := RenderNFT(next)
	if err != nil {
		return nil, err
	}
	var p plan.Plan
	if prev == nil || !inKernel {
		p.Add(plan.Op{Verb: plan.Sysctl, NS: ns, Key: BridgeNFKey, Value: "1", Why: "bridged pod-to-pod traffic through the forward hook"})
	}
	if k != nil && (k.Jump || len(k.Chains) > 0 || len(k.Sets) > 0) {
		p = append(p, PlanRemove(ns, next.Lab, nil, k)...)
	}
	var old *nft.Table
	if prev != nil && inKernel {
		// Pod chains whose rules are equal in both plans render the same
		// (a chain's text depends on its name — lab, direction, pod —, its
		// rules, the NFLOG group, and the sets it names, whose names hash
		// their content): leave them out of both renderings, so the diff
		// compares only what changed.
		skip := map[string]bool{}
		if prev.Lab == next.Lab && prev.NFLOGGroup == next.NFLOGGroup {
			same := map[string][]Rule{}
			for _, pp := range prev.Pods {
				for _, c := range []*Chain{pp.Egress, pp.Ingress} {
					if c != nil {
						same[c.Name] = c.Rules
					}
				}
			}
			for _, pp := range next.Pods {
				for _, c := range []*Chain{pp.Egress, pp.Ingress} {
					if r, ok := same[c2name(c)]; ok && c != nil && slices.Equal(r, c.Rules) {
						skip[c.Name] = true
					}
				}
			}
		}
		if old, err = renderNFT(prev, skip); err != nil {
			old = nil
		} else if nt, err = renderNFT(next, skip); err != nil {
			return nil, err
		}
	}
	ch := nft.Diff(old, nt)
	if ch.Full != nil && old != nil {
		// The table's skeleton changed: replace it whole, fully rendered.
		if nt, err = RenderNFT(next); err != nil {
			return nil, err
		}
		ch = nft.Diff(nil, nt)
	}
	b := &nft.Batch{Changes: []*nft.Change{ch}}
	if !b.Empty() {
		p.Add(plan.Op{Verb: plan.NFT, NS: ns, NFT: b, Why: "network policies (table ip " + NFTTable + ")"})
	}
	return p, nil
}

func c2name(c *Chain) string {
	if c == nil {
		return ""
	}
	return c.Name
}

// PlanRemoveNFT removes the policy table from node namespace ns (one
// transaction; nothing to do when it is absent).
func PlanRemoveNFT(ns string) plan.Plan {
	return plan.Plan{{Verb: plan.NFT, NS: ns, NFT: &nft.Batch{DelTables: []string{NFTTable}}, Why: "network policies"}}
}

// DropCountersNFT reads the drop rules' packet counters of the policy
// table in namespace ns over netlink: DropComment -> packets.
func DropCountersNFT(ns string) (map[string]uint64, error) {
	m, err := nft.RuleCounters(ns, NFTTable)
	if err != nil {
		return nil, fmt.Errorf("read counters in %s: %w", ns, err)
	}
	if m == nil {
		m = map[string]uint64{}
	}
	return m, nil
}
