package trace

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/klab-dev/klab/pkg/netns"
)

// BenchmarkDecodeVXLAN decodes Ethernet/IPv4/UDP/VXLAN/Ethernet/IPv4/ICMP.
func BenchmarkDecodeVXLAN(b *testing.B) {
	data := crossNodePing(b)
	d := NewDecoder()
	var p Packet
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.Decode(data, &p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkDecodeVsGopacket decodes the same VXLAN frame (outer
// Ethernet/IPv4/UDP 8472/VXLAN, inner Ethernet/IPv4/ICMP) three ways:
//
//	klab       Decoder.Decode: the layers plus klab's Packet summary
//	dlp        gopacket's DecodingLayerParser, the zero-allocation way: one
//	           parser for the outer stack, one from VXLAN down (gopacket
//	           maps only 4789 to VXLAN, so 8472 needs the second parser)
//	newpacket  gopacket.NewPacket, the convenient, allocating way, twice
//	           for the same reason
func BenchmarkDecodeVsGopacket(b *testing.B) {
	data := crossNodePing(b)
	b.Run("klab", func(b *testing.B) {
		d := NewDecoder()
		var p Packet
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := d.Decode(data, &p); err != nil || !p.VXLAN || p.Inner.Proto != ProtoICMP {
				b.Fatalf("decode: %v %+v", err, p)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
	})
	b.Run("dlp", func(b *testing.B) {
		var (
			eth, ieth    layers.Ethernet
			ip4, iip4    layers.IPv4
			udp          layers.UDP
			vx           layers.VXLAN
			icmp         layers.ICMPv4
			payload      gopacket.Payload
			outer, inner []gopacket.LayerType
		)
		po := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &eth, &ip4, &udp, &payload)
		pi := gopacket.NewDecodingLayerParser(layers.LayerTypeVXLAN, &vx, &ieth, &iip4, &icmp, &payload)
		po.IgnoreUnsupported, pi.IgnoreUnsupported = true, true
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := po.DecodeLayers(data, &outer); err != nil || udp.DstPort != 8472 {
				b.Fatalf("outer: %v %v", err, outer)
			}
			if err := pi.DecodeLayers(udp.Payload, &inner); err != nil || len(inner) < 4 {
				b.Fatalf("inner: %v %v", err, inner)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
	})
	b.Run("newpacket", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			pkt := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
			u, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !ok || u.DstPort != 8472 {
				b.Fatal("no UDP 8472")
			}
			in := gopacket.NewPacket(u.Payload, layers.LayerTypeVXLAN, gopacket.NoCopy)
			if in.Layer(layers.LayerTypeICMPv4) == nil {
				b.Fatal("no inner ICMP")
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
	})
}

// BenchmarkDecodeFilter is decode plus a typical userspace filter.
func BenchmarkDecodeFilter(b *testing.B) {
	data := crossNodePing(b)
	d := NewDecoder()
	f := MustParseFilter("vni 1 and inner (icmp and host 10.244.2.2) and not outer port 53")
	var p Packet
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = d.Decode(data, &p)
		if !f.Match(&p) {
			b.Fatal("no match")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkText(b *testing.B) {
	p := decode(b, crossNodePing(b))
	p.Point, p.Dir = "node1/eth0", DirOut
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = p.AppendText(buf[:0])
	}
}

// BenchmarkCaptureVeth sends b.N UDP datagrams from node1 to node2 over the
// underlay veth and captures them at node2/eth0; it reports the send rate,
// how many were captured and the kernel's drop count.
func BenchmarkCaptureVeth(b *testing.B) {
	needRoot(b)
	tp := newTopo(b)
	c, err := Open([]Point{{Label: "node2/eth0", NS: tp.ns["node2"], Iface: "eth0"}},
		Options{Filter: MustParseFilter("outer udp and dst port 9999")})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// Two senders (one socket each): one goroutine writing to one socket
	// tops out below 200k datagrams/s on a 2-CPU machine.
	const senders = 2
	conns := make([]*net.UDPConn, senders)
	for i := range conns {
		if err := netns.Do(tp.ns["node1"], func() (err error) {
			conns[i], err = net.ListenUDP("udp4", nil)
			return
		}); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
		_ = conns[i].SetWriteBuffer(4 << 20)
	}
	// A sink on node2 so the kernel does not answer with ICMP port unreachable.
	var sink *net.UDPConn
	if err := netns.Do(tp.ns["node2"], func() (err error) {
		sink, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 9999})
		return
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var got atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(p *Packet) error { got.Add(1); return nil })
	}()
	msg := make([]byte, 64)
	dst := &net.UDPAddr{IP: net.ParseIP("192.168.1.102"), Port: 9999}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i, conn := range conns {
		n := b.N / senders
		if i == 0 {
			n += b.N % senders
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				if _, err := conn.WriteToUDP(msg, dst); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	sendDur := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for got.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	st := c.Stats()[0]
	b.ReportMetric(float64(b.N)/sendDur.Seconds(), "sent-pkts/s")
	b.ReportMetric(float64(got.Load())/float64(b.N)*100, "%captured")
	b.ReportMetric(float64(st.Drops), "drops")
}
