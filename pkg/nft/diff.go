package nft

import (
	"slices"
	"strings"
)

// Change is the difference between two renderings of a table, as kube-proxy's
// partial sync computes it (nftElementStorage.ensureElem and
// cleanupLeftoverKeys for map and set elements, ensureChain's add+flush for
// changed chains, stale chains and affinity sets deleted): only what
// differs. A Change with Full set instead replaces the whole table.
type Change struct {
	Family, Table string

	// Full, when set, is a table to create from scratch (replacing any table
	// of that name): the first sync, or a change of the table's skeleton.
	Full *Table

	AddChains     []*Chain // new chains, with their rules
	RewriteChains []*Chain // existing chains whose rules changed: flushed, rules added
	DelChains     []string // chains no longer rendered
	AddSets       []*Set   // new sets (affinity), with their elements
	DelSets       []string // sets no longer rendered
	AddElements   []SetElements
	DelElements   []SetElements // removed, or changed value (then re-added)
}

// SetElements are elements of one set or map.
type SetElements struct {
	Set      *Set
	Elements []Element
}

// Empty reports whether the change changes nothing.
func (c *Change) Empty() bool {
	return c.Full == nil && len(c.AddChains)+len(c.RewriteChains)+len(c.DelChains)+len(c.AddSets)+
		len(c.DelSets)+len(c.AddElements)+len(c.DelElements) == 0
}

// Diff computes the change that turns prev into next. prev nil means the
// kernel has no such table yet (or its content is unknown): a full change.
func Diff(prev, next *Table) *Change {
	ch := &Change{Family: next.Family, Table: next.Name}
	if prev == nil {
		ch.Full = next
		return ch
	}
	prev.index()
	next.index()
	// Match every chain of next with prev's once (names are long and
	// mostly equal: comparing them is most of a diff's time at 10,000
	// services), then use the match for the skeleton check, the changed
	// chains and the stale ones.
	olds := make([]*Chain, len(next.Chains))
	used := make([]bool, len(prev.Chains))
	for i, c := range next.Chains {
		if j := chainIndex(prev, i, c.Name); j >= 0 {
			olds[i], used[j] = prev.Chains[j], true
		}
	}
	if !sameSkeletonMatched(prev, next, olds) {
		ch.Full = next
		return ch
	}
	for i, c := range next.Chains {
		old := olds[i]
		switch {
		case old == nil:
			ch.AddChains = append(ch.AddChains, c)
		case old != c && !rulesEqual(old.Rules, c.Rules):
			ch.RewriteChains = append(ch.RewriteChains, c)
		}
	}
	for j, c := range prev.Chains {
		if !used[j] {
			ch.DelChains = append(ch.DelChains, c.Name)
		}
	}
	for _, s := range next.Sets {
		old := prev.Set(s.Name)
		if old == nil {
			ch.AddSets = append(ch.AddSets, s)
			continue
		}
		// Renderings are sorted the same way, so most elements sit at the
		// same index in both: compare in place, look up by key only where
		// the two lists have shifted.
		var add, del []Element
		for i, e := range s.Elements {
			oe, ok := Element{}, false
			if i < len(old.Elements) && slices.Equal(old.Elements[i].Key, e.Key) {
				oe, ok = old.Elements[i], true
			} else {
				oe, ok = old.Element(e.Key)
			}
			if !ok {
				add = append(add, e)
			} else if oe.Value != e.Value || oe.Comment != e.Comment {
				del = append(del, oe)
				add = append(add, e)
			}
		}
		for i, e := range old.Elements {
			if i < len(s.Elements) && slices.Equal(s.Elements[i].Key, e.Key) {
				continue
			}
			if _, ok := s.Element(e.Key); !ok {
				del = append(del, e)
			}
		}
		if len(add) > 0 {
			ch.AddElements = append(ch.AddElements, SetElements{s, add})
		}
		if len(del) > 0 {
			ch.DelElements = append(ch.DelElements, SetElements{s, del})
		}
	}
	for _, s := range prev.Sets {
		if next.Set(s.Name) == nil {
			ch.DelSets = append(ch.DelSets, s.Name)
		}
	}
	return ch
}

// sameSkeletonMatched: same table, same base chains, and every set present
// in both has the same definition (a changed set definition, e.g. an
// affinity timeout, would need the set replaced while rules refer to it:
// rebuild). olds[i] is a's chain of b.Chains[i]'s name, or nil.
func sameSkeletonMatched(a, b *Table, olds []*Chain) bool {
	if a.Family != b.Family || a.Name != b.Name || a.Comment != b.Comment {
		return false
	}
	for i, c := range b.Chains {
		if o := olds[i]; o != nil && (o.Hook != c.Hook || o.Type != c.Type || o.Priority != c.Priority || o.Comment != c.Comment) {
			return false
		}
	}
	for _, s := range b.Sets {
		if o := a.Set(s.Name); o != nil && (o.Type != s.Type || o.IsMap != s.IsMap || !slices.Equal(o.Flags, s.Flags) || o.Timeout != s.Timeout || o.Comment != s.Comment) {
			return false
		}
	}
	return true
}

// chainIndex is the index of t's chain name, trying index i first (two
// renderings of mostly the same services have most chains at the same
// index); -1 if t has none.
func chainIndex(t *Table, i int, name string) int {
	if i < len(t.Chains) && t.Chains[i].Name == name {
		return i
	}
	if j, ok := t.chainIdx[name]; ok {
		return j
	}
	return -1
}

func rulesEqual(a, b []Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Comment != b[i].Comment || len(a[i].Stmts) != len(b[i].Stmts) {
			return false
		}
		for j := range a[i].Stmts {
			if !stmtEqual(a[i].Stmts[j], b[i].Stmts[j]) {
				return false
			}
		}
	}
	return true
}

func stmtEqual(a, b Stmt) bool {
	if na, ok := a.(NumgenVmap); ok {
		nb, ok := b.(NumgenVmap)
		return ok && slices.Equal(na.Chains, nb.Chains)
	}
	if _, ok := b.(NumgenVmap); ok {
		return false
	}
	if ra, ok := a.(IPInRanges); ok {
		rb, ok := b.(IPInRanges)
		return ok && ra.Field == rb.Field && slices.Equal(ra.Ranges, rb.Ranges)
	}
	if _, ok := b.(IPInRanges); ok {
		return false
	}
	return a == b
}

// Text is the change as `nft -f` input, in the order Apply sends it: new
// chains and sets first (so that rules and elements can refer to them),
// then stale elements out, changed chains flushed and refilled, new
// elements in, and stale chains and sets deleted last, once nothing refers
// to them.
func (c *Change) Text() string {
	if c.Full != nil {
		return c.Full.Text()
	}
	var b strings.Builder
	p := c.Family + " " + c.Table
	for _, ch := range c.AddChains {
		writeChain(&b, p, ch)
	}
	for _, s := range c.AddSets {
		writeSet(&b, p, s)
		for _, e := range s.Elements {
			writeElement(&b, "add", p, s.Name, e)
		}
	}
	for _, se := range c.DelElements {
		for _, e := range se.Elements {
			writeElement(&b, "delete", p, se.Set.Name, e)
		}
	}
	for _, ch := range c.RewriteChains {
		b.WriteString("flush chain " + p + " " + ch.Name + "\n")
		b.WriteString(ch.rulesText(p))
	}
	for _, ch := range c.AddChains {
		b.WriteString(ch.rulesText(p))
	}
	for _, se := range c.AddElements {
		for _, e := range se.Elements {
			writeElement(&b, "add", p, se.Set.Name, e)
		}
	}
	// Stale chains may refer to each other (external- goes to service-):
	// empty them all before deleting any.
	for _, n := range c.DelChains {
		b.WriteString("flush chain " + p + " " + n + "\n")
	}
	for _, n := range c.DelChains {
		b.WriteString("delete chain " + p + " " + n + "\n")
	}
	for _, n := range c.DelSets {
		b.WriteString("delete set " + p + " " + n + "\n")
	}
	return b.String()
}
