package journey

import (
	"fmt"
	"strings"
)

// String renders the report: the plan, the journey hop by hop with the
// changes at each hop, the reply, and what explains the rewrites.
func (r *Report) String() string {
	var b strings.Builder
	p := r.Plan
	dst := p.Dst.String()
	if p.Port != 0 {
		dst = addrPort(p.Dst, uint16(p.Port))
	}
	fmt.Fprintf(&b, "journey %s -> %s (%s, %s): %s\n", p.From, p.Target, dst, p.Proto, p.Describe())
	fmt.Fprintf(&b, "armed %d capture points: %s\n", len(r.Points), strings.Join(r.Points, " "))
	probe := r.Probe
	if r.Src != "" {
		probe += " from " + r.Src
	}
	fmt.Fprintf(&b, "probe: %s; %d packets captured\n", probe, r.Captured)
	if r.Journey == nil {
		b.WriteString("the probe was not captured at any point: is the source's route to the target there ('klab exec " + p.From + " -- ip route')?\n")
	} else {
		b.WriteString(r.Journey.String())
	}
	if len(r.Missing) > 0 {
		fmt.Fprintf(&b, "not seen at: %s\n", strings.Join(r.Missing, " "))
	}
	if len(r.Conntrack) > 0 {
		b.WriteString("conntrack:\n")
		for _, f := range r.Conntrack {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	if r.Policy != "" {
		b.WriteString(r.Policy + "\n")
	}
	if len(r.NFTrace) > 0 {
		b.WriteString("nftables rules the probe met (klab's nftrace; kube-proxy's rules have no counters):\n")
		for _, h := range r.NFTrace {
			fmt.Fprintf(&b, "  %s\n", h)
		}
	}
	if len(r.Rules) > 0 {
		if r.RulesTraced {
			b.WriteString("iptables rules the probe hit (iptables-nft rules, from klab's nftrace; +N traced packets):\n")
		} else {
			b.WriteString("iptables rules the probe hit (packet counters before -> after):\n")
		}
		for _, h := range r.Rules {
			fmt.Fprintf(&b, "  %s\n", h)
		}
	}
	return b.String()
}
