package graph

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/journey"
)

// A Service journey as pkg/journey reports it: the DNAT at the client's
// node is explained by the KUBE-SEP rule of that node, and every hop is
// drawn, in order, in each format.
func TestJourneyViews(t *testing.T) {
	j := &Journey{From: "client", Target: "web:80", Probe: "connected", Hops: []Hop{
		{Point: "client/eth0", Packet: "10.244.1.5.4000 > 10.96.0.2.80 tcp [S]"},
		{Point: "node1/cni0", Packet: "10.244.1.5.4000 > 10.244.2.3.8080 tcp [S]", Changes: []string{"dnat dst 10.96.0.2:80 -> 10.244.2.3:8080"}},
		{Point: "node1/eth0", Packet: "10.244.1.5.4000 > 10.244.2.3.8080 tcp [S]", Outer: "192.168.1.101.5 > 192.168.1.102.8472 udp vni 1", Changes: []string{"+vxlan encapsulated"}},
		{Point: "web-5/eth0", Packet: "10.244.1.5.4000 > 10.244.2.3.8080 tcp [S]"},
	}}
	explain(j.Hops, []journey.RuleHit{
		{Node: "node2", Table: "nat", Rule: "-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.244.2.3:8080"},
		{Node: "node1", Table: "nat", Rule: "-A KUBE-SERVICES -d 10.96.0.2/32 -j KUBE-SVC-Y"},
		{Node: "node1", Table: "nat", Rule: "-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.244.2.3:8080"},
	})
	if got := j.Hops[1].Rules; len(got) != 1 || !strings.Contains(got[0], "KUBE-SEP-X") {
		t.Errorf("the DNAT hop's rules: %q", got)
	}
	var a, m bytes.Buffer
	JourneyASCII(&a, j)
	JourneyMermaid(&m, j)
	for _, want := range []string{"o client/eth0", "^ dnat dst 10.96.0.2:80 -> 10.244.2.3:8080", "by nat: -A KUBE-SEP-X", "outer 192.168.1.101.5 > 192.168.1.102.8472"} {
		if !strings.Contains(a.String(), want) {
			t.Errorf("ASCII lacks %q:\n%s", want, a.String())
		}
	}
	if !strings.Contains(m.String(), `h0 -- "dnat dst 10.96.0.2:80 -> 10.244.2.3:8080" --> h1`) {
		t.Errorf("Mermaid does not label the DNAT edge:\n%s", m.String())
	}
	tp := cases(t)["flannel-crossnode"]
	var s bytes.Buffer
	if err := JourneySVG(&s, tp, j); err != nil {
		t.Fatal(err)
	}
	var root svgElem
	if err := xml.Unmarshal(s.Bytes(), &root); err != nil {
		t.Fatalf("journey SVG does not parse: %v", err)
	}
	var hops []string
	walk(root, func(e svgElem) {
		if e.Class == "hop probe" {
			hops = append(hops, e.Point)
		}
	})
	// client and web-5 are not pods of the recorded lab: the hops it
	// has are drawn, in order.
	if strings.Join(hops, " ") != "node1/cni0 node1/eth0" {
		t.Errorf("hops drawn: %v", hops)
	}
}
