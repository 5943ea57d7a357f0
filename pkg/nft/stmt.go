package nft

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Stmt is one statement of a rule: a match or an action. Each knows its nft
// text (kube-proxy's spelling) and the netlink expressions that implement it
// (what nft itself would send; see `nft --debug=netlink`). The set below
// covers the rule shapes kube-proxy's nftables proxier writes.
type Stmt interface {
	appendText(b []byte) []byte
	exprs(e *encoder) ([]expr.Any, error)
}

// Field selects the IPv4 source or destination address.
type Field bool

// Address fields.
const (
	Daddr Field = false
	Saddr Field = true
)

func (f Field) String() string {
	if f == Saddr {
		return "saddr"
	}
	return "daddr"
}

func (f Field) payload(reg uint32) *expr.Payload {
	off := uint32(16)
	if f == Saddr {
		off = 12
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}
}

// IPMatch is "ip daddr 172.30.0.41" or "ip saddr != 10.0.0.0/8".
type IPMatch struct {
	Field  Field
	Not    bool
	Prefix netip.Prefix // a /32 prints as an address
}

func (s IPMatch) appendText(b []byte) []byte {
	b = append(b, "ip "...)
	b = append(b, s.Field.String()...)
	if s.Not {
		b = append(b, " !="...)
	}
	b = append(b, ' ')
	if s.Prefix.Bits() == 32 {
		return s.Prefix.Addr().AppendTo(b)
	}
	return s.Prefix.AppendTo(b)
}

func (s IPMatch) exprs(*encoder) ([]expr.Any, error) {
	op := expr.CmpOpEq
	if s.Not {
		op = expr.CmpOpNeq
	}
	a := s.Prefix.Masked().Addr().As4()
	out := []expr.Any{s.Field.payload(1)}
	if bits := s.Prefix.Bits(); bits < 32 {
		mask := prefixMask(bits)
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}})
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: a[:]}), nil
}

func prefixMask(bits int) [4]byte {
	var m [4]byte
	v := ^uint32(0) << (32 - bits)
	if bits == 0 {
		v = 0
	}
	m[0], m[1], m[2], m[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return m
}

// IPInSet is "ip daddr @cluster-ips".
type IPInSet struct {
	Field Field
	Set   string
}

func (s IPInSet) appendText(b []byte) []byte {
	return append(append(append(b, "ip "...), s.Field.String()...), " @"+s.Set...)
}

func (s IPInSet) exprs(e *encoder) ([]expr.Any, error) {
	set, err := e.set(s.Set)
	if err != nil {
		return nil, err
	}
	return []expr.Any{s.Field.payload(1), &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID}}, nil
}

// IPInPrefixes is "ip daddr { 172.30.0.0/16 }": an anonymous interval set
// (kube-proxy's cluster-ips-check drop rule for the service CIDRs).
type IPInPrefixes struct {
	Field  Field
	Prefix netip.Prefix
}

func (s IPInPrefixes) appendText(b []byte) []byte {
	b = append(append(append(b, "ip "...), s.Field.String()...), " { "...)
	return append(s.Prefix.Masked().AppendTo(b), " }"...)
}

func (s IPInPrefixes) exprs(e *encoder) ([]expr.Any, error) {
	p := s.Prefix.Masked()
	start := p.Addr().As4()
	var elems []nftables.SetElement
	if start != [4]byte{} {
		elems = append(elems, nftables.SetElement{Key: []byte{0, 0, 0, 0}, IntervalEnd: true})
	}
	elems = append(elems, nftables.SetElement{Key: start[:]})
	size := uint64(1) << (32 - p.Bits())
	end := uint64(be32(start[:])) + size
	if end <= 0xffffffff {
		elems = append(elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(uint32(end)), IntervalEnd: true})
	}
	set := &nftables.Set{Table: e.table, Anonymous: true, Constant: true, Interval: true,
		KeyType: nftables.TypeIPAddr, KeyByteOrder: binaryutil.BigEndian}
	if err := e.conn.AddSet(set, elems); err != nil {
		return nil, err
	}
	return []expr.Any{s.Field.payload(1), &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID}}, nil
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// PortMatch is "tcp dport 80".
type PortMatch struct {
	Proto string // "tcp" | "udp"
	Port  uint16
}

func (s PortMatch) appendText(b []byte) []byte {
	return strconv.AppendUint(append(b, s.Proto+" dport "...), uint64(s.Port), 10)
}

func (s PortMatch) exprs(*encoder) ([]expr.Any, error) {
	p, err := protoNum(s.Proto)
	if err != nil {
		return nil, err
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(s.Port)},
	}, nil
}

// L4Proto is "meta l4proto tcp".
type L4Proto struct{ Proto string }

func (s L4Proto) appendText(b []byte) []byte { return append(b, "meta l4proto "+s.Proto...) }

func (s L4Proto) exprs(*encoder) ([]expr.Any, error) {
	p, err := protoNum(s.Proto)
	if err != nil {
		return nil, err
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}, nil
}

func protoNum(p string) (byte, error) {
	switch p {
	case "tcp":
		return unix.IPPROTO_TCP, nil
	case "udp":
		return unix.IPPROTO_UDP, nil
	case "sctp":
		return unix.IPPROTO_SCTP, nil
	case "icmp":
		return unix.IPPROTO_ICMP, nil
	}
	return 0, fmt.Errorf("protocol %q is not tcp, udp or sctp", p)
}

// CtStateNew is "ct state new".
type CtStateNew struct{}

func (CtStateNew) appendText(b []byte) []byte { return append(b, "ct state new"...) }

func (CtStateNew) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, nil
}

// MarkClear is "mark and 0x4000 == 0" (the mark bit is not set).
type MarkClear struct{ Mark uint32 }

func (s MarkClear) appendText(b []byte) []byte {
	return append(append(append(b, "mark and "...), markText(s.Mark)...), " == 0"...)
}

func (s MarkClear) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(s.Mark), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, nil
}

// MarkSet is "mark set mark or 0x4000" (Xor false) or "mark set mark xor 0x4000".
type MarkSet struct {
	Xor  bool
	Mark uint32
}

func (s MarkSet) appendText(b []byte) []byte {
	op := "or "
	if s.Xor {
		op = "xor "
	}
	return append(append(b, "mark set mark "+op...), markText(s.Mark)...)
}

func (s MarkSet) exprs(*encoder) ([]expr.Any, error) {
	mask, xor := ^s.Mark, s.Mark // or: (mark & ~m) ^ m
	if s.Xor {
		mask = ^uint32(0)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}, nil
}

// markText is kube-proxy's masqueradeMark: fmt.Sprintf("%#08x", 1<<bit),
// e.g. "0x00004000" (Go pads the digits to 8).
func markText(m uint32) string { return fmt.Sprintf("%#08x", m) }

// FibLocal is "fib daddr type local" or "fib saddr type local".
type FibLocal struct{ Field Field }

func (s FibLocal) appendText(b []byte) []byte {
	return append(b, "fib "+s.Field.String()+" type local"...)
}

func (s FibLocal) exprs(*encoder) ([]expr.Any, error) {
	f := &expr.Fib{Register: 1, ResultADDRTYPE: true}
	if s.Field == Saddr {
		f.FlagSADDR = true
	} else {
		f.FlagDADDR = true
	}
	return []expr.Any{f, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}}, nil
}

// Key is the concatenation a verdict-map lookup uses.
type Key int

// Lookup keys.
const (
	// AddrProtoPort is "ip daddr . meta l4proto . th dport" (service-ips,
	// no-endpoint-services, firewall-ips).
	AddrProtoPort Key = iota
	// ProtoPort is "meta l4proto . th dport" (service-nodeports,
	// no-endpoint-nodeports).
	ProtoPort
)

// VmapLookup is "ip daddr . meta l4proto . th dport vmap @service-ips".
type VmapLookup struct {
	Key Key
	Map string
}

func (s VmapLookup) appendText(b []byte) []byte {
	if s.Key == AddrProtoPort {
		b = append(b, "ip daddr . "...)
	}
	return append(b, "meta l4proto . th dport vmap @"+s.Map...)
}

func (s VmapLookup) exprs(e *encoder) ([]expr.Any, error) {
	set, err := e.set(s.Map)
	if err != nil {
		return nil, err
	}
	// Concatenations load each field into consecutive 32-bit registers
	// (NFT_REG32_00 = 8 is the first quarter of NFT_REG_1).
	var out []expr.Any
	reg := uint32(unix.NFT_REG_1)
	if s.Key == AddrProtoPort {
		out = append(out, Daddr.payload(reg))
		reg = unix.NFT_REG32_01
	}
	out = append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	if s.Key == ProtoPort {
		out[0].(*expr.Meta).Register = unix.NFT_REG_1
		out[1].(*expr.Payload).DestRegister = unix.NFT_REG32_01
	}
	return append(out, &expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: set.Name, SetID: set.ID, IsDestRegSet: true, DestRegister: 0}), nil
}

// NumgenVmap is "numgen random mod N vmap { 0 : goto A , 1 : goto B }":
// a service chain picking an endpoint chain at random.
type NumgenVmap struct{ Chains []string }

func (s NumgenVmap) appendText(b []byte) []byte {
	b = strconv.AppendInt(append(b, "numgen random mod "...), int64(len(s.Chains)), 10)
	b = append(b, " vmap { "...)
	for i, c := range s.Chains {
		if i > 0 {
			b = append(b, " , "...)
		}
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, " : goto "+c...)
	}
	return append(b, " }"...)
}

func (s NumgenVmap) exprs(e *encoder) ([]expr.Any, error) {
	elems := make([]nftables.SetElement, len(s.Chains))
	for i, c := range s.Chains {
		elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: c}}
	}
	set := &nftables.Set{Table: e.table, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	if err := e.conn.AddSet(set, elems); err != nil {
		return nil, err
	}
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(s.Chains)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, IsDestRegSet: true, DestRegister: 0},
	}, nil
}

// UpdateSet is "update @affinity-X { ip saddr }": remember the client for
// session affinity (the set's timeout applies).
type UpdateSet struct{ Set string }

func (s UpdateSet) appendText(b []byte) []byte {
	return append(b, "update @"+s.Set+" { ip saddr }"...)
}

func (s UpdateSet) exprs(e *encoder) ([]expr.Any, error) {
	set, err := e.set(s.Set)
	if err != nil {
		return nil, err
	}
	return []expr.Any{Saddr.payload(1), &expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_UPDATE}}, nil
}

// DNAT is "dnat to 10.180.0.1:80".
type DNAT struct{ To netip.AddrPort }

func (s DNAT) appendText(b []byte) []byte { return s.To.AppendTo(append(b, "dnat to "...)) }

func (s DNAT) exprs(*encoder) ([]expr.Any, error) {
	a := s.To.Addr().As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(s.To.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}, nil
}

// Masquerade is "masquerade fully-random".
type Masquerade struct{ FullyRandom bool }

func (s Masquerade) appendText(b []byte) []byte {
	b = append(b, "masquerade"...)
	if s.FullyRandom {
		b = append(b, " fully-random"...)
	}
	return b
}

func (s Masquerade) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{&expr.Masq{FullyRandom: s.FullyRandom}}, nil
}

// Counter is "counter" (kube-proxy writes none; klab's tracing may).
type Counter struct{}

func (Counter) appendText(b []byte) []byte         { return append(b, "counter"...) }
func (Counter) exprs(*encoder) ([]expr.Any, error) { return []expr.Any{&expr.Counter{}}, nil }

// Verdict is "jump C", "goto C", "return", "drop", "accept" or "reject"
// (ICMP port unreachable, nft's default for ip tables).
type Verdict struct {
	Kind  string
	Chain string
}

// Jump and Goto are shorthands.
func Jump(c string) Verdict { return Verdict{Kind: "jump", Chain: c} }
func Goto(c string) Verdict { return Verdict{Kind: "goto", Chain: c} }

func (s Verdict) appendText(b []byte) []byte {
	b = append(b, s.Kind...)
	if s.Chain != "" {
		b = append(append(b, ' '), s.Chain...)
	}
	return b
}

func (s Verdict) exprs(*encoder) ([]expr.Any, error) {
	v, err := verdictExpr(s.Kind, s.Chain)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3 /* port unreachable */}}, nil
	}
	return []expr.Any{v}, nil
}

// verdictExpr encodes a verdict; nil for "reject" (a statement, not a verdict).
func verdictExpr(kind, chain string) (*expr.Verdict, error) {
	switch kind {
	case "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}, nil
	case "goto":
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}, nil
	case "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case "accept":
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case "reject":
		return nil, nil
	}
	return nil, fmt.Errorf("unknown verdict %q", kind)
}
