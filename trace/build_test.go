package trace

import (
	"net"
	"testing"

	"github.com/klab-dev/klab/internal/frames"
)

// Test packet builders: real frames serialised with gopacket (see package
// frames, shared with pkg/journey's tests).

var (
	macPodA  = frames.MacPodA
	macCni1  = frames.MacCni1
	macVtep1 = frames.MacVtep1
	macVtep2 = frames.MacVtep2
	macEth1  = frames.MacEth1
	macEth2  = frames.MacEth2
)

type l3spec struct {
	src, dst string
	ttl      uint8
	id       uint16
}

func (s l3spec) v4() frames.L3 { return frames.V4(s.src, s.dst, s.ttl, s.id) }

func icmpFrame(t testing.TB, smac, dmac net.HardwareAddr, s l3spec, req bool, id, seq uint16) []byte {
	return frames.ICMP(t, smac, dmac, s.v4(), req, id, seq)
}

func tcpFrame(t testing.TB, smac, dmac net.HardwareAddr, s l3spec, sport, dport uint16, seq, ack uint32, syn, isAck bool) []byte {
	return frames.TCP(t, smac, dmac, s.v4(), sport, dport, seq, ack, syn, isAck)
}

func udpFrame(t testing.TB, s l3spec, sport, dport uint16, payload []byte) []byte {
	return frames.UDP(t, s.v4(), sport, dport, payload)
}

func vxlanWrap(t testing.TB, outer l3spec, sport, dport uint16, vni uint32, inner []byte) []byte {
	return frames.VXLAN(t, outer.v4(), sport, dport, vni, inner)
}

var (
	arpFrame      = frames.ARP
	ipv6UDPFrame  = frames.IPv6UDP
	crossNodePing = frames.CrossNodePing
)

func decode(t testing.TB, data []byte) Packet {
	t.Helper()
	var p Packet
	if err := NewDecoder().Decode(data, &p); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return p
}
