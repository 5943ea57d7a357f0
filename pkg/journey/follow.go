package journey

// Following: one probe packet correlated across capture points, hop by hop,
// with what changed at each hop, and its reply.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/klab-dev/klab/trace"
)

// Kinds of Change.
const (
	ChangeEncap = "+vxlan" // the packet was put into a VXLAN tunnel
	ChangeDecap = "-vxlan" // the packet left the VXLAN tunnel
	ChangeOuter = "outer"  // still in VXLAN, but the outer addresses changed
	ChangeDNAT  = "dnat"   // destination address/port rewritten (ClusterIP -> pod, or the reply's un-SNAT)
	ChangeSNAT  = "snat"   // source address/port rewritten (MASQUERADE, or the reply's un-DNAT)
	ChangeTTL   = "ttl"    // TTL decremented: a router (a node) forwarded it
	ChangeMAC   = "mac"    // Ethernet addresses changed: a new L2 hop
)

// Change is one difference between a hop and the hop before it.
type Change struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// Hop is the probe (or its reply) as seen at one capture point.
type Hop struct {
	Point   string       `json:"point"`
	Packet  trace.Packet `json:"packet"`
	Changes []Change     `json:"changes"`
}

// Journey is one packet followed across capture points, and its reply.
type Journey struct {
	Hops  []Hop `json:"hops"`
	Reply []Hop `json:"reply"`
}

// ErrNoProbe is returned by Follow when the probe cannot be correlated.
var ErrNoProbe = errors.New("the probe is not an IP packet that can be followed (ICMP echo, TCP or UDP)")

// Follow follows pkts[probe] through pkts (captured at several points) and
// returns its hops and the hops of its reply. Packets are correlated by
// fields that survive NAT and encapsulation: the innermost IPv4 ID and
// protocol, plus the ICMP type and sequence number, the TCP sequence and
// acknowledgement numbers and flags, or the UDP payload length. Hops are
// ordered by path (the capture point labels in the order the probe
// crosses them; points not listed come last, the reply uses the reverse
// order), then by falling TTL, then by time, because timestamps taken on
// different interfaces can tie. Each hop lists what changed since the
// previous one.
func Follow(pkts []trace.Packet, probe int, path []string) (*Journey, error) {
	if probe < 0 || probe >= len(pkts) {
		return nil, fmt.Errorf("probe index %d out of range (%d packets)", probe, len(pkts))
	}
	ph := pkts[probe].Innermost()
	if !ph.IsIP() || (ph.Proto != trace.ProtoICMP && ph.Proto != trace.ProtoICMPv6 && ph.Proto != trace.ProtoTCP && ph.Proto != trace.ProtoUDP) {
		return nil, ErrNoProbe
	}
	var fwd []trace.Packet
	for i := range pkts {
		if samePacket(ph, pkts[i].Innermost()) {
			fwd = append(fwd, pkts[i])
		}
	}
	order := map[string]int{}
	for i, p := range path {
		order[p] = i
	}
	sortHops(fwd, order, false)
	j := &Journey{Hops: describe(fwd, nil)}

	// The reply: the first candidate decides its IP ID.
	var cands []trace.Packet
	for i := range pkts {
		if h := pkts[i].Innermost(); !samePacket(ph, h) && isReply(ph, h, fwd) {
			cands = append(cands, pkts[i])
		}
	}
	if len(cands) > 0 {
		sort.SliceStable(cands, func(a, b int) bool { return cands[a].Time.Before(cands[b].Time) })
		first := cands[0].Innermost()
		var rep []trace.Packet
		for _, c := range cands {
			if samePacket(first, c.Innermost()) {
				rep = append(rep, c)
			}
		}
		sortHops(rep, order, true)
		j.Reply = describe(rep, fwd)
	}
	return j, nil
}

// FindProbeMatching returns the index of the first packet (in time order of
// the slice) that matches f (nil matches any) and can be followed, or -1.
// FindProbe picks a plan's probe instead.
func FindProbeMatching(pkts []trace.Packet, f *trace.Filter) int {
	best := -1
	for i := range pkts {
		h := pkts[i].Innermost()
		if !h.IsIP() || !f.Match(&pkts[i]) {
			continue
		}
		if best < 0 || pkts[i].Time.Before(pkts[best].Time) {
			best = i
		}
	}
	return best
}

func samePacket(a, b *trace.Header) bool {
	if a.L3 != b.L3 || a.Proto != b.Proto || a.Fragment || b.Fragment {
		return false
	}
	if a.L3 == trace.L3IPv4 && a.IPID != b.IPID {
		return false
	}
	switch a.Proto {
	case trace.ProtoICMP, trace.ProtoICMPv6:
		// The echo id may be rewritten by NAT; the sequence number is not.
		return a.ICMPType == b.ICMPType && a.ICMPCode == b.ICMPCode && a.ICMPSeq == b.ICMPSeq
	case trace.ProtoTCP:
		return a.Seq == b.Seq && a.Ack == b.Ack && a.TCPFlags == b.TCPFlags && a.L4Len == b.L4Len
	case trace.ProtoUDP:
		return a.L4Len == b.L4Len
	}
	return false
}

func isReply(probe, r *trace.Header, fwd []trace.Packet) bool {
	if r.L3 != probe.L3 || r.Proto != probe.Proto {
		return false
	}
	switch probe.Proto {
	case trace.ProtoICMP:
		return probe.ICMPType == 8 && r.ICMPType == 0 && r.ICMPSeq == probe.ICMPSeq
	case trace.ProtoICMPv6:
		return probe.ICMPType == 128 && r.ICMPType == 129 && r.ICMPSeq == probe.ICMPSeq
	case trace.ProtoTCP:
		want := probe.Seq + uint32(probe.L4Len)
		if probe.TCPFlags&(trace.TCPSyn|trace.TCPFin) != 0 {
			want++
		}
		return r.TCPFlags&trace.TCPAck != 0 && r.Ack == want
	case trace.ProtoUDP:
		// Some hop's view of the probe, reversed (addresses and ports).
		for i := range fwd {
			h := fwd[i].Innermost()
			if r.SrcIP == h.DstIP && r.DstIP == h.SrcIP && r.SrcPort == h.DstPort && r.DstPort == h.SrcPort {
				return true
			}
		}
	}
	return false
}

func sortHops(ps []trace.Packet, order map[string]int, reverse bool) {
	rank := func(p *trace.Packet) int {
		if r, ok := order[p.Point]; ok {
			if reverse {
				return len(order) - 1 - r
			}
			return r
		}
		return len(order)
	}
	sort.SliceStable(ps, func(a, b int) bool {
		ra, rb := rank(&ps[a]), rank(&ps[b])
		if ra != rb {
			return ra < rb
		}
		ta, tb := ps[a].Innermost().TTL, ps[b].Innermost().TTL
		if ta != tb {
			return ta > tb
		}
		return ps[a].Time.Before(ps[b].Time)
	})
}

// describe turns ordered packets into hops with their changes; fwd is the
// forward path when describing a reply (to name reverse NAT).
func describe(ps []trace.Packet, fwd []trace.Packet) []Hop {
	hops := make([]Hop, len(ps))
	for i := range ps {
		hops[i] = Hop{Point: ps[i].Point, Packet: ps[i]}
		if i > 0 {
			hops[i].Changes = diff(&ps[i-1], &ps[i], fwd)
		}
	}
	return hops
}

func endpoint(a netip.Addr, port uint16, h *trace.Header) string {
	if h.Proto == trace.ProtoTCP || h.Proto == trace.ProtoUDP {
		return a.String() + ":" + strconv.Itoa(int(port))
	}
	return a.String()
}

func outerDesc(p *trace.Packet) string {
	return fmt.Sprintf("outer %s > %s udp/%d vni=%d", endpoint(p.Outer.SrcIP, p.Outer.SrcPort, &p.Outer),
		p.Outer.DstIP, p.Outer.DstPort, p.VNI)
}

func diff(prev, cur *trace.Packet, fwd []trace.Packet) []Change {
	var ch []Change
	switch {
	case !prev.VXLAN && cur.VXLAN:
		ch = append(ch, Change{ChangeEncap, "encapsulated in VXLAN: " + outerDesc(cur)})
	case prev.VXLAN && !cur.VXLAN:
		ch = append(ch, Change{ChangeDecap, "decapsulated from VXLAN (was " + outerDesc(prev) + ")"})
	case prev.VXLAN && cur.VXLAN && (prev.Outer.SrcIP != cur.Outer.SrcIP || prev.Outer.DstIP != cur.Outer.DstIP || prev.VNI != cur.VNI):
		ch = append(ch, Change{ChangeOuter, "outer header changed: " + outerDesc(prev) + " -> " + outerDesc(cur)})
	}
	a, b := prev.Innermost(), cur.Innermost()
	var orig *trace.Header
	if len(fwd) > 0 {
		orig = fwd[0].Innermost()
	}
	// An ICMP echo's id plays the port's role for conntrack: it changes
	// with the source on the way out (MASQUERADE) and with the destination
	// on the way back (the reply's un-SNAT), so it is told with that change.
	srcChanged := a.SrcIP != b.SrcIP || a.SrcPort != b.SrcPort
	dstChanged := a.DstIP != b.DstIP || a.DstPort != b.DstPort
	idChanged := a.ICMPID != b.ICMPID && a.IsIP() && (a.Proto == trace.ProtoICMP || a.Proto == trace.ProtoICMPv6)
	icmpID := fmt.Sprintf(" (icmp id %d -> %d)", a.ICMPID, b.ICMPID)
	if dstChanged {
		d := "dst " + endpoint(a.DstIP, a.DstPort, a) + " -> " + endpoint(b.DstIP, b.DstPort, b)
		if idChanged && !srcChanged {
			d += icmpID
		}
		if orig != nil && b.DstIP == orig.SrcIP {
			d += " (reply: conntrack reverses the forward SNAT)"
		}
		ch = append(ch, Change{ChangeDNAT, d})
	}
	if srcChanged || (idChanged && !dstChanged) {
		d := "src " + endpoint(a.SrcIP, a.SrcPort, a) + " -> " + endpoint(b.SrcIP, b.SrcPort, b)
		if idChanged {
			d += icmpID
		}
		if orig != nil && b.SrcIP == orig.DstIP && srcChanged {
			d += " (reply: conntrack reverses the forward DNAT)"
		}
		ch = append(ch, Change{ChangeSNAT, d})
	}
	if a.TTL != b.TTL {
		d := fmt.Sprintf("ttl %d -> %d", a.TTL, b.TTL)
		if b.TTL < a.TTL {
			d += " (routed)"
		}
		ch = append(ch, Change{ChangeTTL, d})
	}
	// MACs: the Ethernet header the innermost IP packet rides in.
	if a.HasEth && b.HasEth && (a.SrcMAC != b.SrcMAC || a.DstMAC != b.DstMAC) {
		ch = append(ch, Change{ChangeMAC, fmt.Sprintf("mac %s > %s -> %s > %s",
			mac(a.SrcMAC), mac(a.DstMAC), mac(b.SrcMAC), mac(b.DstMAC))})
	}
	return ch
}

// String renders the journey as indented text, one hop per line followed
// by its changes.
func (j *Journey) String() string {
	var b strings.Builder
	section := func(title string, hops []Hop) {
		b.WriteString(title)
		b.WriteByte('\n')
		for i := range hops {
			h := &hops[i]
			p := &h.Packet
			fmt.Fprintf(&b, "  %2d. %s %s  %s\n", i+1, h.Point, p.Dir, lineBody(p))
			for _, c := range h.Changes {
				fmt.Fprintf(&b, "        %-6s %s\n", c.Kind, c.Detail)
			}
		}
	}
	if len(j.Hops) > 0 {
		section("journey of "+j.Hops[0].Packet.Innermost().Summary(), j.Hops)
	}
	if len(j.Reply) > 0 {
		section("reply "+j.Reply[0].Packet.Innermost().Summary(), j.Reply)
	} else {
		b.WriteString("no reply captured\n")
	}
	return b.String()
}

// lineBody is the packet line without time, point and direction.
func lineBody(p *trace.Packet) string {
	q := *p
	q.Point, q.Dir = "", trace.DirUnknown
	s := q.String()
	if i := strings.IndexByte(s, ' '); i >= 0 {
		return s[i+1:]
	}
	return s
}

// mac prints an Ethernet address as trace prints it (0a:58:0a:f4:01:02).
func mac(m [6]byte) string { return net.HardwareAddr(m[:]).String() }
