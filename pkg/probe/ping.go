package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// PingOptions control Ping.
type PingOptions struct {
	Count    int           // echo requests to send (default 3)
	Interval time.Duration // between requests (default 200ms)
	Timeout  time.Duration // wait for each reply (default 1s)
	// OnReply, if set, is called for each reply or timeout (rtt < 0).
	OnReply func(seq int, from netip.Addr, ttl int, rtt time.Duration)
}

// PingResult summarises a Ping.
type PingResult struct {
	Sent, Received int
	Min, Avg, Max  time.Duration
}

// Loss is the fraction of requests without a reply, 0..1.
func (r PingResult) Loss() float64 {
	if r.Sent == 0 {
		return 0
	}
	return float64(r.Sent-r.Received) / float64(r.Sent)
}

// Ping sends ICMP echo requests from namespace ns to dst.
func Ping(ctx context.Context, ns string, dst netip.Addr, o PingOptions) (PingResult, error) {
	if o.Count <= 0 {
		o.Count = 3
	}
	if o.Interval <= 0 {
		o.Interval = 200 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	var conn *icmp.PacketConn
	err := netns.Do(ns, func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return PingResult{}, fmt.Errorf("open ICMP socket in %s: %w", ns, err)
	}
	defer conn.Close()
	pc := conn.IPv4PacketConn()
	_ = pc.SetControlMessage(ipv4.FlagTTL, true)
	id := rand.IntN(0xffff)
	var res PingResult
	var total time.Duration
	buf := make([]byte, 1500)
	for seq := 1; seq <= o.Count; seq++ {
		if seq > 1 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(o.Interval):
			}
		}
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("klab ping payload..............")}}
		b, _ := msg.Marshal(nil)
		sent := time.Now()
		if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return res, fmt.Errorf("send echo request to %s: %w", dst, err)
		}
		res.Sent++
		deadline := sent.Add(o.Timeout)
		got := false
		for !got {
			_ = pc.SetReadDeadline(deadline)
			n, cm, peer, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return res, fmt.Errorf("read reply: %w", err)
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil {
				continue
			}
			echo, ok := m.Body.(*icmp.Echo)
			if m.Type != ipv4.ICMPTypeEchoReply || !ok || echo.ID != id || echo.Seq != seq {
				continue
			}
			rtt := time.Since(sent)
			got = true
			res.Received++
			total += rtt
			if res.Min == 0 || rtt < res.Min {
				res.Min = rtt
			}
			if rtt > res.Max {
				res.Max = rtt
			}
			if o.OnReply != nil {
				from, _ := netip.AddrFromSlice(peer.(*net.IPAddr).IP.To4())
				ttl := 0
				if cm != nil {
					ttl = cm.TTL
				}
				o.OnReply(seq, from, ttl, rtt)
			}
		}
		if !got && o.OnReply != nil {
			o.OnReply(seq, dst, 0, -1)
		}
	}
	if res.Received > 0 {
		res.Avg = total / time.Duration(res.Received)
	}
	return res, nil
}
