package nft

import (
	"cmp"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
)

// sortedCopy is the table with chains and elements in a canonical order,
// for tests comparing a patched table with a fresh rendering.
func sortedCopy(t *Table) *Table {
	c := &Table{Family: t.Family, Name: t.Name, Comment: t.Comment, Chains: slices.Clone(t.Chains)}
	slices.SortFunc(c.Chains, func(a, b *Chain) int { return cmp.Compare(a.Name, b.Name) })
	for _, s := range t.Sets {
		x := *s
		x.elemIdx = nil
		x.Elements = slices.Clone(s.Elements)
		slices.SortFunc(x.Elements, func(a, b Element) int { return slices.Compare(a.Key, b.Key) })
		c.Sets = append(c.Sets, &x)
	}
	slices.SortFunc(c.Sets, func(a, b *Set) int { return cmp.Compare(a.Name, b.Name) })
	return c
}

// RenderChanged gives the table and the change a full Render and Diff
// give, for each kind of service change.
func TestRenderChanged(t *testing.T) {
	base := benchServices(50)
	base[3].Ports[0].NodePort = 30003
	base[7].Affinity = nat.AffinityClientIP
	type edit func([]nat.Service) ([]nat.Service, string)
	for name, ed := range map[string]edit{
		"endpoint replaced": func(s []nat.Service) ([]nat.Service, string) {
			s[10].Endpoints = []nat.Endpoint{s[10].Endpoints[0], {IP: netip.MustParseAddr("10.244.250.1")}}
			return s, "bench/svc00010"
		},
		"no endpoints": func(s []nat.Service) ([]nat.Service, string) {
			s[3].Endpoints = nil
			return s, "bench/svc00003"
		},
		"service added": func(s []nat.Service) ([]nat.Service, string) {
			n := s[0]
			n.Name, n.ClusterIP = "new", netip.MustParseAddr("10.97.200.1")
			n.Ports = []nat.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30100}}
			return append(s, n), "bench/new"
		},
		"service removed": func(s []nat.Service) ([]nat.Service, string) {
			return slices.Delete(s, 3, 4), "bench/svc00003"
		},
		"affinity endpoint": func(s []nat.Service) ([]nat.Service, string) {
			s[7].Endpoints = s[7].Endpoints[:1]
			return s, "bench/svc00007"
		},
		"nodeport added": func(s []nat.Service) ([]nat.Service, string) {
			s[20].Ports = []nat.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30020}}
			return s, "bench/svc00020"
		},
	} {
		t.Run(name, func(t *testing.T) {
			prevSvcs := cloneServices(base)
			prev, err := Render(benchConfig, prevSvcs)
			if err != nil {
				t.Fatal(err)
			}
			next, key := ed(cloneServices(base))
			full, err := Render(benchConfig, next)
			if err != nil {
				t.Fatal(err)
			}
			got, ch, err := RenderChanged(benchConfig, prev, prevSvcs, next, []string{key})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := sortedCopy(full).Text(), sortedCopy(got).Text(); a != b {
				t.Errorf("patched table differs from a full rendering:\n%s\n---\n%s", a, b)
			}
			if want := Diff(prev, full); want.Text() != ch.Text() {
				t.Errorf("change differs from the full diff:\nfull:\n%s\npartial:\n%s", want.Text(), ch.Text())
			}
			if ch.Empty() {
				t.Error("empty change")
			}
			if got := ChangedServices(prevSvcs, next); !slices.Equal(got, []string{key}) {
				t.Errorf("ChangedServices = %v, want [%s]", got, key)
			}
			ds, err := DiffServices(benchConfig, prevSvcs, next)
			if err != nil {
				t.Fatal(err)
			}
			if want := Diff(prev, full); want.Text() != ds.Text() {
				t.Errorf("DiffServices differs from the full diff:\nfull:\n%s\npartial:\n%s", want.Text(), ds.Text())
			}
		})
	}
}

func cloneServices(s []nat.Service) []nat.Service {
	out := slices.Clone(s)
	for i := range out {
		out[i].Ports = slices.Clone(out[i].Ports)
		out[i].Endpoints = slices.Clone(out[i].Endpoints)
	}
	return out
}

// sameService compares every field of nat.Service: a new field must be
// added there (and here).
func TestSameServiceFields(t *testing.T) {
	compared := []string{"Namespace", "Name", "ClusterIP", "Ports", "Affinity", "AffinityTimeout", "ExternalTrafficPolicy", "Endpoints"}
	typ := reflect.TypeFor[nat.Service]()
	for i := range typ.NumField() {
		if !slices.Contains(compared, typ.Field(i).Name) {
			t.Errorf("nat.Service.%s is not compared by sameService (partial.go): add it", typ.Field(i).Name)
		}
	}
}

// With the Local external traffic policy the rendering is per node; the
// partial sync of a node equals its full diff when an endpoint moves.
func TestDiffServicesLocalPolicy(t *testing.T) {
	cfg := benchConfig
	cfg.NodeName = "node1"
	prev := benchServices(20)
	for i := range prev {
		prev[i].Ports[0].NodePort = 30000 + i
		prev[i].ExternalTrafficPolicy = nat.PolicyLocal
		prev[i].Endpoints[0].NodeName, prev[i].Endpoints[1].NodeName = "node1", "node2"
	}
	next := cloneServices(prev)
	next[4].Endpoints[1].NodeName = "node1"
	a, err := Render(cfg, prev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Render(cfg, next)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := DiffServices(cfg, prev, next)
	if err != nil {
		t.Fatal(err)
	}
	if want := Diff(a, b); want.Text() != ch.Text() || ch.Empty() {
		t.Errorf("DiffServices differs from the full diff:\nfull:\n%s\npartial:\n%s", want.Text(), ch.Text())
	}
}

// Statements holding slices compare by content (== on them panics).
func TestStmtEqualSlices(t *testing.T) {
	r := func(a, b string) IPInRanges {
		return IPInRanges{Field: Daddr, Ranges: []IPRange{{From: netip.MustParseAddr(a), To: netip.MustParseAddr(b)}}}
	}
	for _, c := range []struct {
		a, b Stmt
		want bool
	}{
		{r("10.0.0.0", "10.0.0.255"), r("10.0.0.0", "10.0.0.255"), true},
		{r("10.0.0.0", "10.0.0.255"), r("10.0.0.0", "10.0.1.255"), false},
		{r("10.0.0.0", "10.0.0.255"), IPInSet{Daddr, "s"}, false},
		{IPInSet{Daddr, "s"}, r("10.0.0.0", "10.0.0.255"), false},
		{NumgenVmap{[]string{"a"}}, NumgenVmap{[]string{"a"}}, true},
	} {
		if got := stmtEqual(c.a, c.b); got != c.want {
			t.Errorf("stmtEqual(%v, %v) = %v", c.a, c.b, got)
		}
	}
}
