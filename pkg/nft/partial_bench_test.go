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
//	partial  RenderChanged (only the changed service rendered and diffed,
//	         the previous table patched) + ApplyChange
//
// Each moves the kernel to the other rendering (one endpoint of one
// service replaced); partial starts from the table it patched last, which
// is what the kernel holds again after the other two's two moves.
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
		key := "bench/" + svcs[k].Name
		b.Run(fmt.Sprintf("%dx%d", sz.n, sz.m), func(b *testing.B) {
			kern := ta
			flip := func() *Table {
				if kern == ta {
					return tb
				}
				return ta
			}
			pt, psvcs := ta, svcs
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
				// partial: the kernel is back at pt's content
				next := changed
				if kern == tb {
					next = svcs
				}
				t0 = time.Now()
				nt, ch, err := RenderChanged(benchConfig, pt, psvcs, next, []string{key})
				if err == nil {
					err = ApplyChange(ns, ch)
				}
				partial += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				pt, psvcs = nt, next
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
