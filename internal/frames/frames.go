// Package frames builds real Ethernet frames (serialised with gopacket) for
// the tests of packet decoding (trace) and of following packets across
// capture points (pkg/journey): ICMP echoes, TCP segments, UDP datagrams,
// ARP, IPv6, and VXLAN encapsulation as flannel does it, with the addresses
// of a two-node flannel lab.
package frames

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// MAC addresses of a two-node flannel lab: pod-a, node1's cni0, the
// nodes' flannel.1 (VTEPs) and eth0.
var (
	MacPodA  = net.HardwareAddr{0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02}
	MacCni1  = net.HardwareAddr{0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01}
	MacVtep1 = net.HardwareAddr{0x0e, 0x11, 0x11, 0x11, 0x11, 0x11}
	MacVtep2 = net.HardwareAddr{0x0e, 0x22, 0x22, 0x22, 0x22, 0x22}
	MacEth1  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x01}
	MacEth2  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x02}
)

// L3 is an IPv4 header's source, destination, TTL and ID (see V4).
type L3 struct {
	Src, Dst string
	TTL      uint8
	ID       uint16
}

// V4 is L3{src, dst, ttl, id}.
func V4(src, dst string, ttl uint8, id uint16) L3 { return L3{Src: src, Dst: dst, TTL: ttl, ID: id} }

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func mkIPv4(s L3, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: s.TTL, Id: s.ID, Protocol: proto,
		Flags: layers.IPv4DontFragment, SrcIP: net.ParseIP(s.Src).To4(), DstIP: net.ParseIP(s.Dst).To4()}
}

// ICMP is Ethernet/IPv4/ICMP echo (request if req) with a 56-byte payload.
func ICMP(t testing.TB, smac, dmac net.HardwareAddr, s L3, req bool, id, seq uint16) []byte {
	typ := uint8(layers.ICMPv4TypeEchoReply)
	if req {
		typ = layers.ICMPv4TypeEchoRequest
	}
	return serialize(t,
		&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4},
		mkIPv4(s, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq},
		gopacket.Payload(make([]byte, 56)))
}

// TCP is Ethernet/IPv4/TCP.
func TCP(t testing.TB, smac, dmac net.HardwareAddr, s L3, sport, dport uint16, seq, ack uint32, syn, isAck bool) []byte {
	ip := mkIPv4(s, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, SYN: syn, ACK: isAck, Window: 64240}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
}

// UDP is Ethernet/IPv4/UDP between MacEth1 and MacEth2.
func UDP(t testing.TB, s L3, sport, dport uint16, payload []byte) []byte {
	ip := mkIPv4(s, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: MacEth1, DstMAC: MacEth2, EthernetType: layers.EthernetTypeIPv4}, ip, udp, gopacket.Payload(payload))
}

// VXLAN encapsulates inner (an Ethernet frame) in Ethernet/IPv4/UDP/VXLAN.
func VXLAN(t testing.TB, outer L3, sport, dport uint16, vni uint32, inner []byte) []byte {
	ip := mkIPv4(outer, layers.IPProtocolUDP)
	ip.Flags = 0
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: MacEth1, DstMAC: MacEth2, EthernetType: layers.EthernetTypeIPv4},
		ip, udp,
		&layers.VXLAN{ValidIDFlag: true, VNI: vni},
		gopacket.Payload(inner))
}

// ARP is an ARP packet (op 1: request, 2: reply) from MacPodA, broadcast.
func ARP(t testing.TB, op uint16, sender, target string) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: MacPodA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: MacPodA, SourceProtAddress: net.ParseIP(sender).To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(target).To4()})
}

// IPv6UDP is Ethernet/IPv6/UDP (payload "hi" when none is given).
func IPv6UDP(t testing.TB, src, dst string, sport, dport uint16, payload ...byte) []byte {
	if payload == nil {
		payload = []byte("hi")
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: MacEth1, DstMAC: MacEth2, EthernetType: layers.EthernetTypeIPv6}, ip, udp, gopacket.Payload(payload))
}

// CrossNodePing is pod 10.244.1.2 -> 10.244.2.2 echo request, seen on node1's eth0.
func CrossNodePing(t testing.TB) []byte {
	inner := ICMP(t, MacVtep1, MacVtep2, V4("10.244.1.2", "10.244.2.2", 63, 4242), true, 1, 1)
	return VXLAN(t, V4("192.168.1.101", "192.168.1.102", 64, 777), 40213, 8472, 1, inner)
}
