package dns

import (
	"fmt"
	"net/netip"
	"testing"

	miekg "github.com/miekg/dns"
)

// labObjects is a lab of n services across 10 namespaces: 9 of 10 are
// ClusterIP with two ports (one named), 1 of 10 headless with 3 ready
// endpoints whose pods exist; every endpoint's pod is listed.
func labObjects(n int) *Objects {
	o := &Objects{EndpointsOf: map[string][]Endpoint{}}
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("ns%d", i%10)
		name := fmt.Sprintf("svc%d", i)
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		ports := []Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 8080}, {Protocol: "UDP", Port: 53}}
		if i%10 != 9 {
			o.ServiceList = append(o.ServiceList, Service{Namespace: ns, Name: name, ClusterIP: vip, Ports: ports})
			continue
		}
		o.ServiceList = append(o.ServiceList, Service{Namespace: ns, Name: name, Type: Headless, Ports: ports})
		for j := 0; j < 3; j++ {
			pip := netip.AddrFrom4([4]byte{10, 244, byte(i >> 6), byte(i<<2 | j)})
			pod := fmt.Sprintf("%s-%d", name, j)
			o.EndpointsOf[ns+"/"+name] = append(o.EndpointsOf[ns+"/"+name], Endpoint{IP: pip, Ready: true, PodName: pod})
			o.PodList = append(o.PodList, Pod{Namespace: ns, Name: pod, IP: pip, Hostname: pod, Subdomain: name})
		}
	}
	return o
}

// discard is a ResponseWriter that packs the answer (as the server does)
// and drops it.
type discard struct{ memWriter }

func (d *discard) WriteMsg(m *miekg.Msg) error {
	_, err := m.Pack()
	return err
}

// BenchmarkServeA is the handler's cost for one A lookup of a ClusterIP
// service at 1,000 services: parse nothing (the query is a message
// already), look up, build and pack the answer.
func BenchmarkServeA(b *testing.B) {
	s := newServer(b, Config{}, labObjects(1000))
	r := new(miekg.Msg)
	r.SetQuestion("svc500.ns0.svc.cluster.local.", miekg.TypeA)
	w := &discard{memWriter{network: "udp"}}
	// One answer check outside the timing.
	if m, _ := ask(b, s, query{name: r.Question[0].Name, qtype: miekg.TypeA}); len(m.Answer) != 1 {
		b.Fatalf("answer %v", m.Answer)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.ServeDNS(w, r)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}

// BenchmarkServeAParallel is BenchmarkServeA from every CPU at once (the
// index is shared, read-only).
func BenchmarkServeAParallel(b *testing.B) {
	s := newServer(b, Config{}, labObjects(1000))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := new(miekg.Msg)
		r.SetQuestion("svc500.ns0.svc.cluster.local.", miekg.TypeA)
		w := &discard{memWriter{network: "udp"}}
		for pb.Next() {
			s.ServeDNS(w, r)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}

// BenchmarkServeMix is a mix of A, SRV and NXDOMAIN questions (the
// issue's dnsperf mix), handler only.
func BenchmarkServeMix(b *testing.B) {
	s := newServer(b, Config{}, labObjects(1000))
	var qs []*miekg.Msg
	for _, q := range []struct {
		name string
		t    uint16
	}{
		{"svc500.ns0.svc.cluster.local.", miekg.TypeA},
		{"_http._tcp.svc501.ns1.svc.cluster.local.", miekg.TypeSRV},
		{"_http._tcp.svc509.ns9.svc.cluster.local.", miekg.TypeSRV},
		{"nope.ns0.svc.cluster.local.", miekg.TypeA},
	} {
		r := new(miekg.Msg)
		r.SetQuestion(q.name, q.t)
		qs = append(qs, r)
	}
	w := &discard{memWriter{network: "udp"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.ServeDNS(w, qs[i%len(qs)])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}

// BenchmarkUpdate10k is the time Update takes to build and swap in the
// index of 10,000 services (3,000 endpoints and pods): how long a lab
// change takes to be answered, before any cache.
func BenchmarkUpdate10k(b *testing.B) {
	o := labObjects(10000)
	s := newServer(b, Config{}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Update(o); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if m, _ := ask(b, s, query{name: "svc9998.ns8.svc.cluster.local.", qtype: miekg.TypeA}); len(m.Answer) != 1 {
		b.Fatalf("answer %v", m.Answer)
	}
	b.ReportMetric(float64(len(s.idx.Load().names)), "names")
}
