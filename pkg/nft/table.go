package nft

import (
	"strconv"
	"strings"
)

// Table is one nftables table as data: what kube-proxy's nftables proxier
// would leave in the kernel after a full sync. Chains and sets keep the
// order they were rendered in; Text writes them as `nft -f` input.
type Table struct {
	Family  string // "ip"
	Name    string // "kube-proxy"
	Comment string
	Chains  []*Chain
	Sets    []*Set // sets and maps (IsMap)

	chainIdx map[string]int
	setIdx   map[string]int
}

// Chain is a base chain (Hook != "") or a regular chain, with its rules.
type Chain struct {
	Name     string
	Type     string // "filter" | "nat" (base chains)
	Hook     string // "prerouting", "input", ... ; "" for a regular chain
	Priority int    // numeric, as knftables writes it (dstnat = -100, srcnat = 100)
	Comment  string
	Rules    []Rule

	text string // the chain's "add rule" lines, computed once
}

// Rule is one rule: its statements in order and kube-proxy's comment ("" if
// it has none; most of kube-proxy's nftables rules have none).
type Rule struct {
	Stmts   []Stmt
	Comment string
}

// Set is a named set, or a map when IsMap (its Type then ends in
// " : verdict").
type Set struct {
	Name     string
	Type     string // e.g. "ipv4_addr . inet_proto . inet_service : verdict"
	IsMap    bool
	Flags    []string // "dynamic", "timeout"
	Timeout  int      // seconds; 0 = none
	Comment  string
	Elements []Element

	elemIdx map[string]int // by joined key
}

// Element is one set or map element: its key fields (" . "-joined in nft
// syntax), the map value ("goto chain", "drop"; "" in a set) and a comment.
type Element struct {
	Key     []string
	Value   string
	Comment string
}

// Chain returns the named chain, or nil.
func (t *Table) Chain(name string) *Chain {
	t.index()
	if i, ok := t.chainIdx[name]; ok {
		return t.Chains[i]
	}
	return nil
}

// Set returns the named set or map, or nil.
func (t *Table) Set(name string) *Set {
	t.index()
	if i, ok := t.setIdx[name]; ok {
		return t.Sets[i]
	}
	return nil
}

func (t *Table) index() {
	if t.chainIdx != nil && len(t.chainIdx) == len(t.Chains) && len(t.setIdx) == len(t.Sets) {
		return
	}
	t.chainIdx = make(map[string]int, len(t.Chains))
	for i, c := range t.Chains {
		t.chainIdx[c.Name] = i
	}
	t.setIdx = make(map[string]int, len(t.Sets))
	for i, s := range t.Sets {
		t.setIdx[s.Name] = i
	}
}

// Element returns the element with this key and whether it exists.
func (s *Set) Element(key []string) (Element, bool) {
	s.indexElems()
	i, ok := s.elemIdx[strings.Join(key, " . ")]
	if !ok {
		return Element{}, false
	}
	return s.Elements[i], true
}

func (s *Set) indexElems() {
	if s.elemIdx != nil && len(s.elemIdx) == len(s.Elements) {
		return
	}
	s.elemIdx = make(map[string]int, len(s.Elements))
	for i, e := range s.Elements {
		s.elemIdx[strings.Join(e.Key, " . ")] = i
	}
}

// prefix is "ip kube-proxy", every line's object reference.
func (t *Table) prefix() string { return t.Family + " " + t.Name }

// Text renders the table as `nft -f` input in knftables' style (the lines a
// knftables transaction writes, objects.go writeOperation): the table, every
// chain, every set and map, every rule, every element. Chains come before
// rules and elements that jump to them, sets before rules that use them, so
// the text loads into an empty table in one `nft -f` transaction.
func (t *Table) Text() string {
	var b strings.Builder
	p := t.prefix()
	b.WriteString("add table " + p)
	if t.Comment != "" {
		b.WriteString(" { comment " + strconv.Quote(t.Comment) + " ; }")
	}
	b.WriteByte('\n')
	for _, c := range t.Chains {
		writeChain(&b, p, c)
	}
	for _, s := range t.Sets {
		writeSet(&b, p, s)
	}
	for _, c := range t.Chains {
		b.WriteString(c.rulesText(p))
	}
	for _, s := range t.Sets {
		for _, e := range s.Elements {
			writeElement(&b, "add", p, s.Name, e)
		}
	}
	return b.String()
}

func writeChain(b *strings.Builder, p string, c *Chain) {
	b.WriteString("add chain " + p + " " + c.Name)
	if c.Hook != "" || c.Comment != "" {
		b.WriteString(" {")
		if c.Hook != "" {
			b.WriteString(" type " + c.Type + " hook " + c.Hook + " priority " + strconv.Itoa(c.Priority) + " ;")
		}
		if c.Comment != "" {
			b.WriteString(" comment " + strconv.Quote(c.Comment) + " ;")
		}
		b.WriteString(" }")
	}
	b.WriteByte('\n')
}

func writeSet(b *strings.Builder, p string, s *Set) {
	kind := "set"
	if s.IsMap {
		kind = "map"
	}
	b.WriteString("add " + kind + " " + p + " " + s.Name + " { type " + s.Type + " ;")
	if len(s.Flags) > 0 {
		b.WriteString(" flags " + strings.Join(s.Flags, ",") + " ;")
	}
	if s.Timeout > 0 {
		b.WriteString(" timeout " + strconv.Itoa(s.Timeout) + "s ;")
	}
	if s.Comment != "" {
		b.WriteString(" comment " + strconv.Quote(s.Comment) + " ;")
	}
	b.WriteString(" }\n")
}

// writeElement writes "add element ip kube-proxy SET { KEY [comment C] [: VALUE] }"
// or, for verb "delete", the key only.
func writeElement(b *strings.Builder, verb, p, set string, e Element) {
	b.WriteString(verb + " element " + p + " " + set + " { " + strings.Join(e.Key, " . "))
	if verb == "add" {
		if e.Comment != "" {
			b.WriteString(" comment " + strconv.Quote(e.Comment))
		}
		if e.Value != "" {
			b.WriteString(" : " + e.Value)
		}
	}
	b.WriteString(" }\n")
}

// rulesText is the chain's "add rule" lines (cached: diffs compare it).
func (c *Chain) rulesText(p string) string {
	if c.text == "" && len(c.Rules) > 0 {
		var b []byte
		for _, r := range c.Rules {
			b = append(b, "add rule "...)
			b = append(b, p...)
			b = append(b, ' ')
			b = append(b, c.Name...)
			b = append(b, ' ')
			b = r.appendText(b)
			b = append(b, '\n')
		}
		c.text = string(b)
	}
	return c.text
}

// Text is the rule in nft syntax, as kube-proxy writes it, e.g.
// "ip saddr 10.180.0.1 jump mark-for-masquerade".
func (r Rule) Text() string { return string(r.appendText(nil)) }

func (r Rule) appendText(b []byte) []byte {
	for i, s := range r.Stmts {
		if i > 0 {
			b = append(b, ' ')
		}
		b = s.appendText(b)
	}
	if r.Comment != "" {
		b = append(b, " comment "...)
		b = strconv.AppendQuote(b, r.Comment)
	}
	return b
}
