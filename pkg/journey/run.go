package journey

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/klab-dev/klab/trace"
)

// Options tune Run.
type Options struct {
	// Timeout bounds the probe: the wait for the echo reply or the TCP
	// handshake. 0 means 2s.
	Timeout time.Duration
	// Grace is how long capture goes on after the probe finished, for the
	// reply's last hops to be read. 0 means 300ms.
	Grace time.Duration
	// Pcap, if set, receives every captured packet as pcapng (one
	// interface per capture point).
	Pcap io.Writer
	// NoEnrich skips the conntrack and iptables counter look-ups.
	NoEnrich bool
}

// Report is the result of a journey.
type Report struct {
	Plan *Plan `json:"plan"`
	// Points are the armed capture point labels, in path order.
	Points []string `json:"points"`
	// Probe says how the probe went: "reply", "connected",
	// "answered (...)" (UDP), "refused", or the error.
	Probe   string   `json:"probe"`
	Src     string   `json:"src"` // the probe's source as the source saw it (addr or addr:port)
	Journey *Journey `json:"journey"`
	// Missing lists the expected points the probe was not seen at (only
	// for plans whose path is known).
	Missing []string `json:"missing"`
	// Conntrack holds the entries of the probe's connection, per node.
	Conntrack []Flow `json:"conntrack"`
	// Rules are the iptables rules the probe hit: whose packet counters it
	// raised, or (RulesTraced, iptables-nft) that nftrace saw it match.
	Rules []RuleHit `json:"rules"`
	// RulesTraced: Rules come from nftrace, not from a counter diff.
	RulesTraced bool `json:"rulesTraced,omitempty"`
	// Captured is the number of packets captured at all points.
	Captured int `json:"captured"`
	// Policy is the NetworkPolicy verdict for the probe, confirmed (or
	// not) by the kernel; empty when the lab has no policy.
	Policy string `json:"policy,omitempty"`
	// NFTrace is, in an nftables-mode lab, every nftables chain and rule
	// the probe met in each node, from the kernel's trace (nftrace.go).
	NFTrace []NFTHop `json:"nftrace,omitempty"`
}

// Run captures at plan.Points, sends one probe from plan.From, and follows
// it. It needs root. It returns an error only when capture or the lab
// fail; a probe that gets no answer is a report with Probe saying so.
func Run(ctx context.Context, lab *cluster.Lab, plan *Plan, o Options) (*Report, error) {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 300 * time.Millisecond
	}
	rep := &Report{Plan: plan, Points: plan.Labels()}
	var before map[string]counters
	if !o.NoEnrich && (lab.NFTables() || !iptablesNFT()) {
		before = readCounters(lab)
	}
	flt, err := trace.ParseFilter(plan.Proto)
	if err != nil {
		return nil, err
	}
	rec, err := Record(plan.Points, trace.Options{Filter: flt}, o.Pcap, true)
	if err != nil {
		return nil, err
	}
	defer rec.Close()
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- rec.Run(cctx, nil) }()

	var tracing *nftTracing
	if !o.NoEnrich {
		tracing = startNFTTrace(lab, plan)
	}
	rep.Probe, rep.Src = send(ctx, plan, o.Timeout)
	select {
	case <-time.After(o.Grace):
	case <-ctx.Done():
	}
	stop()
	if err := <-done; err != nil {
		return nil, err
	}
	rep.NFTrace = tracing.stop()
	pkts := rec.Packets()
	rep.Captured = len(pkts)
	idx := FindProbe(pkts, plan)
	if idx >= 0 {
		j, err := Follow(pkts, idx, rep.Points)
		if err != nil {
			return nil, err
		}
		rep.Journey = j
		if plan.Expected {
			seen := map[string]bool{}
			for _, h := range j.Hops {
				seen[h.Point] = true
			}
			for _, l := range rep.Points {
				if !seen[l] {
					rep.Missing = append(rep.Missing, l)
				}
			}
		}
	}
	if !o.NoEnrich {
		var first *trace.Header
		if rep.Journey != nil && len(rep.Journey.Hops) > 0 {
			first = rep.Journey.Hops[0].Packet.Innermost()
		}
		rep.Conntrack = conntrackFor(lab, plan, rep.Src, first)
		if tracing != nil && tracing.iptables {
			rep.Rules, rep.RulesTraced = tracing.hits, true // iptables-nft: the rules nftrace saw (iptnft.go)
		} else {
			rep.Rules = diffCounters(before, readCounters(lab))
		}
		rep.Policy = policyVerdict(lab, plan, rep)
	}
	return rep, nil
}

// send sends the one probe and says how it went.
func send(ctx context.Context, plan *Plan, timeout time.Duration) (result, src string) {
	switch plan.Proto {
	case ICMP:
		res, err := probe.Ping(ctx, plan.FromNS, plan.Dst, probe.PingOptions{Count: 1, Timeout: timeout})
		switch {
		case err != nil:
			return err.Error(), ""
		case res.Received == 1:
			return "reply", ""
		}
		return fmt.Sprintf("no reply within %s", timeout), ""
	case UDP:
		return sendUDP(ctx, plan, timeout)
	default:
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		addr := net.JoinHostPort(plan.Dst.String(), strconv.Itoa(plan.Port))
		conn, err := probe.Dial(dctx, plan.FromNS, "tcp4", addr)
		if err != nil {
			if isRefused(err) {
				return "refused (RST: nothing listens on " + addr + ")", ""
			}
			return err.Error(), ""
		}
		src = conn.LocalAddr().String()
		conn.Close()
		return "connected", src
	}
}

// FindProbe returns the index of the probe among pkts: the earliest ICMP
// echo request, TCP SYN or UDP datagram, addressed to the plan's destination (before
// any DNAT). When no such packet was captured — a node's own probe is
// rewritten in OUTPUT before any capture point sees it — it falls back to
// the earliest echo request or SYN at all. -1 if there is none.
func FindProbe(pkts []trace.Packet, plan *Plan) int {
	if i := findProbe(pkts, plan, true); i >= 0 {
		return i
	}
	return findProbe(pkts, plan, false)
}

func findProbe(pkts []trace.Packet, plan *Plan, exact bool) int {
	best := -1
	for i := range pkts {
		h := pkts[i].Innermost()
		if h.L3 != trace.L3IPv4 || (exact && h.DstIP != plan.Dst) {
			continue
		}
		switch plan.Proto {
		case ICMP:
			if h.Proto != trace.ProtoICMP || h.ICMPType != 8 {
				continue
			}
		case TCP:
			if h.Proto != trace.ProtoTCP || (exact && h.DstPort != uint16(plan.Port)) || h.TCPFlags&(trace.TCPSyn|trace.TCPAck) != trace.TCPSyn {
				continue
			}
		case UDP:
			if h.Proto != trace.ProtoUDP || (exact && h.DstPort != uint16(plan.Port)) {
				continue
			}
		}
		if best < 0 || pkts[i].Time.Before(pkts[best].Time) {
			best = i
		}
	}
	return best
}

func addrPort(a netip.Addr, port uint16) string {
	if port == 0 {
		return a.String()
	}
	return netip.AddrPortFrom(a, port).String()
}
