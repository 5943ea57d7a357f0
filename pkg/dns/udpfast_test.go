package dns

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os/exec"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// wireQueries are datagrams for the fast path: well-formed queries (with
// and without EDNS0, mixed case, truncated answers, NXDOMAIN, refused) and
// malformed ones miekg/dns's server drops or answers with FORMERR/NOTIMP.
func wireQueries(t *testing.T) map[string][]byte {
	t.Helper()
	pack := func(m *miekg.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	q := func(name string, qtype uint16, edns uint16) []byte {
		m := new(miekg.Msg)
		m.SetQuestion(name, qtype)
		if edns != 0 {
			m.SetEdns0(edns, false)
		}
		return pack(m)
	}
	two := new(miekg.Msg)
	two.SetQuestion("web.default.svc.cluster.local.", miekg.TypeA)
	two.Question = append(two.Question, two.Question[0])
	update := new(miekg.Msg)
	update.SetUpdate("cluster.local.")
	resp := new(miekg.Msg)
	resp.SetQuestion("web.default.svc.cluster.local.", miekg.TypeA)
	resp.Response = true
	a := q("web.default.svc.cluster.local.", miekg.TypeA, 0)
	cut := a[:len(a)-3] // the question's type and class cut short
	return map[string][]byte{
		"A":         a,
		"A mixed":   q("Web.Default.SVC.cluster.local.", miekg.TypeA, 0),
		"A edns":    q("web.default.svc.cluster.local.", miekg.TypeA, 1232),
		"SRV":       q("_mysql._tcp.db.default.svc.cluster.local.", miekg.TypeSRV, 0),
		"truncated": q("many.default.svc.cluster.local.", miekg.TypeA, 0),
		"big edns":  q("many.default.svc.cluster.local.", miekg.TypeA, 4096),
		"NXDOMAIN":  q("nosuch.default.svc.cluster.local.", miekg.TypeA, 0),
		"NODATA":    q("web.default.svc.cluster.local.", miekg.TypeAAAA, 0),
		"PTR":       q("20.0.96.10.in-addr.arpa.", miekg.TypePTR, 0),
		"outside":   q("www.example.test.", miekg.TypeA, 0),
		"two qs":    pack(two),
		"update":    pack(update),
		"cut":       cut,
		"garbage":   append(append([]byte(nil), a[:12]...), 0xff, 0xff, 0xff),
		"short":     a[:7],
		"response":  pack(resp),
		"edns vers1": func() []byte {
			m := new(miekg.Msg)
			m.SetQuestion("web.default.svc.cluster.local.", miekg.TypeA)
			m.SetEdns0(512, false)
			m.IsEdns0().SetVersion(1)
			return pack(m)
		}(),
	}
}

// TestFastPathMatchesMiekg sends the same datagrams to the fast path
// (Serve on a udp4 socket) and to miekg/dns's own UDP server with the same
// Server, in a lab namespace, and wants the same bytes back (or silence
// from both): each query twice with different IDs, the second answered
// from the cache. Then an Update must change a cached answer at once.
func TestFastPathMatchesMiekg(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	ns := netns.Name(testutil.LabName(t, "df"), "fast")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(ns) })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	s := newServer(t, Config{}, fixture())
	var fastPC, oldPC net.PacketConn
	if err := netns.Do(ns, func() (err error) {
		if fastPC, err = net.ListenPacket("udp4", "0.0.0.0:5300"); err != nil {
			return err
		}
		oldPC, err = net.ListenPacket("udp4", "127.0.0.1:5302")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, ok := fastUDP(fastPC); !ok {
		t.Fatal("a udp4 socket does not take the fast path")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, s, fastPC, nil) }()
	old := &miekg.Server{PacketConn: oldPC, Handler: s, UDPSize: miekg.MaxMsgSize}
	oldDone := make(chan error, 1)
	go func() { oldDone <- old.ActivateAndServe() }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		oldPC.Close()
		<-oldDone
	})

	var c *net.UDPConn
	if err := netns.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The fast socket is bound to 0.0.0.0: ask it on another loopback
	// address, so a reply from the wrong source (no IP_PKTINFO) shows.
	fast := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 5300}
	oldAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5302}
	exchange := func(to *net.UDPAddr, b []byte, wait time.Duration) []byte {
		t.Helper()
		if _, err := c.WriteToUDP(b, to); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		c.SetReadDeadline(time.Now().Add(wait))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		if !from.IP.Equal(to.IP) || from.Port != to.Port {
			t.Errorf("reply from %v, asked %v", from, to)
		}
		return buf[:n]
	}
	id := uint16(100)
	for name, b := range wireQueries(t) {
		for round := range 2 {
			b = append([]byte(nil), b...)
			if len(b) >= 2 {
				id++
				binary.BigEndian.PutUint16(b, id)
			}
			wait := time.Second
			want := exchange(oldAddr, b, wait)
			if want == nil {
				wait = 300 * time.Millisecond // both should stay silent
			}
			got := exchange(fast, b, wait)
			if !bytes.Equal(got, want) {
				t.Errorf("%s (round %d): fast path answered\n%x\nmiekg/dns's server\n%x", name, round, got, want)
			}
		}
	}

	// A cached answer follows an Update at once.
	a := wireQueries(t)["A"]
	ask := func() *miekg.Msg {
		m := new(miekg.Msg)
		if err := m.Unpack(exchange(fast, a, 2*time.Second)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := ask(); len(m.Answer) != 1 || m.Answer[0].(*miekg.A).A.String() != "10.96.0.20" {
		t.Fatalf("before the update: %v", m)
	}
	snap := fixture()
	snap.ServiceList[2].ClusterIP = ip("10.96.0.21")
	if err := s.Update(snap); err != nil {
		t.Fatal(err)
	}
	if m := ask(); len(m.Answer) != 1 || m.Answer[0].(*miekg.A).A.String() != "10.96.0.21" {
		t.Fatalf("after the update the fast path still answers %v", m)
	}
}

// FuzzFastPath feeds raw datagrams to the fast path's answer, twice (the
// second may come from the cache): never a panic, and every reply carries
// the query's ID and unpacks.
func FuzzFastPath(f *testing.F) {
	seeds := map[string][]byte{}
	for _, q := range []string{"web.default.svc.cluster.local.", "_http._tcp.web.default.svc.cluster.local.", "nosuch.default.svc.cluster.local."} {
		m := new(miekg.Msg)
		m.SetQuestion(q, miekg.TypeA)
		b, _ := m.Pack()
		seeds[q] = b
		m.SetEdns0(1232, true)
		b, _ = m.Pack()
		seeds[q+" edns"] = b
	}
	for _, b := range seeds {
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c})
	s, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Update(fixture()); err != nil {
		f.Fatal(err)
	}
	w := newBatchWorker(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, nil, s, s, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		for range 2 {
			resp := w.answer(data, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, 0)
			if resp == nil {
				continue
			}
			if !bytes.Equal(resp[:2], data[:2]) {
				t.Fatalf("reply ID %x, query ID %x", resp[:2], data[:2])
			}
			if err := new(miekg.Msg).Unpack(resp); err != nil {
				t.Fatalf("reply does not unpack: %v", err)
			}
		}
	})
}

// BenchmarkFastPath is the fast path's cost for one datagram, from the
// query's bytes to the reply's, at 1,000 services: "miss" unpacks, answers
// and packs (what every query cost before the cache, as BenchmarkServeA
// plus the unpack), "hit" answers from the cache of packed answers.
func BenchmarkFastPath(b *testing.B) {
	s := newServer(b, Config{}, labObjects(1000))
	r := new(miekg.Msg)
	r.SetQuestion("svc501.ns1.svc.cluster.local.", miekg.TypeA)
	q, err := r.Pack()
	if err != nil {
		b.Fatal(err)
	}
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	for _, tc := range []struct {
		name  string
		cache packedCacher
	}{{"miss", nil}, {"hit", s}} {
		b.Run(tc.name, func(b *testing.B) {
			w := newBatchWorker(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, nil, s, tc.cache, false)
			if resp := w.answer(q, from, 0); len(resp) == 0 {
				b.Fatal("no answer")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w.answer(q, from, 0)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		})
	}
}
