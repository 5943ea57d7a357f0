package trace

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
	"unsafe"

	"github.com/klab-dev/klab/pkg/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Point is one capture point: an interface inside a network namespace.
type Point struct {
	Label string // shown on every packet, e.g. "node1/eth0"
	NS    string // network namespace name under /run/netns; "" = the current one
	Iface string // interface name inside NS
	// Promisc puts this interface in promiscuous mode even when
	// Options.Promisc is off: a bridge (cni0) only passes bridged frames
	// between its ports up to a capture socket in promiscuous mode.
	Promisc bool
}

func (p Point) String() string {
	if p.Label != "" {
		return p.Label
	}
	if p.NS == "" {
		return p.Iface
	}
	return p.NS + "/" + p.Iface
}

// Options tune a capture. The zero value captures everything, forever.
type Options struct {
	Filter   *Filter       // userspace filter (nil = everything); also compiled to the kernel pre-filter
	NoBPF    bool          // do not attach the kernel pre-filter
	Promisc  bool          // put the interfaces in promiscuous mode (needed to see bridged traffic on a bridge)
	SnapLen  int           // bytes kept per packet; 0 = DefaultSnapLen
	Count    int           // stop after this many matching packets; 0 = no limit
	Duration time.Duration // stop after this long; 0 = no limit
	RcvBuf   int           // socket receive buffer in bytes; 0 = 8 MiB
}

// Stats counts one capture point's packets.
type Stats struct {
	Point    string
	Received uint64 // packets the socket delivered (after the kernel pre-filter)
	Matched  uint64 // packets that passed the userspace filter
	Drops    uint64 // packets the kernel dropped because the socket buffer was full
}

// Capture is a set of open AF_PACKET sockets, one per point.
type Capture struct {
	points []Point
	opts   Options
	socks  []*sock
	start  time.Time
}

type sock struct {
	fd    int
	point Point
	id    int
	stats Stats
}

// Open opens one AF_PACKET socket per point, inside the point's namespace,
// bound to its interface, with the kernel pre-filter attached before any
// packet is queued. When Open returns, packets are being queued: traffic
// sent after Open is seen by Run.
func Open(points []Point, opts Options) (*Capture, error) {
	if len(points) == 0 {
		return nil, errors.New("no capture points given; name at least one, like node1:eth0")
	}
	if opts.SnapLen <= 0 {
		opts.SnapLen = DefaultSnapLen
	}
	if opts.RcvBuf <= 0 {
		opts.RcvBuf = 8 << 20
	}
	var raw []bpf.RawInstruction
	if !opts.NoBPF && opts.Filter != nil {
		prog, _ := opts.Filter.BPF(uint32(opts.SnapLen))
		var err error
		if raw, err = bpf.Assemble(prog); err != nil {
			return nil, fmt.Errorf("assemble kernel filter for %q: %w", opts.Filter.Source(), err)
		}
	}
	c := &Capture{points: points, opts: opts}
	for i, pt := range points {
		s, err := openSock(pt, i, opts, raw)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.socks = append(c.socks, s)
	}
	c.start = time.Now()
	return c, nil
}

func openSock(pt Point, id int, opts Options, raw []bpf.RawInstruction) (*sock, error) {
	s := &sock{fd: -1, point: pt, id: id, stats: Stats{Point: pt.String()}}
	open := func() error {
		ifi, err := net.InterfaceByName(pt.Iface)
		if err != nil {
			return fmt.Errorf("no interface %q: %w", pt.Iface, err)
		}
		// Protocol 0: the socket receives nothing until bind, so no packet
		// slips in before the filter is attached.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		s.fd = fd
		if len(raw) > 0 {
			filt := make([]unix.SockFilter, len(raw))
			for i, r := range raw {
				filt[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
			}
			prog := unix.SockFprog{Len: uint16(len(filt)), Filter: &filt[0]}
			if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
				return fmt.Errorf("attach kernel filter: %w", err)
			}
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, opts.RcvBuf); err != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, opts.RcvBuf)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		if opts.Promisc || pt.Promisc {
			mr := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
			if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
				return fmt.Errorf("promiscuous mode: %w", err)
			}
		}
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		// Reset the statistics counters (reading them clears them).
		_, _ = unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
		return nil
	}
	var err error
	if pt.NS == "" {
		err = open()
	} else {
		err = netns.Do(pt.NS, open)
	}
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		return nil, fmt.Errorf("capture at %s: %w", pt, err)
	}
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Close closes every socket (leaving promiscuous mode). It is safe to call twice.
func (c *Capture) Close() error {
	for _, s := range c.socks {
		if s.fd >= 0 {
			unix.Close(s.fd)
			s.fd = -1
		}
	}
	return nil
}

// Points returns the capture points, in the order given to Open; Packet.PointID indexes it.
func (c *Capture) Points() []Point { return c.points }

// Stats returns per-point counters. Call it after Run returns.
func (c *Capture) Stats() []Stats {
	out := make([]Stats, len(c.socks))
	for i, s := range c.socks {
		out[i] = s.stats
	}
	return out
}

// ErrStop may be returned by a Run callback to end the capture without error.
var ErrStop = errors.New("stop capture")

// Run reads all points concurrently, decodes each frame, applies the
// userspace filter and calls fn for every matching packet, one call at a
// time (fn needs no locking). p and p.Data are only valid during the call:
// use p.Clone to keep one. Run returns nil when ctx is cancelled, Count
// packets were delivered, Duration passed or fn returned ErrStop; it
// returns fn's other errors and socket errors.
func (c *Capture) Run(ctx context.Context, fn func(p *Packet) error) error {
	if c.opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Duration)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		count   int
		done    bool
		firstEr error
		wg      sync.WaitGroup
	)
	deliver := func(p *Packet) bool {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return false
		}
		err := fn(p)
		count++
		if err != nil || (c.opts.Count > 0 && count >= c.opts.Count) {
			done = true
			if err != nil && !errors.Is(err, ErrStop) {
				firstEr = err
			}
			cancel()
			return false
		}
		return true
	}
	fail := func(err error) {
		mu.Lock()
		if firstEr == nil && !done {
			firstEr = err
		}
		done = true
		mu.Unlock()
		cancel()
	}
	for _, s := range c.socks {
		wg.Add(1)
		go func(s *sock) {
			defer wg.Done()
			if err := c.readLoop(ctx, s, deliver); err != nil {
				fail(fmt.Errorf("capture at %s: %w", s.point, err))
			}
		}(s)
	}
	wg.Wait()
	for _, s := range c.socks {
		if st, err := unix.GetsockoptTpacketStats(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			s.stats.Drops += uint64(st.Drops)
		}
	}
	return firstEr
}

func (c *Capture) readLoop(ctx context.Context, s *sock, deliver func(*Packet) bool) error {
	buf := make([]byte, c.opts.SnapLen)
	oob := make([]byte, unix.CmsgSpace(16)*2)
	d := NewDecoder()
	var p Packet
	for ctx.Err() == nil {
		n, oobn, flags, from, err := unix.Recvmsg(s.fd, buf, oob, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		_ = flags
		s.stats.Received++
		p = Packet{Point: s.point.String(), PointID: s.id, Len: n}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok {
			p.PktType = PktType(ll.Pkttype)
			p.Dir = p.PktType.Direction()
		}
		p.Time = cmsgTime(oob[:oobn])
		data := buf
		if n < len(buf) {
			data = buf[:n]
		}
		_ = d.Decode(data, &p)
		if !c.opts.Filter.Match(&p) {
			continue
		}
		s.stats.Matched++
		if !deliver(&p) {
			return nil
		}
	}
	return nil
}

// cmsgTime extracts the SCM_TIMESTAMPNS timestamp, or returns now.
func cmsgTime(oob []byte) time.Time {
	const hdr = int(unsafe.Sizeof(unix.Cmsghdr{}))
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= hdr+16 {
			d := oob[unix.CmsgLen(0):]
			sec := int64(binary.NativeEndian.Uint64(d[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(d[8:16]))
			return time.Unix(sec, nsec)
		}
		sp := unix.CmsgSpace(l - hdr)
		if sp > len(oob) {
			break
		}
		oob = oob[sp:]
	}
	return time.Now()
}
