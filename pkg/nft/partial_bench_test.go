package nft

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/nat"
)

// BenchmarkOneServiceChangeInterleaved is BenchmarkOneServiceChange's
// question on a shared, noisy machine: each iteration runs the three ways
// back to back on the same namespace, so they share the same moment's
// load, and reports each one's mean time and their ratios:
//
//	floor    the change's transaction encoded beforehand, only the Flush
//	         timed (the kernel's part)
//	klab     Diff of the two full renderings + ApplyChange
//	partial  DiffServices (the changed service found, rendered in both
//	         versions and diffed; no full rendering) + ApplyChange
//
// Each moves the kernel to the other rendering (one endpoint of one
// service replaced).
func BenchmarkOneServiceChangeInterleaved(b *testing.B) {
	for _, sz := range []struct{ n, m int }{{10000, 2}, {1000, 10}} {
		svcs := servicesOf(sz.n, sz.m)
		k := sz.n / 2
		changed := cloneServices(svcs)
		changed[k].Endpoints = append(append([]nat.Endpoint(nil), svcs[k].Endpoints[1:]...), nat.Endpoint{IP: netip.MustParseAddr("10.244.250.1")})
		ta, err := Render(benchConfig, svcs)
		if err != nil {
			b.Fatal(err)
		}
		tb, err := Render(benchConfig, changed)
		if err != nil {
			b.Fatal(err)
		}
		ns := testNS(b)
		if _, err := Apply(ns, nil, ta); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%dx%d", sz.n, sz.m), func(b *testing.B) {
			kern := ta
			flip := func() *Table {
				if kern == ta {
					return tb
				}
				return ta
			}
			psvcs := svcs
			var floor, klab, partial time.Duration
			n := 0
			for b.Loop() {
				// floor
				to := flip()
				conn, h, err := encodedConn(ns, Diff(kern, to))
				if err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				err = conn.Flush()
				floor += time.Since(t0)
				h.Close()
				if err != nil {
					b.Fatal(err)
				}
				kern = to
				// klab
				to = flip()
				t0 = time.Now()
				if _, err := Apply(ns, kern, to); err != nil {
					b.Fatal(err)
				}
				klab += time.Since(t0)
				kern = to
				// partial: from the service list the kernel holds now
				next := changed
				if kern == tb {
					next = svcs
				}
				t0 = time.Now()
				ch, err := DiffServices(benchConfig, psvcs, next)
				if err == nil {
					err = ApplyChange(ns, ch)
				}
				partial += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				psvcs = next
				kern = flip()
				n++
			}
			b.ReportMetric(float64(floor.Nanoseconds())/float64(n), "floor-ns/op")
			b.ReportMetric(float64(klab.Nanoseconds())/float64(n), "klab-ns/op")
			b.ReportMetric(float64(partial.Nanoseconds())/float64(n), "partial-ns/op")
			b.ReportMetric(float64(klab)/float64(floor), "klab/floor")
			b.ReportMetric(float64(partial)/float64(floor), "partial/floor")
		})
	}
}

// BenchmarkPartialCPU is the CPU a one-service change costs before the
// kernel, at 10,000 x 2, three ways: two full Renders and a Diff (what a
// stateless sync does), a Diff of two renderings already made, and
// DiffServices (ChangedServices, the changed service rendered twice and
// diffed; no full rendering).
func BenchmarkPartialCPU(b *testing.B) {
	svcs := servicesOf(10000, 2)
	changed := cloneServices(svcs)
	changed[5000].Endpoints = append(append([]nat.Endpoint(nil), svcs[5000].Endpoints[1:]...), nat.Endpoint{IP: netip.MustParseAddr("10.244.250.1")})
	ta, _ := Render(benchConfig, svcs)
	tb, _ := Render(benchConfig, changed)
	b.Run("render2+diff", func(b *testing.B) {
		for b.Loop() {
			x, _ := Render(benchConfig, svcs)
			y, _ := Render(benchConfig, changed)
			Diff(x, y)
		}
	})
	b.Run("diff", func(b *testing.B) {
		for b.Loop() {
			Diff(ta, tb)
		}
	})
	b.Run("DiffServices", func(b *testing.B) {
		for b.Loop() {
			if _, err := DiffServices(benchConfig, svcs, changed); err != nil {
				b.Fatal(err)
			}
		}
	})
}
