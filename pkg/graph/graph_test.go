package graph

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/inspect"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/topo"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// recorded loads a lab recorded from a running lab: its state and the
// snapshot of each namespace, as topo.Snapshots read them.
func recorded(t *testing.T, name string) (*cluster.Lab, map[string]*inspect.Snapshot) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Lab       *cluster.Lab                 `json:"lab"`
		Snapshots map[string]*inspect.Snapshot `json:"snapshots"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec.Lab, rec.Snapshots
}

// damage removes pod-b's namespace and node2's flannel.1, as a crash or
// a student's 'ip link del' leaves them.
func damage(l *cluster.Lab, snaps map[string]*inspect.Snapshot) {
	delete(snaps, netns.Name(l.Name, "pod-b"))
	n2 := snaps[netns.Name(l.Name, "node2")]
	n2.Links = slices.DeleteFunc(n2.Links, func(k inspect.Link) bool { return k.Name == "flannel.1" })
	n2.FDB = nil
}

func cases(t *testing.T) map[string]*topo.Topology {
	out := map[string]*topo.Topology{}
	for _, name := range []string{"flannel-crossnode", "host-gw"} {
		l, s := recorded(t, name)
		out[name] = topo.Build(l, s)
	}
	l, s := recorded(t, "flannel-crossnode")
	damage(l, s)
	out["damaged"] = topo.Build(l, s)
	return out
}

func golden(t *testing.T, file string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/graph -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./pkg/graph -update rewrites it):\n%s", file, got)
	}
}

func TestGoldenText(t *testing.T) {
	for name, tp := range cases(t) {
		for ext, f := range map[string]func(io.Writer, *topo.Topology) error{"mmd": Mermaid, "dot": DOT, "txt": ASCII} {
			var b bytes.Buffer
			if err := f(&b, tp); err != nil {
				t.Fatal(err)
			}
			golden(t, name+"."+ext, b.Bytes())
		}
	}
}

func TestTopologyFromKernel(t *testing.T) {
	c := cases(t)
	fl := c["flannel-crossnode"]
	if len(fl.Nodes) != 2 || len(fl.Tunnels) != 2 || fl.Damaged() {
		t.Fatalf("flannel: %d nodes, %d tunnels, damaged %v", len(fl.Nodes), len(fl.Tunnels), fl.Damaged())
	}
	for _, n := range fl.Nodes {
		if n.VTEP == nil || n.VTEP.VNI != 1 || n.VTEP.Port != 8472 || n.Bridge != "cni0" {
			t.Errorf("node %s: vtep %+v bridge %q", n.Name, n.VTEP, n.Bridge)
		}
	}
	if tn := fl.Tunnels[0]; tn.Kind != topo.TunnelVXLAN || tn.From != "node1" || tn.To != "node2" || tn.Subnet != "10.244.2.0/24" {
		t.Errorf("tunnel %+v", tn)
	}
	hg := c["host-gw"]
	for _, tn := range hg.Tunnels {
		if tn.Kind != topo.TunnelRoute || tn.Subnet == "" {
			t.Errorf("host-gw tunnel %+v", tn)
		}
	}
	for _, n := range hg.Nodes {
		if n.VTEP != nil {
			t.Errorf("host-gw node %s has a VTEP", n.Name)
		}
	}
	d := c["damaged"]
	if !d.Damaged() || len(d.Nodes[1].Damage) == 0 || len(d.Nodes[1].Pods[0].Damage) == 0 {
		t.Fatalf("damage not flagged: %+v", d.Nodes[1])
	}
	if !strings.Contains(d.Nodes[1].Pods[0].Damage[0], "klab pod del pod-b") {
		t.Errorf("pod damage %q does not say the fix", d.Nodes[1].Pods[0].Damage[0])
	}
}

// svgElem is any SVG element with the attributes the tests look at.
type svgElem struct {
	XMLName xml.Name
	ID      string    `xml:"id,attr"`
	Class   string    `xml:"class,attr"`
	Point   string    `xml:"data-point,attr"`
	Reverse string    `xml:"data-reverse,attr"`
	Kids    []svgElem `xml:",any"`
}

func walk(e svgElem, f func(svgElem)) {
	f(e)
	for _, k := range e.Kids {
		walk(k, f)
	}
}

// TestSVGHasEveryObject parses the SVG and finds every node, pod, tunnel
// and service, and every interface by its capture point label.
func TestSVGHasEveryObject(t *testing.T) {
	for name, tp := range cases(t) {
		var b bytes.Buffer
		if err := SVG(&b, tp); err != nil {
			t.Fatal(err)
		}
		var root svgElem
		if err := xml.Unmarshal(b.Bytes(), &root); err != nil {
			t.Fatalf("%s: the SVG does not parse: %v", name, err)
		}
		ids, points, classes := map[string]string{}, map[string]bool{}, map[string]string{}
		walk(root, func(e svgElem) {
			if e.ID != "" {
				ids[e.ID] = e.XMLName.Local
				classes[e.ID] = e.Class
			}
			if e.Point != "" {
				points[e.Point] = true
			}
		})
		want := []string{"underlay"}
		for _, n := range tp.Nodes {
			want = append(want, "node-"+n.Name)
			for _, p := range n.Pods {
				want = append(want, "pod-"+p.Name)
				if !points[p.Name+"/eth0"] || !points[n.Name+"/"+p.HostVeth] {
					t.Errorf("%s: pod %s's interfaces are not drawn", name, p.Name)
				}
			}
			if !points[n.Name+"/eth0"] || !points["underlay/"+n.Name] {
				t.Errorf("%s: node %s's eth0 or underlay port is not drawn", name, n.Name)
			}
			if n.VTEP != nil && !points[n.Name+"/"+n.VTEP.Dev] {
				t.Errorf("%s: node %s's VTEP is not drawn", name, n.Name)
			}
		}
		for _, tn := range tp.Tunnels {
			want = append(want, "tunnel-"+tn.From+"-"+tn.To)
		}
		for _, s := range tp.Services {
			want = append(want, "svc-"+s.Name)
		}
		for _, w := range want {
			if _, ok := ids[w]; !ok {
				t.Errorf("%s: the SVG has no element %q", name, w)
			}
		}
		if name == "damaged" {
			for _, id := range []string{"node-node2", "pod-pod-b"} {
				if !strings.Contains(classes[id], "damaged") {
					t.Errorf("damaged: %s is not drawn damaged (class %q)", id, classes[id])
				}
			}
		}
		if name == "flannel-crossnode" && len(tp.Services) == 0 {
			t.Error("the recorded flannel lab has a service")
		}
	}
}

// A big lab's mesh draws each pair of tunnels as one arc: every tunnel is
// still in the SVG, by id or as its opposite's data-reverse.
func TestSVGBigLabHasEveryTunnel(t *testing.T) {
	tp := big()
	var b bytes.Buffer
	if err := SVG(&b, tp); err != nil {
		t.Fatal(err)
	}
	var root svgElem
	if err := xml.Unmarshal(b.Bytes(), &root); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	walk(root, func(e svgElem) {
		have[e.ID] = true
		have[e.Reverse] = true
	})
	for _, tn := range tp.Tunnels {
		if !have["tunnel-"+tn.From+"-"+tn.To] {
			t.Fatalf("tunnel %s -> %s is not in the SVG", tn.From, tn.To)
		}
	}
	for _, n := range tp.Nodes {
		for _, p := range n.Pods {
			if !have["pod-"+p.Name] {
				t.Fatalf("pod %s is not in the SVG", p.Name)
			}
		}
	}
}

// BenchmarkSVG100x10 draws a 100-node x 10-pod topology (the layout and
// writing alone; topo.Read's kernel read is benchmarked in cmd/klab).
func BenchmarkSVG100x10(b *testing.B) {
	t := big()
	for b.Loop() {
		SVG(io.Discard, t)
	}
}

// big is a 100-node x 10-pod flannel topology with the full VXLAN mesh.
func big() *topo.Topology {
	t := &topo.Topology{Lab: "big", Backend: "vxlan", Underlay: topo.Underlay{Bridge: "underlay0", Exists: true}}
	for i := range 100 {
		n := topo.Node{Name: "node" + itoa(i), IP: "192.168.1." + itoa(i), VTEP: &topo.VTEP{Dev: "flannel.1", VNI: 1, Port: 8472}, Bridge: "cni0"}
		for j := range 10 {
			n.Pods = append(n.Pods, topo.Pod{Name: "p" + itoa(i) + "-" + itoa(j), HostVeth: "veth" + itoa(i*10+j)})
		}
		t.Nodes = append(t.Nodes, n)
		for k := range 100 {
			if k != i {
				t.Tunnels = append(t.Tunnels, topo.Tunnel{From: n.Name, To: "node" + itoa(k), Kind: topo.TunnelVXLAN})
			}
		}
	}
	return t
}

func itoa(i int) string { return strconv.Itoa(i) }
