package nat

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// This file is a tiny netfilter evaluator over iptables-restore text, enough
// to follow one packet through klab's own rules without root: the matches
// and targets kube-proxy and flannel use, nothing else. It parses the text
// back (rather than walking the data model) so tests check what the kernel
// would actually be given.

// Rules is a parsed iptables-restore text: table -> chain -> rules.
type Rules struct {
	tables map[Table]map[string][]*simRule
}

type addrMatch struct {
	set    bool
	neg    bool
	prefix netip.Prefix
}

func (m addrMatch) ok(a netip.Addr) bool {
	return !m.set || m.prefix.Contains(a) != m.neg
}

type simRule struct {
	text         string
	src, dst     addrMatch
	proto        string
	dport        int
	prob         float64 // <0: no statistic match
	rcheck       string  // recent --rcheck list
	rseconds     int
	rset         string // recent --set list
	markSet      bool
	markNeg      bool
	markVal      uint32
	markMask     uint32
	dstType      string // addrtype --dst-type
	srcType      string // addrtype --src-type
	ctstate      []string
	ctNeg        bool
	target       string
	toDest       netip.AddrPort
	orMark       uint32
	xorMark      uint32
	xmarkVal     uint32
	xmarkMask    uint32
	xmark        bool
	randomFully  bool
	commentLabel string
}

// tokenize splits a rule line on blanks, keeping "quoted strings" whole.
func tokenize(line string) ([]string, error) {
	var out []string
	for i := 0; i < len(line); {
		switch {
		case line[i] == ' ' || line[i] == '\t':
			i++
		case line[i] == '"':
			j := strings.IndexByte(line[i+1:], '"')
			if j < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", line)
			}
			out = append(out, line[i+1:i+1+j])
			i += j + 2
		default:
			j := strings.IndexAny(line[i:], " \t")
			if j < 0 {
				j = len(line) - i
			}
			out = append(out, line[i:i+j])
			i += j
		}
	}
	return out, nil
}

func parseMark(s string) (val, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	pv, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	mask = 0xffffffff
	if hasMask {
		pm, err := strconv.ParseUint(m, 0, 32)
		if err != nil {
			return 0, 0, err
		}
		mask = uint32(pm)
	}
	return uint32(pv), mask, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseRules parses iptables-restore text (as rendered by Ruleset.Text or
// TextWithJumps) for the simulator.
func ParseRules(text string) (*Rules, error) {
	rs := &Rules{tables: map[Table]map[string][]*simRule{}}
	var cur map[string][]*simRule
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
			continue
		case line[0] == '*':
			t := Table(line[1:])
			if rs.tables[t] == nil {
				rs.tables[t] = map[string][]*simRule{}
			}
			cur = rs.tables[t]
			continue
		case cur == nil:
			return nil, fmt.Errorf("line %d: rule outside a table: %q", n+1, line)
		case line[0] == ':':
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur[name]; !ok {
				cur[name] = nil
			}
			continue
		case strings.HasPrefix(line, "-X "):
			delete(cur, strings.TrimSpace(line[3:]))
			continue
		}
		tok, err := tokenize(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if len(tok) < 2 || tok[0] != "-A" {
			return nil, fmt.Errorf("line %d: only -A rules are understood: %q", n+1, line)
		}
		r, err := parseRule(tok[2:])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w: %q", n+1, err, line)
		}
		r.text = line
		cur[tok[1]] = append(cur[tok[1]], r)
	}
	return rs, nil
}

func parseRule(tok []string) (*simRule, error) {
	r := &simRule{prob: -1}
	neg := false
	arg := func(i int) (string, error) {
		if i+1 >= len(tok) {
			return "", fmt.Errorf("%s needs a value", tok[i])
		}
		return tok[i+1], nil
	}
	for i := 0; i < len(tok); i++ {
		t := tok[i]
		if t == "!" {
			neg = true
			continue
		}
		var v string
		var err error
		switch t {
		case "--rcheck", "--reap", "--rsource", "--random-fully", "--set":
		default:
			if strings.HasPrefix(t, "-") {
				if v, err = arg(i); err != nil {
					return nil, err
				}
				i++
			}
		}
		switch t {
		case "-s", "-d":
			p, err := parsePrefix(v)
			if err != nil {
				return nil, err
			}
			m := addrMatch{set: true, neg: neg, prefix: p}
			if t == "-s" {
				r.src = m
			} else {
				r.dst = m
			}
		case "-p":
			r.proto = v
		case "-m", "--mode", "--mask":
			// Module names are implied by their options below.
		case "--comment":
			r.commentLabel = v
		case "--dport":
			if r.dport, err = strconv.Atoi(v); err != nil {
				return nil, err
			}
		case "--probability":
			if r.prob, err = strconv.ParseFloat(v, 64); err != nil {
				return nil, err
			}
		case "--name":
			r.rcheck = v // settled by --rcheck / --set below
		case "--rcheck":
			r.rset = ""
		case "--seconds":
			if r.rseconds, err = strconv.Atoi(v); err != nil {
				return nil, err
			}
		case "--set":
			r.rset, r.rcheck = r.rcheck, ""
		case "--reap", "--rsource":
		case "--mark":
			r.markSet, r.markNeg = true, neg
			if r.markVal, r.markMask, err = parseMark(v); err != nil {
				return nil, err
			}
		case "--dst-type":
			r.dstType = v
		case "--src-type":
			r.srcType = v
		case "--ctstate":
			r.ctstate, r.ctNeg = strings.Split(v, ","), neg
		case "-j":
			r.target = v
		case "--to-destination":
			if r.toDest, err = netip.ParseAddrPort(v); err != nil {
				return nil, err
			}
		case "--or-mark":
			if r.orMark, _, err = parseMark(v); err != nil {
				return nil, err
			}
		case "--xor-mark":
			if r.xorMark, _, err = parseMark(v); err != nil {
				return nil, err
			}
		case "--set-xmark":
			r.xmark = true
			if r.xmarkVal, r.xmarkMask, err = parseMark(v); err != nil {
				return nil, err
			}
		case "--random-fully":
			r.randomFully = true
		default:
			return nil, fmt.Errorf("option %s is not understood by the simulator", t)
		}
		neg = false
	}
	if r.target == "" {
		return nil, fmt.Errorf("rule has no -j target")
	}
	return r, nil
}

// Recent is the state of the "recent" match (session affinity): list name
// (a KUBE-SEP chain) -> client address -> seconds since it was last seen.
type Recent map[string]map[netip.Addr]int

// Packet is the first packet of a connection, as the simulator sees it.
type Packet struct {
	Src, Dst netip.Addr
	Proto    Protocol
	DPort    int
	// Local lists the node's own addresses (addrtype LOCAL), e.g. its eth0
	// and cni0 addresses.
	Local []netip.Addr
	// FromNode: the node itself sends the packet (nat OUTPUT path);
	// otherwise it arrives from a pod or the network (nat PREROUTING).
	FromNode bool
	// Rand is the draw for the statistic module, in [0,1). The simulator
	// uses one draw for the whole chain of statistic rules: a rule with
	// probability p matches if Rand < p, otherwise Rand is rescaled to
	// (Rand-p)/(1-p) for the next rule. With kube-proxy's 1/(n-i)
	// probabilities, endpoint k of n is picked for Rand in [k/n, (k+1)/n).
	Rand float64
	// Recent is the recent-module state; the simulator updates it on
	// "--set" like the kernel does. May be nil.
	Recent Recent
}

// Result is what happened to a simulated packet.
type Result struct {
	// Chains lists every chain entered, "table/CHAIN", in order.
	Chains []string
	// Rules lists every rule whose target was taken, as rendered.
	Rules []string
	// Endpoint is the KUBE-SEP chain that was picked, "" if none.
	Endpoint string
	// DNAT is the new destination, zero if the packet was not DNATed.
	DNAT netip.AddrPort
	// Marked: the masquerade mark was set when the packet reached
	// POSTROUTING.
	Marked bool
	// Masquerade: a MASQUERADE target was hit (the packet leaves with the
	// node's address).
	Masquerade bool
	// Verdict is ACCEPT, DROP or REJECT.
	Verdict string
	// Local: after DNAT the packet is for the node itself (filter INPUT).
	Local bool
}

type simState struct {
	rs     *Rules
	p      *Packet
	res    *Result
	mark   uint32
	rand   float64
	dst    netip.Addr
	dport  int
	depth  int
	nodeIP map[netip.Addr]bool
}

// Simulate follows pkt through the rules: nat PREROUTING (or OUTPUT for
// FromNode), then filter INPUT/FORWARD (or OUTPUT), then nat POSTROUTING for
// packets that leave. Built-in chains have policy ACCEPT.
func (rs *Rules) Simulate(pkt Packet) Result {
	res := Result{Verdict: "ACCEPT"}
	st := &simState{rs: rs, p: &pkt, res: &res, rand: pkt.Rand, dst: pkt.Dst, dport: pkt.DPort, nodeIP: map[netip.Addr]bool{}}
	for _, a := range pkt.Local {
		st.nodeIP[a] = true
	}
	if pkt.FromNode {
		st.run(NAT, "OUTPUT")
		if v := st.run(Filter, "OUTPUT"); v == "DROP" || v == "REJECT" {
			res.Verdict = v
			return res
		}
		res.Local = st.nodeIP[st.dst]
	} else {
		st.run(NAT, "PREROUTING")
		res.Local = st.nodeIP[st.dst]
		chain := "FORWARD"
		if res.Local {
			chain = "INPUT"
		}
		if v := st.run(Filter, chain); v == "DROP" || v == "REJECT" {
			res.Verdict = v
			return res
		}
		if res.Local {
			return res
		}
	}
	res.Marked = st.mark&0xffffffff != 0 && st.markedForMasq()
	st.run(NAT, "POSTROUTING")
	return res
}

// markedForMasq reports whether any mark bit set by a KUBE-MARK-MASQ rule
// is present (the simulator does not know the configured bit, so it checks
// the bits the KUBE-MARK-MASQ chain sets).
func (st *simState) markedForMasq() bool {
	for _, r := range st.rs.tables[NAT][chainMarkMasq] {
		if r.orMark != 0 && st.mark&r.orMark != 0 {
			return true
		}
		if r.xmark && st.mark&r.xmarkVal != 0 {
			return true
		}
	}
	return false
}

// run evaluates a chain; it returns a terminating verdict ("ACCEPT", "DROP",
// "REJECT", "DNAT", "MASQUERADE") or "" when the chain returned.
func (st *simState) run(t Table, chain string) string {
	st.depth++
	defer func() { st.depth-- }()
	if st.depth > 64 {
		return "DROP" // a loop; iptables-restore would have refused it
	}
	st.res.Chains = append(st.res.Chains, string(t)+"/"+chain)
	for _, r := range st.rs.tables[t][chain] {
		if !st.match(r) {
			continue
		}
		st.res.Rules = append(st.res.Rules, r.text)
		switch r.target {
		case "RETURN":
			return ""
		case "ACCEPT", "DROP", "REJECT":
			return r.target
		case "DNAT":
			st.res.DNAT = r.toDest
			st.dst, st.dport = r.toDest.Addr(), int(r.toDest.Port())
			return "DNAT"
		case "MASQUERADE":
			st.res.Masquerade = true
			return "MASQUERADE"
		case "MARK":
			if r.orMark != 0 {
				st.mark |= r.orMark
			}
			if r.xorMark != 0 {
				st.mark ^= r.xorMark
			}
			if r.xmark {
				st.mark = (st.mark &^ r.xmarkMask) ^ r.xmarkVal
			}
		default:
			if strings.HasPrefix(r.target, sepChainPrefix) {
				st.res.Endpoint = r.target
			}
			if v := st.run(t, r.target); v != "" {
				return v
			}
		}
	}
	return ""
}

func (st *simState) match(r *simRule) bool {
	p := st.p
	if !r.src.ok(p.Src) || !r.dst.ok(st.dst) {
		return false
	}
	if r.proto != "" && r.proto != string(p.Proto) {
		return false
	}
	if r.dport != 0 && r.dport != st.dport {
		return false
	}
	if r.markSet && (st.mark&r.markMask == r.markVal) == r.markNeg {
		return false
	}
	if r.dstType == "LOCAL" && !st.nodeIP[st.dst] {
		return false
	}
	if r.srcType == "LOCAL" && !st.nodeIP[p.Src] && !p.FromNode {
		return false
	}
	if len(r.ctstate) > 0 {
		isNew := false
		for _, s := range r.ctstate {
			if s == "NEW" {
				isNew = true // simulated packets open a new connection
			}
		}
		if isNew == r.ctNeg {
			return false
		}
	}
	if r.rcheck != "" {
		age, ok := p.Recent[r.rcheck][p.Src]
		if !ok || (r.rseconds > 0 && age > r.rseconds) {
			return false
		}
	}
	if r.prob >= 0 {
		if st.rand >= r.prob {
			if r.prob < 1 {
				st.rand = (st.rand - r.prob) / (1 - r.prob)
			}
			return false
		}
	}
	if r.rset != "" && p.Recent != nil {
		if p.Recent[r.rset] == nil {
			p.Recent[r.rset] = map[netip.Addr]int{}
		}
		p.Recent[r.rset][p.Src] = 0
	}
	return true
}
