package nft

import (
	"slices"

	"github.com/klab-dev/klab/pkg/nat"
)

// RenderChanged is a partial sync that starts from the changed services,
// as kube-proxy's nftables proxier does (kubernetes/kubernetes
// pkg/proxy/nftables/proxier.go at b0f823e6, syncProxyRules: in a partial
// sync `skipServiceUpdate` skips every service that neither the service
// nor the endpoints change tracker lists, so only the changed services'
// chains and elements are written). prev is the table rendered from
// prevServices (what the kernel holds); next is the whole service list;
// changed names the services ("namespace/name", the default namespace
// when empty) whose inputs differ between the two, added and removed ones
// included. Only those services are rendered, in both versions, and their
// two small renderings diffed: the Change is what Diff(prev, Render(next))
// would give, without walking the other services' chains. The returned
// table is prev with those services' objects replaced (every other
// service's rendering is prev's own, shared), so it can be the prev of the
// next call. The whole next list is still validated (unique ClusterIPs and
// NodePorts across all services).
func RenderChanged(cfg nat.Config, prev *Table, prevServices, next []nat.Service, changed []string, opts ...Option) (*Table, *Change, error) {
	if err := nat.Validate(cfg, next); err != nil {
		return nil, nil, err
	}
	full, ch, err := renderSubsets(cfg, prevServices, next, changed, opts)
	if err != nil {
		return nil, nil, err
	}
	if full {
		// The skeleton changed (options): nothing partial about it.
		t, err := Render(cfg, next, opts...)
		if err != nil {
			return nil, nil, err
		}
		return t, Diff(prev, t), nil
	}
	return patch(prev, ch), ch, nil
}

// renderSubsets renders the changed services of prev and of next alone and
// diffs the two; full reports a change of the table's skeleton (then ch
// replaces a table of the changed services only: the caller renders all).
func renderSubsets(cfg nat.Config, prev, next []nat.Service, changed []string, opts []Option) (full bool, ch *Change, err error) {
	want := make(map[string]bool, len(changed))
	for _, k := range changed {
		want[k] = true
	}
	pick := func(svcs []nat.Service) []nat.Service {
		var out []nat.Service
		for i := range svcs {
			if want[ns(&svcs[i])+"/"+svcs[i].Name] {
				out = append(out, svcs[i])
			}
		}
		return out
	}
	oldSub, err := Render(cfg, pick(prev), opts...)
	if err != nil {
		return false, nil, err
	}
	newSub, err := Render(cfg, pick(next), opts...)
	if err != nil {
		return false, nil, err
	}
	ch = Diff(oldSub, newSub)
	return ch.Full != nil, ch, nil
}

// patch returns prev with the change applied: chains dropped, replaced
// and added, sets added and dropped, elements removed and added. prev is
// not modified; unchanged chains and sets are shared with it.
func patch(prev *Table, ch *Change) *Table {
	t := &Table{Family: prev.Family, Name: prev.Name, Comment: prev.Comment}
	drop := make(map[string]*Chain, len(ch.DelChains)+len(ch.RewriteChains))
	for _, n := range ch.DelChains {
		drop[n] = nil
	}
	for _, c := range ch.RewriteChains {
		drop[c.Name] = c
	}
	t.Chains = make([]*Chain, 0, len(prev.Chains)+len(ch.AddChains))
	for _, c := range prev.Chains {
		if r, ok := drop[c.Name]; ok {
			if r != nil {
				t.Chains = append(t.Chains, r)
			}
			continue
		}
		t.Chains = append(t.Chains, c)
	}
	t.Chains = append(t.Chains, ch.AddChains...)
	adds := map[string][]Element{}
	dels := map[string][]Element{}
	for _, se := range ch.AddElements {
		adds[se.Set.Name] = append(adds[se.Set.Name], se.Elements...)
	}
	for _, se := range ch.DelElements {
		dels[se.Set.Name] = append(dels[se.Set.Name], se.Elements...)
	}
	gone := map[string]bool{}
	for _, n := range ch.DelSets {
		gone[n] = true
	}
	t.Sets = make([]*Set, 0, len(prev.Sets)+len(ch.AddSets))
	for _, s := range prev.Sets {
		if gone[s.Name] {
			continue
		}
		a, d := adds[s.Name], dels[s.Name]
		if len(a) == 0 && len(d) == 0 {
			t.Sets = append(t.Sets, s)
			continue
		}
		ns := &Set{Name: s.Name, Type: s.Type, IsMap: s.IsMap, Flags: s.Flags, Timeout: s.Timeout, Comment: s.Comment}
		// Elements to remove, by first key field (a ClusterIP or a
		// protocol): one map probe per element, no key joined.
		byFirst := map[string][]Element{}
		for _, e := range d {
			byFirst[e.Key[0]] = append(byFirst[e.Key[0]], e)
		}
		ns.Elements = make([]Element, 0, len(s.Elements)+len(a)-len(d))
		for _, e := range s.Elements {
			if c, ok := byFirst[e.Key[0]]; ok && slices.ContainsFunc(c, func(x Element) bool { return slices.Equal(x.Key, e.Key) }) {
				continue
			}
			ns.Elements = append(ns.Elements, e)
		}
		ns.Elements = append(ns.Elements, a...)
		t.Sets = append(t.Sets, ns)
	}
	t.Sets = append(t.Sets, ch.AddSets...)
	return t
}

// ChangedServices names ("namespace/name") the services whose inputs
// differ between prev and next, added and removed ones included: what
// kube-proxy's service and endpoints change trackers hold at a partial
// sync. Services are compared field by field (sameService).
func ChangedServices(prev, next []nat.Service) []string {
	// Fast path: the lists hold the same services in the same order (a
	// change of endpoints or ports), so compare them side by side.
	if len(prev) == len(next) {
		var out []string
		aligned := true
		for i := range next {
			p, n := &prev[i], &next[i]
			if p.Name != n.Name || ns(p) != ns(n) {
				aligned = false
				break
			}
			if !sameService(p, n) {
				out = append(out, ns(n)+"/"+n.Name)
			}
		}
		if aligned {
			slices.Sort(out)
			return out
		}
	}
	old := make(map[string]*nat.Service, len(prev))
	for i := range prev {
		old[ns(&prev[i])+"/"+prev[i].Name] = &prev[i]
	}
	var out []string
	seen := make(map[string]bool, len(next))
	for i := range next {
		k := ns(&next[i]) + "/" + next[i].Name
		seen[k] = true
		if o := old[k]; o == nil || !sameService(o, &next[i]) {
			out = append(out, k)
		}
	}
	for k := range old {
		if !seen[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// DiffServices is the partial sync between two service lists without
// rendering either whole: only the changed services (ChangedServices) are
// rendered, in both versions, and diffed. The Change equals Diff(Render(
// prev), Render(next)); next is validated whole.
func DiffServices(cfg nat.Config, prev, next []nat.Service, opts ...Option) (*Change, error) {
	if err := nat.Validate(cfg, next); err != nil {
		return nil, err
	}
	full, ch, err := renderSubsets(cfg, prev, next, ChangedServices(prev, next), opts)
	if err != nil || !full {
		return ch, err
	}
	a, err := Render(cfg, prev, opts...)
	if err != nil {
		return nil, err
	}
	b, err := Render(cfg, next, opts...)
	if err != nil {
		return nil, err
	}
	return Diff(a, b), nil
}

// sameService compares two services field by field: reflect.DeepEqual
// costs 0.7 us a service, most of a 10,000-service partial sync's CPU.
// TestSameServiceFields fails when nat.Service gains a field this does not
// compare.
func sameService(a, b *nat.Service) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.ClusterIP == b.ClusterIP &&
		a.Affinity == b.Affinity && a.AffinityTimeout == b.AffinityTimeout && a.ExternalTrafficPolicy == b.ExternalTrafficPolicy &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Endpoints, b.Endpoints)
}
