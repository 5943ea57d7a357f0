package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// tmpSuffix names the set a new content is built in before the swap.
const tmpSuffix = "-T"

// RenderIPSets returns the `ipset restore` input that brings the kernel
// from prev (nil: nothing known, a fresh node or a resync) to next, to be
// run BEFORE RenderIPTables so every set a rule names exists:
//
//   - a set that is new (or every set when prev is nil) is built in a
//     temporary set, then swapped in and the temporary destroyed: create
//     T; flush T; add T ...; create S -exist; swap T S; destroy T. The swap
//     is atomic, so a set is never seen half-filled;
//   - a set that exists in both is changed in place in two phases over the
//     whole plan: first every removal (del), then every addition (add), so
//     during the first phase each set is a subset of its prev content and
//     during the second a subset of its next content.
//
// Sets only ever admit (they are peers of allow rules), so at every instant
// the kernel admits no more than prev or next would: no connection both
// states deny can start. A connection allowed by both but through
// different sets may be refused for the instant between the phases (only a
// new one: established connections pass on conntrack state).
func RenderIPSets(prev, next *Plan) string {
	var b strings.Builder
	old := map[string]*IPSet{}
	if prev != nil {
		for i := range prev.Sets {
			old[prev.Sets[i].Name] = &prev.Sets[i]
		}
	}
	var dels, adds []string
	for _, s := range next.Sets {
		o, ok := old[s.Name]
		if !ok || o.Type != s.Type {
			if ok {
				// Same name, other type cannot happen (the name hashes the
				// kind); rebuild anyway.
				fmt.Fprintf(&b, "destroy %s\n", s.Name)
			}
			tmp := s.Name + tmpSuffix
			fmt.Fprintf(&b, "create %s %s family inet -exist\n", tmp, s.Type)
			fmt.Fprintf(&b, "flush %s\n", tmp)
			for _, e := range s.Entries {
				fmt.Fprintf(&b, "add %s %s\n", tmp, entryText(e))
			}
			fmt.Fprintf(&b, "create %s %s family inet -exist\n", s.Name, s.Type)
			fmt.Fprintf(&b, "swap %s %s\n", tmp, s.Name)
			fmt.Fprintf(&b, "destroy %s\n", tmp)
			continue
		}
		have := map[Entry]bool{}
		for _, e := range o.Entries {
			have[e] = true
		}
		want := map[Entry]bool{}
		for _, e := range s.Entries {
			want[e] = true
			if !have[e] {
				adds = append(adds, fmt.Sprintf("add %s %s -exist\n", s.Name, entryText(e)))
			}
		}
		for _, e := range o.Entries {
			if !want[e] {
				dels = append(dels, fmt.Sprintf("del %s %s -exist\n", s.Name, e.Addr))
			}
		}
	}
	for _, l := range dels {
		b.WriteString(l)
	}
	for _, l := range adds {
		b.WriteString(l)
	}
	return b.String()
}

func entryText(e Entry) string {
	if e.NoMatch {
		return e.Addr + " nomatch"
	}
	return e.Addr
}

// RenderIPSetDestroy returns the `ipset restore` input that destroys the
// sets of prev that next no longer has, to be run AFTER RenderIPTables (a
// set cannot be destroyed while a rule names it). Empty when none.
func RenderIPSetDestroy(prev, next *Plan) string {
	if prev == nil {
		return ""
	}
	var b strings.Builder
	for _, s := range prev.Sets {
		if next.Set(s.Name) == nil {
			fmt.Fprintf(&b, "destroy %s\n", s.Name)
		}
	}
	return b.String()
}

// comment quotes an iptables comment (at most 256 bytes).
func comment(s string) string {
	s = strings.ReplaceAll(s, `"`, "'")
	if len(s) > 255 {
		s = s[:252] + "..."
	}
	return `-m comment --comment "` + s + `"`
}

// DropCommentPrefix starts the comment of every drop rule, so a drop can be
// found in iptables-save and its counters read: "klab <lab> drop ingress x/a".
const DropCommentPrefix = "klab "

// DropComment is the comment of the DROP (and NFLOG) rule ending a pod's
// chain, dir "ingress" or "egress".
func DropComment(lab, dir, pod string) string {
	return fmt.Sprintf("klab %s drop %s %s", lab, dir, pod)
}

// NFLOGPrefix is the --nflog-prefix of a pod chain's drop (at most 64
// bytes): "klab <lab> I x/a" (I ingress, E egress).
func NFLOGPrefix(lab, dir, pod string) string {
	s := fmt.Sprintf("klab %s %s %s", lab, strings.ToUpper(dir[:1]), pod)
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// RenderIPTables returns the iptables-restore input (filter table, for
// `iptables-restore --noflush`: one transaction) that makes the kernel's
// policy chains those of next, deleting the pod chains of prev that next
// no longer has. It declares (and so flushes) the dispatch chains and
// every pod chain; the jump FORWARD -> DispatchChain is the caller's (a
// built-in chain). DispatchChain:
//
//  1. ACCEPT replies and related packets of allowed connections (conntrack
//     ESTABLISHED,RELATED): policies are stateful;
//  2. jump to EgressChain, which holds for each pod isolated for egress
//     -s POD -> its egress chain; then to IngressChain, -d POD -> its
//     ingress chain for each pod isolated for ingress. A pod chain RETURNs
//     when a rule admits, so a packet passes egress of its source and then
//     ingress of its destination, and falls through to the rest of
//     FORWARD when both admit.
//
// The per-pod jumps live in chains of their own so that a change adds and
// deletes single jumps (-A, -D: PlanApply) instead of rewriting the list,
// and egress is still decided before ingress whatever the order of the
// jumps inside each.
//
// A pod chain ends with NFLOG (group Plan.NFLOGGroup, prefix NFLOGPrefix)
// and DROP, both commented DropComment: the drop is visible in counters
// and on the NFLOG group. Every rule carries a comment saying why.
func RenderIPTables(prev, next *Plan) string {
	return renderIPTables(prev, next, false, nil, nil)
}

// chainText is one chain of a plan as iptables-restore lines ("-A ...").
type chainText struct {
	name  string
	lines []string
}

// chainsOf renders the plan's chains: DispatchChain first, then each
// isolated pod's egress and ingress chain, in pod order.
func chainsOf(next *Plan) []chainText {
	out := dispatchOf(next)
	for _, p := range next.Pods {
		if p.Egress != nil {
			out = append(out, podChain(next, p, "egress", p.Egress))
		}
		if p.Ingress != nil {
			out = append(out, podChain(next, p, "ingress", p.Ingress))
		}
	}
	return out
}

// dispatchOf renders DispatchChain, EgressChain and IngressChain.
func dispatchOf(next *Plan) []chainText {
	lab := next.Lab
	d := chainText{name: DispatchChain, lines: []string{
		fmt.Sprintf("-A %s -m conntrack --ctstate RELATED,ESTABLISHED %s -j ACCEPT", DispatchChain, comment("klab "+lab+": replies of allowed connections pass")),
		fmt.Sprintf("-A %s %s -j %s", DispatchChain, comment("klab "+lab+": egress of isolated pods"), EgressChain),
		fmt.Sprintf("-A %s %s -j %s", DispatchChain, comment("klab "+lab+": ingress of isolated pods"), IngressChain),
	}}
	e, in := chainText{name: EgressChain}, chainText{name: IngressChain}
	for _, p := range next.Pods {
		if p.Egress != nil {
			e.lines = append(e.lines, fmt.Sprintf("-A %s -s %s/32 %s -j %s", EgressChain, p.IP, comment(fmt.Sprintf("klab %s: egress of %s isolated by %s", lab, p.Pod, strings.Join(p.Egress.Selecting, ","))), p.Egress.Name))
		}
		if p.Ingress != nil {
			in.lines = append(in.lines, fmt.Sprintf("-A %s -d %s/32 %s -j %s", IngressChain, p.IP, comment(fmt.Sprintf("klab %s: ingress of %s isolated by %s", lab, p.Pod, strings.Join(p.Ingress.Selecting, ","))), p.Ingress.Name))
		}
	}
	return []chainText{d, e, in}
}

// podChain renders one direction of one pod: its admitting rules, then
// NFLOG and DROP. Its text depends only on the chain's name (a hash of
// lab, direction and pod), its Rules and the NFLOG group.
func podChain(next *Plan, p PodPlan, dir string, c *Chain) chainText {
	lab := next.Lab
	ct := chainText{name: c.Name, lines: make([]string, 0, len(c.Rules)+2)}
	setDir := "src"
	if dir == "egress" {
		setDir = "dst"
	}
	var b strings.Builder
	for _, r := range c.Rules {
		b.Reset()
		b.WriteString("-A " + c.Name)
		if r.Set != "" {
			b.WriteString(" -m set --match-set " + r.Set + " " + setDir)
		}
		if r.Protocol != "" {
			proto := strings.ToLower(string(r.Protocol))
			b.WriteString(" -p " + proto)
			if r.Ports != "" {
				b.WriteString(" -m " + proto + " --dport " + r.Ports)
			}
		}
		b.WriteString(" " + comment("klab "+lab+": "+r.Comment) + " -j RETURN")
		ct.lines = append(ct.lines, b.String())
	}
	dcm := DropComment(lab, dir, p.Pod)
	ct.lines = append(ct.lines,
		fmt.Sprintf("-A %s %s -j NFLOG --nflog-group %d --nflog-prefix \"%s\"", c.Name, comment(dcm), next.NFLOGGroup, NFLOGPrefix(lab, dir, p.Pod)),
		fmt.Sprintf("-A %s %s -j DROP", c.Name, comment(dcm)))
	return ct
}

// renderIPTables renders next against prev. With changedOnly (and a prev),
// only the chains whose rules differ from prev's are declared and
// rewritten, and "" is returned when none does and none goes; stale names
// chains known to be in the kernel besides prev's (read back); extra lines
// (the FORWARD jump) go at the end of the transaction.
func renderIPTables(prev, next *Plan, changedOnly bool, stale []string, extra []string) string {
	incremental := changedOnly && prev != nil
	var write []chainText
	var dels, adds []string // single dispatch jumps (incremental)
	want := map[string]bool{}
	if incremental && prev.Lab == next.Lab && prev.NFLOGGroup == next.NFLOGGroup {
		// Compare the chains as data; render only those that differ.
		old := map[string]*Chain{}
		for _, p := range prev.Pods {
			for _, c := range []*Chain{p.Egress, p.Ingress} {
				if c != nil {
					old[c.Name] = c
					stale = append(stale, c.Name)
				}
			}
		}
		od := dispatchOf(prev)
		for i, d := range dispatchOf(next) {
			want[d.name] = true
			switch {
			case slices.Equal(d.lines, od[i].lines):
			case i == 0:
				write = append(write, d)
			default:
				// Single jumps: deletions of what went, appends of what
				// came (the order inside one list does not matter).
				have := map[string]bool{}
				for _, l := range od[i].lines {
					have[l] = true
				}
				keep := map[string]bool{}
				for _, l := range d.lines {
					keep[l] = true
					if !have[l] {
						adds = append(adds, l)
					}
				}
				for _, l := range od[i].lines {
					if !keep[l] {
						dels = append(dels, "-D"+strings.TrimPrefix(l, "-A"))
					}
				}
			}
		}
		for _, p := range next.Pods {
			for _, dc := range []struct {
				dir string
				c   *Chain
			}{{"egress", p.Egress}, {"ingress", p.Ingress}} {
				if dc.c == nil {
					continue
				}
				want[dc.c.Name] = true
				if o := old[dc.c.Name]; o != nil && slices.Equal(o.Rules, dc.c.Rules) {
					continue
				}
				write = append(write, podChain(next, p, dc.dir, dc.c))
			}
		}
	} else {
		have := map[string][]string{}
		if prev != nil {
			for _, c := range chainsOf(prev) {
				have[c.name] = c.lines
				stale = append(stale, c.name)
			}
		}
		for _, c := range chainsOf(next) {
			want[c.name] = true
			if old, ok := have[c.name]; incremental && ok && slices.Equal(old, c.lines) {
				continue
			}
			write = append(write, c)
		}
	}
	gone := map[string]bool{}
	var drop []string
	for _, c := range stale {
		if !want[c] && !gone[c] {
			gone[c] = true
			drop = append(drop, c)
		}
	}
	sort.Strings(drop)
	if incremental && len(write) == 0 && len(drop) == 0 && len(extra) == 0 && len(dels) == 0 && len(adds) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range write {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.name)
	}
	for _, c := range drop {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range write {
		for _, l := range c.lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	for _, l := range dels {
		b.WriteString(l + "\n")
	}
	for _, l := range adds {
		b.WriteString(l + "\n")
	}
	for _, c := range drop {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	for _, l := range extra {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
