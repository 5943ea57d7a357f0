package nat

import (
	"bytes"
	"slices"
	"strings"
	"sync"
)

// Table is an iptables table klab writes to.
type Table string

// The two tables kube-proxy and flannel use.
const (
	Filter Table = "filter"
	NAT    Table = "nat"
)

// tables is the order tables appear in a rendering (kube-proxy writes filter
// first, then nat).
var tables = []Table{Filter, NAT}

// Fixed chain names.
const (
	chainServices         = "KUBE-SERVICES"          // nat: ClusterIP dispatch; filter: REJECT for services without endpoints
	chainExternalServices = "KUBE-EXTERNAL-SERVICES" // filter: REJECT for NodePorts without endpoints
	chainNodePorts        = "KUBE-NODEPORTS"         // nat: NodePort dispatch
	chainPostrouting      = "KUBE-POSTROUTING"       // nat: MASQUERADE marked traffic
	chainMarkMasq         = "KUBE-MARK-MASQ"         // nat: set the masquerade mark
	chainForward          = "KUBE-FORWARD"           // filter: accept forwarded service traffic
	chainFlannelPost      = "FLANNEL-POSTRTG"        // nat: flannel pod-egress masquerade
	chainFlannelFwd       = "FLANNEL-FWD"            // filter: flannel forward accept
)

// ownedChain reports whether a chain name is one klab writes: the fixed
// kube-proxy and flannel chains and the hashed per-service chains.
func ownedChain(name string) bool {
	switch name {
	case chainServices, chainExternalServices, chainNodePorts, chainPostrouting,
		chainMarkMasq, chainForward, chainFlannelPost, chainFlannelFwd:
		return true
	}
	return strings.HasPrefix(name, svcChainPrefix) || strings.HasPrefix(name, sepChainPrefix) ||
		strings.HasPrefix(name, extChainPrefix) || strings.HasPrefix(name, svlChainPrefix)
}

// Jump is a rule in a built-in chain (PREROUTING, OUTPUT, POSTROUTING,
// INPUT, FORWARD) that sends packets into a klab chain. Built-in chains are
// shared with everything else on the node, so they are never rewritten with
// iptables-restore: each jump is checked and inserted on its own, as
// kube-proxy and flannel do.
type Jump struct {
	Table Table
	Chain string // the built-in chain
	// Prepend inserts the jump at the top (kube-proxy's jumps); otherwise it
	// is appended (flannel's).
	Prepend bool
	// Rule is the rule specification, unquoted, ending in "-j <klab chain>".
	Rule []string
}

// Target is the chain the jump leads to.
func (j Jump) Target() string { return j.Rule[len(j.Rule)-1] }

// String is the rule as "-A CHAIN args", quoted as iptables-save prints it.
func (j Jump) String() string {
	var b strings.Builder
	b.WriteString("-A ")
	b.WriteString(j.Chain)
	for _, a := range j.Rule {
		b.WriteByte(' ')
		b.WriteString(quote(a))
	}
	return b.String()
}

func quote(a string) string {
	if a == "" || strings.ContainsAny(a, " \t\"") {
		return `"` + a + `"`
	}
	return a
}

type chainKey struct {
	table Table
	name  string
}

// chainSpan is one chain of a rendering: its rules are buf[start:end], one
// "-A <name> ..." line each, or text when set (a service's own chains,
// which a Renderer shares between renderings instead of copying them).
type chainSpan struct {
	chainKey
	start, end int
	rules      int
	text       []byte
}

// Ruleset is the rendered iptables state klab owns on one node: every klab
// chain of the filter and nat tables with its rules, plus the jumps from the
// built-in chains. Rule text lives in one buffer (like kube-proxy's
// LineBuffer), services' own chains in a second one or in an earlier
// rendering's (see Renderer); each chain remembers its slice, so two renderings can
// be compared chain by chain and only changed chains rewritten. A Ruleset is
// immutable once rendered and safe for concurrent reads.
type Ruleset struct {
	lab    string
	buf    []byte
	chains []chainSpan
	jumps  []Jump

	indexOnce sync.Once
	index     map[chainKey]int // position of each chain in chains; see lookup
}

// lookup finds a chain's position. The index is built on first use: a
// one-service change compares two renderings by position and never needs
// it (30,000 map entries at 10,000 services).
func (r *Ruleset) lookup(k chainKey) (int, bool) {
	r.indexOnce.Do(func() {
		r.index = make(map[chainKey]int, len(r.chains))
		for i, ch := range r.chains {
			r.index[ch.chainKey] = i
		}
	})
	i, ok := r.index[k]
	return i, ok
}

// Lab is the lab the ruleset belongs to.
func (r *Ruleset) Lab() string { return r.lab }

// Jumps returns the built-in-chain jumps, in the order they appear in their
// chains.
func (r *Ruleset) Jumps() []Jump { return slices.Clone(r.jumps) }

// Chains returns the names of the ruleset's chains in table t, in rendering
// order.
func (r *Ruleset) Chains(t Table) []string {
	var out []string
	for _, c := range r.chains {
		if c.table == t {
			out = append(out, c.name)
		}
	}
	return out
}

// ChainRules returns the rule lines ("-A <chain> ...") of one chain, and
// whether the chain exists in the ruleset.
func (r *Ruleset) ChainRules(t Table, name string) ([]string, bool) {
	i, ok := r.lookup(chainKey{t, name})
	if !ok {
		return nil, false
	}
	s := strings.TrimSuffix(string(r.chainText(i)), "\n")
	if s == "" {
		return []string{}, true
	}
	return strings.Split(s, "\n"), true
}

// RuleCount is the number of rules of table t (jumps not included).
func (r *Ruleset) RuleCount(t Table) int {
	n := 0
	for _, c := range r.chains {
		if c.table == t {
			n += c.rules
		}
	}
	return n
}

func (r *Ruleset) chainText(i int) []byte {
	c := &r.chains[i]
	if c.text != nil {
		return c.text
	}
	return r.buf[c.start:c.end]
}

// Text is the complete iptables-restore input of the ruleset: every klab
// chain declared (which flushes it under --noflush) and filled. It does not
// contain the built-in-chain jumps (see TextWithJumps).
func (r *Ruleset) Text() string {
	b, _, _ := r.restoreInput(nil, nil, nil)
	return string(b)
}

// TextWithJumps is Text plus the jumps as "-A PREROUTING ..." lines, the
// whole picture of what klab adds to a node. It is what the simulator
// evaluates; it is not meant for iptables-restore --noflush (that would
// append duplicate jumps).
func (r *Ruleset) TextWithJumps() string {
	var b bytes.Buffer
	for _, t := range tables {
		b.WriteString("*" + string(t) + "\n")
		for _, c := range r.chains {
			if c.table == t {
				b.WriteString(":" + c.name + " - [0:0]\n")
			}
		}
		for _, j := range r.jumps {
			if j.Table == t {
				b.WriteString(j.String() + "\n")
			}
		}
		for i, c := range r.chains {
			if c.table == t {
				b.Write(r.chainText(i))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// restoreInput builds the iptables-restore --noflush input that turns the
// kernel state described by prev into r. With prev nil every chain of r is
// rewritten; existing lists extra chains known to exist in the kernel (read
// with iptables-save), deleted when r does not have them. It returns the
// input and the rewritten and deleted chains ("table/chain").
//
// drop holds extra "-D <chain> <rule>" lines per table, for built-in-chain
// jumps that must go before their target chain can be deleted.
func (r *Ruleset) restoreInput(prev *Ruleset, existing []chainKey, drop map[Table][]string) (input []byte, rewritten, deleted []string) {
	// Renderings of similar service sets list their chains in the same
	// order, so chains are matched by position first. A chain whose
	// position holds another chain in the other rendering (moved, new or
	// gone) is looked up among the other rendering's misplaced chains
	// only: if it exists there, its position there is misplaced too.
	var rMoved, pMoved map[chainKey]int
	if prev != nil {
		rMoved, pMoved = map[chainKey]int{}, map[chainKey]int{}
		for i, c := range r.chains {
			if i >= len(prev.chains) || prev.chains[i].chainKey != c.chainKey {
				rMoved[c.chainKey] = i
			}
		}
		for k, c := range prev.chains {
			if k >= len(r.chains) || r.chains[k].chainKey != c.chainKey {
				pMoved[c.chainKey] = k
			}
		}
	}
	var b bytes.Buffer
	for _, t := range tables {
		var changed []int
		for i, c := range r.chains {
			if c.table != t {
				continue
			}
			if prev != nil {
				j, ok := i, i < len(prev.chains) && prev.chains[i].chainKey == c.chainKey
				if !ok {
					j, ok = pMoved[c.chainKey]
				}
				if ok && bytes.Equal(prev.chainText(j), r.chainText(i)) {
					continue
				}
			}
			changed = append(changed, i)
		}
		var stale []string
		if prev != nil {
			for k, c := range prev.chains {
				if c.table != t || (k < len(r.chains) && r.chains[k].chainKey == c.chainKey) {
					continue
				}
				if _, ok := rMoved[c.chainKey]; !ok {
					stale = append(stale, c.name)
				}
			}
		}
		for _, k := range existing {
			if _, ok := r.lookup(k); !ok && k.table == t && !slices.Contains(stale, k.name) {
				stale = append(stale, k.name)
			}
		}
		if len(changed) == 0 && len(stale) == 0 && len(drop[t]) == 0 {
			continue
		}
		rw, del := r.writeTable(&b, t, changed, stale, drop[t], nil)
		rewritten, deleted = append(rewritten, rw...), append(deleted, del...)
	}
	return b.Bytes(), rewritten, deleted
}

// writeTable writes one table's block of an iptables-restore --noflush
// input: the changed chains declared (which creates them, or flushes them
// under --noflush) and the stale ones too (flushing them drops their
// references to other stale chains, so the -X lines succeed), the drop
// lines (-D of jumps), the changed chains' rules, the add lines (jumps),
// and -X of the stale chains. It returns the rewritten and deleted chains
// as "table/chain".
func (r *Ruleset) writeTable(b *bytes.Buffer, t Table, changed []int, stale, drop, add []string) (rewritten, deleted []string) {
	b.WriteString("*" + string(t) + "\n")
	for _, i := range changed {
		b.WriteString(":" + r.chains[i].name + " - [0:0]\n")
		rewritten = append(rewritten, string(t)+"/"+r.chains[i].name)
	}
	for _, n := range stale {
		b.WriteString(":" + n + " - [0:0]\n")
	}
	for _, d := range drop {
		b.WriteString(d + "\n")
	}
	for _, i := range changed {
		b.Write(r.chainText(i))
	}
	for _, a := range add {
		b.WriteString(a + "\n")
	}
	for _, n := range stale {
		b.WriteString("-X " + n + "\n")
		deleted = append(deleted, string(t)+"/"+n)
	}
	b.WriteString("COMMIT\n")
	return rewritten, deleted
}

// repairInput builds the iptables-restore --noflush input that turns the
// kernel state st (read with iptables-save) into r, comparing rules in
// their canonical form (Canon): chains whose rules differ are rewritten,
// klab chains r lacks (and no one else uses) deleted, lab jumps r lacks
// removed and r's missing jumps inserted, all in one transaction. It
// returns nothing when the kernel already matches.
func (r *Ruleset) repairInput(st kernelState) (input []byte, rewritten, deleted []string, jumps int) {
	// Which kernel jumps match a desired one (each at most once).
	used := make([]bool, len(st.jumps))
	var missing []Jump
	for _, j := range r.jumps {
		c := Canon(j.Rule)
		k := slices.IndexFunc(st.jumps, func(kj kernelJump) bool { return kj.table == j.Table && kj.chain == j.Chain && kj.canon == c })
		for k >= 0 && used[k] {
			n := slices.IndexFunc(st.jumps[k+1:], func(kj kernelJump) bool { return kj.table == j.Table && kj.chain == j.Chain && kj.canon == c })
			if n < 0 {
				k = -1
				break
			}
			k += 1 + n
		}
		if k < 0 {
			missing = append(missing, j)
		} else {
			used[k] = true
		}
	}
	var b bytes.Buffer
	for _, t := range tables {
		var changed []int
		for i, c := range r.chains {
			if c.table != t {
				continue
			}
			have, ok := st.rules[c.chainKey]
			if ok || slices.Contains(st.chains, c.chainKey) {
				want := canonLines(r.chainText(i))
				if slices.Equal(want, have) {
					continue
				}
			}
			changed = append(changed, i)
		}
		var stale []string
		for _, k := range st.chains {
			if _, ok := r.lookup(k); !ok && k.table == t && !st.foreign[k] {
				stale = append(stale, k.name)
			}
		}
		var drop, add []string
		for k, kj := range st.jumps {
			if kj.table == t && !used[k] {
				drop = append(drop, "-D"+strings.TrimPrefix(kj.line, "-A"))
			}
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if j := missing[i]; j.Table == t && j.Prepend {
				add = append(add, "-I "+j.Chain+" 1"+strings.TrimPrefix(j.String(), "-A "+j.Chain))
			}
		}
		for _, j := range missing {
			if j.Table == t && !j.Prepend {
				add = append(add, j.String())
			}
		}
		jumps += len(add)
		if len(changed) == 0 && len(stale) == 0 && len(drop) == 0 && len(add) == 0 {
			continue
		}
		rw, del := r.writeTable(&b, t, changed, stale, drop, add)
		rewritten, deleted = append(rewritten, rw...), append(deleted, del...)
	}
	return b.Bytes(), rewritten, deleted, jumps
}

// canonLines is Canon of every "-A CHAIN ..." line of a chain's text.
func canonLines(text []byte) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimSuffix(string(text), "\n"), "\n") {
		if line == "" {
			continue
		}
		tok, err := tokenize(line)
		if err != nil || len(tok) < 2 {
			out = append(out, line)
			continue
		}
		out = append(out, Canon(tok[2:]))
	}
	return out
}

// Diff returns the iptables-restore --noflush input that turns the kernel
// state rendered as prev into r: only chains whose rules changed are
// rewritten, chains that disappeared are flushed and deleted (-X). prev nil
// means "nothing known": every chain is written. An empty result means no
// change.
func (r *Ruleset) Diff(prev *Ruleset) string {
	b, _, _ := r.restoreInput(prev, nil, nil)
	return string(b)
}
