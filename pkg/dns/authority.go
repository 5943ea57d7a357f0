package dns

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	miekg "github.com/miekg/dns"
)

// Authority is an authoritative-only server for one static zone, such as
// the example.test zone the lab's external host serves as "the internet"
// upstream of the cluster DNS. It answers its records, NXDOMAIN or NODATA
// with the zone's SOA, and REFUSED for every name outside the zone (it
// does not recurse). Safe for concurrent use.
type Authority struct {
	ix *index
}

// NewAuthority parses zone, records in zone-file syntax (RFC 1035 §5)
// relative to origin, for example
//
//	www  300 IN A 203.0.113.10
//	api      IN A 203.0.113.11
//
// A record without a TTL takes the one before it (RFC 1035 §5.1), or 300 s. Without an SOA record in the text the
// zone gets one (ns.dns.<origin> hostmaster.<origin>). Records outside the
// origin are an error.
func NewAuthority(origin, zone string) (*Authority, error) {
	if _, ok := miekg.IsDomainName(origin); !ok || strings.Trim(origin, ".") == "" {
		return nil, fmt.Errorf("zone origin %q is not a domain name", origin)
	}
	ix := newIndex(origin, 64)
	zp := miekg.NewZoneParser(strings.NewReader(zone), ix.apex, "")
	zp.SetDefaultTTL(300)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		h := rr.Header()
		h.Name = strings.ToLower(h.Name)
		if !ix.inZone(h.Name) {
			return nil, fmt.Errorf("zone %s: record %q is outside the zone", ix.apex, rr.String())
		}
		if soa, ok := rr.(*miekg.SOA); ok {
			if h.Name != ix.apex {
				return nil, fmt.Errorf("zone %s: SOA record %q is not at the zone's apex", ix.apex, rr.String())
			}
			if ix.soa != nil {
				return nil, fmt.Errorf("zone %s has two SOA records", ix.apex)
			}
			ix.soa = []miekg.RR{soa}
		}
		if c, ok := rr.(*miekg.CNAME); ok {
			if n := ix.names[h.Name]; n != nil && (n.sets != nil || n.cname != nil) {
				return nil, fmt.Errorf("zone %s: CNAME %s shares its name with other records", ix.apex, h.Name)
			}
			c.Target = strings.ToLower(c.Target)
			ix.node(h.Name).cname = c
			continue
		}
		if n := ix.names[h.Name]; n != nil && n.cname != nil {
			return nil, fmt.Errorf("zone %s: CNAME %s shares its name with other records", ix.apex, h.Name)
		}
		ix.add(rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("zone %s: %w", ix.apex, err)
	}
	if ix.soa == nil {
		soa := makeSOA(ix.apex, uint32(time.Now().Unix()), 300)
		ix.soa = []miekg.RR{soa}
		ix.add(soa)
	}
	return &Authority{ix: ix}, nil
}

// Zone returns the served zone, fully qualified and lowercase.
func (a *Authority) Zone() string { return a.ix.apex }

// ServeDNS answers one query (miekg/dns Handler).
func (a *Authority) ServeDNS(w miekg.ResponseWriter, r *miekg.Msg) {
	write(w, r, a.handle(r), 4096)
}

func (a *Authority) handle(r *miekg.Msg) *miekg.Msg {
	if m := check(r); m != nil {
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if !a.ix.inZone(name) {
		return reply(r, miekg.RcodeRefused)
	}
	m := reply(r, miekg.RcodeSuccess)
	m.Authoritative = true
	if q.Qtype == miekg.TypeAXFR || q.Qtype == miekg.TypeIXFR {
		m.Rcode = miekg.RcodeRefused
		return m
	}
	target := a.ix.answer(m, q, name)
	for hops := 0; target != "" && a.ix.inZone(target) && hops < 8; hops++ {
		sub := new(miekg.Msg)
		target = a.ix.answer(sub, miekg.Question{Name: target, Qtype: q.Qtype, Qclass: q.Qclass}, target)
		m.Answer = append(m.Answer, sub.Answer...)
		m.Extra = append(m.Extra, sub.Extra...)
		if sub.Rcode != miekg.RcodeSuccess || len(sub.Answer) == 0 {
			m.Rcode = sub.Rcode
			m.Ns = sub.Ns
		}
	}
	return m
}

// Serve answers on the given sockets until ctx is done (see Serve).
func (a *Authority) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	return Serve(ctx, a, udp, tcp)
}
