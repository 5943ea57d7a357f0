package trace

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Test packet builders: real frames serialised with gopacket.

var (
	macPodA  = net.HardwareAddr{0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02}
	macCni1  = net.HardwareAddr{0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01}
	macVtep1 = net.HardwareAddr{0x0e, 0x11, 0x11, 0x11, 0x11, 0x11}
	macVtep2 = net.HardwareAddr{0x0e, 0x22, 0x22, 0x22, 0x22, 0x22}
	macEth1  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x01}
	macEth2  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x02}
)

type l3spec struct {
	src, dst string
	ttl      uint8
	id       uint16
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func mkIPv4(s l3spec, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: s.ttl, Id: s.id, Protocol: proto,
		Flags: layers.IPv4DontFragment, SrcIP: net.ParseIP(s.src).To4(), DstIP: net.ParseIP(s.dst).To4()}
}

// icmpFrame is Ethernet/IPv4/ICMP echo (request if req) with a 56-byte payload.
func icmpFrame(t testing.TB, smac, dmac net.HardwareAddr, s l3spec, req bool, id, seq uint16) []byte {
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

func tcpFrame(t testing.TB, smac, dmac net.HardwareAddr, s l3spec, sport, dport uint16, seq, ack uint32, syn, isAck bool) []byte {
	ip := mkIPv4(s, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, SYN: syn, ACK: isAck, Window: 64240}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
}

func udpFrame(t testing.TB, s l3spec, sport, dport uint16, payload []byte) []byte {
	ip := mkIPv4(s, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: macEth1, DstMAC: macEth2, EthernetType: layers.EthernetTypeIPv4}, ip, udp, gopacket.Payload(payload))
}

// vxlanWrap encapsulates inner (an Ethernet frame) in Ethernet/IPv4/UDP/VXLAN.
func vxlanWrap(t testing.TB, outer l3spec, sport, dport uint16, vni uint32, inner []byte) []byte {
	ip := mkIPv4(outer, layers.IPProtocolUDP)
	ip.Flags = 0
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: macEth1, DstMAC: macEth2, EthernetType: layers.EthernetTypeIPv4},
		ip, udp,
		&layers.VXLAN{ValidIDFlag: true, VNI: vni},
		gopacket.Payload(inner))
}

func arpFrame(t testing.TB, op uint16, sender, target string) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macPodA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: macPodA, SourceProtAddress: net.ParseIP(sender).To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(target).To4()})
}

func ipv6UDPFrame(t testing.TB, src, dst string, sport, dport uint16, payload ...byte) []byte {
	if payload == nil {
		payload = []byte("hi")
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: macEth1, DstMAC: macEth2, EthernetType: layers.EthernetTypeIPv6}, ip, udp, gopacket.Payload(payload))
}

// crossNodePing is pod 10.244.1.2 -> 10.244.2.2 echo request, seen on node1's eth0.
func crossNodePing(t testing.TB) []byte {
	inner := icmpFrame(t, macVtep1, macVtep2, l3spec{"10.244.1.2", "10.244.2.2", 63, 4242}, true, 1, 1)
	return vxlanWrap(t, l3spec{"192.168.1.101", "192.168.1.102", 64, 777}, 40213, 8472, 1, inner)
}

func decode(t testing.TB, data []byte) Packet {
	t.Helper()
	var p Packet
	if err := NewDecoder().Decode(data, &p); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return p
}
