package nat

import (
	"strings"
)

// Chain is one chain's rules as iptables-save prints them ("-A CHAIN ..."),
// read back from the kernel.
type Chain struct {
	Table Table    `json:"table"`
	Name  string   `json:"name"`
	Rules []string `json:"rules"`
}

// hooks lists each table's built-in chains in the order a packet meets
// them: arriving (PREROUTING, then INPUT or FORWARD), then locally sent
// (OUTPUT), then leaving (POSTROUTING).
var hooks = map[Table][]string{
	NAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	Filter: {"INPUT", "FORWARD", "OUTPUT"},
}

// ReadOwned reads the iptables rules lab owns in namespace ns from the
// kernel (iptables-save) and returns them grouped by chain, in the order a
// packet walks them: for each table, the built-in chains in hook order
// (only the lab's jumps in them), each followed depth-first by the chains
// its rules jump to, in the order of their first jump. Owned chains nothing
// jumps to come last. Rules of other owners in built-in chains are left
// out; use iptables-save for the whole picture.
func ReadOwned(ns, lab string) ([]Chain, error) {
	text, err := save(ns)
	if err != nil {
		return nil, err
	}
	return ownedInPacketOrder(text, lab), nil
}

// ownedInPacketOrder is ReadOwned's pure part, over iptables-save output.
func ownedInPacketOrder(text, lab string) []Chain {
	rules := map[chainKey][]string{}
	var declared []chainKey
	scanSave(text, func(t Table, name string, _ bool) {
		if ownedChain(name) {
			declared = append(declared, chainKey{t, name})
		}
	}, func(t Table, line string, tok []string) {
		if len(tok) < 2 {
			return
		}
		k := chainKey{t, tok[1]}
		if builtin[k.name] && !hasLabComment(tok, lab) {
			return
		}
		if !builtin[k.name] && !ownedChain(k.name) {
			return
		}
		rules[k] = append(rules[k], line)
	})
	var out []Chain
	seen := map[chainKey]bool{}
	var visit func(k chainKey)
	visit = func(k chainKey) {
		if seen[k] {
			return
		}
		seen[k] = true
		rs := rules[k]
		if builtin[k.name] && len(rs) == 0 {
			return
		}
		out = append(out, Chain{Table: k.table, Name: k.name, Rules: rs})
		for _, r := range rs {
			tok, err := tokenize(r)
			if err != nil {
				continue
			}
			if target := jumpTarget(tok); ownedChain(target) {
				visit(chainKey{k.table, target})
			}
		}
	}
	for _, t := range []Table{NAT, Filter} {
		for _, h := range hooks[t] {
			visit(chainKey{t, h})
		}
	}
	for _, k := range declared {
		visit(k)
	}
	return out
}

// scanSave walks iptables-save output: chain is called for every chain
// declaration (user: a user-defined chain, "- [" instead of a policy), rule
// for every "-A" line with its tokens (nil if it does not tokenize).
func scanSave(text string, chain func(t Table, name string, user bool), rule func(t Table, line string, tok []string)) {
	var t Table
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			t = Table(line[1:])
		case strings.HasPrefix(line, ":"):
			name, rest, _ := strings.Cut(line[1:], " ")
			chain(t, name, strings.HasPrefix(rest, "- ["))
		case strings.HasPrefix(line, "-A "):
			tok, err := tokenize(line)
			if err != nil {
				tok = nil
			}
			rule(t, line, tok)
		}
	}
}

// ServiceRules picks from chains (as ReadOwned returns them) the rules that
// implement service s: its own chains whole (see ServiceChains), and from the
// shared dispatch chains (KUBE-SERVICES, KUBE-NODEPORTS, ...) the rules that
// jump to one of them, in the order of chains.
func ServiceRules(chains []Chain, s Service) []Chain {
	own := map[string]bool{}
	for _, name := range ServiceChains(s) {
		own[name] = true
	}
	var out []Chain
	for _, ch := range chains {
		if own[ch.Name] {
			out = append(out, ch)
			continue
		}
		var keep []string
		for _, r := range ch.Rules {
			if tok, err := tokenize(r); err == nil && own[jumpTarget(tok)] {
				keep = append(keep, r)
			}
		}
		if len(keep) > 0 {
			out = append(out, Chain{Table: ch.Table, Name: ch.Name, Rules: keep})
		}
	}
	return out
}
