package nft

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
)

// benchServices is n ClusterIP services with two endpoints each (the
// issue's shape), in the default service and cluster CIDRs.
func benchServices(n int) []nat.Service {
	out := make([]nat.Service, n)
	for i := range out {
		ip := netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		out[i] = nat.Service{Namespace: "bench", Name: fmt.Sprintf("svc%05d", i), ClusterIP: ip,
			Ports: []nat.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
			Endpoints: []nat.Endpoint{
				{IP: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})},
				{IP: netip.AddrFrom4([4]byte{10, 244, 100 + byte(i>>8), byte(i)})},
			}}
	}
	return out
}

var benchConfig = nat.Config{Lab: "bench"}

var benchSizes = []int{1000, 10000}

func BenchmarkRender(b *testing.B) {
	for _, n := range benchSizes {
		svcs := benchServices(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Render(benchConfig, svcs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// nftF runs `nft -f file` inside the namespace (from a thread switched into
// it: no `ip netns exec` in the measurement).
func nftF(b *testing.B, ns, file string) {
	err := netns.Do(ns, func() error {
		out, err := exec.Command("nft", "-f", file).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft -f: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkApply is a full sync into an empty table: klab over netlink, and
// the baseline, `nft -f` of the same Text(), in the same run.
func BenchmarkApply(b *testing.B) {
	ns := testNS(b)
	for _, n := range benchSizes {
		tab, err := Render(benchConfig, benchServices(n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d/netlink", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if err := Delete(ns); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := Apply(ns, nil, tab); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/netlink-staged", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if err := Delete(ns); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := (&Batch{Changes: []*Change{Diff(nil, tab)}, Staged: true}).Apply(ns); err != nil {
					b.Fatal(err)
				}
			}
		})
		if _, err := exec.LookPath("nft"); err != nil {
			continue
		}
		file := filepath.Join(b.TempDir(), "full.nft")
		if err := os.WriteFile(file, []byte(tab.Text()), 0o644); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d/nft-f", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if err := Delete(ns); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				nftF(b, ns, file)
			}
		})
	}
}

// BenchmarkPartial changes one service's endpoints at 10,000 services (one
// endpoint chain replaced, the service chain rewritten): Diff + ApplyChange
// over netlink, against `nft -f` of the same change's text (what knftables
// would run) in the same run. Iterations alternate between two renderings.
func BenchmarkPartial(b *testing.B) {
	ns := testNS(b)
	const n = 10000
	svcs := benchServices(n)
	a, err := Render(benchConfig, svcs)
	if err != nil {
		b.Fatal(err)
	}
	svcs[n/2].Endpoints = []nat.Endpoint{svcs[n/2].Endpoints[0], {IP: netip.MustParseAddr("10.244.250.1")}}
	c, err := Render(benchConfig, svcs)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Apply(ns, nil, a); err != nil {
		b.Fatal(err)
	}
	cur, other := a, c
	b.Run("10000/netlink", func(b *testing.B) {
		for b.Loop() {
			if _, err := Apply(ns, cur, other); err != nil {
				b.Fatal(err)
			}
			cur, other = other, cur
		}
	})
	b.Run("10000/diff-only", func(b *testing.B) {
		for b.Loop() {
			Diff(cur, other)
		}
	})
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	dir := b.TempDir()
	files := map[*Table]string{}
	for i, t := range []*Table{a, c} {
		f := filepath.Join(dir, fmt.Sprintf("to%d.nft", i))
		from := c
		if t == c {
			from = a
		}
		if err := os.WriteFile(f, []byte(Diff(from, t).Text()), 0o644); err != nil {
			b.Fatal(err)
		}
		files[t] = f
	}
	b.Run("10000/nft-f", func(b *testing.B) {
		for b.Loop() {
			nftF(b, ns, files[other])
			cur, other = other, cur
		}
	})
}
