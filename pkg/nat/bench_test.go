package nat

import (
	"fmt"
	"net/netip"
	"testing"
)

// genServices makes n single-port TCP services with m endpoints each.
func genServices(n, m int) []Service {
	svcs := make([]Service, n)
	base := netip.MustParseAddr("10.96.0.2").As4()
	for i := range svcs {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + uint32(i)
		cip := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		svcs[i] = Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i), ClusterIP: cip,
			Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}, Endpoints: uniqueEps(i, m)}
	}
	return svcs
}

// uniqueEps gives service i m distinct endpoint addresses.
func uniqueEps(i, m int) []Endpoint {
	e := make([]Endpoint, m)
	for j := range e {
		k := uint32(i*m + j)
		e[j] = Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, byte(k / 250 % 256), byte(k%250 + 2)})}
	}
	return e
}

func BenchmarkRender(b *testing.B) {
	for _, sz := range []struct{ n, m int }{{10000, 2}, {1000, 10}} {
		svcs := genServices(sz.n, sz.m)
		b.Run(fmt.Sprintf("%dx%d", sz.n, sz.m), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Render(Config{Lab: "bench"}, svcs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDiffOneService is the pure part of a one-service change at 10k
// services: render + chain-by-chain diff.
func BenchmarkDiffOneService(b *testing.B) {
	svcs := genServices(10000, 2)
	prev, _ := Render(Config{Lab: "bench"}, svcs)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		svcs[5000].Endpoints[1].IP = netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})
		i++
		r, err := Render(Config{Lab: "bench"}, svcs)
		if err != nil {
			b.Fatal(err)
		}
		if r.Diff(prev) == "" {
			b.Fatal("no diff")
		}
	}
}

// BenchmarkApply applies n x m services into a fresh node namespace (full
// apply: one iptables-restore plus the jumps), and measures re-applying
// after changing one service's endpoints.
func BenchmarkApply(b *testing.B) {
	needRoot(b)
	for _, sz := range []struct{ n, m int }{{1000, 10}, {10000, 2}} {
		svcs := genServices(sz.n, sz.m)
		lab := testLab(b)
		cfg := Config{Lab: lab}
		r, err := Render(cfg, svcs)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("full/%dx%d", sz.n, sz.m), func(b *testing.B) {
			i := 0
			for b.Loop() {
				b.StopTimer()
				ns := testNS(b, lab, fmt.Sprintf("full%d", i))
				i++
				b.StartTimer()
				if _, err := Apply(ns, r, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("one-change/%dx%d", sz.n, sz.m), func(b *testing.B) {
			ns := testNS(b, lab, "onechange")
			if _, err := Apply(ns, r, nil, nil); err != nil {
				b.Fatal(err)
			}
			prev := r
			i := 0
			for b.Loop() {
				// Render + diff + one iptables-restore, as a cluster layer
				// would do when one service's endpoints change.
				svcs[sz.n/2].Endpoints[0].IP = netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})
				i++
				next, err := Render(cfg, svcs)
				if err != nil {
					b.Fatal(err)
				}
				res, err := Apply(ns, next, prev, nil)
				if err != nil {
					b.Fatal(err)
				}
				if len(res.Rewritten) != 2 {
					b.Fatalf("rewritten %q", res.Rewritten)
				}
				prev = next
			}
		})
	}
}
