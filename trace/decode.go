package trace

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// DefaultVXLANPorts are the UDP destination ports decoded as VXLAN: 8472 is
// the Linux kernel default that flannel uses, 4789 the IANA port.
var DefaultVXLANPorts = []uint16{8472, 4789}

var errTruncated = errors.New("truncated or malformed frame")

// Decoder decodes Ethernet frames into Packets. It keeps preallocated
// gopacket layers and decodes them with DecodeFromBytes, so decoding a
// packet allocates nothing. A Decoder is not safe for concurrent use: give
// each goroutine its own.
type Decoder struct {
	// VXLANPorts are the UDP destination ports whose payload is VXLAN.
	VXLANPorts []uint16

	eth   layers.Ethernet
	ip4   layers.IPv4
	ip6   layers.IPv6
	tcp   layers.TCP
	udp   layers.UDP
	icmp4 layers.ICMPv4
	icmp6 layers.ICMPv6
	arp   layers.ARP
	vxlan layers.VXLAN
}

// NewDecoder returns a decoder that treats DefaultVXLANPorts as VXLAN.
func NewDecoder() *Decoder {
	return &Decoder{VXLANPorts: append([]uint16(nil), DefaultVXLANPorts...)}
}

func (d *Decoder) isVXLANPort(p uint16) bool {
	for _, x := range d.VXLANPorts {
		if x == p {
			return true
		}
	}
	return false
}

// Decode decodes the Ethernet frame data into p: p.Outer, and for VXLAN
// traffic p.VXLAN, p.VNI and p.Inner. It sets p.Data, p.CapLen and (if
// zero) p.Len, and leaves p.Time, p.Point and p.Dir alone. A short or
// malformed frame never panics: what could be decoded is kept, p.Truncated
// is set and an error is returned.
func (d *Decoder) Decode(data []byte, p *Packet) error {
	p.Data = data
	p.CapLen = len(data)
	if p.Len == 0 {
		p.Len = len(data)
	}
	p.VXLAN, p.VNI, p.Truncated = false, 0, false
	p.Outer = Header{}
	p.Inner = Header{}
	payload, ok := d.decodeStack(data, &p.Outer)
	if !ok {
		p.Truncated = true
		return errTruncated
	}
	h := &p.Outer
	if payload == nil || h.Proto != ProtoUDP || !d.isVXLANPort(h.DstPort) {
		return nil
	}
	if err := d.vxlan.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err != nil {
		p.Truncated = true
		return errTruncated
	}
	p.VXLAN = true
	p.VNI = d.vxlan.VNI
	if _, ok := d.decodeStack(d.vxlan.Payload, &p.Inner); !ok {
		p.Truncated = true
		return errTruncated
	}
	return nil
}

// decodeStack decodes Ethernet, then ARP/IPv4/IPv6, then ICMP/TCP/UDP into
// h. It returns the UDP payload (for VXLAN detection) and false if the frame
// ended early or was malformed.
func (d *Decoder) decodeStack(data []byte, h *Header) (udpPayload []byte, ok bool) {
	if err := d.eth.DecodeFromBytes(data, gopacket.NilDecodeFeedback); err != nil {
		return nil, false
	}
	h.HasEth = true
	copy(h.SrcMAC[:], d.eth.SrcMAC)
	copy(h.DstMAC[:], d.eth.DstMAC)
	et := d.eth.EthernetType
	rest := d.eth.Payload
	// Skip 802.1Q/802.1ad tags (the kernel usually strips them for AF_PACKET).
	for i := 0; i < 2 && (et == layers.EthernetTypeDot1Q || et == layers.EthernetTypeQinQ); i++ {
		if len(rest) < 4 {
			return nil, false
		}
		et = layers.EthernetType(binary.BigEndian.Uint16(rest[2:4]))
		rest = rest[4:]
	}
	h.EtherType = uint16(et)

	var l4 []byte
	switch et {
	case layers.EthernetTypeIPv4:
		if err := d.ip4.DecodeFromBytes(rest, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		ip := &d.ip4
		h.L3 = L3IPv4
		h.SrcIP = addr4(ip.SrcIP)
		h.DstIP = addr4(ip.DstIP)
		h.TTL = ip.TTL
		h.IPID = ip.Id
		h.IPLen = ip.Length
		h.Proto = uint8(ip.Protocol)
		if ip.FragOffset != 0 {
			h.Fragment = true
			return nil, true
		}
		l4 = ip.Payload
	case layers.EthernetTypeIPv6:
		if err := d.ip6.DecodeFromBytes(rest, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		ip := &d.ip6
		h.L3 = L3IPv6
		h.SrcIP = addr16(ip.SrcIP)
		h.DstIP = addr16(ip.DstIP)
		h.TTL = ip.HopLimit
		h.IPLen = ip.Length + 40
		h.Proto = uint8(ip.NextHeader)
		l4 = ip.Payload
	case layers.EthernetTypeARP:
		if err := d.arp.DecodeFromBytes(rest, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		a := &d.arp
		h.L3 = L3ARP
		h.ARPOp = a.Operation
		if a.AddrType == layers.LinkTypeEthernet && len(a.SourceHwAddress) == 6 {
			copy(h.ARPSender[:], a.SourceHwAddress)
		}
		if a.Protocol == layers.EthernetTypeIPv4 && len(a.SourceProtAddress) == 4 && len(a.DstProtAddress) == 4 {
			h.SrcIP = addr4(a.SourceProtAddress)
			h.DstIP = addr4(a.DstProtAddress)
		}
		return nil, true
	default:
		return nil, true
	}

	switch h.Proto {
	case ProtoTCP:
		if err := d.tcp.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		t := &d.tcp
		h.SrcPort, h.DstPort = uint16(t.SrcPort), uint16(t.DstPort)
		h.Seq, h.Ack, h.Window = t.Seq, t.Ack, t.Window
		h.TCPFlags = l4[13]
		h.L4Len = len(t.Payload)
	case ProtoUDP:
		if err := d.udp.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		u := &d.udp
		h.SrcPort, h.DstPort = uint16(u.SrcPort), uint16(u.DstPort)
		h.L4Len = len(u.Payload)
		return u.Payload, true
	case ProtoICMP:
		if h.L3 != L3IPv4 {
			return nil, true
		}
		if err := d.icmp4.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		c := &d.icmp4
		h.ICMPType, h.ICMPCode = c.TypeCode.Type(), c.TypeCode.Code()
		h.ICMPID, h.ICMPSeq = c.Id, c.Seq
		h.L4Len = len(c.Payload)
	case ProtoICMPv6:
		if err := d.icmp6.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
			return nil, false
		}
		c := &d.icmp6
		h.ICMPType, h.ICMPCode = c.TypeCode.Type(), c.TypeCode.Code()
		if (h.ICMPType == 128 || h.ICMPType == 129) && len(c.Payload) >= 4 {
			h.ICMPID = binary.BigEndian.Uint16(c.Payload[0:2])
			h.ICMPSeq = binary.BigEndian.Uint16(c.Payload[2:4])
			h.L4Len = len(c.Payload) - 4
		}
	}
	return nil, true
}

func addr4(b []byte) netip.Addr {
	if len(b) != 4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(b))
}

func addr16(b []byte) netip.Addr {
	if len(b) != 16 {
		return netip.Addr{}
	}
	return netip.AddrFrom16([16]byte(b))
}
