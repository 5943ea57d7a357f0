package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/pkg/netns"
)

// DialFunc opens a connection to an upstream server. The server calls it
// from whatever OS thread its handler runs on, so it must itself make the
// socket in the lab namespace the server serves in: DialIn does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// DialIn returns a DialFunc whose sockets are created inside the named
// network namespace (the socket keeps its namespace after the dialling
// thread returns to its own).
func DialIn(nsName string) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(nsName, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// Config configures a cluster DNS server. The zero value serves
// cluster.local with a TTL of 5 s, verified pod records and no upstream.
type Config struct {
	// Zone is the cluster domain (kubelet's --cluster-domain); default
	// cluster.local.
	Zone string
	// TTL of every record, and the negative-caching TTL; default 5 s
	// (CoreDNS's default), so caches forget a change within seconds.
	TTL uint32
	// Pods selects the <a-b-c-d>.<ns>.pod.<zone> records; default verified.
	Pods PodMode
	// Upstream is the ip:port of the resolver for names outside the zone
	// (and reverse names the cluster does not know). Empty: such queries
	// are REFUSED.
	Upstream string
	// Dial opens the sockets to Upstream; required with an Upstream, since
	// they must be made in the lab namespace (see DialIn).
	Dial DialFunc
	// Timeout bounds one exchange with the upstream, after which the
	// client gets SERVFAIL; default 2 s (resolv.conf's default timeout is
	// 5 s, so the client hears SERVFAIL before it gives up on us).
	Timeout time.Duration
	// MaxForwards bounds the queries waiting on the upstream at once;
	// past it a query gets SERVFAIL at once (bounded memory under a
	// flood). Default 256.
	MaxForwards int
	// MaxUDPSize is the largest UDP answer the server sends, whatever a
	// client's EDNS0 buffer says; default 4096.
	MaxUDPSize int
}

// Server is a cluster DNS server: authoritative for the cluster zone and
// the reverse names of its services and endpoints, a forwarder for the
// rest. It is a miekg/dns Handler; Serve runs it on sockets the caller
// opened in a lab namespace. Safe for concurrent use.
type Server struct {
	cfg   Config
	zone  string
	idx   atomic.Pointer[index]
	fwd   chan struct{}
	empty *index
	// cache holds packed UDP answers of the current index (udpfast.go).
	cache atomic.Pointer[respCache]
}

// New validates the configuration and returns a server whose zone is
// empty until the first Update: until then it answers SERVFAIL for names
// in the zone, as CoreDNS does before it has synced with the API server.
func New(cfg Config) (*Server, error) {
	if cfg.Zone == "" {
		cfg.Zone = "cluster.local"
	}
	if _, ok := miekg.IsDomainName(cfg.Zone); !ok || strings.Trim(cfg.Zone, ".") == "" {
		return nil, fmt.Errorf("zone %q is not a domain name", cfg.Zone)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5
	}
	if cfg.Pods < PodsVerified || cfg.Pods > PodsDisabled {
		return nil, fmt.Errorf("unknown pod mode %d", cfg.Pods)
	}
	if cfg.Upstream != "" {
		if _, err := netip.ParseAddrPort(cfg.Upstream); err != nil {
			return nil, fmt.Errorf("upstream %q is not an ip:port address", cfg.Upstream)
		}
		if cfg.Dial == nil {
			return nil, errors.New("an upstream needs Config.Dial, which opens its sockets in the lab namespace (see DialIn)")
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MaxForwards <= 0 {
		cfg.MaxForwards = 256
	}
	if cfg.MaxUDPSize <= 0 {
		cfg.MaxUDPSize = 4096
	}
	s := &Server{cfg: cfg, fwd: make(chan struct{}, cfg.MaxForwards)}
	s.empty = newIndex(cfg.Zone, 0)
	s.zone = s.empty.apex
	return s, nil
}

// Zone returns the served zone, fully qualified and lowercase.
func (s *Server) Zone() string { return s.zone }

// Update builds the records of a snapshot and makes them the answers to
// every later query, at once and without dropping a query. An invalid
// snapshot changes nothing and the error says what is wrong.
func (s *Server) Update(snap Snapshot) error {
	ix, err := build(s.cfg.Zone, s.cfg.TTL, s.cfg.Pods, uint32(time.Now().Unix()), snap)
	if err != nil {
		return err
	}
	s.idx.Store(ix)
	return nil
}

// ServeDNS answers one query (miekg/dns Handler).
func (s *Server) ServeDNS(w miekg.ResponseWriter, r *miekg.Msg) {
	m, gen := s.answer(r, transport(w))
	if uw, ok := w.(*udpWriter); ok {
		uw.gen = gen
	}
	write(w, r, m, s.cfg.MaxUDPSize)
}

func (s *Server) handle(r *miekg.Msg, network string) *miekg.Msg {
	m, _ := s.answer(r, network)
	return m
}

// answer answers r, and returns the index the answer came from when that
// index alone decided it (so the packed answer may be cached for the
// index's lifetime), or nil when it did not (forwarded, an upstream
// helped, not synced yet).
func (s *Server) answer(r *miekg.Msg, network string) (*miekg.Msg, *index) {
	if m := check(r); m != nil {
		return m, nil
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	ix := s.idx.Load()
	if ix == nil {
		if s.empty.inZone(name) {
			return reply(r, miekg.RcodeServerFailure), nil
		}
		ix = s.empty
	}
	gen := s.idx.Load()
	if gen != ix {
		gen = nil
	}
	if !ix.inZone(name) && ix.names[name] == nil {
		// Not ours: forward (CoreDNS: "forward . <upstream>", and the
		// reverse zones' fallthrough for addresses outside the cluster).
		return s.forward(r, network), nil
	}
	m := reply(r, miekg.RcodeSuccess)
	m.Authoritative = true
	m.RecursionAvailable = s.cfg.Upstream != ""
	if q.Qtype == miekg.TypeAXFR || q.Qtype == miekg.TypeIXFR {
		m.Rcode = miekg.RcodeRefused
		return m, gen
	}
	if s.cfg.Pods == PodsInsecure && ix.names[name] == nil {
		if ok := s.insecurePod(ix, m, q, name); ok {
			return m, gen
		}
	}
	target := ix.answer(m, q, name)
	// An ExternalName alias: add the target's records (§2.5's answer
	// example), from the zone itself or from the upstream; at most 8 hops.
	for hops := 0; target != "" && hops < 8; hops++ {
		if !ix.inZone(target) && ix.names[target] == nil {
			s.chase(m, target, q.Qtype)
			gen = nil // the upstream's answer is not the index's
			break
		}
		sub := new(miekg.Msg)
		target = ix.answer(sub, miekg.Question{Name: target, Qtype: q.Qtype, Qclass: q.Qclass}, target)
		m.Answer = append(m.Answer, sub.Answer...)
		m.Extra = append(m.Extra, sub.Extra...)
		if sub.Rcode != miekg.RcodeSuccess || len(sub.Answer) == 0 {
			m.Rcode = sub.Rcode
			m.Ns = sub.Ns
		}
	}
	return m, gen
}

// insecurePod answers <a-b-c-d>.<ns>.pod.<zone> with the address in the
// name, for any namespace the cluster has (PodsInsecure).
func (s *Server) insecurePod(ix *index, m *miekg.Msg, q miekg.Question, name string) bool {
	rest, ok := strings.CutSuffix(name, ".pod."+ix.apex)
	if !ok {
		return false
	}
	host, ns, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(ns, ".") || !ix.namespaces[ns] {
		return false
	}
	ip, ok := undashed(host)
	if !ok {
		return false
	}
	rr := addrRR(q.Name, ip, s.cfg.TTL)
	if rr.Header().Rrtype == q.Qtype || q.Qtype == miekg.TypeANY {
		m.Answer = append(m.Answer, rr)
	} else {
		m.Ns = ix.soa
	}
	return true
}

// forward sends a query for a name outside the cluster to the upstream
// and relays its answer: REFUSED without an upstream, SERVFAIL when the
// upstream fails, does not answer in time, or too many queries already
// wait on it.
func (s *Server) forward(r *miekg.Msg, network string) *miekg.Msg {
	if s.cfg.Upstream == "" {
		return reply(r, miekg.RcodeRefused)
	}
	select {
	case s.fwd <- struct{}{}:
		defer func() { <-s.fwd }()
	default:
		return reply(r, miekg.RcodeServerFailure)
	}
	resp, err := s.exchange(r, network)
	if err != nil {
		return reply(r, miekg.RcodeServerFailure)
	}
	resp.Id = r.Id
	resp.RecursionAvailable = true
	return resp
}

// chase appends the upstream's answer for an ExternalName's target.
// Failures leave the CNAME alone: the client can follow it itself.
func (s *Server) chase(m *miekg.Msg, target string, qtype uint16) {
	if s.cfg.Upstream == "" {
		return
	}
	select {
	case s.fwd <- struct{}{}:
		defer func() { <-s.fwd }()
	default:
		return
	}
	q := new(miekg.Msg)
	q.SetQuestion(target, qtype)
	q.SetEdns0(miekg.DefaultMsgSize, false)
	resp, err := s.exchange(q, "udp")
	if err == nil && resp.Truncated {
		resp, err = s.exchange(q, "tcp")
	}
	if err != nil {
		return
	}
	m.Answer = append(m.Answer, resp.Answer...)
	if resp.Rcode == miekg.RcodeNameError {
		m.Rcode = resp.Rcode
		m.Ns = resp.Ns
	}
}

// exchange sends q to the upstream over network ("udp" or "tcp") with a
// fresh ID and returns the answer that matches it.
func (s *Server) exchange(q *miekg.Msg, network string) (*miekg.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	nc, err := s.cfg.Dial(ctx, network, s.cfg.Upstream)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	co := &miekg.Conn{Conn: nc, UDPSize: miekg.MaxMsgSize}
	out := q.Copy()
	out.Id = miekg.Id()
	if err := co.WriteMsg(out); err != nil {
		return nil, err
	}
	for {
		resp, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		// Over UDP a stray datagram (a late answer, a spoof) can arrive
		// first; keep reading until ours or the deadline.
		if resp.Id == out.Id && len(resp.Question) == 1 &&
			strings.EqualFold(resp.Question[0].Name, out.Question[0].Name) {
			return resp, nil
		}
	}
}

// check answers what is not a well-formed standard query: FORMERR for
// anything but exactly one question, NOTIMP for other opcodes, REFUSED
// for classes other than IN. nil means go on.
func check(r *miekg.Msg) *miekg.Msg {
	if r.Response {
		return reply(r, miekg.RcodeFormatError)
	}
	if r.Opcode != miekg.OpcodeQuery {
		return reply(r, miekg.RcodeNotImplemented)
	}
	if len(r.Question) != 1 {
		return reply(r, miekg.RcodeFormatError)
	}
	if c := r.Question[0].Qclass; c != miekg.ClassINET && c != miekg.ClassANY {
		return reply(r, miekg.RcodeRefused)
	}
	if o := r.IsEdns0(); o != nil && o.Version() != 0 {
		return reply(r, miekg.RcodeBadVers) // RFC 6891 §6.1.3
	}
	return nil
}

func reply(r *miekg.Msg, rcode int) *miekg.Msg {
	m := new(miekg.Msg)
	m.Id = r.Id
	m.Response = true
	m.Opcode = r.Opcode
	m.RecursionDesired = r.RecursionDesired
	m.CheckingDisabled = r.CheckingDisabled
	m.Rcode = rcode
	if len(r.Question) == 1 && m.Opcode == miekg.OpcodeQuery {
		m.Question = []miekg.Question{r.Question[0]}
	}
	return m
}

// transport is "udp" or "tcp", from the socket the query came in on.
func transport(w miekg.ResponseWriter) string {
	if a := w.LocalAddr(); a != nil && strings.HasPrefix(a.Network(), "tcp") {
		return "tcp"
	}
	return "udp"
}

// write sends m, the answer to r: with an OPT record when r had one (RFC
// 6891 §7), and over UDP cut to the client's buffer (512 bytes without
// EDNS0, else its EDNS0 size, at most maxUDP) with the TC bit set when
// answers had to go, so the client retries over TCP (RFC 1035 §4.2.1, RFC
// 7766). Additional-section glue is dropped first: when the answers fit
// without it, the reply is not truncated. Over TCP the limit is the 64 KiB
// a message can be (a headless service with thousands of endpoints).
func write(w miekg.ResponseWriter, r, m *miekg.Msg, maxUDP int) {
	size := miekg.MinMsgSize
	if o := r.IsEdns0(); o != nil {
		if m.IsEdns0() == nil {
			m.SetEdns0(uint16(maxUDP), false) // Pack puts an extended rcode (BADVERS) in it
		}
		size = min(max(int(o.UDPSize()), miekg.MinMsgSize), maxUDP)
	}
	if transport(w) != "udp" {
		size = miekg.MaxMsgSize // TCP's 16-bit length prefix
	}
	m.Compress = true
	if m.Len() > size {
		m.Extra = onlyOPT(m.Extra)
		if m.Len() > size {
			m.Truncate(size)
		}
	}
	w.WriteMsg(m)
}

func onlyOPT(rrs []miekg.RR) []miekg.RR {
	var out []miekg.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == miekg.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}
