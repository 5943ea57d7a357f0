package nft

import (
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// Flannel's own table in nftables mode (flannel's EnableNFTables), mirrored
// from flannel-io/flannel pkg/trafficmngr/nftables/nftables.go (commit
// 41a4a4d5): `table ip flannel-ipv4` with a filter `forward` chain that
// accepts the pod network both ways and a nat `postrtg` chain at srcnat
// with flannel's five masquerade decisions.
const (
	FlannelTable        = "flannel-ipv4"
	flannelForwardChain = "forward"
	flannelPostChain    = "postrtg"
	// flannelMark is the mark flannel compares with "meta mark 0x4000":
	// kube-proxy's masquerade mark, matched exactly (not as a bit), as
	// flannel writes it.
	flannelMark = 0x4000
	priFilter   = 0
)

// MarkEq is "meta mark 0x4000": the whole packet mark equals Mark.
type MarkEq struct{ Mark uint32 }

func (s MarkEq) appendText(b []byte) []byte {
	return append(append(b, "meta mark "...), markText(s.Mark)...)
}

func (s MarkEq) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(s.Mark)},
	}, nil
}

// RenderFlannel is flannel's `table ip flannel-ipv4` for a node whose lease
// is podCIDR in the flannel network clusterCIDR. tcpOnly adds `meta
// l4proto tcp` to the two masquerade rules (seed 003's puzzle, which pkg/nat
// renders the same way in iptables mode; flannel itself has no such
// option).
func RenderFlannel(clusterCIDR, podCIDR netip.Prefix, tcpOnly bool) *Table {
	cluster, pod := clusterCIDR.Masked(), podCIDR.Masked()
	multicast := netip.MustParsePrefix("224.0.0.0/4")
	fwd := &Chain{Name: flannelForwardChain, Type: "filter", Hook: "forward", Priority: priFilter, Comment: "chain to accept flannel traffic",
		Rules: []Rule{
			{Stmts: []Stmt{IPMatch{Field: Saddr, Prefix: cluster}, Verdict{Kind: "accept"}}},
			{Stmts: []Stmt{IPMatch{Field: Daddr, Prefix: cluster}, Verdict{Kind: "accept"}}},
		}}
	masq := func(s ...Stmt) Rule {
		if tcpOnly {
			s = append(s, L4Proto{"tcp"})
		}
		return Rule{Stmts: append(s, Masquerade{FullyRandom: true})}
	}
	ret := Verdict{Kind: "return"}
	post := &Chain{Name: flannelPostChain, Type: "nat", Hook: "postrouting", Priority: priSrcNAT, Comment: "chain to manage traffic masquerading by flannel",
		Rules: []Rule{
			// kube-proxy marked it and masquerades it: no double NAT.
			{Stmts: []Stmt{MarkEq{flannelMark}, ret}},
			// Pod to pod inside the cluster network keeps its addresses.
			{Stmts: []Stmt{IPMatch{Field: Saddr, Prefix: pod}, IPMatch{Field: Daddr, Prefix: cluster}, ret}},
			{Stmts: []Stmt{IPMatch{Field: Saddr, Prefix: cluster}, IPMatch{Field: Daddr, Prefix: pod}, ret}},
			// External traffic arriving for a local pod keeps its source.
			{Stmts: []Stmt{IPMatch{Field: Saddr, Not: true, Prefix: pod}, IPMatch{Field: Daddr, Prefix: cluster}, ret}},
			// Pods talking to the world (not multicast) get the node's address.
			masq(IPMatch{Field: Saddr, Prefix: cluster}, IPMatch{Field: Daddr, Not: true, Prefix: multicast}),
			// The node talking to pods on other nodes uses its flannel address.
			masq(IPMatch{Field: Saddr, Not: true, Prefix: cluster}, IPMatch{Field: Daddr, Prefix: cluster}),
		}}
	t := &Table{Family: TableFamily, Name: FlannelTable, Comment: "rules for " + FlannelTable, Chains: []*Chain{fwd, post}}
	t.index()
	return t
}
