package main

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// svgIDs parses an SVG (encoding/xml) and returns its element ids and
// the capture points of its journey hops.
func svgIDs(t *testing.T, b []byte) (ids map[string]bool, hops []string) {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(string(b)))
	ids = map[string]bool{}
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if se, ok := tok.(xml.StartElement); ok {
			var class, point string
			for _, a := range se.Attr {
				switch a.Name.Local {
				case "id":
					ids[a.Value] = true
				case "class":
					class = a.Value
				case "data-point":
					point = a.Value
				}
			}
			if class == "hop probe" {
				hops = append(hops, point)
			}
		}
	}
	if len(ids) == 0 {
		t.Fatalf("not an SVG with ids:\n%.300s", b)
	}
	return ids, hops
}

// klab graph, graph journey and trace journey --graph on a real lab: the
// pictures hold every object, the VTEP MAC is the one ip reads, and the
// journey passes flannel.1 on both nodes with +vxlan and -vxlan.
func TestGraphCLI(t *testing.T) {
	c := newCLI(t)
	t.Parallel()
	lab := testutil.LabName(t, "gr")
	c.destroyOnCleanup(lab)
	for _, step := range crossnodeBuild {
		c.must(append(step, "--lab", lab)...)
	}
	ids, _ := svgIDs(t, []byte(c.must("graph", "--lab", lab, "-o", "svg")))
	for _, id := range []string{"underlay", "external", "node-node1", "node-node2", "pod-pod-a", "pod-pod-c", "tunnel-node1-node2", "tunnel-node2-node1", "svc-web"} {
		if !ids[id] {
			t.Errorf("klab graph -o svg has no %s", id)
		}
	}
	out, err := exec.Command("ip", "-n", netns.Name(lab, "node2"), "-j", "link", "show", "flannel.1").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct{ Address string }
	json.Unmarshal(out, &links)
	ascii := c.must("graph", "--lab", lab)
	if len(links) != 1 || !strings.Contains(ascii, "flannel.1 VNI 1 port 8472 mac "+links[0].Address) {
		t.Errorf("the ASCII graph does not show node2's VTEP as ip does (%s):\n%s", out, ascii)
	}
	if m := c.must("graph", "--lab", lab, "-o", "mermaid"); !strings.HasPrefix(m, "flowchart TB") || !strings.Contains(m, "svc0 --> ") {
		t.Errorf("mermaid:\n%s", m)
	}
	if d := c.must("graph", "--lab", lab, "-o", "dot"); !strings.Contains(d, "digraph") || !strings.Contains(d, "subgraph cluster_n1") {
		t.Errorf("dot:\n%s", d)
	}
	if r := c.run(nil, "graph", "--lab", lab, "-o", "png"); r.code != 2 || strings.Count(strings.TrimSpace(r.out), "\n") != 0 {
		t.Errorf("-o png: exit %d, %q", r.code, r.out)
	}

	var j struct {
		Hops []struct {
			Point   string
			Changes []string
		}
	}
	if err := json.Unmarshal([]byte(c.must("graph", "journey", "pod-a", "pod-c", "--lab", lab, "-o", "json")), &j); err != nil {
		t.Fatal(err)
	}
	// (On a loaded machine a capture point may miss the probe: the
	// change then shows at the next point that saw it.)
	var all string
	var points []string
	for _, h := range j.Hops {
		all += h.Point + ": " + strings.Join(h.Changes, "; ") + "\n"
		points = append(points, h.Point)
	}
	if !strings.Contains(all, "+vxlan") || !strings.Contains(all, "-vxlan") || !pathOK(points, "pod-a/eth0", "pod-c/eth0") {
		t.Errorf("journey hops:\n%s", all)
	}

	file := filepath.Join(t.TempDir(), "j.svg")
	c.must("trace", "journey", "pod-a", "pod-c", "--lab", lab, "--graph", file)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, hops := svgIDs(t, b)
	if !pathOK(hops, "pod-a/eth0", "pod-c/eth0") {
		t.Errorf("the journey SVG's hops: %v", hops)
	}
}

// pathOK reports whether a journey's hops start at from, end at to and
// cross the underlay between them.
func pathOK(hops []string, from, to string) bool {
	if len(hops) < 3 || hops[0] != from || hops[len(hops)-1] != to {
		return false
	}
	for _, h := range hops {
		if strings.HasPrefix(h, "underlay/") {
			return true
		}
	}
	return false
}
