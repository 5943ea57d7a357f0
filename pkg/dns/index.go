package dns

import (
	"strings"

	miekg "github.com/miekg/dns"
)

// An index is an immutable set of records: every owner name (lowercase,
// fully qualified) with its records by type. Built once per Update, then
// only read, by any number of goroutines at once; a new one replaces it
// whole (Server.Update swaps a pointer).
type index struct {
	apex    string // the zone, lowercase and fully qualified: "cluster.local."
	dotApex string // "." + apex, for suffix tests
	soa     []miekg.RR
	names   map[string]*node
	// reverse holds the SOA of each reverse zone (in-addr.arpa., ip6.arpa.)
	// the index has PTR records in, for NODATA answers there.
	reverse map[string][]miekg.RR
	// namespaces known from services and pods (pod "insecure" mode).
	namespaces map[string]bool
}

// node is one owner name. A node without records is an empty non-terminal
// (a name that exists only because names below it do, like
// default.svc.cluster.local.): queries for it are NODATA, not NXDOMAIN
// (RFC 8020).
type node struct {
	sets  []rrset      // by type; a name has one to three types
	cname *miekg.CNAME // an ExternalName service: a CNAME and nothing else
}

type rrset struct {
	rrtype uint16
	answer []miekg.RR
	extra  []miekg.RR // additional section (glue for SRV targets)
}

// set returns the records of one type at n, or nil.
func (n *node) set(t uint16) *rrset {
	for i := range n.sets {
		if n.sets[i].rrtype == t {
			return &n.sets[i]
		}
	}
	return nil
}

func newIndex(apex string, names int) *index {
	apex = strings.ToLower(miekg.Fqdn(apex))
	return &index{
		apex:       apex,
		dotApex:    "." + apex,
		names:      make(map[string]*node, names),
		namespaces: map[string]bool{},
	}
}

// inZone reports whether the lowercase name is the apex or below it.
func (ix *index) inZone(name string) bool {
	return name == ix.apex || strings.HasSuffix(name, ix.dotApex)
}

// node returns the node of a lowercase name, creating it and, for names
// in the zone, its ancestors up to the apex (as empty non-terminals).
func (ix *index) node(name string) *node {
	n := ix.names[name]
	if n != nil {
		return n
	}
	n = &node{}
	ix.names[name] = n
	if name != ix.apex && ix.inZone(name) {
		for p := name; p != ix.apex; {
			i := strings.IndexByte(p, '.')
			p = p[i+1:]
			if _, ok := ix.names[p]; ok {
				break
			}
			ix.names[p] = &node{}
		}
	}
	return n
}

// add adds rr (whose owner name must already be lowercase) with optional
// additional-section records.
func (ix *index) add(rr miekg.RR, extra ...miekg.RR) {
	n := ix.node(rr.Header().Name)
	t := rr.Header().Rrtype
	s := n.set(t)
	if s == nil {
		n.sets = append(n.sets, rrset{rrtype: t})
		s = &n.sets[len(n.sets)-1]
	}
	s.answer = append(s.answer, rr)
	s.extra = append(s.extra, extra...)
}

// answer fills m (a reply to question q, whose name lowercased is name)
// from the index: records, NODATA or NXDOMAIN, each with the zone's SOA in
// the authority section when there are no records. It returns the CNAME
// target to chase, if the name is an alias and the question is not for the
// CNAME itself.
func (ix *index) answer(m *miekg.Msg, q miekg.Question, name string) (chase string) {
	n := ix.names[name]
	if n == nil {
		m.Rcode = miekg.RcodeNameError
		m.Ns = ix.soaFor(name)
		return ""
	}
	if n.cname != nil {
		m.Answer = append(m.Answer, owned(n.cname, q.Name, name))
		if q.Qtype == miekg.TypeCNAME {
			return ""
		}
		return n.cname.Target
	}
	if q.Qtype == miekg.TypeANY {
		for _, s := range n.sets {
			for _, rr := range s.answer {
				m.Answer = append(m.Answer, owned(rr, q.Name, name))
			}
		}
	} else if s := n.set(q.Qtype); s != nil {
		for _, rr := range s.answer {
			m.Answer = append(m.Answer, owned(rr, q.Name, name))
		}
		m.Extra = append(m.Extra, s.extra...)
	}
	if len(m.Answer) == 0 {
		m.Ns = ix.soaFor(name) // NODATA: NOERROR, no answer, SOA
	}
	return ""
}

// soaFor returns the SOA to put in the authority section of a negative
// answer for name.
func (ix *index) soaFor(name string) []miekg.RR {
	if ix.inZone(name) {
		return ix.soa
	}
	for z, soa := range ix.reverse {
		if strings.HasSuffix(name, "."+z) {
			return soa
		}
	}
	return nil
}

// owned returns rr with the owner name as the question spelled it (DNS
// names are case-insensitive, answers keep the asker's case), copying it
// only when the spelling differs from the stored lowercase name.
func owned(rr miekg.RR, qname, name string) miekg.RR {
	if qname == name || rr.Header().Name != name {
		return rr
	}
	c := miekg.Copy(rr)
	c.Header().Name = qname
	return c
}

// makeSOA returns the SOA record of a zone the way CoreDNS shapes it:
// ns.dns.<zone> hostmaster.<zone>, refresh 2h, retry 30m, expire 1d, and the
// records' TTL as the negative-caching TTL (RFC 2308), so a name that does
// not exist yet is not cached for longer than a record would be.
func makeSOA(zone string, serial, ttl uint32) *miekg.SOA {
	return &miekg.SOA{
		Hdr:     miekg.RR_Header{Name: zone, Rrtype: miekg.TypeSOA, Class: miekg.ClassINET, Ttl: ttl},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  ttl,
	}
}

func hdr(name string, t uint16, ttl uint32) miekg.RR_Header {
	return miekg.RR_Header{Name: name, Rrtype: t, Class: miekg.ClassINET, Ttl: ttl}
}
