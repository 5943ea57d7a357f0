package nft

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/probe"
)

// servicesOf is n services of m endpoints (benchServices' shape for m = 2).
func servicesOf(n, m int) []nat.Service {
	out := benchServices(n)
	for i := range out {
		var eps []nat.Endpoint
		for j := 0; j < m; j++ {
			eps = append(eps, nat.Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, byte(j*7 + i>>8), byte(i)})})
		}
		out[i].Endpoints = eps
	}
	return out
}

// BenchmarkOneServiceChange is one service's endpoints changed (one endpoint
// replaced) with every service programmed, at 10,000 x 2 and 1,000 x 10,
// four ways in the same run:
//
//	klab       Diff + ApplyChange over netlink (what a sync does)
//	diff-only  the Diff alone
//	partial    DiffServices (only the changed service rendered, before
//	           and after, and diffed; partial.go) + ApplyChange
//	partial-only  DiffServices alone
//	floor      the same transaction, encoded beforehand: only the kernel's
//	           part (the Flush: sendmsg, the commit, the acks) is timed
//	nft-f      `nft -f` of the change's text, as knftables runs it
//	iptables   iptables mode's change: nat.Renderer + nat.Plan(prev) +
//	           one iptables-restore --noflush, in a namespace holding the
//	           same services in iptables mode
//
// Iterations alternate between the two renderings.
func BenchmarkOneServiceChange(b *testing.B) {
	for _, sz := range []struct{ n, m int }{{10000, 2}, {1000, 10}} {
		name := fmt.Sprintf("%dx%d", sz.n, sz.m)
		svcs := servicesOf(sz.n, sz.m)
		ta, err := Render(benchConfig, svcs)
		if err != nil {
			b.Fatal(err)
		}
		changed := append([]nat.Service(nil), svcs...)
		k := sz.n / 2
		changed[k].Endpoints = append(append([]nat.Endpoint(nil), svcs[k].Endpoints[1:]...), nat.Endpoint{IP: netip.MustParseAddr("10.244.250.1")})
		tb, err := Render(benchConfig, changed)
		if err != nil {
			b.Fatal(err)
		}
		ns := testNS(b)
		if _, err := Apply(ns, nil, ta); err != nil {
			b.Fatal(err)
		}
		// kern is what the kernel holds; each iteration moves it to the
		// other rendering.
		kern := ta
		next := func() *Table {
			if kern == ta {
				return tb
			}
			return ta
		}
		b.Run(name+"/klab", func(b *testing.B) {
			for b.Loop() {
				to := next()
				if _, err := Apply(ns, kern, to); err != nil {
					b.Fatal(err)
				}
				kern = to
			}
		})
		b.Run(name+"/diff-only", func(b *testing.B) {
			for b.Loop() {
				Diff(kern, next())
			}
		})
		b.Run(name+"/floor", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				to := next()
				conn, h, err := encodedConn(ns, Diff(kern, to))
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				err = conn.Flush()
				b.StopTimer()
				h.Close()
				b.StartTimer()
				if err != nil {
					b.Fatal(err)
				}
				kern = to
			}
		})
		// partial: DiffServices (only the changed service rendered, in
		// both versions, and diffed; no full rendering) + ApplyChange.
		psvcs := svcs
		if kern == tb {
			psvcs = changed
		}
		other := func(s []nat.Service) []nat.Service {
			if &s[0] == &svcs[0] {
				return changed
			}
			return svcs
		}
		b.Run(name+"/partial", func(b *testing.B) {
			for b.Loop() {
				to := other(psvcs)
				ch, err := DiffServices(benchConfig, psvcs, to)
				if err != nil {
					b.Fatal(err)
				}
				if err := ApplyChange(ns, ch); err != nil {
					b.Fatal(err)
				}
				psvcs = to
			}
		})
		b.Run(name+"/partial-only", func(b *testing.B) {
			for b.Loop() {
				if _, err := DiffServices(benchConfig, psvcs, other(psvcs)); err != nil {
					b.Fatal(err)
				}
			}
		})
		if &psvcs[0] == &svcs[0] {
			kern = ta
		} else {
			kern = tb
		}
		if _, err := exec.LookPath("nft"); err == nil {
			dir := b.TempDir()
			files := map[*Table]string{}
			for i, t := range []*Table{ta, tb} {
				from := tb
				if t == tb {
					from = ta
				}
				f := filepath.Join(dir, fmt.Sprintf("to%d.nft", i))
				if err := os.WriteFile(f, []byte(Diff(from, t).Text()), 0o644); err != nil {
					b.Fatal(err)
				}
				files[t] = f
			}
			b.Run(name+"/nft-f", func(b *testing.B) {
				for b.Loop() {
					to := next()
					nftF(b, ns, files[to])
					kern = to
				}
			})
		}
		if _, err := exec.LookPath("iptables-restore"); err != nil {
			continue
		}
		ins := testNS(b)
		cfg := nat.Config{Lab: benchConfig.Lab}
		var rn nat.Renderer
		ra, err := rn.Render(cfg, svcs)
		if err != nil {
			b.Fatal(err)
		}
		a := &plan.Applier{Discard: true}
		if _, err := nat.Apply(a, ins, ra, nil); err != nil {
			b.Fatal(err)
		}
		inputs := [][]nat.Service{changed, svcs}
		prev := ra
		i := 0
		b.Run(name+"/iptables", func(b *testing.B) {
			for b.Loop() {
				next, err := rn.Render(cfg, inputs[i%2])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := nat.Apply(a, ins, next, prev); err != nil {
					b.Fatal(err)
				}
				prev = next
				i++
			}
		})
	}
}

// encodedConn is ApplyChange up to, not including, the Flush (which opens
// its socket in the namespace h names: close h after it).
func encodedConn(nsName string, ch *Change) (*nftables.Conn, vnetns.NsHandle, error) {
	h, err := netns.Open(nsName)
	if err != nil {
		return nil, h, err
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)), nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		h.Close()
		return nil, h, err
	}
	e := &encoder{conn: conn, table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ch.Table}, sets: map[string]*nftables.Set{}}
	return conn, h, e.change(ch)
}

// BenchmarkNewConnections is the reason nftables mode exists: new TCP
// connections to a ClusterIP, with 1,000 and 10,000 services programmed in
// the node, in nftables mode (one service-ips lookup) and iptables mode
// (KUBE-SERVICES walked rule by rule; the target is the service the walk
// reaches last), same namespaces and pods, same run. A client namespace
// (10.244.1.2) and a server namespace (10.244.2.2, every service's
// endpoint) hang off the node namespace, which routes between them. Each
// iteration is one connect (SYN, SYN-ACK, ACK: the first packet takes the
// NAT decision) and close; conns/s is reported.
func BenchmarkNewConnections(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	lab := testutil.LabName(b, "nfbc")
	node, client, server := netns.Name(lab, "node"), netns.Name(lab, "client"), netns.Name(lab, "server")
	for _, n := range []string{node, client, server} {
		if _, err := netns.Ensure(n); err != nil {
			b.Fatal(err)
		}
	}
	wire(b, node, client, "vc", netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("10.244.1.2/24"))
	wire(b, node, server, "vs", netip.MustParsePrefix("10.244.2.1/24"), netip.MustParsePrefix("10.244.2.2/24"))
	if err := netns.Sysctl(node, "net/ipv4/ip_forward", "1"); err != nil {
		b.Fatal(err)
	}
	l, err := probe.Listen(server, ":8080")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	sizes := []int{1000, 10000}
	if s := os.Getenv("KLAB_BENCH_SERVICES"); s != "" {
		sizes = []int{atoi(s)} // one size, for a quick look
	}
	for _, n := range sizes {
		svcs := benchServices(n)
		for i := range svcs {
			svcs[i].Endpoints = []nat.Endpoint{{IP: netip.MustParseAddr("10.244.2.2")}}
		}
		// Render order is by name: svc<n-1> is the last rule of
		// KUBE-SERVICES in iptables mode, the worst case of the walk.
		target := net.JoinHostPort(svcs[n-1].ClusterIP.String(), "80")
		tab, err := Render(benchConfig, svcs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Apply(node, nil, tab); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d/nftables", n), func(b *testing.B) { connects(b, client, target) })
		if err := Delete(node); err != nil {
			b.Fatal(err)
		}
		rs, err := nat.Render(nat.Config{Lab: lab}, svcs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := nat.Apply(&plan.Applier{Discard: true}, node, rs, nil); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d/iptables", n), func(b *testing.B) { connects(b, client, target) })
		if p, err := nat.PlanDelete(node, lab); err == nil {
			(&plan.Applier{Discard: true}).Apply(p)
		}
	}
}

func connects(b *testing.B, ns, target string) {
	ctx := context.Background()
	start := time.Now()
	for b.Loop() {
		c, err := probe.Dial(ctx, ns, "tcp4", target)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
}

// wire joins namespace outer to inner with a veth pair named name (outer
// side) / eth0 (inner side), addresses oa and ia, and a default route in
// inner via oa.
func wire(b *testing.B, outer, inner, name string, oa, ia netip.Prefix) {
	oh, err := netns.Handle(outer)
	if err != nil {
		b.Fatal(err)
	}
	defer oh.Close()
	fd, err := netns.Open(inner)
	if err != nil {
		b.Fatal(err)
	}
	defer fd.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}
	if err := oh.LinkAdd(v); err != nil {
		b.Fatal(err)
	}
	ih, err := netns.Handle(inner)
	if err != nil {
		b.Fatal(err)
	}
	defer ih.Close()
	for _, s := range []struct {
		h    *netlink.Handle
		dev  string
		addr netip.Prefix
	}{{oh, name, oa}, {ih, "eth0", ia}} {
		link, err := s.h.LinkByName(s.dev)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: s.addr.Addr().AsSlice(), Mask: net.CIDRMask(s.addr.Bits(), 32)}}); err != nil {
			b.Fatal(err)
		}
		if err := s.h.LinkSetUp(link); err != nil {
			b.Fatal(err)
		}
	}
	link, _ := ih.LinkByName("eth0")
	if err := ih.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: oa.Addr().AsSlice()}); err != nil {
		b.Fatal(err)
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// BenchmarkFullSyncGrowth is a full sync over netlink at 1,000, 2,000 and
// 4,000 services x 2, as rendered ("all") and without the service-ips
// elements ("no-map-gotos": the per-service chains are still created and
// still jump to their endpoints, but nothing reaches them from the map):
// how the kernel's cost grows, and which objects make it grow.
func BenchmarkFullSyncGrowth(b *testing.B) {
	ns := testNS(b)
	for _, n := range []int{1000, 2000, 4000} {
		tab, err := Render(benchConfig, benchServices(n))
		if err != nil {
			b.Fatal(err)
		}
		bare := *tab
		bare.Sets = nil
		for _, s := range tab.Sets {
			if s.Name == MapServiceIPs {
				c := *s
				c.Elements = nil
				s = &c
			}
			bare.Sets = append(bare.Sets, s)
		}
		bare.index()
		for _, v := range []struct {
			name string
			t    *Table
		}{{"all", tab}, {"no-map-gotos", &bare}} {
			b.Run(fmt.Sprintf("%d/%s", n, v.name), func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					if err := Delete(ns); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if _, err := Apply(ns, nil, v.t); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
