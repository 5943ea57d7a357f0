package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// TracerouteOptions control Traceroute. The defaults are traceroute(8)'s:
// UDP probes to port 33434 and up, three per hop, at most 30 hops.
type TracerouteOptions struct {
	ICMP    bool          // send ICMP echo requests instead of UDP datagrams (traceroute -I)
	MaxHops int           // highest TTL (default 30)
	Probes  int           // probes per hop (default 3)
	Timeout time.Duration // wait for each probe's answer (default 1s)
	Port    int           // first UDP destination port, one more per probe (default 33434)
	// OnHop, if set, is called with each hop as soon as its probes are done.
	OnHop func(Hop)
}

// Hop is what came back for the probes sent with one TTL.
type Hop struct {
	TTL    int
	Probes []HopProbe
}

// HopProbe is one probe's answer: who sent it (invalid for no answer),
// how long it took, whether it came from the destination itself, and
// traceroute's annotation for an unreachable ("!H", "!N", "!P", "!X", "!<code>").
type HopProbe struct {
	From    netip.Addr
	RTT     time.Duration
	Reached bool
	Flag    string
}

// Addrs lists the distinct addresses that answered at this hop, in order.
func (h Hop) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range h.Probes {
		if p.From.IsValid() && !containsAddr(out, p.From) {
			out = append(out, p.From)
		}
	}
	return out
}

// Final reports whether the hop ends the trace: the destination answered, or
// a router said it is unreachable.
func (h Hop) Final() bool {
	for _, p := range h.Probes {
		if p.Reached || p.Flag != "" {
			return true
		}
	}
	return false
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, b := range as {
		if a == b {
			return true
		}
	}
	return false
}

// Traceroute sends probes from namespace ns to dst with TTL 1, 2, ... and
// collects who answers: each router on the way drops the probe whose TTL
// runs out and sends back ICMP time exceeded from its own address; the
// destination answers with port unreachable (UDP) or an echo reply (ICMP).
// It stops at the destination, at an unreachable, or after MaxHops. The
// sockets (a raw ICMP socket for the answers, and a UDP socket for UDP
// probes) are opened inside ns, so nothing needs to be installed there.
func Traceroute(ctx context.Context, ns string, dst netip.Addr, o TracerouteOptions) ([]Hop, error) {
	if !dst.Is4() {
		return nil, fmt.Errorf("traceroute: %s is not an IPv4 address", dst)
	}
	if o.MaxHops <= 0 {
		o.MaxHops = 30
	}
	if o.MaxHops > 255 {
		return nil, fmt.Errorf("traceroute: at most 255 hops, not %d", o.MaxHops)
	}
	if o.Probes <= 0 {
		o.Probes = 3
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Port <= 0 {
		o.Port = 33434
	}
	var (
		ic  *icmp.PacketConn
		udp *net.UDPConn
	)
	err := netns.Do(ns, func() (err error) {
		if ic, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
			return err
		}
		if !o.ICMP {
			udp, err = net.ListenUDP("udp4", &net.UDPAddr{})
		}
		return err
	})
	if err != nil {
		if ic != nil {
			ic.Close()
		}
		return nil, fmt.Errorf("open probe sockets in %s: %w", ns, err)
	}
	defer ic.Close()
	var send *ipv4.PacketConn // the socket whose TTL is set per probe
	srcPort := 0
	if udp != nil {
		defer udp.Close()
		send = ipv4.NewPacketConn(udp)
		srcPort = udp.LocalAddr().(*net.UDPAddr).Port
	} else {
		send = ic.IPv4PacketConn()
	}
	id := rand.IntN(0xffff)
	seq := 0
	buf := make([]byte, 1500)
	var hops []Hop
	for ttl := 1; ttl <= o.MaxHops; ttl++ {
		hop := Hop{TTL: ttl}
		for range o.Probes {
			if err := ctx.Err(); err != nil {
				return hops, err
			}
			seq++
			if err := send.SetTTL(ttl); err != nil {
				return hops, fmt.Errorf("set TTL %d: %w", ttl, err)
			}
			port := o.Port + seq - 1
			sent := time.Now()
			if o.ICMP {
				msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, 32)}}
				b, _ := msg.Marshal(nil)
				_, err = ic.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
			} else {
				_, err = udp.WriteToUDP(make([]byte, 32), &net.UDPAddr{IP: dst.AsSlice(), Port: port})
			}
			if err != nil {
				if errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) {
					// No route from the source itself: the send fails.
					hop.Probes = append(hop.Probes, HopProbe{Flag: "!N"})
					continue
				}
				return hops, fmt.Errorf("send probe to %s: %w", dst, err)
			}
			p := awaitAnswer(ic, buf, dst, sent.Add(o.Timeout), func(inner []byte) bool {
				return matchProbe(inner, o.ICMP, dst, id, seq, srcPort, port)
			}, o.ICMP, id, seq)
			if p.From.IsValid() {
				p.RTT = time.Since(sent)
			}
			hop.Probes = append(hop.Probes, p)
		}
		hops = append(hops, hop)
		if o.OnHop != nil {
			o.OnHop(hop)
		}
		if hop.Final() {
			break
		}
	}
	return hops, nil
}

// awaitAnswer reads ICMP messages until one answers the probe (match on the
// probe's quoted headers, or the echo reply of an ICMP probe) or the
// deadline passes (a HopProbe without From).
func awaitAnswer(ic *icmp.PacketConn, buf []byte, dst netip.Addr, deadline time.Time, match func(inner []byte) bool, isICMP bool, id, seq int) HopProbe {
	for {
		_ = ic.SetReadDeadline(deadline)
		n, peer, err := ic.ReadFrom(buf)
		if err != nil {
			return HopProbe{}
		}
		from, _ := netip.AddrFromSlice(peer.(*net.IPAddr).IP.To4())
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if isICMP && m.Type == ipv4.ICMPTypeEchoReply && body.ID == id && body.Seq == seq {
				return HopProbe{From: from, Reached: true}
			}
		case *icmp.TimeExceeded:
			if m.Type == ipv4.ICMPTypeTimeExceeded && match(body.Data) {
				return HopProbe{From: from}
			}
		case *icmp.DstUnreach:
			if m.Type != ipv4.ICMPTypeDestinationUnreachable || !match(body.Data) {
				continue
			}
			code := m.Code
			if code == 3 && !isICMP { // port unreachable: the destination itself
				return HopProbe{From: from, Reached: true}
			}
			return HopProbe{From: from, Reached: from == dst, Flag: unreachFlag(code)}
		}
	}
}

// unreachFlag is traceroute(8)'s annotation of an ICMP unreachable code.
func unreachFlag(code int) string {
	switch code {
	case 0:
		return "!N"
	case 1:
		return "!H"
	case 2:
		return "!P"
	case 3:
		return "" // port unreachable from a router is not an error
	case 13:
		return "!X"
	default:
		return fmt.Sprintf("!<%d>", code)
	}
}

// matchProbe reports whether inner (the IP header and first bytes of the
// packet an ICMP error quotes) is the probe just sent.
func matchProbe(inner []byte, isICMP bool, dst netip.Addr, id, seq, srcPort, dstPort int) bool {
	if len(inner) < 20 || inner[0]>>4 != 4 {
		return false
	}
	ihl := int(inner[0]&0x0f) * 4
	if len(inner) < ihl+8 {
		return false
	}
	if d, _ := netip.AddrFromSlice(inner[16:20]); d != dst {
		return false
	}
	l4 := inner[ihl:]
	if isICMP {
		return inner[9] == 1 && l4[0] == 8 &&
			int(binary.BigEndian.Uint16(l4[4:6])) == id && int(binary.BigEndian.Uint16(l4[6:8])) == seq
	}
	return inner[9] == 17 &&
		int(binary.BigEndian.Uint16(l4[0:2])) == srcPort && int(binary.BigEndian.Uint16(l4[2:4])) == dstPort
}
