package dns

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"

	miekg "github.com/miekg/dns"
)

// memWriter is an in-memory miekg ResponseWriter: the handler's answer is
// packed exactly as the server would send it, and unpacked again so tests
// see what a client sees.
type memWriter struct {
	network string // "udp" or "tcp"
	wire    []byte
	writes  int
}

func (w *memWriter) LocalAddr() net.Addr {
	if w.network == "tcp" {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (w *memWriter) RemoteAddr() net.Addr {
	if w.network == "tcp" {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

func (w *memWriter) WriteMsg(m *miekg.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	w.wire = b
	w.writes++
	return nil
}

func (w *memWriter) Write(b []byte) (int, error) {
	w.wire = append([]byte(nil), b...)
	w.writes++
	return len(b), nil
}

func (w *memWriter) Close() error        { return nil }
func (w *memWriter) TsigStatus() error   { return nil }
func (w *memWriter) TsigTimersOnly(bool) {}
func (w *memWriter) Hijack()             {}
func (w *memWriter) Network() string     { return w.network }

// query is one question with its transport and EDNS0 buffer (0: no OPT).
type query struct {
	name    string
	qtype   uint16
	network string
	edns    uint16
}

// ask sends q to h through a memWriter and returns the unpacked answer and
// its size on the wire.
func ask(t testing.TB, h miekg.Handler, q query) (*miekg.Msg, int) {
	t.Helper()
	r := new(miekg.Msg)
	r.SetQuestion(q.name, q.qtype)
	if q.edns != 0 {
		r.SetEdns0(q.edns, false)
	}
	if q.network == "" {
		q.network = "udp"
	}
	w := &memWriter{network: q.network}
	h.ServeDNS(w, r)
	if w.writes != 1 {
		t.Fatalf("%s %s: handler wrote %d messages, want 1", q.name, miekg.TypeToString[q.qtype], w.writes)
	}
	m := new(miekg.Msg)
	if err := m.Unpack(w.wire); err != nil {
		t.Fatalf("%s: unpack answer: %v", q.name, err)
	}
	if m.Id != r.Id {
		t.Fatalf("%s: answer id %d, query id %d", q.name, m.Id, r.Id)
	}
	return m, len(w.wire)
}

// lines renders records as sorted "name ttl class type data" lines.
func lines(rrs []miekg.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Header().Rrtype == miekg.TypeOPT {
			continue
		}
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	sort.Strings(out)
	return out
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// fixture is a small lab: the services, endpoints and pods every handler
// test asks about.
func fixture() *Objects {
	many := make([]Endpoint, 100)
	for i := range many {
		many[i] = Endpoint{IP: ip(fmt.Sprintf("10.244.3.%d", i+1)), Ready: true}
	}
	return &Objects{
		ServiceList: []Service{
			{Namespace: "default", Name: "kubernetes", ClusterIP: ip("10.96.0.1"),
				Ports: []Port{{Name: "https", Protocol: "TCP", Port: 443}}},
			{Namespace: "kube-system", Name: "kube-dns", ClusterIP: ip("10.96.0.10"),
				Ports: []Port{{Name: "dns", Protocol: "UDP", Port: 53}, {Name: "dns-tcp", Protocol: "TCP", Port: 53}}},
			{Namespace: "default", Name: "web", ClusterIP: ip("10.96.0.20"),
				Ports: []Port{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 8080}, {Port: 9090}}},
			{Namespace: "default", Name: "db", Type: Headless,
				Ports: []Port{{Name: "mysql", Port: 3306, TargetPort: 13306}}},
			{Namespace: "default", Name: "empty", Type: Headless, Ports: []Port{{Name: "x", Port: 1}}},
			{Namespace: "default", Name: "many", Type: Headless, Ports: []Port{{Name: "http", Port: 80}}},
			{Namespace: "default", Name: "ext", Type: ExternalName, ExternalName: "www.example.test"},
			{Namespace: "default", Name: "alias", Type: ExternalName, ExternalName: "web.default.svc.cluster.local"},
			{Namespace: "ns2", Name: "web", ClusterIP: ip("10.96.0.30"),
				Ports: []Port{{Name: "http", Port: 80}}},
			{Namespace: "ns2", Name: "v6", ClusterIP: ip("fd00:10:96::20"),
				Ports: []Port{{Name: "dns", Protocol: "UDP", Port: 53}}},
		},
		EndpointsOf: map[string][]Endpoint{
			"default/db": {
				{IP: ip("10.244.1.5"), Hostname: "db-0", Ready: true, PodName: "db-0", NodeName: "node1"},
				{IP: ip("10.244.2.6"), Ready: true, PodName: "db-1", NodeName: "node2"},
				{IP: ip("10.244.1.7"), Hostname: "db-2", Ready: false, PodName: "db-2", NodeName: "node1"},
				{IP: ip("10.244.2.8"), Ready: true, NodeName: "node2"},
			},
			"default/empty": {{IP: ip("10.244.1.9"), Ready: false}},
			"default/many":  many,
			"default/web":   {{IP: ip("10.244.1.20"), Ready: true}},
		},
		PodList: []Pod{
			{Namespace: "default", Name: "client", IP: ip("10.244.1.10")},
			{Namespace: "default", Name: "db-1", IP: ip("10.244.2.6"), Hostname: "db-1", Subdomain: "db"},
			{Namespace: "ns2", Name: "v6pod", IP: ip("fd00:10:244::5")},
		},
	}
}

func newServer(t testing.TB, cfg Config, snap Snapshot) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if snap != nil {
		if err := s.Update(snap); err != nil {
			t.Fatal(err)
		}
	}
	return s
}
