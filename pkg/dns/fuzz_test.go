package dns

import (
	"context"
	"errors"
	"net"
	"testing"

	miekg "github.com/miekg/dns"
)

// FuzzServeDNS feeds the handler whatever unpacks as a DNS message: it
// must answer each with exactly one message that packs (FORMERR, NOTIMP,
// REFUSED or an answer), over UDP within the client's buffer, and never
// panic or block.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []struct {
		name string
		t    uint16
		edns uint16
	}{
		{"web.default.svc.cluster.local.", miekg.TypeA, 0},
		{"_mysql._tcp.db.default.svc.cluster.local.", miekg.TypeSRV, 1232},
		{"many.default.svc.cluster.local.", miekg.TypeA, 0},
		{"20.0.96.10.in-addr.arpa.", miekg.TypePTR, 0},
		{"10-244-1-10.default.pod.cluster.local.", miekg.TypeANY, 4096},
		{"ext.default.svc.cluster.local.", miekg.TypeA, 0},
		{"www.example.test.", miekg.TypeA, 0},
	} {
		r := new(miekg.Msg)
		r.SetQuestion(q.name, q.t)
		if q.edns != 0 {
			r.SetEdns0(q.edns, false)
		}
		b, err := r.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	down := func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("down") }
	s, err := New(Config{Pods: PodsInsecure, Upstream: "192.0.2.53:53", Dial: down})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Update(fixture()); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := new(miekg.Msg)
		if r.Unpack(data) != nil {
			return // miekg's server answers FORMERR or drops it before any handler
		}
		for _, network := range []string{"udp", "tcp"} {
			w := &memWriter{network: network}
			s.ServeDNS(w, r.Copy())
			if w.writes != 1 {
				t.Fatalf("%s: %d answers to %v", network, w.writes, r)
			}
			limit := miekg.MinMsgSize
			if o := r.IsEdns0(); o != nil {
				limit = max(limit, int(o.UDPSize()))
			}
			if network == "udp" && len(w.wire) > limit {
				t.Fatalf("udp answer of %d bytes, client buffer %d", len(w.wire), limit)
			}
		}
	})
}
