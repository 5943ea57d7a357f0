package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	miekg "github.com/miekg/dns"
)

const (
	A     = miekg.TypeA
	AAAA  = miekg.TypeAAAA
	SRV   = miekg.TypeSRV
	PTR   = miekg.TypePTR
	TXT   = miekg.TypeTXT
	CNAME = miekg.TypeCNAME
	SOA   = miekg.TypeSOA
)

type want struct {
	rcode  int
	answer []string // sorted lines; nil with NOERROR means NODATA
	extra  []string // sorted lines, when not nil
	soa    string   // owner of the SOA expected in the authority section
}

// checkAnswer compares an answer with what the test expects.
func checkAnswer(t *testing.T, q query, m *miekg.Msg, w want) {
	t.Helper()
	if m.Rcode != w.rcode {
		t.Errorf("%s %s: rcode %s, want %s", q.name, miekg.TypeToString[q.qtype], miekg.RcodeToString[m.Rcode], miekg.RcodeToString[w.rcode])
	}
	if got := lines(m.Answer); !slices.Equal(got, w.answer) && !(len(got) == 0 && len(w.answer) == 0) {
		t.Errorf("%s %s: answer\n  %s\nwant\n  %s", q.name, miekg.TypeToString[q.qtype], strings.Join(got, "\n  "), strings.Join(w.answer, "\n  "))
	}
	if w.extra != nil {
		if got := lines(m.Extra); !slices.Equal(got, w.extra) {
			t.Errorf("%s %s: additional\n  %s\nwant\n  %s", q.name, miekg.TypeToString[q.qtype], strings.Join(got, "\n  "), strings.Join(w.extra, "\n  "))
		}
	}
	switch {
	case w.soa != "":
		if len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != SOA || m.Ns[0].Header().Name != w.soa {
			t.Errorf("%s %s: authority %v, want the SOA of %s", q.name, miekg.TypeToString[q.qtype], m.Ns, w.soa)
		}
	case len(m.Ns) != 0:
		t.Errorf("%s %s: authority %v, want none", q.name, miekg.TypeToString[q.qtype], m.Ns)
	}
}

func TestRecords(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	const z = "cluster.local."
	nx := want{rcode: miekg.RcodeNameError, soa: z}
	nodata := want{rcode: miekg.RcodeSuccess, soa: z}
	ok := func(answer ...string) want { return want{answer: answer} }
	tests := []struct {
		name string
		q    query
		want want
	}{
		// §2.2 schema version.
		{"dns-version", query{name: "dns-version." + z, qtype: TXT}, ok(`dns-version.cluster.local. 5 IN TXT "1.1.0"`)},
		// §2.3.1 ClusterIP A, AAAA.
		{"clusterip A", query{name: "web.default.svc." + z, qtype: A}, ok("web.default.svc.cluster.local. 5 IN A 10.96.0.20")},
		{"kubernetes A", query{name: "kubernetes.default.svc." + z, qtype: A}, ok("kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1")},
		{"other namespace", query{name: "web.ns2.svc." + z, qtype: A}, ok("web.ns2.svc.cluster.local. 5 IN A 10.96.0.30")},
		{"clusterip AAAA", query{name: "v6.ns2.svc." + z, qtype: AAAA}, ok("v6.ns2.svc.cluster.local. 5 IN AAAA fd00:10:96::20")},
		{"v4 service AAAA is NODATA", query{name: "web.default.svc." + z, qtype: AAAA}, nodata},
		{"v6 service A is NODATA", query{name: "v6.ns2.svc." + z, qtype: A}, nodata},
		// §2.3.2 ClusterIP SRV: target the service name, its A as glue.
		{"clusterip SRV", query{name: "_http._tcp.web.default.svc." + z, qtype: SRV}, want{
			answer: []string{"_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.20"}}},
		{"udp SRV", query{name: "_dns._udp.kube-dns.kube-system.svc." + z, qtype: SRV},
			ok("_dns._udp.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.")},
		{"SRV wrong protocol", query{name: "_http._udp.web.default.svc." + z, qtype: SRV}, nx},
		{"SRV unknown port", query{name: "_nope._tcp.web.default.svc." + z, qtype: SRV}, nx},
		{"SRV proto label only", query{name: "_tcp.web.default.svc." + z, qtype: SRV}, nodata},
		{"SRV name, A query", query{name: "_http._tcp.web.default.svc." + z, qtype: A}, nodata},
		// §2.3.3 ClusterIP PTR, IPv4 and IPv6.
		{"clusterip PTR", query{name: "20.0.96.10.in-addr.arpa.", qtype: PTR}, ok("20.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local.")},
		{"clusterip PTR v6", query{name: "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", qtype: PTR},
			ok("0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR v6.ns2.svc.cluster.local.")},
		{"PTR name, A query", query{name: "20.0.96.10.in-addr.arpa.", qtype: A}, want{soa: "in-addr.arpa."}},
		// §2.4.1 headless: one A per ready endpoint, and per hostname.
		{"headless A", query{name: "db.default.svc." + z, qtype: A}, ok(
			"db.default.svc.cluster.local. 5 IN A 10.244.1.5",
			"db.default.svc.cluster.local. 5 IN A 10.244.2.6",
			"db.default.svc.cluster.local. 5 IN A 10.244.2.8")},
		{"endpoint hostname", query{name: "db-0.db.default.svc." + z, qtype: A}, ok("db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.5")},
		{"pod hostname.subdomain", query{name: "db-1.db.default.svc." + z, qtype: A}, ok("db-1.db.default.svc.cluster.local. 5 IN A 10.244.2.6")},
		{"endpoint without hostname: dashed IP", query{name: "10-244-2-8.db.default.svc." + z, qtype: A}, ok("10-244-2-8.db.default.svc.cluster.local. 5 IN A 10.244.2.8")},
		{"not-ready endpoint", query{name: "db-2.db.default.svc." + z, qtype: A}, nx},
		{"headless without ready endpoints", query{name: "empty.default.svc." + z, qtype: A}, nx},
		// §2.4.2 headless SRV: one per ready endpoint, target its hostname,
		// the endpoints' (target) port.
		{"headless SRV", query{name: "_mysql._tcp.db.default.svc." + z, qtype: SRV}, want{
			answer: []string{
				"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 10-244-2-8.db.default.svc.cluster.local.",
				"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 db-0.db.default.svc.cluster.local.",
				"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 db-1.db.default.svc.cluster.local.",
			},
			extra: []string{
				"10-244-2-8.db.default.svc.cluster.local. 5 IN A 10.244.2.8",
				"db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.5",
				"db-1.db.default.svc.cluster.local. 5 IN A 10.244.2.6",
			}}},
		// §2.4.3 headless PTR to the endpoint's hostname name.
		{"endpoint PTR", query{name: "5.1.244.10.in-addr.arpa.", qtype: PTR}, ok("5.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.default.svc.cluster.local.")},
		{"pod-hostname endpoint PTR", query{name: "6.2.244.10.in-addr.arpa.", qtype: PTR}, ok("6.2.244.10.in-addr.arpa. 5 IN PTR db-1.db.default.svc.cluster.local.")},
		// §2.5 ExternalName: CNAME; a target in the zone is followed.
		{"externalname CNAME", query{name: "ext.default.svc." + z, qtype: CNAME}, ok("ext.default.svc.cluster.local. 5 IN CNAME www.example.test.")},
		{"externalname A without upstream", query{name: "ext.default.svc." + z, qtype: A}, ok("ext.default.svc.cluster.local. 5 IN CNAME www.example.test.")},
		{"externalname to a service", query{name: "alias.default.svc." + z, qtype: A}, ok(
			"alias.default.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local.",
			"web.default.svc.cluster.local. 5 IN A 10.96.0.20")},
		// Pod A records (schema 1.0 §2.6, verified as CoreDNS does).
		{"pod A", query{name: "10-244-1-10.default.pod." + z, qtype: A}, ok("10-244-1-10.default.pod.cluster.local. 5 IN A 10.244.1.10")},
		{"pod AAAA", query{name: "fd00-10-244--5.ns2.pod." + z, qtype: AAAA}, ok("fd00-10-244--5.ns2.pod.cluster.local. 5 IN AAAA fd00:10:244::5")},
		{"pod in another namespace", query{name: "10-244-1-10.ns2.pod." + z, qtype: A}, nx},
		{"no such pod", query{name: "10-244-1-99.default.pod." + z, qtype: A}, nx},
		// Zone apex and the name server.
		{"NS", query{name: z, qtype: miekg.TypeNS}, ok("cluster.local. 5 IN NS ns.dns.cluster.local.")},
		{"ns.dns", query{name: "ns.dns." + z, qtype: A}, ok("ns.dns.cluster.local. 5 IN A 10.96.0.10")},
		// NXDOMAIN and NODATA, with the SOA.
		{"no such service", query{name: "nope.default.svc." + z, qtype: A}, nx},
		{"no such namespace", query{name: "web.nons.svc." + z, qtype: A}, nx},
		{"not a schema name", query{name: "foo." + z, qtype: A}, nx},
		{"namespace is NODATA", query{name: "default.svc." + z, qtype: A}, nodata},
		{"svc is NODATA", query{name: "svc." + z, qtype: A}, nodata},
		{"pod namespace is NODATA", query{name: "default.pod." + z, qtype: A}, nodata},
		{"TXT of a service is NODATA", query{name: "web.default.svc." + z, qtype: TXT}, nodata},
		{"apex A is NODATA", query{name: z, qtype: A}, nodata},
		// Case-insensitive (§2.1); the answer keeps the question's case.
		{"mixed case", query{name: "WEB.Default.SVC.Cluster.Local.", qtype: A}, ok("WEB.Default.SVC.Cluster.Local. 5 IN A 10.96.0.20")},
		{"mixed case SRV", query{name: "_HTTP._TCP.web.DEFAULT.svc.cluster.local.", qtype: SRV},
			ok("_HTTP._TCP.web.DEFAULT.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local.")},
		{"mixed case PTR", query{name: "20.0.96.10.IN-ADDR.ARPA.", qtype: PTR}, ok("20.0.96.10.IN-ADDR.ARPA. 5 IN PTR web.default.svc.cluster.local.")},
		// Without an upstream, names outside the cluster are refused.
		{"outside, no upstream", query{name: "www.example.test.", qtype: A}, want{rcode: miekg.RcodeRefused}},
		{"unknown reverse, no upstream", query{name: "1.1.168.192.in-addr.arpa.", qtype: PTR}, want{rcode: miekg.RcodeRefused}},
		{"over tcp", query{name: "web.default.svc." + z, qtype: A, network: "tcp"}, ok("web.default.svc.cluster.local. 5 IN A 10.96.0.20")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := ask(t, s, tc.q)
			checkAnswer(t, tc.q, m, tc.want)
			if m.Rcode != miekg.RcodeRefused && !m.Authoritative {
				t.Errorf("%s: answer is not authoritative", tc.q.name)
			}
		})
	}
}

// TestSearchPath asks what a pod's resolver asks for "web", "web.ns2" and
// an outside name with the kubelet's search list and ndots:5: every
// candidate in the cluster zone is answered there (NXDOMAIN), never
// forwarded, and the absolute name comes last.
func TestSearchPath(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	search := []string{"default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."}
	resolve := func(short string) (tries []string, answer []string) {
		for _, suffix := range append(search, ".") {
			name := short + "." + strings.TrimPrefix(suffix, ".")
			if suffix == "." {
				name = short + "."
			}
			m, _ := ask(t, s, query{name: name, qtype: A})
			tries = append(tries, name+" "+miekg.RcodeToString[m.Rcode])
			if m.Rcode == miekg.RcodeSuccess && len(m.Answer) > 0 {
				return tries, lines(m.Answer)
			}
		}
		return tries, nil
	}
	tests := []struct {
		short  string
		tries  []string
		answer []string
	}{
		{"web", []string{"web.default.svc.cluster.local. NOERROR"}, []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.20"}},
		{"web.ns2", []string{"web.ns2.default.svc.cluster.local. NXDOMAIN", "web.ns2.svc.cluster.local. NOERROR"},
			[]string{"web.ns2.svc.cluster.local. 5 IN A 10.96.0.30"}},
		{"web.default.svc", []string{"web.default.svc.default.svc.cluster.local. NXDOMAIN", "web.default.svc.svc.cluster.local. NXDOMAIN",
			"web.default.svc.cluster.local. NOERROR"}, []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.20"}},
		{"www.example.test", []string{"www.example.test.default.svc.cluster.local. NXDOMAIN", "www.example.test.svc.cluster.local. NXDOMAIN",
			"www.example.test.cluster.local. NXDOMAIN", "www.example.test. REFUSED"}, nil},
	}
	for _, tc := range tests {
		tries, answer := resolve(tc.short)
		if !slices.Equal(tries, tc.tries) || !slices.Equal(answer, tc.answer) {
			t.Errorf("%s: asked\n  %s\nanswer %v\nwant\n  %s\nanswer %v", tc.short, strings.Join(tries, "\n  "), answer, strings.Join(tc.tries, "\n  "), tc.answer)
		}
	}
}

func TestSOA(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	m, _ := ask(t, s, query{name: "cluster.local.", qtype: SOA})
	if len(m.Answer) != 1 {
		t.Fatalf("SOA: %v", m.Answer)
	}
	soa := m.Answer[0].(*miekg.SOA)
	if soa.Ns != "ns.dns.cluster.local." || soa.Mbox != "hostmaster.cluster.local." || soa.Minttl != 5 || soa.Serial == 0 {
		t.Errorf("SOA %v", soa)
	}
	m, _ = ask(t, s, query{name: "nope.cluster.local.", qtype: A})
	if len(m.Ns) != 1 || m.Ns[0].(*miekg.SOA).Serial != soa.Serial {
		t.Errorf("NXDOMAIN authority %v, want %v", m.Ns, soa)
	}
}

func TestPodModes(t *testing.T) {
	const name = "10-244-1-99.default.pod.cluster.local."
	ins := newServer(t, Config{Pods: PodsInsecure}, fixture())
	m, _ := ask(t, ins, query{name: name, qtype: A})
	checkAnswer(t, query{name: name, qtype: A}, m, want{answer: []string{name + " 5 IN A 10.244.1.99"}})
	m, _ = ask(t, ins, query{name: name, qtype: AAAA})
	checkAnswer(t, query{name: name, qtype: AAAA}, m, want{soa: "cluster.local."})
	for _, n := range []string{"10-244-1-99.nons.pod.cluster.local.", "not-an-ip.default.pod.cluster.local.", "1-2-3-4.x.default.pod.cluster.local."} {
		m, _ = ask(t, ins, query{name: n, qtype: A})
		checkAnswer(t, query{name: n, qtype: A}, m, want{rcode: miekg.RcodeNameError, soa: "cluster.local."})
	}
	off := newServer(t, Config{Pods: PodsDisabled}, fixture())
	n := "10-244-1-10.default.pod.cluster.local."
	m, _ = ask(t, off, query{name: n, qtype: A})
	checkAnswer(t, query{name: n, qtype: A}, m, want{rcode: miekg.RcodeNameError, soa: "cluster.local."})
}

func TestPodSameIP(t *testing.T) {
	o := fixture()
	o.PodList = append(o.PodList, Pod{Namespace: "default", Name: "client-new", IP: ip("10.244.1.10")})
	s := newServer(t, Config{}, o)
	q := query{name: "10-244-1-10.default.pod.cluster.local.", qtype: A}
	m, _ := ask(t, s, q)
	checkAnswer(t, q, m, want{answer: []string{"10-244-1-10.default.pod.cluster.local. 5 IN A 10.244.1.10"}})
}

func TestOtherZone(t *testing.T) {
	s := newServer(t, Config{Zone: "Lab.Test"}, fixture())
	m, _ := ask(t, s, query{name: "web.default.svc.lab.test.", qtype: A})
	checkAnswer(t, query{}, m, want{answer: []string{"web.default.svc.lab.test. 5 IN A 10.96.0.20"}})
	m, _ = ask(t, s, query{name: "dns-version.lab.test.", qtype: TXT})
	checkAnswer(t, query{}, m, want{answer: []string{`dns-version.lab.test. 5 IN TXT "1.1.0"`}})
	m, _ = ask(t, s, query{name: "web.default.svc.cluster.local.", qtype: A})
	checkAnswer(t, query{}, m, want{rcode: miekg.RcodeRefused})
}

// TestTruncation: an answer bigger than the client's UDP buffer (512
// bytes without EDNS0, else its EDNS0 size) has the TC bit and fits the
// buffer; the same question over TCP gets everything.
func TestTruncation(t *testing.T) {
	s := newServer(t, Config{MaxUDPSize: 8192}, fixture())
	const many = "many.default.svc.cluster.local."
	tests := []struct {
		q       query
		tc      bool
		answers int // -1: fewer than 100
		extra   int
	}{
		{query{name: many, qtype: A}, true, -1, 0},
		{query{name: many, qtype: A, edns: 1232}, true, -1, 0},
		{query{name: many, qtype: A, edns: 4096}, false, 100, 0},
		{query{name: many, qtype: A, network: "tcp"}, false, 100, 0},
		// 100 SRV records (6251 bytes: targets are never compressed) and
		// their glue (7851 bytes in all): in 7000 bytes the glue goes and
		// the answers stay, without TC.
		{query{name: "_http._tcp." + many, qtype: SRV, edns: 7000}, false, 100, 0},
		{query{name: "_http._tcp." + many, qtype: SRV, edns: 65000}, false, 100, 100}, // capped at MaxUDPSize 8192
		{query{name: "_http._tcp." + many, qtype: SRV, edns: 4096}, true, -1, 0},
		{query{name: "_http._tcp." + many, qtype: SRV, network: "tcp"}, false, 100, 100},
		{query{name: "web.default.svc.cluster.local.", qtype: A}, false, 1, 0},
	}
	for _, tc := range tests {
		m, size := ask(t, s, tc.q)
		limit := 512
		if tc.q.edns != 0 {
			limit = min(int(tc.q.edns), 8192)
		}
		if tc.q.network == "" && size > limit {
			t.Errorf("%s edns %d: %d bytes over UDP, limit %d", tc.q.name, tc.q.edns, size, limit)
		}
		extra := len(lines(m.Extra))
		if m.Truncated != tc.tc || (tc.answers >= 0 && len(m.Answer) != tc.answers) || (tc.answers < 0 && len(m.Answer) >= 100) || extra != tc.extra {
			t.Errorf("%s %s edns %d: TC=%v, %d answers, %d additional (%d bytes); want TC=%v, %d answers, %d additional",
				tc.q.name, tc.q.network, tc.q.edns, m.Truncated, len(m.Answer), extra, size, tc.tc, tc.answers, tc.extra)
		}
		if tc.q.edns != 0 && m.IsEdns0() == nil {
			t.Errorf("%s: EDNS0 query, answer without OPT", tc.q.name)
		}
		if tc.q.edns == 0 && m.IsEdns0() != nil {
			t.Errorf("%s: answer has an OPT record the query did not", tc.q.name)
		}
	}
}

// TestMalformed: what is not one standard IN query is refused with the
// rcode that says why, never dropped silently or answered as if fine.
func TestMalformed(t *testing.T) {
	s := newServer(t, Config{}, fixture())
	serve := func(r *miekg.Msg) *miekg.Msg {
		w := &memWriter{network: "udp"}
		s.ServeDNS(w, r)
		m := new(miekg.Msg)
		if err := m.Unpack(w.wire); err != nil {
			t.Fatal(err)
		}
		return m
	}
	none := &miekg.Msg{MsgHdr: miekg.MsgHdr{Id: 7}}
	two := new(miekg.Msg)
	two.SetQuestion("web.default.svc.cluster.local.", A)
	two.Question = append(two.Question, two.Question[0])
	notify := new(miekg.Msg)
	notify.SetNotify("cluster.local.")
	chaos := new(miekg.Msg)
	chaos.SetQuestion("version.bind.", TXT)
	chaos.Question[0].Qclass = miekg.ClassCHAOS
	v1 := new(miekg.Msg)
	v1.SetQuestion("web.default.svc.cluster.local.", A)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	axfr := new(miekg.Msg)
	axfr.SetAxfr("cluster.local.")
	resp := new(miekg.Msg)
	resp.SetQuestion("web.default.svc.cluster.local.", A)
	resp.Response = true
	for _, tc := range []struct {
		name  string
		r     *miekg.Msg
		rcode int
	}{
		{"no question", none, miekg.RcodeFormatError},
		{"two questions", two, miekg.RcodeFormatError},
		{"notify", notify, miekg.RcodeNotImplemented},
		{"chaos class", chaos, miekg.RcodeRefused},
		{"EDNS version 1", v1, miekg.RcodeBadVers},
		{"zone transfer", axfr, miekg.RcodeRefused},
		{"a response", resp, miekg.RcodeFormatError},
	} {
		if m := serve(tc.r); m.Rcode != tc.rcode || len(m.Answer) != 0 {
			t.Errorf("%s: rcode %s, %d answers; want %s", tc.name, miekg.RcodeToString[m.Rcode], len(m.Answer), miekg.RcodeToString[tc.rcode])
		}
	}
}

func TestBeforeFirstUpdate(t *testing.T) {
	s := newServer(t, Config{}, nil)
	m, _ := ask(t, s, query{name: "web.default.svc.cluster.local.", qtype: A})
	if m.Rcode != miekg.RcodeServerFailure {
		t.Errorf("before the first Update: %s, want SERVFAIL", miekg.RcodeToString[m.Rcode])
	}
	m, _ = ask(t, s, query{name: "www.example.test.", qtype: A})
	if m.Rcode != miekg.RcodeRefused {
		t.Errorf("outside the zone before the first Update: %s, want REFUSED", miekg.RcodeToString[m.Rcode])
	}
}

// TestTCPLimit: an answer over 64 KiB (5,000 endpoints) is cut to what a
// TCP message can hold, with TC, instead of failing to pack.
func TestTCPLimit(t *testing.T) {
	o := fixture()
	var eps []Endpoint
	for i := 0; i < 5000; i++ {
		eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)}), Ready: true})
	}
	o.EndpointsOf["default/many"] = eps
	s := newServer(t, Config{}, o)
	m, size := ask(t, s, query{name: "many.default.svc.cluster.local.", qtype: A, network: "tcp"})
	if !m.Truncated || size > miekg.MaxMsgSize || len(m.Answer) < 4000 {
		t.Errorf("5000 A records over TCP: TC=%v, %d answers, %d bytes", m.Truncated, len(m.Answer), size)
	}
}
