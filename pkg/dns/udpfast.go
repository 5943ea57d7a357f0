package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"sync"

	miekg "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The UDP fast path. miekg/dns's UDP server reads one datagram per
// recvmsg, starts a goroutine for each, unpacks, packs and sends it with
// one sendmsg: under dnsperf that was half of Unbound's rate. serveBatch
// instead runs a fixed pool of workers (one per CPU Go may use, at most
// maxUDPWorkers), each reading up to udpBatch datagrams with one recvmmsg
// and sending the answers with one sendmmsg (golang.org/x/net/ipv4
// PacketConn ReadBatch and WriteBatch), and a Server answers a query it
// has answered before from its cache of packed responses (see respCache),
// without unpacking or packing anything. TCP stays on miekg/dns.
//
// What a client sees is what miekg/dns's server gives: a datagram shorter
// than a header, or a response, is dropped; other opcodes than QUERY and
// NOTIFY get NOTIMP, a header whose counts no query has, or a message that
// does not unpack, FORMERR with the header alone (miekg/dns v1.1.73
// server.go serveDNS and acceptfunc.go defaultMsgAcceptFunc, mirrored
// here because they are unexported); everything else goes to the Handler.
// Replies leave from the address the query came to (IP_PKTINFO), as
// miekg/dns does for a socket bound to the wildcard address.

// udpBatch is the datagrams one recvmmsg/sendmmsg moves at most.
const udpBatch = 16

// maxUDPWorkers caps the workers: each holds udpBatch read buffers of
// udpReadSize (1 MiB), and a lab runs two DNS pods on machines of any size.
const maxUDPWorkers = 4

// udpReadSize is each read buffer: the largest UDP payload, so no query
// is cut (miekg/dns reads with MaxMsgSize too).
const udpReadSize = miekg.MaxMsgSize

// packedCacher is a Handler that can answer a query from packed bytes: a
// Server.
type packedCacher interface {
	cachedAnswer(query []byte, out []byte) ([]byte, bool)
	storeAnswer(query, resp []byte, gen *index)
}

// fastUDP reports whether pc can take the fast path: an IPv4 (AF_INET) UDP
// socket, like the coredns-* pods' udp4 ":53". An IPv6 or dual-stack one
// stays on miekg/dns's server.
func fastUDP(pc net.PacketConn) (*net.UDPConn, bool) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil, false
	}
	a, ok := uc.LocalAddr().(*net.UDPAddr)
	if !ok || a.IP.To4() == nil { // an AF_INET6 socket (also "[::]" dual-stack)
		return nil, false
	}
	return uc, true
}

// serveBatch answers queries on uc with h until uc is closed (then it
// returns nil) or a read fails otherwise.
func serveBatch(uc *net.UDPConn, h miekg.Handler) error {
	pc := ipv4.NewPacketConn(uc)
	wildcard := uc.LocalAddr().(*net.UDPAddr).IP.IsUnspecified()
	if wildcard {
		if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
			return err
		}
	}
	cache, _ := h.(packedCacher)
	n := min(max(1, runtime.GOMAXPROCS(0)), maxUDPWorkers)
	errs := make(chan error, n)
	for range n {
		w := newBatchWorker(uc.LocalAddr(), pc, h, cache, wildcard)
		go func() { errs <- w.run() }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
			uc.Close() // stop the other workers too
		}
	}
	return first
}

// batchWorker is one of serveBatch's workers: its own read and write
// batches and buffers, so workers share nothing but the socket and the
// Server.
type batchWorker struct {
	pc       *ipv4.PacketConn
	h        miekg.Handler
	cache    packedCacher
	wildcard bool
	in, out  []ipv4.Message
	outBufs  [][]byte
	w        udpWriter
}

func newBatchWorker(local net.Addr, pc *ipv4.PacketConn, h miekg.Handler, cache packedCacher, wildcard bool) *batchWorker {
	b := &batchWorker{pc: pc, h: h, cache: cache, wildcard: wildcard,
		in: make([]ipv4.Message, udpBatch), out: make([]ipv4.Message, udpBatch),
		outBufs: make([][]byte, udpBatch)}
	for i := range b.in {
		b.in[i].Buffers = [][]byte{make([]byte, udpReadSize)}
		if wildcard {
			b.in[i].OOB = ipv4.NewControlMessage(ipv4.FlagDst)
		}
		b.outBufs[i] = make([]byte, 0, 4096)
		b.out[i].Buffers = make([][]byte, 1)
	}
	b.w.local = local
	return b
}

func (b *batchWorker) run() error {
	for {
		for i := range b.in {
			b.in[i].OOB = b.in[i].OOB[:cap(b.in[i].OOB)]
		}
		n, err := b.pc.ReadBatch(b.in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		j := 0
		for i := range n {
			m := &b.in[i]
			resp := b.answer(m.Buffers[0][:m.N], m.Addr, i)
			if resp == nil {
				continue
			}
			o := &b.out[j]
			o.Buffers[0], o.Addr, o.OOB = resp, m.Addr, nil
			if b.wildcard {
				var cm ipv4.ControlMessage
				if cm.Parse(m.OOB[:m.NN]) == nil && cm.Dst != nil {
					o.OOB = (&ipv4.ControlMessage{Src: cm.Dst}).Marshal()
				}
			}
			j++
		}
		for out := b.out[:j]; len(out) > 0; {
			k, err := b.pc.WriteBatch(out, 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return nil
				}
				k = max(k, 1) // drop the datagram that could not go
			}
			out = out[k:]
		}
	}
}

// answer returns the reply to datagram q from addr, in slot i's output
// buffer (or one the handler packed), or nil for none.
func (b *batchWorker) answer(q []byte, addr net.Addr, i int) []byte {
	if len(q) < 12 {
		return nil // not even a header: drop (miekg: "they are sending crap")
	}
	bits := binary.BigEndian.Uint16(q[2:])
	if bits&(1<<15) != 0 {
		return nil // a response: never answer one (no loops, no reflection)
	}
	if b.cache != nil {
		if resp, ok := b.cache.cachedAnswer(q, b.outBufs[i][:0]); ok {
			b.outBufs[i] = resp[:0]
			return resp
		}
	}
	b.w.remote, b.w.buf, b.w.resp, b.w.gen = addr, b.outBufs[i][:0], nil, nil
	req := new(miekg.Msg)
	switch accept(q) {
	case miekg.MsgAccept:
		if err := req.Unpack(q); err == nil {
			b.h.ServeDNS(&b.w, req)
			break
		}
		req.Opcode = int(bits>>11) & 0xF
		b.reject(req, q, false)
	case miekg.MsgRejectNotImplemented:
		req = new(miekg.Msg)
		b.reject(req, q, true)
	default:
		req = new(miekg.Msg)
		b.reject(req, q, false)
	}
	resp := b.w.resp
	if resp == nil {
		return nil
	}
	if cap(resp) <= 2*4096 {
		b.outBufs[i] = resp[:0] // keep a buffer Pack grew, within reason
	}
	if b.w.gen != nil && b.cache != nil {
		b.cache.storeAnswer(q, resp, b.w.gen)
	}
	return resp
}

// reject writes FORMERR (or NOTIMP) with the query's header alone, as
// miekg/dns's serveDNS does.
func (b *batchWorker) reject(req *miekg.Msg, q []byte, notimp bool) {
	setHeader(req, q)
	opcode := req.Opcode
	req.SetRcodeFormatError(req)
	req.Zero = false
	if notimp {
		req.Opcode = opcode
		req.Rcode = miekg.RcodeNotImplemented
	}
	req.Ns, req.Answer, req.Extra = nil, nil, nil
	b.w.WriteMsg(req)
}

// setHeader sets m's header flags from the wire header in q (miekg/dns's
// unexported setHdr); counts are left to the sections.
func setHeader(m *miekg.Msg, q []byte) {
	bits := binary.BigEndian.Uint16(q[2:])
	m.Id = binary.BigEndian.Uint16(q)
	m.Response = bits&(1<<15) != 0
	m.Opcode = int(bits>>11) & 0xF
	m.Authoritative = bits&(1<<10) != 0
	m.Truncated = bits&(1<<9) != 0
	m.RecursionDesired = bits&(1<<8) != 0
	m.RecursionAvailable = bits&(1<<7) != 0
	m.Zero = bits&(1<<6) != 0
	m.AuthenticatedData = bits&(1<<5) != 0
	m.CheckingDisabled = bits&(1<<4) != 0
	m.Rcode = int(bits & 0xF)
}

// accept is miekg/dns's defaultMsgAcceptFunc on the wire header (the
// response bit is handled before).
func accept(q []byte) miekg.MsgAcceptAction {
	bits := binary.BigEndian.Uint16(q[2:])
	if op := int(bits>>11) & 0xF; op != miekg.OpcodeQuery && op != miekg.OpcodeNotify {
		return miekg.MsgRejectNotImplemented
	}
	qd, an := binary.BigEndian.Uint16(q[4:]), binary.BigEndian.Uint16(q[6:])
	ns, ar := binary.BigEndian.Uint16(q[8:]), binary.BigEndian.Uint16(q[10:])
	if qd != 1 || an > 1 || ns > 1 || ar > 2 {
		return miekg.MsgReject
	}
	return miekg.MsgAccept
}

// udpWriter is the miekg.ResponseWriter of the fast path: WriteMsg packs
// into the worker's buffer, and the worker sends it in its next batch.
type udpWriter struct {
	local, remote net.Addr
	buf, resp     []byte
	// gen is the index a Server answered from when the answer depends on
	// nothing else (so it may be cached); nil otherwise.
	gen *index
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.local }
func (w *udpWriter) RemoteAddr() net.Addr { return w.remote }
func (w *udpWriter) WriteMsg(m *miekg.Msg) error {
	b, err := m.PackBuffer(w.buf)
	if err != nil {
		return err
	}
	w.resp = b
	return nil
}
func (w *udpWriter) Write(b []byte) (int, error) {
	if len(b) > miekg.MaxMsgSize {
		return 0, errors.New("dns: message too large")
	}
	w.resp = append(w.buf[:0], b...)
	return len(b), nil
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}

var _ miekg.ResponseWriter = (*udpWriter)(nil)

// respCache holds packed UDP answers of one index, keyed by the query's
// bytes after its ID: the same bytes unpack to the same query (name in
// the same case, same flags, same EDNS0 buffer size), so the answer is
// the same but for the ID, which cachedAnswer patches in. Only answers
// the index alone decides are stored (not forwarded ones, not ones an
// upstream helped with), and a new index starts an empty cache: an Update
// is seen by the next query, as without the cache. Bounded by
// maxCacheBytes.
type respCache struct {
	ix    *index
	mu    sync.RWMutex
	m     map[string][]byte
	bytes int
}

// maxCacheBytes bounds a cache's keys and answers together.
const maxCacheBytes = 8 << 20

// maxCachedQuery is the longest query whose answer is cached.
const maxCachedQuery = 512

func (s *Server) cachedAnswer(q []byte, out []byte) ([]byte, bool) {
	c := s.cache.Load()
	if c == nil || len(q) > maxCachedQuery || c.ix != s.idx.Load() {
		return nil, false
	}
	c.mu.RLock()
	r, ok := c.m[string(q[2:])]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	out = append(out[:0], r...)
	copy(out, q[:2])
	return out, true
}

func (s *Server) storeAnswer(q, resp []byte, gen *index) {
	if len(q) > maxCachedQuery || gen != s.idx.Load() {
		return
	}
	c := s.cache.Load()
	if c == nil || c.ix != gen {
		nc := &respCache{ix: gen, m: map[string][]byte{}}
		if !s.cache.CompareAndSwap(c, nc) {
			if c = s.cache.Load(); c == nil || c.ix != gen {
				return
			}
		} else {
			c = nc
		}
	}
	cost := len(q) + len(resp)
	c.mu.Lock()
	if _, ok := c.m[string(q[2:])]; !ok && c.bytes+cost <= maxCacheBytes {
		c.m[string(q[2:])] = append([]byte(nil), resp...)
		c.bytes += cost
	}
	c.mu.Unlock()
}
