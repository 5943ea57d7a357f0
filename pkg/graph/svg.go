package graph

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/klab-dev/klab/pkg/topo"
)

// Layout sizes, in SVG user units (pixels).
const (
	margin  = 20
	colW    = 240 // a node's column
	colGap  = 30
	boxH    = 26 // one device row
	rowGap  = 8
	ulY     = 40 // the underlay bar
	ulH     = 28
	tunBand = 90 // the band between the underlay and the nodes, for arcs
	svcH    = 40
	svcW    = 220
	// bigLab is the node count above which tunnels are drawn plainly
	// (one arc per pair, no labels, no tooltips).
	bigLab = 12
)

// Point is a position in the drawing.
type Point struct{ X, Y float64 }

// Layout is where everything of a topology is drawn. Points maps each
// capture point label ("node1/eth0", "pod-a/eth0", "underlay/node1") to
// the centre of its interface, for journeys.
type Layout struct {
	W, H    float64
	Points  map[string]Point
	t       *topo.Topology
	nodeX   map[string]float64
	nodeY   float64
	nodeH   float64
	podPos  map[string]Point
	vtep    map[string]Point
	svcY    float64
	svcCols int // services per row
}

// Lay computes the layout: a column per node, in the topology's order.
func Lay(t *topo.Topology) *Layout {
	L := &Layout{t: t, Points: map[string]Point{}, nodeX: map[string]float64{}, podPos: map[string]Point{}, vtep: map[string]Point{}}
	maxPods := 0
	for _, n := range t.Nodes {
		maxPods = max(maxPods, len(n.Pods))
	}
	cols := max(len(t.Nodes), 1)
	if t.External != nil {
		cols++
	}
	L.W = float64(2*margin + cols*colW + (cols-1)*colGap)
	L.nodeY = ulY + ulH + tunBand
	// header, eth0, vtep, bridge, then pods (two rows each: veth, pod)
	L.nodeH = float64(boxH+rowGap)*4 + float64(maxPods)*float64(2*boxH+rowGap) + rowGap
	L.svcY = L.nodeY + L.nodeH + 60
	svcCols := max(1, int((L.W-2*margin+colGap)/(svcW+colGap)))
	rows := (len(t.Services) + svcCols - 1) / svcCols
	L.H = L.svcY + float64(rows)*(svcH+rowGap) + margin
	x := float64(margin)
	if t.External != nil {
		L.Points["external/eth0"] = Point{x + colW/2, L.nodeY + boxH/2}
		x += colW + colGap
	}
	for _, n := range t.Nodes {
		L.nodeX[n.Name] = x
		cx := x + colW/2
		L.Points["underlay/"+n.Name] = Point{cx, ulY + ulH/2}
		y := L.nodeY + boxH + rowGap
		L.Points[n.Name+"/eth0"] = Point{cx, y + boxH/2}
		y += boxH + rowGap
		if n.VTEP != nil {
			p := Point{cx, y + boxH/2}
			L.Points[n.Name+"/"+n.VTEP.Dev] = p
			L.vtep[n.Name] = p
		}
		y += boxH + rowGap
		if n.Bridge != "" {
			L.Points[n.Name+"/"+n.Bridge] = Point{cx, y + boxH/2}
		}
		y += boxH + rowGap
		for _, p := range n.Pods {
			L.Points[n.Name+"/"+p.HostVeth] = Point{cx, y + boxH/2}
			pp := Point{cx, y + boxH + boxH/2}
			L.Points[p.Name+"/eth0"] = pp
			L.podPos[p.Name] = pp
			y += 2*boxH + rowGap
		}
		x += colW + colGap
	}
	L.svcCols = svcCols
	return L
}

// svgWriter writes elements with escaped attributes and text.
type svgWriter struct{ b bytes.Buffer }

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (w *svgWriter) f(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

// box draws a rectangle with a text and a title (the hover text).
func (w *svgWriter) box(x, y, wd, h float64, class, text, title string, attrs string) {
	w.f(`<g class="%s"%s><rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" rx="4"/>`, class, attrs, x, y, wd, h)
	w.f(`<text x="%.0f" y="%.0f">%s</text>`, x+6, y+h/2+4, esc(text))
	if title != "" {
		w.f(`<title>%s</title>`, esc(title))
	}
	w.f("</g>\n")
}

func attr(k, v string) string { return fmt.Sprintf(` %s="%s"`, k, esc(v)) }

const style = `<style>
text{font:12px monospace;fill:#222;white-space:pre}
.underlay rect{fill:#cfd8dc;stroke:#455a64}
.node>rect{fill:#f5f5f5;stroke:#455a64;stroke-width:1.5}
.node>text{font-weight:bold}
.dev rect{fill:#fff;stroke:#78909c}
.vtep rect{fill:#e3f2fd;stroke:#1565c0}
.bridge rect{fill:#e8f5e9;stroke:#2e7d32}
.veth rect{fill:#fff;stroke:#aaa}
.pod rect{fill:#fff8e1;stroke:#f9a825}
.svc rect{fill:#f3e5f5;stroke:#6a1b9a}
.external rect{fill:#eceff1;stroke:#37474f}
.damaged rect,.damaged>rect{stroke:#d00;stroke-width:3;stroke-dasharray:6 3}
.tunnel{fill:none;stroke:#1565c0;stroke-width:1.2;stroke-dasharray:5 3}
.route{fill:none;stroke:#2e7d32;stroke-width:1.2}
.wire{stroke:#90a4ae;stroke-width:1.2}
.ep{stroke:#6a1b9a;stroke-width:1;fill:none;opacity:.6}
.tlabel{font-size:10px;fill:#1565c0}
.hop{fill:#d84315}
.hoptext{font-size:10px;fill:#fff;font-weight:bold}
.path{fill:none;stroke:#d84315;stroke-width:3;opacity:.8}
.change{font-size:11px;fill:#bf360c}
</style>
`

// SVG writes the topology as an SVG picture.
func SVG(w io.Writer, t *topo.Topology) error {
	L := Lay(t)
	var s svgWriter
	L.draw(&s, 0)
	s.f("</svg>\n")
	_, err := w.Write(s.b.Bytes())
	return err
}

// draw writes the header and every object; extraH adds room below.
func (L *Layout) draw(s *svgWriter, extraH float64) {
	t := L.t
	s.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" data-lab="%s">`+"\n", L.W, L.H+extraH, L.W, L.H+extraH, esc(t.Lab))
	s.b.WriteString(style)
	s.f(`<text x="%d" y="%d" style="font-weight:bold">lab %s · %s · read back from the kernel</text>`+"\n", margin, 24, esc(t.Lab), esc(t.Backend))
	// The underlay bar and its ports.
	ucls := "underlay"
	if !t.Underlay.Exists || len(t.Problems) > 0 {
		ucls += " damaged"
	}
	s.box(margin, ulY, L.W-2*margin, ulH, ucls, fmt.Sprintf("%s (underlay switch) %s", t.Underlay.Bridge, t.Underlay.CIDR), strings.Join(append([]string{t.Underlay.NS}, t.Problems...), "\n"), attr("id", "underlay")+attr("data-name", "underlay")+attr("data-kind", "underlay")+attr("data-ns", t.Underlay.NS))
	if t.External != nil {
		x := float64(margin)
		p := L.Points["external/eth0"]
		s.f(`<line class="wire" x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f"/>`+"\n", p.X, float64(ulY+ulH), p.X, L.nodeY)
		s.box(x, L.nodeY, colW, boxH*2, "external", "external "+strings.Join(t.External.Addrs, " "), t.External.NS, attr("id", "external")+attr("data-name", "external")+attr("data-kind", "external")+attr("data-ns", t.External.NS)+attr("data-point", "external/eth0"))
	}
	// Tunnels, as arcs in the band above the nodes, drawn before the nodes.
	// A big lab's full mesh (100 nodes: 9,900 tunnels) draws each pair of
	// opposite tunnels as one arc, without a tooltip element, so that a
	// browser redraws it quickly; data-reverse names the second one.
	big := len(t.Nodes) > bigLab
	have := map[string]bool{}
	for _, tn := range t.Tunnels {
		have[tn.From+"\x00"+tn.To+"\x00"+tn.Kind] = true
	}
	labelled := map[string]bool{}
	for _, tn := range t.Tunnels {
		reverse := have[tn.To+"\x00"+tn.From+"\x00"+tn.Kind]
		if big && reverse && tn.From > tn.To {
			continue // drawn with its opposite
		}
		a, b := L.Points[tn.From+"/eth0"], L.Points[tn.To+"/eth0"]
		cls := "route"
		if tn.Kind == topo.TunnelVXLAN {
			cls = "tunnel"
		}
		// Both directions of a pair share the arc's ends; the second
		// one is drawn a little higher.
		off := 6.0
		if tn.From > tn.To {
			off = -6
		}
		y0 := L.nodeY
		h := math.Min(tunBand-14, 18+math.Abs(a.X-b.X)/colW*14)
		mx := (a.X + b.X) / 2
		id := esc("tunnel-" + tn.From + "-" + tn.To)
		if big {
			rev := ""
			if reverse {
				rev = fmt.Sprintf(` data-reverse="%s"`, esc("tunnel-"+tn.To+"-"+tn.From))
			}
			s.f(`<path class="%s" id="%s"%s d="M%.0f %.0f Q%.0f %.0f %.0f %.0f"/>`+"\n", cls, id, rev, a.X+40, y0, mx+40, y0-2*h, b.X+40, y0)
			continue
		}
		s.f(`<path class="%s" id="%s" data-from="%s" data-to="%s" d="M%.0f %.0f Q%.0f %.0f %.0f %.0f"><title>%s</title></path>`+"\n",
			cls, id, esc(tn.From), esc(tn.To), a.X+40+off, y0, mx+40, y0-2*h+off, b.X+40+off, y0, esc(tn.From+" → "+tn.To+": "+tunnelText(tn)))
		pair := min(tn.From, tn.To) + "\x00" + max(tn.From, tn.To)
		if !labelled[pair] {
			labelled[pair] = true
			txt := fmt.Sprintf("vxlan VNI %d :%d", tn.VNI, tn.Port)
			if tn.Kind != topo.TunnelVXLAN {
				txt = "route via eth0"
			}
			s.f(`<text class="tlabel" x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", mx+40, y0-h-8, esc(txt))
		}
	}
	for _, n := range t.Nodes {
		L.drawNode(s, n)
	}
	// Services, in rows, with a line to each endpoint.
	cols := L.svcCols
	for i, sv := range t.Services {
		x := float64(margin) + float64(i%cols)*(svcW+colGap)
		y := L.svcY + float64(i/cols)*(svcH+rowGap)
		for _, e := range sv.Endpoints {
			if p, ok := L.podPos[e]; ok {
				s.f(`<path class="ep" data-svc="%s" data-pod="%s" d="M%.0f %.0f C%.0f %.0f %.0f %.0f %.0f %.0f"/>`+"\n", esc(sv.Name), esc(e), x+svcW/2, y, x+svcW/2, y-40, p.X+colW/2-20, p.Y+20, p.X+colW/2-20, p.Y)
			}
		}
		s.box(x, y, svcW, svcH, "svc", serviceText(sv), "endpoints: "+strings.Join(sv.Endpoints, " "), attr("id", "svc-"+sv.Name)+attr("data-name", sv.Name)+attr("data-kind", "service"))
	}
}

func (L *Layout) drawNode(s *svgWriter, n topo.Node) {
	x := L.nodeX[n.Name]
	cls := "node"
	if damaged(n.Damage) {
		cls += " damaged"
	}
	s.f(`<g class="%s" id="%s" data-name="%s" data-ns="%s" data-kind="node">`, cls, esc("node-"+n.Name), esc(n.Name), esc(n.NS))
	s.f(`<rect x="%.0f" y="%.0f" width="%d" height="%.0f" rx="6"/>`, x, L.nodeY, colW, L.nodeH)
	s.f(`<text x="%.0f" y="%.0f">%s</text>`, x+8, L.nodeY+18, esc(n.Name+"  pods "+n.Subnet))
	title := n.NS
	if len(n.Damage) > 0 {
		title += "\n" + strings.Join(n.Damage, "\n")
	}
	s.f("<title>%s</title>\n", esc(title))
	// The node's port on the underlay, and its wire.
	up := L.Points["underlay/"+n.Name]
	eth := L.Points[n.Name+"/eth0"]
	s.f(`<line class="wire" x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f"/>`+"\n", up.X, up.Y+ulH/2, eth.X, eth.Y-boxH/2)
	s.box(up.X-30, up.Y-9, 60, 18, "dev port", n.Name, "underlay port "+n.Name, attr("data-point", "underlay/"+n.Name))
	dx, dw := x+10, float64(colW-20)
	s.box(dx, eth.Y-boxH/2, dw, boxH, "dev", "eth0 "+n.IP, "eth0 "+n.IP, attr("data-point", n.Name+"/eth0"))
	if n.VTEP != nil {
		p := L.vtep[n.Name]
		s.box(dx, p.Y-boxH/2, dw, boxH, "dev vtep", fmt.Sprintf("%s vni %d :%d", n.VTEP.Dev, n.VTEP.VNI, n.VTEP.Port), fmt.Sprintf("%s vxlan id %d dstport %d local %s mac %s addr %s", n.VTEP.Dev, n.VTEP.VNI, n.VTEP.Port, n.VTEP.Local, n.VTEP.MAC, n.VTEP.Addr), attr("data-point", n.Name+"/"+n.VTEP.Dev))
	}
	if n.Bridge != "" {
		p := L.Points[n.Name+"/"+n.Bridge]
		s.box(dx, p.Y-boxH/2, dw, boxH, "dev bridge", n.Bridge+" "+n.BridgeAddr, n.Bridge+" "+n.BridgeAddr, attr("data-point", n.Name+"/"+n.Bridge))
	}
	for _, p := range n.Pods {
		v := L.Points[n.Name+"/"+p.HostVeth]
		s.box(dx+20, v.Y-boxH/2, dw-20, boxH, "dev veth", p.HostVeth, "host side of "+p.Name, attr("data-point", n.Name+"/"+p.HostVeth))
		pp := L.podPos[p.Name]
		pcls := "pod"
		if damaged(p.Damage) {
			pcls += " damaged"
		}
		title := p.NS
		if len(p.Damage) > 0 {
			title += "\n" + strings.Join(p.Damage, "\n")
		}
		s.box(dx+20, pp.Y-boxH/2, dw-20, boxH, pcls, podText(p), title, attr("id", "pod-"+p.Name)+attr("data-name", p.Name)+attr("data-ns", p.NS)+attr("data-kind", "pod")+attr("data-point", p.Name+"/eth0"))
	}
	s.f("</g>\n")
}
