package trace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Filter is a parsed filter expression. The language (see FILTERS.md):
//
//	expr      = term { ("or" | "||") term }
//	term      = factor { ("and" | "&&") factor }
//	factor    = ("not" | "!") factor | ("inner" | "outer") factor | "(" expr ")" | primitive
//	primitive = [ "src" | "dst" ] ( "host" ADDR | "net" CIDR | "port" N | ADDR )
//	          | "proto" NAME | NAME            NAME = icmp tcp udp arp ip ip6 icmp6
//	          | "vni" N | "vxlan"
//
// A primitive without a qualifier matches if the outer headers match OR, for
// VXLAN packets, the inner (encapsulated) headers match; "outer" restricts it
// to the outer headers and "inner" to the inner ones (false for packets that
// are not VXLAN). A qualifier before a parenthesised group applies to every
// primitive inside. "vni" and "vxlan" describe the packet itself.
//
// A nil *Filter matches everything.
type Filter struct {
	src  string
	root fnode
}

// Match reports whether the decoded packet p satisfies the filter. It does
// not allocate.
func (f *Filter) Match(p *Packet) bool {
	if f == nil || f.root == nil {
		return true
	}
	return f.root.match(p)
}

// String returns the expression in canonical form (fully parenthesised
// where it matters), or "" for a nil filter.
func (f *Filter) String() string {
	if f == nil || f.root == nil {
		return ""
	}
	return f.root.String()
}

// Source returns the expression as it was given.
func (f *Filter) Source() string {
	if f == nil {
		return ""
	}
	return f.src
}

// FilterError is a parse error at a 1-based column of the expression.
type FilterError struct {
	Column int
	Msg    string
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("filter: at column %d: %s", e.Column, e.Msg)
}

type fnode interface {
	match(p *Packet) bool
	String() string
}

type andNode struct{ a, b fnode }
type orNode struct{ a, b fnode }
type notNode struct{ x fnode }

func (n *andNode) match(p *Packet) bool { return n.a.match(p) && n.b.match(p) }
func (n *orNode) match(p *Packet) bool  { return n.a.match(p) || n.b.match(p) }
func (n *notNode) match(p *Packet) bool { return !n.x.match(p) }
func (n *andNode) String() string       { return wrap(n.a, n) + " and " + wrap(n.b, n) }
func (n *orNode) String() string        { return wrap(n.a, n) + " or " + wrap(n.b, n) }
func (n *notNode) String() string       { return "not " + wrap(n.x, n) }

func wrap(child, parent fnode) string {
	switch child.(type) {
	case *andNode, *orNode:
		if _, same := parent.(*andNode); same {
			if _, c := child.(*andNode); c {
				return child.String()
			}
		}
		if _, same := parent.(*orNode); same {
			if _, c := child.(*orNode); c {
				return child.String()
			}
		}
		return "(" + child.String() + ")"
	}
	return child.String()
}

type qual uint8

const (
	qAny qual = iota
	qOuter
	qInner
)

type dirSel uint8

const (
	dAny dirSel = iota
	dSrc
	dDst
)

type primKind uint8

const (
	pHost primKind = iota
	pNet
	pPort
	pProto
	pVNI
	pVXLAN
)

// protocol selectors of "proto NAME"
const (
	selIP = 256 + iota
	selIP6
	selARP
)

type prim struct {
	q      qual
	dir    dirSel
	kind   primKind
	addr   netip.Addr
	prefix netip.Prefix
	port   uint16
	proto  int // IP protocol number or selIP/selIP6/selARP
	vni    uint32
}

func (n *prim) match(p *Packet) bool {
	switch n.kind {
	case pVXLAN:
		return p.VXLAN
	case pVNI:
		return p.VXLAN && p.VNI == n.vni
	}
	switch n.q {
	case qOuter:
		return n.matchHeader(&p.Outer)
	case qInner:
		return p.VXLAN && n.matchHeader(&p.Inner)
	}
	return n.matchHeader(&p.Outer) || (p.VXLAN && n.matchHeader(&p.Inner))
}

func (n *prim) matchHeader(h *Header) bool {
	switch n.kind {
	case pHost:
		if h.L3 == L3None {
			return false
		}
		switch n.dir {
		case dSrc:
			return h.SrcIP == n.addr
		case dDst:
			return h.DstIP == n.addr
		}
		return h.SrcIP == n.addr || h.DstIP == n.addr
	case pNet:
		if h.L3 == L3None {
			return false
		}
		switch n.dir {
		case dSrc:
			return n.prefix.Contains(h.SrcIP)
		case dDst:
			return n.prefix.Contains(h.DstIP)
		}
		return n.prefix.Contains(h.SrcIP) || n.prefix.Contains(h.DstIP)
	case pPort:
		if !h.IsIP() || h.Fragment || (h.Proto != ProtoTCP && h.Proto != ProtoUDP) {
			return false
		}
		switch n.dir {
		case dSrc:
			return h.SrcPort == n.port
		case dDst:
			return h.DstPort == n.port
		}
		return h.SrcPort == n.port || h.DstPort == n.port
	case pProto:
		switch n.proto {
		case selIP:
			return h.L3 == L3IPv4
		case selIP6:
			return h.L3 == L3IPv6
		case selARP:
			return h.L3 == L3ARP
		}
		return h.IsIP() && int(h.Proto) == n.proto
	}
	return false
}

func (n *prim) String() string {
	var b strings.Builder
	switch n.q {
	case qOuter:
		b.WriteString("outer ")
	case qInner:
		b.WriteString("inner ")
	}
	switch n.dir {
	case dSrc:
		b.WriteString("src ")
	case dDst:
		b.WriteString("dst ")
	}
	switch n.kind {
	case pHost:
		b.WriteString("host " + n.addr.String())
	case pNet:
		b.WriteString("net " + n.prefix.String())
	case pPort:
		b.WriteString("port " + strconv.Itoa(int(n.port)))
	case pProto:
		b.WriteString("proto " + protoSelName(n.proto))
	case pVNI:
		b.WriteString("vni " + strconv.FormatUint(uint64(n.vni), 10))
	case pVXLAN:
		b.WriteString("vxlan")
	}
	return b.String()
}

var protoNames = map[string]int{
	"icmp": ProtoICMP, "tcp": ProtoTCP, "udp": ProtoUDP, "icmp6": ProtoICMPv6,
	"ip": selIP, "ip6": selIP6, "arp": selARP,
}

func protoSelName(p int) string {
	for k, v := range protoNames {
		if v == p {
			return k
		}
	}
	return strconv.Itoa(p)
}

// ---- lexer ----

type token struct {
	s   string
	col int // 1-based
}

func lex(s string) []token {
	var toks []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(' || c == ')' || c == '!':
			toks = append(toks, token{s[i : i+1], i + 1})
			i++
		case (c == '&' || c == '|') && i+1 < len(s) && s[i+1] == c:
			toks = append(toks, token{s[i : i+2], i + 1})
			i += 2
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\n\r()!", rune(s[j])) &&
				!((s[j] == '&' || s[j] == '|') && j+1 < len(s) && s[j+1] == s[j]) {
				j++
			}
			if j == i { // a lone '&' or '|'
				j++
			}
			toks = append(toks, token{s[i:j], i + 1})
			i = j
		}
	}
	return toks
}

// ---- parser ----

type parser struct {
	toks []token
	i    int
	end  int // column just after the input
}

// ParseFilter parses a filter expression. An empty (or all-blank)
// expression gives a nil *Filter, which matches everything. Errors are
// *FilterError values naming the column, e.g.
// "filter: at column 12: expected a port number after 'port', got 'x'".
func ParseFilter(s string) (*Filter, error) {
	p := &parser{toks: lex(s), end: len(s) + 1}
	if len(p.toks) == 0 {
		return nil, nil
	}
	root, err := p.expr(qAny)
	if err != nil {
		return nil, err
	}
	if t, ok := p.peek(); ok {
		if t.s == ")" {
			return nil, p.errAt(t, "unexpected ')' without a matching '('")
		}
		return nil, p.errAt(t, fmt.Sprintf("expected 'and' or 'or' before %s", quote(t.s)))
	}
	return &Filter{src: s, root: root}, nil
}

// MustParseFilter is ParseFilter for expressions known to be valid; it panics on error.
func MustParseFilter(s string) *Filter {
	f, err := ParseFilter(s)
	if err != nil {
		panic(err)
	}
	return f
}

func quote(s string) string { return "'" + s + "'" }

func (p *parser) peek() (token, bool) {
	if p.i < len(p.toks) {
		return p.toks[p.i], true
	}
	return token{col: p.end}, false
}

func (p *parser) next() (token, bool) {
	t, ok := p.peek()
	if ok {
		p.i++
	}
	return t, ok
}

func (p *parser) errAt(t token, msg string) error {
	return &FilterError{Column: t.col, Msg: msg}
}

func got(t token, ok bool) string {
	if !ok {
		return "got end of filter"
	}
	return "got " + quote(t.s)
}

func (p *parser) expr(q qual) (fnode, error) {
	a, err := p.term(q)
	if err != nil {
		return nil, err
	}
	for {
		t, ok := p.peek()
		if !ok || (t.s != "or" && t.s != "||") {
			return a, nil
		}
		p.i++
		b, err := p.term(q)
		if err != nil {
			return nil, err
		}
		a = &orNode{a, b}
	}
}

func (p *parser) term(q qual) (fnode, error) {
	a, err := p.factor(q)
	if err != nil {
		return nil, err
	}
	for {
		t, ok := p.peek()
		if !ok || (t.s != "and" && t.s != "&&") {
			return a, nil
		}
		p.i++
		b, err := p.factor(q)
		if err != nil {
			return nil, err
		}
		a = &andNode{a, b}
	}
}

const expectPrimitive = "expected host, net, port, proto, icmp, tcp, udp, arp, vni, vxlan, inner, outer, src, dst, not or '('"

func (p *parser) factor(q qual) (fnode, error) {
	t, ok := p.next()
	if !ok {
		return nil, p.errAt(t, expectPrimitive+", got end of filter")
	}
	switch t.s {
	case "not", "!":
		x, err := p.factor(q)
		if err != nil {
			return nil, err
		}
		return &notNode{x}, nil
	case "inner", "outer":
		nq := qInner
		if t.s == "outer" {
			nq = qOuter
		}
		if q != qAny {
			return nil, p.errAt(t, fmt.Sprintf("%s cannot be used inside an '%s' qualifier", quote(t.s), map[qual]string{qInner: "inner", qOuter: "outer"}[q]))
		}
		return p.factor(nq)
	case "(":
		x, err := p.expr(q)
		if err != nil {
			return nil, err
		}
		c, ok := p.next()
		if !ok || c.s != ")" {
			return nil, p.errAt(c, fmt.Sprintf("expected ')' to close the '(' at column %d, %s", t.col, got(c, ok)))
		}
		return x, nil
	case ")", "and", "or", "&&", "||":
		return nil, p.errAt(t, expectPrimitive+", got "+quote(t.s))
	}
	p.i--
	return p.primitive(q)
}

func (p *parser) primitive(q qual) (fnode, error) {
	t, _ := p.next()
	n := &prim{q: q}
	word := t.s
	if word == "src" || word == "dst" {
		n.dir = dSrc
		if word == "dst" {
			n.dir = dDst
		}
		nt, ok := p.next()
		if !ok {
			return nil, p.errAt(nt, fmt.Sprintf("expected host, net, port or an address after %s, got end of filter", quote(word)))
		}
		switch nt.s {
		case "host", "net", "port":
			t, word = nt, nt.s
		default:
			if a, err := netip.ParseAddr(nt.s); err == nil {
				n.kind, n.addr = pHost, a.Unmap()
				return n, nil
			}
			return nil, p.errAt(nt, fmt.Sprintf("expected host, net, port or an address after %s, got %s", quote(word), quote(nt.s)))
		}
	}
	switch word {
	case "host":
		a, ok := p.next()
		addr, err := netip.ParseAddr(a.s)
		if !ok || err != nil {
			return nil, p.errAt(a, "expected an IP address after 'host', "+got(a, ok))
		}
		n.kind, n.addr = pHost, addr.Unmap()
	case "net":
		a, ok := p.next()
		pfx, err := netip.ParsePrefix(a.s)
		if !ok || err != nil {
			return nil, p.errAt(a, "expected a network like 10.244.0.0/16 after 'net', "+got(a, ok))
		}
		n.kind, n.prefix = pNet, pfx.Masked()
	case "port":
		a, ok := p.next()
		v, err := strconv.ParseUint(a.s, 10, 16)
		if !ok || err != nil {
			return nil, p.errAt(a, "expected a port number after 'port', "+got(a, ok))
		}
		n.kind, n.port = pPort, uint16(v)
	case "proto":
		a, ok := p.next()
		v, known := protoNames[a.s]
		if !ok || !known {
			return nil, p.errAt(a, "expected icmp, tcp, udp, arp, ip, ip6 or icmp6 after 'proto', "+got(a, ok))
		}
		n.kind, n.proto = pProto, v
	case "vni", "vxlan":
		if n.dir != dAny {
			return nil, p.errAt(t, fmt.Sprintf("%s cannot follow 'src' or 'dst'", quote(word)))
		}
		if q == qInner {
			return nil, p.errAt(t, fmt.Sprintf("%s describes the outer packet; drop the 'inner' qualifier", quote(word)))
		}
		if word == "vxlan" {
			n.kind = pVXLAN
			break
		}
		a, ok := p.next()
		v, err := strconv.ParseUint(a.s, 10, 32)
		if !ok || err != nil || v >= 1<<24 {
			return nil, p.errAt(a, "expected a VXLAN network identifier (0-16777215) after 'vni', "+got(a, ok))
		}
		n.kind, n.vni = pVNI, uint32(v)
	default:
		if v, known := protoNames[word]; known && n.dir == dAny {
			n.kind, n.proto = pProto, v
			break
		}
		if a, err := netip.ParseAddr(word); err == nil && n.dir == dAny {
			n.kind, n.addr = pHost, a.Unmap()
			break
		}
		return nil, p.errAt(t, fmt.Sprintf("unknown word %s; %s", quote(word), expectPrimitive))
	}
	return n, nil
}
