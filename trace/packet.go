package trace

import (
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"strconv"
	"time"
)

// Direction tells whether a packet was leaving (out) or arriving at (in) the
// interface it was captured on.
type Direction uint8

const (
	DirUnknown Direction = iota
	DirIn
	DirOut
)

func (d Direction) String() string {
	switch d {
	case DirIn:
		return "in"
	case DirOut:
		return "out"
	}
	return "?"
}

// PktType is the kernel's sll_pkttype of a captured packet.
type PktType uint8

// The AF_PACKET packet types (linux/if_packet.h).
const (
	PktHost      PktType = 0
	PktBroadcast PktType = 1
	PktMulticast PktType = 2
	PktOtherHost PktType = 3
	PktOutgoing  PktType = 4
)

func (t PktType) String() string {
	switch t {
	case PktHost:
		return "host"
	case PktBroadcast:
		return "broadcast"
	case PktMulticast:
		return "multicast"
	case PktOtherHost:
		return "otherhost"
	case PktOutgoing:
		return "outgoing"
	}
	return strconv.Itoa(int(t))
}

// Direction of a packet of this type.
func (t PktType) Direction() Direction {
	if t == PktOutgoing {
		return DirOut
	}
	return DirIn
}

// L3 is the network layer of a Header.
type L3 uint8

const (
	L3None L3 = iota
	L3IPv4
	L3IPv6
	L3ARP
)

func (l L3) String() string {
	switch l {
	case L3IPv4:
		return "ipv4"
	case L3IPv6:
		return "ipv6"
	case L3ARP:
		return "arp"
	}
	return ""
}

// IP protocol numbers used by the decoder and the filter.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flag bits of Header.TCPFlags.
const (
	TCPFin = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

// Header is one decoded Ethernet/IP/L4 stack: the outer packet, or the
// frame carried inside VXLAN. It is a flat value (no pointers into the
// capture buffer) so it can be kept, compared and copied freely.
type Header struct {
	HasEth    bool
	SrcMAC    [6]byte
	DstMAC    [6]byte
	EtherType uint16

	L3       L3
	SrcIP    netip.Addr // for ARP: sender protocol address
	DstIP    netip.Addr // for ARP: target protocol address
	TTL      uint8      // hop limit for IPv6
	IPID     uint16
	IPLen    uint16 // IP total length (IPv6: payload length + 40)
	Fragment bool   // a non-first IPv4 fragment: no L4 header

	Proto    uint8 // IP protocol (ProtoICMP, ProtoTCP, ...); 0 if none
	SrcPort  uint16
	DstPort  uint16
	TCPFlags uint8
	Seq, Ack uint32
	Window   uint16
	ICMPType uint8
	ICMPCode uint8
	ICMPID   uint16
	ICMPSeq  uint16
	L4Len    int // L4 payload length (bytes after the TCP/UDP/ICMP header)

	ARPOp     uint16
	ARPSender [6]byte
}

// IsIP reports whether the header has an IPv4 or IPv6 layer.
func (h *Header) IsIP() bool { return h.L3 == L3IPv4 || h.L3 == L3IPv6 }

// Packet is one captured (or read) frame, decoded.
type Packet struct {
	Time    time.Time
	Point   string // capture point label, e.g. "node1/eth0"
	PointID int    // index of the capture point in the capture
	Dir     Direction
	PktType PktType
	Len     int // length on the wire
	CapLen  int // bytes captured

	Outer Header
	VXLAN bool
	VNI   uint32
	Inner Header // valid when VXLAN is true

	Truncated bool   // decoding stopped early: the frame was short or malformed
	Data      []byte // the raw frame; in a live capture only valid during the callback
}

// Innermost returns the header that carries the application traffic: the
// inner one for VXLAN packets, the outer one otherwise.
func (p *Packet) Innermost() *Header {
	if p.VXLAN {
		return &p.Inner
	}
	return &p.Outer
}

// Clone returns a copy of p that owns its Data.
func (p *Packet) Clone() Packet {
	c := *p
	c.Data = append([]byte(nil), p.Data...)
	return c
}

// String formats the packet as one text line (see AppendText).
func (p *Packet) String() string { return string(p.AppendText(nil)) }

// AppendText appends the one-line form of the packet:
//
//	12:00:01.000123 node1/eth0 out 192.168.1.101.40213 > 192.168.1.102.8472 udp | vxlan vni=1 | 10.244.1.2 > 10.244.2.2 icmp echo request id=1 seq=1 ttl=63 len 84
func (p *Packet) AppendText(b []byte) []byte {
	b = p.Time.AppendFormat(b, "15:04:05.000000")
	b = append(b, ' ')
	if p.Point != "" {
		b = append(b, p.Point...)
		b = append(b, ' ')
	}
	if p.Dir != DirUnknown {
		b = append(b, p.Dir.String()...)
		b = append(b, ' ')
	}
	if p.VXLAN {
		b = appendAddrPort(b, &p.Outer)
		b = append(b, " udp | vxlan vni="...)
		b = strconv.AppendUint(b, uint64(p.VNI), 10)
		b = append(b, " | "...)
		b = p.Inner.appendSummary(b)
	} else {
		b = p.Outer.appendSummary(b)
	}
	if p.Truncated {
		b = append(b, " [truncated]"...)
	}
	return b
}

func appendMAC(b []byte, m [6]byte) []byte {
	const hexd = "0123456789abcdef"
	for i, x := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hexd[x>>4], hexd[x&0xf])
	}
	return b
}

func appendAddrPort(b []byte, h *Header) []byte {
	b = h.SrcIP.AppendTo(b)
	if h.Proto == ProtoTCP || h.Proto == ProtoUDP {
		b = append(b, '.')
		b = strconv.AppendUint(b, uint64(h.SrcPort), 10)
	}
	b = append(b, " > "...)
	b = h.DstIP.AppendTo(b)
	if h.Proto == ProtoTCP || h.Proto == ProtoUDP {
		b = append(b, '.')
		b = strconv.AppendUint(b, uint64(h.DstPort), 10)
	}
	return b
}

// Summary returns the one-line description of this header alone, e.g.
// "10.244.1.2 > 10.244.2.2 icmp echo request id=1 seq=1 ttl=63 len 84".
func (h *Header) Summary() string { return string(h.appendSummary(nil)) }

func (h *Header) appendSummary(b []byte) []byte {
	switch h.L3 {
	case L3ARP:
		switch h.ARPOp {
		case 1:
			b = append(b, "arp who-has "...)
			b = h.DstIP.AppendTo(b)
			b = append(b, " tell "...)
			b = h.SrcIP.AppendTo(b)
		case 2:
			b = append(b, "arp reply "...)
			b = h.SrcIP.AppendTo(b)
			b = append(b, " is-at "...)
			b = appendMAC(b, h.ARPSender)
		default:
			b = append(b, "arp op "...)
			b = strconv.AppendUint(b, uint64(h.ARPOp), 10)
		}
		return b
	case L3None:
		if !h.HasEth {
			return append(b, "unknown"...)
		}
		b = appendMAC(b, h.SrcMAC)
		b = append(b, " > "...)
		b = appendMAC(b, h.DstMAC)
		b = append(b, " ethertype 0x"...)
		return strconv.AppendUint(b, uint64(h.EtherType), 16)
	}
	b = appendAddrPort(b, h)
	b = append(b, ' ')
	switch h.Proto {
	case ProtoICMP, ProtoICMPv6:
		b = appendICMP(b, h)
	case ProtoTCP:
		b = append(b, "tcp ["...)
		b = appendTCPFlags(b, h.TCPFlags)
		b = append(b, "] seq="...)
		b = strconv.AppendUint(b, uint64(h.Seq), 10)
		if h.TCPFlags&TCPAck != 0 {
			b = append(b, " ack="...)
			b = strconv.AppendUint(b, uint64(h.Ack), 10)
		}
		b = append(b, " win="...)
		b = strconv.AppendUint(b, uint64(h.Window), 10)
	case ProtoUDP:
		b = append(b, "udp"...)
	default:
		if h.Fragment {
			b = append(b, "fragment proto "...)
		} else {
			b = append(b, "proto "...)
		}
		b = strconv.AppendUint(b, uint64(h.Proto), 10)
	}
	b = append(b, " ttl="...)
	b = strconv.AppendUint(b, uint64(h.TTL), 10)
	if h.L3 == L3IPv4 {
		b = append(b, " id="...)
		b = strconv.AppendUint(b, uint64(h.IPID), 10)
	}
	b = append(b, " len "...)
	return strconv.AppendUint(b, uint64(h.IPLen), 10)
}

func appendTCPFlags(b []byte, f uint8) []byte {
	const names = "FSRPAUEC"
	n := len(b)
	for i := 0; i < 8; i++ {
		if f&(1<<i) != 0 {
			b = append(b, names[i])
		}
	}
	if len(b) == n {
		b = append(b, '.')
	}
	return b
}

// TCPFlagString returns flags in tcpdump's letters, e.g. "SA" or "." for none.
func TCPFlagString(f uint8) string { return string(appendTCPFlags(nil, f)) }

func appendICMP(b []byte, h *Header) []byte {
	if h.Proto == ProtoICMPv6 {
		b = append(b, "icmp6 "...)
		switch h.ICMPType {
		case 128:
			return appendEcho(append(b, "echo request"...), h)
		case 129:
			return appendEcho(append(b, "echo reply"...), h)
		case 135:
			return append(b, "neighbor solicitation"...)
		case 136:
			return append(b, "neighbor advertisement"...)
		}
		b = append(b, "type "...)
		return strconv.AppendUint(b, uint64(h.ICMPType), 10)
	}
	b = append(b, "icmp "...)
	switch h.ICMPType {
	case 8:
		return appendEcho(append(b, "echo request"...), h)
	case 0:
		return appendEcho(append(b, "echo reply"...), h)
	case 3:
		b = append(b, "unreachable code="...)
	case 11:
		b = append(b, "time exceeded code="...)
	default:
		b = append(b, "type "...)
		b = strconv.AppendUint(b, uint64(h.ICMPType), 10)
		b = append(b, " code="...)
	}
	return strconv.AppendUint(b, uint64(h.ICMPCode), 10)
}

func appendEcho(b []byte, h *Header) []byte {
	b = append(b, " id="...)
	b = strconv.AppendUint(b, uint64(h.ICMPID), 10)
	b = append(b, " seq="...)
	return strconv.AppendUint(b, uint64(h.ICMPSeq), 10)
}

// ProtoName names an IP protocol number the way the filter language does.
func ProtoName(p uint8) string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmp6"
	case 0:
		return ""
	}
	return strconv.Itoa(int(p))
}

// headerJSON is the stable JSON shape of a Header; every key is always present.
type headerJSON struct {
	SrcMAC   string `json:"src_mac"`
	DstMAC   string `json:"dst_mac"`
	L3       string `json:"l3"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	TTL      uint8  `json:"ttl"`
	IPID     uint16 `json:"ip_id"`
	IPLen    uint16 `json:"ip_len"`
	Proto    string `json:"proto"`
	SrcPort  uint16 `json:"sport"`
	DstPort  uint16 `json:"dport"`
	TCPFlags string `json:"tcp_flags"`
	Seq      uint32 `json:"seq"`
	Ack      uint32 `json:"ack"`
	ICMPType uint8  `json:"icmp_type"`
	ICMPCode uint8  `json:"icmp_code"`
	ICMPID   uint16 `json:"icmp_id"`
	ICMPSeq  uint16 `json:"icmp_seq"`
	ARPOp    uint16 `json:"arp_op"`
	Summary  string `json:"summary"`
}

func (h *Header) toJSON() *headerJSON {
	j := &headerJSON{
		L3: h.L3.String(), TTL: h.TTL, IPID: h.IPID, IPLen: h.IPLen,
		Proto: ProtoName(h.Proto), SrcPort: h.SrcPort, DstPort: h.DstPort,
		Seq: h.Seq, Ack: h.Ack, ICMPType: h.ICMPType, ICMPCode: h.ICMPCode,
		ICMPID: h.ICMPID, ICMPSeq: h.ICMPSeq, ARPOp: h.ARPOp, Summary: h.Summary(),
	}
	if h.L3 == L3ARP {
		j.Proto = "arp"
	}
	if h.HasEth {
		j.SrcMAC = string(appendMAC(nil, h.SrcMAC))
		j.DstMAC = string(appendMAC(nil, h.DstMAC))
	}
	if h.SrcIP.IsValid() {
		j.Src = h.SrcIP.String()
	}
	if h.DstIP.IsValid() {
		j.Dst = h.DstIP.String()
	}
	if h.Proto == ProtoTCP {
		j.TCPFlags = TCPFlagString(h.TCPFlags)
	}
	return j
}

// packetJSON is the stable JSON shape of a Packet (one JSON Lines record).
type packetJSON struct {
	Time      string      `json:"time"`
	Point     string      `json:"point"`
	Dir       string      `json:"dir"`
	PktType   string      `json:"pkttype"`
	Len       int         `json:"len"`
	CapLen    int         `json:"caplen"`
	Outer     *headerJSON `json:"outer"`
	VXLAN     bool        `json:"vxlan"`
	VNI       uint32      `json:"vni"`
	Inner     *headerJSON `json:"inner"`
	Truncated bool        `json:"truncated"`
	Line      string      `json:"line"`
}

// MarshalJSON encodes the packet with stable keys: time (RFC 3339, ns),
// point, dir, pkttype, len, caplen, outer, vxlan, vni, inner (null without
// VXLAN), truncated and line (the text form). Each header has src_mac,
// dst_mac, l3, src, dst, ttl, ip_id, ip_len, proto, sport, dport, tcp_flags,
// seq, ack, icmp_type, icmp_code, icmp_id, icmp_seq, arp_op and summary.
func (p *Packet) MarshalJSON() ([]byte, error) {
	j := packetJSON{
		Time: p.Time.Format(time.RFC3339Nano), Point: p.Point, Dir: p.Dir.String(),
		PktType: p.PktType.String(), Len: p.Len, CapLen: p.CapLen,
		Outer: p.Outer.toJSON(), VXLAN: p.VXLAN, VNI: p.VNI, Truncated: p.Truncated,
		Line: p.String(),
	}
	if p.VXLAN {
		j.Inner = p.Inner.toJSON()
	}
	return json.Marshal(j)
}

// Dump returns a hex dump of the raw frame (debugging aid).
func (p *Packet) Dump() string { return hex.Dump(p.Data) }
