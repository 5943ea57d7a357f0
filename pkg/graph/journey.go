package graph

import (
	"fmt"
	"io"
	"strings"

	"github.com/klab-dev/klab/pkg/journey"
	"github.com/klab-dev/klab/pkg/topo"
)

// Journey is a journey report reduced to what is drawn: each capture
// point in order with the packet as seen there and what changed.
type Journey struct {
	From, Target string
	Probe        string   `json:"probe"`
	Describe     string   `json:"describe"`
	Hops         []Hop    `json:"hops"`
	Reply        []Hop    `json:"reply"`
	Missing      []string `json:"missing,omitempty"`
	// Verdicts are the rules the probe hit, its NetworkPolicy verdict and
	// its conntrack entries: why it was rewritten or dropped.
	Verdicts []string `json:"verdicts,omitempty"`
}

// Hop is one capture point of a journey.
type Hop struct {
	Point   string   `json:"point"`
	Packet  string   `json:"packet"` // the innermost header, one line
	Outer   string   `json:"outer,omitempty"`
	TTL     int      `json:"ttl"`
	Changes []string `json:"changes,omitempty"`
	// Rules are the iptables rules that made this hop's rewrite (a
	// KUBE-SEP DNAT, a MASQUERADE), from the node the hop is in.
	Rules []string `json:"rules,omitempty"`
}

// FromReport reduces a journey report.
func FromReport(r *journey.Report) *Journey {
	j := &Journey{Probe: r.Probe, Missing: r.Missing}
	if r.Plan != nil {
		j.From, j.Target, j.Describe = r.Plan.From, r.Plan.Target, r.Plan.Describe()
	}
	conv := func(hs []journey.Hop) []Hop {
		var out []Hop
		for i := range hs {
			h := &hs[i]
			in := h.Packet.Innermost()
			hop := Hop{Point: h.Point, Packet: in.Summary(), TTL: int(in.TTL)}
			if h.Packet.VXLAN {
				hop.Outer = fmt.Sprintf("%s vni %d", h.Packet.Outer.Summary(), h.Packet.VNI)
			}
			for _, c := range h.Changes {
				d := c.Detail
				if !strings.HasPrefix(d, c.Kind+" ") {
					d = c.Kind + " " + d
				}
				hop.Changes = append(hop.Changes, d)
			}
			out = append(out, hop)
		}
		return out
	}
	if r.Journey != nil {
		j.Hops, j.Reply = conv(r.Journey.Hops), conv(r.Journey.Reply)
		explain(j.Hops, r.Rules)
	}
	if r.Policy != "" {
		j.Verdicts = append(j.Verdicts, r.Policy)
	}
	for _, h := range r.Rules {
		j.Verdicts = append(j.Verdicts, "rule "+h.String())
	}
	for _, f := range r.Conntrack {
		j.Verdicts = append(j.Verdicts, "conntrack "+f.String())
	}
	return j
}

func (j *Journey) title() string {
	return fmt.Sprintf("journey %s -> %s: %s", j.From, j.Target, j.Probe)
}

// JourneyASCII writes the journey as a path, one capture point a line,
// each followed by what changed there.
func JourneyASCII(w io.Writer, j *Journey) error {
	var b strings.Builder
	b.WriteString(j.title() + "\n")
	if j.Describe != "" {
		b.WriteString("  " + j.Describe + "\n")
	}
	section := func(name string, hs []Hop) {
		if len(hs) == 0 {
			return
		}
		b.WriteString(name + "\n")
		for i, h := range hs {
			arrow := "  |"
			if i == 0 {
				arrow = "  o"
			}
			fmt.Fprintf(&b, "%s %-22s %s\n", arrow, h.Point, h.Packet)
			if h.Outer != "" {
				fmt.Fprintf(&b, "  | %-22s   outer %s\n", "", h.Outer)
			}
			for _, c := range h.Changes {
				fmt.Fprintf(&b, "  | %-22s   ^ %s\n", "", c)
			}
			for _, r := range h.Rules {
				fmt.Fprintf(&b, "  | %-22s     by %s\n", "", r)
			}
		}
		b.WriteString("  v\n")
	}
	section("probe:", j.Hops)
	section("reply:", j.Reply)
	if len(j.Hops) == 0 {
		b.WriteString("the probe was not captured at any point\n")
	}
	if len(j.Missing) > 0 {
		fmt.Fprintf(&b, "not seen at: %s\n", strings.Join(j.Missing, " "))
	}
	for _, v := range j.Verdicts {
		b.WriteString(v + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JourneyMermaid writes the journey as a Mermaid flowchart: one box per
// capture point, the edges labelled with the changes at the next point.
func JourneyMermaid(w io.Writer, j *Journey) error {
	var b strings.Builder
	b.WriteString("flowchart LR\n")
	fmt.Fprintf(&b, "  %%%% %s\n", label(j.title()))
	chain := func(prefix string, hs []Hop) {
		for i, h := range hs {
			fmt.Fprintf(&b, "  %s%d[\"%d. %s<br/>%s\"]\n", prefix, i, i+1, label(h.Point), label(h.Packet))
			if i > 0 {
				edge := "-->"
				if len(h.Changes) > 0 {
					edge = fmt.Sprintf("-- \"%s\" -->", label(strings.Join(h.Changes, "; ")))
				}
				fmt.Fprintf(&b, "  %s%d %s %s%d\n", prefix, i-1, edge, prefix, i)
			}
		}
	}
	chain("h", j.Hops)
	chain("r", j.Reply)
	if len(j.Hops) > 0 && len(j.Reply) > 0 {
		fmt.Fprintf(&b, "  h%d -. reply .-> r0\n", len(j.Hops)-1)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JourneySVG writes the topology with the journey drawn over it: the path
// through the capture points, numbered, and a panel listing each hop with
// what changed there.
func JourneySVG(w io.Writer, t *topo.Topology, j *Journey) error {
	L := Lay(t)
	lines := 3 + len(j.Verdicts) + len(j.Missing)
	for _, hs := range [][]Hop{j.Hops, j.Reply} {
		for _, h := range hs {
			lines += 1 + len(h.Changes) + len(h.Rules)
			if h.Outer != "" {
				lines++
			}
		}
	}
	panelY := L.H
	// The panel's lines are monospace: widen the picture to hold them.
	width := len(j.title())
	for _, hs := range [][]Hop{j.Hops, j.Reply} {
		for _, h := range hs {
			width = max(width, len(h.Point)+len(h.Packet)+12, len(h.Outer)+14)
			for _, c := range h.Changes {
				width = max(width, len(c)+8)
			}
			for _, r := range h.Rules {
				width = max(width, len(r)+13)
			}
		}
	}
	for _, v := range j.Verdicts {
		width = max(width, len(v))
	}
	L.W = max(L.W, float64(width)*7.3+2*margin)
	extra := float64(lines*15 + 2*margin)
	var s svgWriter
	L.draw(&s, extra)
	drawPath := func(hs []Hop, cls string) {
		var pts []string
		for _, h := range hs {
			if p, ok := L.Points[h.Point]; ok {
				pts = append(pts, fmt.Sprintf("%.0f,%.0f", p.X, p.Y))
			}
		}
		if len(pts) > 1 {
			s.f(`<polyline class="path %s" points="%s"/>`+"\n", cls, strings.Join(pts, " "))
		}
		for i, h := range hs {
			p, ok := L.Points[h.Point]
			if !ok {
				continue
			}
			dx := 0.0
			if cls == "reply" {
				dx = 22
			}
			s.f(`<g class="hop %s" data-point="%s" data-n="%d"><circle class="hop" cx="%.0f" cy="%.0f" r="9"/><text class="hoptext" x="%.0f" y="%.0f" text-anchor="middle">%d</text><title>%s</title></g>`+"\n",
				cls, esc(h.Point), i+1, p.X+colW/2-24+dx, p.Y, p.X+colW/2-24+dx, p.Y+4, i+1, esc(h.Point+": "+h.Packet+"\n"+strings.Join(h.Changes, "\n")))
		}
	}
	drawPath(j.Hops, "probe")
	drawPath(j.Reply, "reply")
	y := panelY + 10
	line := func(cls, text string) {
		s.f(`<text class="%s" x="%d" y="%.0f">%s</text>`+"\n", cls, margin, y, esc(text))
		y += 15
	}
	line("", j.title())
	for _, sec := range []struct {
		name string
		hs   []Hop
	}{{"probe", j.Hops}, {"reply", j.Reply}} {
		for i, h := range sec.hs {
			line("", fmt.Sprintf("%s %2d. %-20s %s", sec.name, i+1, h.Point, h.Packet))
			if h.Outer != "" {
				line("change", "        outer "+h.Outer)
			}
			for _, c := range h.Changes {
				line("change", "        "+c)
			}
			for _, r := range h.Rules {
				line("change", "          by "+r)
			}
		}
	}
	if len(j.Missing) > 0 {
		line("change", "not seen at: "+strings.Join(j.Missing, " "))
	}
	for _, v := range j.Verdicts {
		line("", v)
	}
	s.f("</svg>\n")
	_, err := w.Write(s.b.Bytes())
	return err
}

// explain puts beside each rewrite of the probe the rules that made it:
// a DNAT rule of the hop's node next to its dnat, a MASQUERADE or SNAT
// rule next to its snat, each once.
func explain(hops []Hop, rules []journey.RuleHit) {
	used := map[int]bool{}
	for i := range hops {
		h := &hops[i]
		node, _, _ := strings.Cut(h.Point, "/")
		for _, c := range h.Changes {
			var targets []string
			switch {
			case strings.HasPrefix(c, journey.ChangeDNAT+" "):
				targets = []string{"-j DNAT"}
			case strings.HasPrefix(c, journey.ChangeSNAT+" "):
				targets = []string{"-j MASQUERADE", "-j SNAT"}
			}
			for k, rh := range rules {
				if used[k] || rh.Node != node {
					continue
				}
				for _, tg := range targets {
					if strings.Contains(rh.Rule, tg) {
						used[k] = true
						h.Rules = append(h.Rules, rh.Table+": "+rh.Rule)
					}
				}
			}
		}
	}
}
