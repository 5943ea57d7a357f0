package nat

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// TestRendererMatchesRender changes a service set step by step (endpoints
// added, removed and moved, ports and affinity changed, services added and
// deleted, the config switched) and checks that a long-lived Renderer gives
// exactly what a fresh Render gives at every step, chain by chain.
func TestRendererMatchesRender(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	svcs := genServices(40, 3)
	svcs[3].Ports = append(svcs[3].Ports, ServicePort{Name: "dns", Protocol: UDP, Port: 53, NodePort: 30053})
	svcs[5].Endpoints = nil
	cfgs := []Config{
		{Lab: "rr", Flannel: &FlannelMasq{PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}},
		{Lab: "rr", Flannel: &FlannelMasq{PodCIDR: netip.MustParsePrefix("10.244.2.0/24")}},
		{Lab: "rr", MasqueradeBit: 13},
		{Lab: "other"},
	}
	var rn Renderer
	next := 100
	for step := 0; step < 300; step++ {
		i := rng.IntN(len(svcs))
		s := &svcs[i]
		switch rng.IntN(7) {
		case 0: // move one endpoint (mutating the caller's slice in place)
			if len(s.Endpoints) > 0 {
				s.Endpoints[rng.IntN(len(s.Endpoints))].IP = netip.AddrFrom4([4]byte{10, 244, 200, byte(step)})
			}
		case 1: // drop the last endpoint
			if len(s.Endpoints) > 0 {
				s.Endpoints = s.Endpoints[:len(s.Endpoints)-1]
			}
		case 2: // add an endpoint
			s.Endpoints = append(s.Endpoints, Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, 201, byte(step)})})
		case 3: // toggle affinity
			if s.Affinity == AffinityClientIP {
				s.Affinity = ""
			} else {
				s.Affinity = AffinityClientIP
			}
		case 4: // NodePort on or off, in place
			if s.Ports[0].NodePort == 0 {
				s.Ports[0].NodePort = 31000 + step
			} else {
				s.Ports[0].NodePort = 0
			}
		case 5: // delete a service, add another
			svcs = slices.Delete(svcs, i, i+1)
			next++
			svcs = append(svcs, Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", next),
				ClusterIP: netip.AddrFrom4([4]byte{10, 97, 0, byte(next)}),
				Ports:     []ServicePort{{Port: 8080}}, Endpoints: uniqueEps(next, 2)})
		case 6: // only the informational pod name changes
			if len(s.Endpoints) > 0 {
				s.Endpoints[0].PodName = fmt.Sprintf("p%d", step)
			}
		}
		cfg := cfgs[rng.IntN(len(cfgs))]
		got, err := rn.Render(cfg, svcs)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		want, err := Render(cfg, svcs)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if got.TextWithJumps() != want.TextWithJumps() {
			t.Fatalf("step %d: the cached rendering differs from a fresh one:\n%s", step, got.Diff(want))
		}
		if len(got.chains) != len(want.chains) {
			t.Fatalf("step %d: %d chains, want %d", step, len(got.chains), len(want.chains))
		}
		for k := range got.chains {
			if got.chains[k].chainKey != want.chains[k].chainKey || got.chains[k].rules != want.chains[k].rules ||
				string(got.chainText(k)) != string(want.chainText(k)) {
				t.Fatalf("step %d: chain %d differs: %v (%d rules) vs %v (%d rules)", step, k,
					got.chains[k].chainKey, got.chains[k].rules, want.chains[k].chainKey, want.chains[k].rules)
			}
		}
		if len(rn.frags) != len(svcs) {
			t.Fatalf("step %d: renderer holds %d services, the rendering has %d (stale ones must go)", step, len(rn.frags), len(svcs))
		}
	}
}

// TestServiceEqualCoversEveryField fails when Service, ServicePort or
// Endpoint gains a field: serviceEqual (which decides whether a cached
// rendering is reused) must then compare it too.
func TestServiceEqualCoversEveryField(t *testing.T) {
	for _, c := range []struct {
		typ    reflect.Type
		fields int
	}{{reflect.TypeOf(Service{}), 8}, {reflect.TypeOf(ServicePort{}), 5}, {reflect.TypeOf(Endpoint{}), 3}} {
		if n := c.typ.NumField(); n != c.fields {
			t.Errorf("%s has %d fields, serviceEqual was written for %d: compare the new field in serviceEqual, then update this test", c.typ, n, c.fields)
		}
		if !c.typ.Comparable() && c.typ != reflect.TypeOf(Service{}) {
			t.Errorf("%s is no longer comparable with ==: serviceEqual's slices.Equal needs that", c.typ)
		}
	}
}

// TestRendererReleasesOldBuffers: a Renderer whose services are re-rendered
// one at a time, over and over, starts afresh once it has rewritten the
// equivalent of the whole set twice (plus a constant), so the buffers that
// a few unchanged services keep alive cannot pile up.
func TestRendererReleasesOldBuffers(t *testing.T) {
	svcs := genServices(50, 2)
	var rn Renderer
	resets := 0
	for step := 0; step < 2000; step++ {
		s := &svcs[step%len(svcs)]
		s.Endpoints = []Endpoint{{IP: netip.AddrFrom4([4]byte{10, 245, byte(step >> 8), byte(step)})}, s.Endpoints[1]}
		before := rn.churn
		if _, err := rn.Render(Config{Lab: "rr"}, svcs); err != nil {
			t.Fatal(err)
		}
		if rn.churn < before {
			resets++
		}
		if limit := 2*rn.chains + 1000 + 3*len(svcs); rn.churn > limit {
			t.Fatalf("step %d: %d chains rewritten since the last reset, more than %d", step, rn.churn, limit)
		}
	}
	if resets == 0 {
		t.Fatal("the renderer never started afresh")
	}
}
