package nat

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
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
// services: render + chain-by-chain diff, with a fresh Render ("render")
// and with a Renderer that kept the previous rendering's services
// ("renderer").
func BenchmarkDiffOneService(b *testing.B) {
	for _, cached := range []bool{false, true} {
		name := "render"
		if cached {
			name = "renderer"
		}
		b.Run(name, func(b *testing.B) {
			svcs := genServices(10000, 2)
			var rn Renderer
			prev, _ := rn.Render(Config{Lab: "bench"}, svcs)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				svcs[5000].Endpoints[1].IP = netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})
				i++
				render := Render
				if cached {
					render = rn.Render
				}
				r, err := render(Config{Lab: "bench"}, svcs)
				if err != nil {
					b.Fatal(err)
				}
				if r.Diff(prev) == "" {
					b.Fatal("no diff")
				}
				prev = r
			}
		})
	}
}

// BenchmarkServices programs kube-proxy-shaped services (one port, m
// endpoints each) into a fresh node namespace, klab against the
// baselines, in the same run:
//
//	<n>x<m>/klab       Render + Apply (prev nil) into a fresh namespace
//	<n>x<m>/restore    a bare iptables-restore of the same rules (TextWithJumps)
//	<n>x<m>/per-rule   one iptables call per chain and rule, extrapolated
//	                   (see benchPerRule)
//	<n>x<m>/one-change ... Render + Apply(prev) when one service's endpoints
//	                   change, with every service programmed
//
// Per-iteration figures are medians (ms), as in pkg/cluster's benchmarks.
func BenchmarkServices(b *testing.B) {
	needRoot(b)
	for _, sz := range []struct{ n, m int }{{1000, 10}, {10000, 2}} {
		svcs := genServices(sz.n, sz.m)
		lab := testutil.LabName(b, "bn-nat")
		cfg := Config{Lab: lab}
		name := fmt.Sprintf("%dx%d", sz.n, sz.m)
		b.Run(name+"/klab", func(b *testing.B) {
			samples(b, lab, func(ns string) error {
				r, err := Render(cfg, svcs)
				if err != nil {
					return err
				}
				_, err = testApply(nil, ns, r, nil)
				return err
			})
		})
		b.Run(name+"/restore", func(b *testing.B) {
			r, err := Render(cfg, svcs)
			if err != nil {
				b.Fatal(err)
			}
			text := []byte(r.TextWithJumps())
			samples(b, lab, func(ns string) error { return restore(ns, text, false, nil) })
		})
		b.Run(name+"/per-rule", func(b *testing.B) { benchPerRule(b, lab, cfg, svcs) })
		b.Run(name+"/one-change", func(b *testing.B) { benchOneChange(b, lab, cfg, svcs) })
	}
}

// benchPerRule estimates what programming the services with one iptables
// call per chain (-N) and per rule (-A) costs, as a script without
// iptables-restore would do it. Running it in full takes minutes to hours
// (each call is an nf_tables commit, which re-validates every chain
// reachable from the base chains, so a call gets slower as the table
// grows), so it is extrapolated: with the table already holding 0, n/2 and
// n-k of the services (loaded with iptables-restore, untimed), the calls
// for k more services are timed, giving the cost per service c(0),
// c(n/2), c(n); the total is n x (c(0) + 4 c(n/2) + c(n)) / 6 (Simpson's
// rule over the table's growth). Metrics: ms (the extrapolated total),
// call-ms-empty and call-ms-full (one call at either end).
func benchPerRule(b *testing.B, lab string, cfg Config, svcs []Service) {
	const k = 5
	n := len(svcs)
	var totals, first, last []float64
	for i := 0; i < b.N; i++ {
		var c [3]float64 // ms per service at fill 0, n/2, n-k
		for j, fill := range []int{0, n / 2, n - k} {
			b.StopTimer()
			ns := netns.Name(lab, fmt.Sprintf("n%d", nsSeq.Add(1)))
			if _, err := netns.Ensure(ns); err != nil {
				b.Fatal(err)
			}
			base, err := Render(cfg, svcs[:fill])
			if err != nil {
				b.Fatal(err)
			}
			if err := restore(ns, []byte(base.TextWithJumps()), false, nil); err != nil {
				b.Fatal(err)
			}
			more, err := Render(cfg, svcs[:fill+k])
			if err != nil {
				b.Fatal(err)
			}
			calls := addCalls(more, base)
			b.StartTimer()
			t0 := time.Now()
			if err := iptablesCalls(ns, calls); err != nil {
				b.Fatal(err)
			}
			d := float64(time.Since(t0).Microseconds()) / 1e3
			b.StopTimer()
			c[j] = d / k
			switch j {
			case 0:
				first = append(first, d/float64(len(calls)))
			case 2:
				last = append(last, d/float64(len(calls)))
			}
			if err := netns.Delete(ns); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		totals = append(totals, float64(n)*(c[0]+4*c[1]+c[2])/6)
	}
	b.ReportMetric(median(totals), "ms")
	b.ReportMetric(median(first), "call-ms-empty")
	b.ReportMetric(median(last), "call-ms-full")
}

// benchOneChange programs every service, then changes one service's
// endpoints per iteration. Metrics (medians, ms): klab-ms (Renderer.Render
// + Apply with the previous rendering: one iptables-restore --noflush of
// the changed chains; the Renderer kept the other services' rules, as
// pkg/cluster's does), restore-ms (that same iptables-restore input run by
// hand) and per-rule-ms (the same change as single iptables calls: -F or
// -N for each changed chain, -A for each rule, -X for each stale chain).
func benchOneChange(b *testing.B, lab string, cfg Config, svcs []Service) {
	b.StopTimer()
	svcs = slices.Clone(svcs)
	ns := netns.Name(lab, fmt.Sprintf("n%d", nsSeq.Add(1)))
	if _, err := netns.Ensure(ns); err != nil {
		b.Fatal(err)
	}
	defer netns.Delete(ns)
	var rn Renderer
	prev, err := rn.Render(cfg, svcs)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := testApply(nil, ns, prev, nil); err != nil {
		b.Fatal(err)
	}
	target := &svcs[len(svcs)/2]
	seq := 0
	change := func() {
		seq++
		eps := slices.Clone(target.Endpoints)
		eps[0].IP = netip.AddrFrom4([4]byte{10, 245, byte(seq >> 8), byte(seq)})
		target.Endpoints = eps
	}
	var klab, byRestore, byRule []float64
	for i := 0; i < b.N; i++ {
		change()
		b.StartTimer()
		t0 := time.Now()
		next, err := rn.Render(cfg, svcs)
		if err != nil {
			b.Fatal(err)
		}
		res, err := testApply(nil, ns, next, prev)
		if err != nil {
			b.Fatal(err)
		}
		klab = append(klab, float64(time.Since(t0).Microseconds())/1e3)
		b.StopTimer()
		if len(res.Rewritten) == 0 {
			b.Fatal("the change rewrote nothing")
		}
		prev = next

		change()
		next, err = Render(cfg, svcs)
		if err != nil {
			b.Fatal(err)
		}
		input := next.Diff(prev)
		t0 = time.Now()
		if err := restore(ns, []byte(input), true, nil); err != nil {
			b.Fatal(err)
		}
		byRestore = append(byRestore, float64(time.Since(t0).Microseconds())/1e3)
		prev = next

		change()
		next, err = Render(cfg, svcs)
		if err != nil {
			b.Fatal(err)
		}
		calls := perRuleCalls(next.Diff(prev), prev)
		t0 = time.Now()
		if err := iptablesCalls(ns, calls); err != nil {
			b.Fatal(err)
		}
		byRule = append(byRule, float64(time.Since(t0).Microseconds())/1e3)
		prev = next
	}
	b.ReportMetric(median(klab), "klab-ms")
	b.ReportMetric(median(byRestore), "restore-ms")
	b.ReportMetric(median(byRule), "per-rule-ms")
}

// addCalls are the iptables calls that grow the kernel's rules from base
// to more, where more renders a superset of base's services: -N for each
// new chain, -A for each new rule (appended, in more's order).
func addCalls(more, base *Ruleset) [][]string {
	var calls [][]string
	for _, c := range more.chains { // chains first: rules jump to them
		if _, ok := base.lookup(c.chainKey); !ok {
			calls = append(calls, []string{"-t", string(c.table), "-N", c.name})
		}
	}
	for _, c := range more.chains {
		have := map[string]int{}
		old, _ := base.ChainRules(c.table, c.name)
		for _, l := range old {
			have[l]++
		}
		rules, _ := more.ChainRules(c.table, c.name)
		for _, l := range rules {
			if have[l] > 0 {
				have[l]--
				continue
			}
			tok, err := tokenize(l)
			if err != nil {
				panic(err)
			}
			calls = append(calls, append([]string{"-t", string(c.table)}, tok...))
		}
	}
	return calls
}

// perRuleCalls turns iptables-restore --noflush input into the single
// iptables calls that make the same change on a kernel holding prev: a
// declared chain is flushed (-F) if prev has it and created (-N) if not,
// rules are appended (-A), chains deleted (-X).
func perRuleCalls(input string, prev *Ruleset) [][]string {
	var calls [][]string
	var t string
	for _, line := range strings.Split(input, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			t = line[1:]
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			op := "-N"
			if _, ok := prev.lookup(chainKey{Table(t), name}); ok || builtin[name] {
				op = "-F"
			}
			calls = append(calls, []string{"-t", t, op, name})
		case strings.HasPrefix(line, "-"):
			tok, err := tokenize(line)
			if err != nil {
				panic(err)
			}
			calls = append(calls, append([]string{"-t", t}, tok...))
		}
	}
	return calls
}

// iptablesCalls runs `iptables --wait ARGS` for each call inside ns.
func iptablesCalls(ns string, calls [][]string) error {
	return netns.Do(ns, func() error {
		for _, c := range calls {
			if out, err := exec.Command("iptables", append([]string{"--wait"}, c...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables %s: %v: %s", strings.Join(c, " "), err, out)
			}
		}
		return nil
	})
}

// samples runs f in a fresh namespace per iteration and reports the median
// time (ms).
func samples(b *testing.B, lab string, f func(ns string) error) {
	var xs []float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ns := netns.Name(lab, fmt.Sprintf("n%d", nsSeq.Add(1)))
		if _, err := netns.Ensure(ns); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := f(ns); err != nil {
			b.Fatal(err)
		}
		xs = append(xs, float64(time.Since(t0).Microseconds())/1e3)
		b.StopTimer()
		if err := netns.Delete(ns); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(median(xs), "ms")
}

var nsSeq atomic.Int64

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}
