package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

const exampleZone = `
www   IN A 203.0.113.10
web   IN CNAME www
txt   IN TXT "hello"
api   60 IN A 203.0.113.11
api   IN A 203.0.113.12
`

func exampleAuthority(t testing.TB) *Authority {
	t.Helper()
	a, err := NewAuthority("example.test", exampleZone)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// pipeDial is a DialFunc without sockets: each connection is a net.Pipe
// (DNS over TCP framing) whose far end is answered by h, or never answered
// when h is nil.
type pipeDial struct {
	h     *Authority
	dials atomic.Int32
}

func (p *pipeDial) dial(ctx context.Context, network, address string) (net.Conn, error) {
	p.dials.Add(1)
	c, far := net.Pipe()
	go func() {
		defer far.Close()
		co := &miekg.Conn{Conn: far}
		r, err := co.ReadMsg()
		if err != nil || p.h == nil {
			io := make([]byte, 1)
			far.Read(io) // hang until the client gives up and closes
			return
		}
		co.WriteMsg(p.h.handle(r))
	}()
	return c, nil
}

func TestAuthority(t *testing.T) {
	a := exampleAuthority(t)
	z := "example.test."
	nx := want{rcode: miekg.RcodeNameError, soa: z}
	for _, tc := range []struct {
		q    query
		want want
	}{
		{query{name: "www.example.test.", qtype: A}, want{answer: []string{"www.example.test. 300 IN A 203.0.113.10"}}},
		{query{name: "API.example.test.", qtype: A}, want{answer: []string{"API.example.test. 60 IN A 203.0.113.11", "API.example.test. 60 IN A 203.0.113.12"}}},
		{query{name: "web.example.test.", qtype: A}, want{answer: []string{"web.example.test. 300 IN CNAME www.example.test.", "www.example.test. 300 IN A 203.0.113.10"}}},
		{query{name: "txt.example.test.", qtype: TXT}, want{answer: []string{`txt.example.test. 300 IN TXT "hello"`}}},
		{query{name: "www.example.test.", qtype: AAAA}, want{soa: z}},
		{query{name: "nope.example.test.", qtype: A}, nx},
		{query{name: "example.test.", qtype: SOA}, want{answer: nil}},
		{query{name: "web.default.svc.cluster.local.", qtype: A}, want{rcode: miekg.RcodeRefused}},
	} {
		m, _ := ask(t, a, tc.q)
		if tc.q.qtype == SOA {
			if len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != SOA {
				t.Errorf("SOA query: %v", m.Answer)
			}
			continue
		}
		checkAnswer(t, tc.q, m, tc.want)
		if m.RecursionAvailable {
			t.Errorf("%s: an authority-only server says recursion is available", tc.q.name)
		}
	}
	for _, bad := range []struct{ origin, zone string }{
		{"", "www IN A 1.2.3.4"},
		{"example.test", "www.other.test. IN A 1.2.3.4"},
		{"example.test", "www IN A 1.2.3"},
		{"example.test", "www IN CNAME a\nwww IN A 1.2.3.4"},
	} {
		if _, err := NewAuthority(bad.origin, bad.zone); err == nil {
			t.Errorf("NewAuthority(%q, %q): no error", bad.origin, bad.zone)
		} else {
			t.Logf("NewAuthority(%q, %q): %v", bad.origin, bad.zone, err)
		}
	}
}

func TestForward(t *testing.T) {
	up := &pipeDial{h: exampleAuthority(t)}
	s := newServer(t, Config{Upstream: "192.0.2.53:53", Dial: up.dial}, fixture())
	for _, tc := range []struct {
		q    query
		want want
	}{
		{query{name: "www.example.test.", qtype: A}, want{answer: []string{"www.example.test. 300 IN A 203.0.113.10"}}},
		{query{name: "www.example.test.", qtype: A, network: "tcp"}, want{answer: []string{"www.example.test. 300 IN A 203.0.113.10"}}},
		{query{name: "nope.example.test.", qtype: A}, want{rcode: miekg.RcodeNameError, soa: "example.test."}},
		{query{name: "elsewhere.invalid.", qtype: A}, want{rcode: miekg.RcodeRefused}}, // the upstream's own answer
		// ExternalName: the CNAME, then the target's records from the
		// upstream (§2.5 answer example).
		{query{name: "ext.default.svc.cluster.local.", qtype: A}, want{answer: []string{
			"ext.default.svc.cluster.local. 5 IN CNAME www.example.test.", "www.example.test. 300 IN A 203.0.113.10"}}},
		// Cluster names are never forwarded.
		{query{name: "www.example.test.default.svc.cluster.local.", qtype: A}, want{rcode: miekg.RcodeNameError, soa: "cluster.local."}},
	} {
		m, _ := ask(t, s, tc.q)
		checkAnswer(t, tc.q, m, tc.want)
		if !m.RecursionAvailable && tc.want.rcode != miekg.RcodeRefused {
			t.Errorf("%s: RA not set with an upstream", tc.q.name)
		}
	}
	if n := up.dials.Load(); n != 5 {
		t.Errorf("%d upstream connections, want 5", n)
	}
}

func TestForwardFailures(t *testing.T) {
	failing := func(ctx context.Context, network, address string) (net.Conn, error) {
		return nil, errors.New("connection refused")
	}
	s := newServer(t, Config{Upstream: "192.0.2.53:53", Dial: failing}, fixture())
	m, _ := ask(t, s, query{name: "www.example.test.", qtype: A})
	if m.Rcode != miekg.RcodeServerFailure {
		t.Errorf("upstream down: %s, want SERVFAIL", miekg.RcodeToString[m.Rcode])
	}
	// ExternalName with the upstream down: just the CNAME.
	m, _ = ask(t, s, query{name: "ext.default.svc.cluster.local.", qtype: A})
	checkAnswer(t, query{name: "ext"}, m, want{answer: []string{"ext.default.svc.cluster.local. 5 IN CNAME www.example.test."}})

	// An upstream that never answers: SERVFAIL after the timeout, not a hang.
	silent := &pipeDial{}
	s = newServer(t, Config{Upstream: "192.0.2.53:53", Dial: silent.dial, Timeout: 100 * time.Millisecond}, fixture())
	start := time.Now()
	m, _ = ask(t, s, query{name: "www.example.test.", qtype: A})
	if m.Rcode != miekg.RcodeServerFailure || time.Since(start) > 2*time.Second {
		t.Errorf("silent upstream: %s after %v, want SERVFAIL after ~100ms", miekg.RcodeToString[m.Rcode], time.Since(start))
	}

	// With every forwarding slot taken, a query is refused at once.
	s = newServer(t, Config{Upstream: "192.0.2.53:53", Dial: silent.dial, Timeout: time.Second, MaxForwards: 1}, fixture())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); ask(t, s, query{name: "a.example.test.", qtype: A}) }()
	for silent.dials.Load() < 2 { // the earlier dial, and this one
		time.Sleep(time.Millisecond)
	}
	start = time.Now()
	m, _ = ask(t, s, query{name: "b.example.test.", qtype: A})
	if m.Rcode != miekg.RcodeServerFailure || time.Since(start) > 500*time.Millisecond {
		t.Errorf("forwarding slots full: %s after %v, want SERVFAIL at once", miekg.RcodeToString[m.Rcode], time.Since(start))
	}
	wg.Wait()
}

func TestNewValidates(t *testing.T) {
	dial := func(context.Context, string, string) (net.Conn, error) { return nil, nil }
	for _, cfg := range []Config{
		{Zone: "bad..zone"},
		{Zone: "."},
		{Upstream: "8.8.8.8"},
		{Upstream: "resolver.example:53", Dial: dial},
		{Upstream: "192.0.2.53:53"}, // no Dial
		{Pods: PodMode(9)},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): no error", cfg)
		} else {
			t.Logf("New(%+v): %v", cfg, err)
		}
	}
}

// TestUpdate: answers follow Update at once; an invalid snapshot is
// refused whole and the previous answers stay.
func TestUpdate(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	q := query{name: "new.default.svc.cluster.local.", qtype: A}
	if m, _ := ask(t, s, q); m.Rcode != miekg.RcodeNameError {
		t.Fatalf("before: %s", miekg.RcodeToString[m.Rcode])
	}
	snap := fixture()
	snap.ServiceList = append(snap.ServiceList, Service{Namespace: "default", Name: "new", ClusterIP: ip("10.96.0.99")})
	if err := s.Update(snap); err != nil {
		t.Fatal(err)
	}
	m, _ := ask(t, s, q)
	checkAnswer(t, q, m, want{answer: []string{"new.default.svc.cluster.local. 5 IN A 10.96.0.99"}})

	bad := []func(o *Objects){
		func(o *Objects) { o.ServiceList[0].Name = "Web" },
		func(o *Objects) { o.ServiceList[0].Namespace = "" },
		func(o *Objects) { o.ServiceList[0].ClusterIP = netip.Addr{} },
		func(o *Objects) { o.ServiceList = append(o.ServiceList, o.ServiceList[0]) },
		func(o *Objects) { o.ServiceList[3].ClusterIP = ip("10.96.0.5") }, // headless with an IP
		func(o *Objects) { o.ServiceList[6].ExternalName = "" },
		func(o *Objects) { o.ServiceList[0].Ports[0].Protocol = "ICMP" },
		func(o *Objects) { o.ServiceList[0].Ports = append(o.ServiceList[0].Ports, o.ServiceList[0].Ports[0]) },
		func(o *Objects) { o.ServiceList[0].Ports[0].Name = "_https" },
		func(o *Objects) { o.EndpointsOf["default/db"][0].Hostname = "db.0" },
		func(o *Objects) { o.EndpointsOf["default/db"][0].IP = netip.Addr{} },
		func(o *Objects) { o.PodList[0].IP = netip.Addr{} },
		func(o *Objects) { o.PodList[1].Subdomain = "-db" },
	}
	for i, mutate := range bad {
		o := fixture()
		mutate(o)
		err := s.Update(o)
		if err == nil {
			t.Errorf("bad snapshot %d: no error", i)
			continue
		}
		t.Logf("bad snapshot %d: %v", i, err)
		if m, _ := ask(t, s, q); len(m.Answer) != 1 {
			t.Errorf("bad snapshot %d changed the answers: %v", i, m.Answer)
		}
	}
}

// TestUpdateWhileServing: queries running during Updates each see one
// whole snapshot, old or new (run with -race).
func TestUpdateWhileServing(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Int32
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m, _ := ask(t, s, query{name: "web.default.svc.cluster.local.", qtype: A})
				if len(m.Answer) != 1 {
					bad.Add(1)
					continue
				}
				a := m.Answer[0].(*miekg.A).A.String()
				if a != "10.96.0.20" && a != "10.96.0.21" {
					bad.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		o := fixture()
		o.ServiceList[2].ClusterIP = ip(fmt.Sprintf("10.96.0.%d", 20+i%2))
		if err := s.Update(o); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Errorf("%d answers were neither the old nor the new record", n)
	}
}
