package topo

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// ipJSON runs ip (iproute2, an independent client) with -j in a namespace.
func ipJSON(t *testing.T, ns string, args ...string) []map[string]any {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns, "-j", "-d"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ip -n %s %v: %v", ns, args, err)
	}
	var v []map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return v
}

// The topology of a real two-node flannel lab matches what iproute2 and
// bridge read in each namespace; damage made behind klab's back with ip
// is drawn as damaged, as 'klab list' reports it.
func TestReadMatchesIproute2(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	state := t.TempDir()
	lab := testutil.LabName(t, "gr")
	c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Destroy(state, lab, nil, nil) })
	_, _, err = c.Build(cluster.Spec{
		Nodes: []cluster.NodeSpec{{Name: "node1"}, {Name: "node2"}},
		Pods:  []cluster.PodSpec{{Name: "pod-a", Node: "node1"}, {Name: "pod-b", Node: "node2"}},
	})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	l, err := cluster.Load(state, lab)
	if err != nil {
		t.Fatal(err)
	}
	tp := Read(l)
	if tp.Damaged() || len(tp.Nodes) != 2 || len(tp.Tunnels) != 2 {
		t.Fatalf("topology: %d nodes, %d tunnels, damaged %v", len(tp.Nodes), len(tp.Tunnels), tp.Damaged())
	}
	for _, n := range tp.Nodes {
		ns := netns.Name(lab, n.Name)
		vx := ipJSON(t, ns, "link", "show", "flannel.1")[0]
		info := vx["linkinfo"].(map[string]any)["info_data"].(map[string]any)
		if n.VTEP == nil || float64(n.VTEP.VNI) != info["id"].(float64) || float64(n.VTEP.Port) != info["port"].(float64) || n.VTEP.MAC != vx["address"].(string) {
			t.Errorf("node %s: VTEP %+v, ip says id %v port %v mac %v", n.Name, n.VTEP, info["id"], info["port"], vx["address"])
		}
		eth := ipJSON(t, ns, "addr", "show", "eth0")[0]["addr_info"].([]any)[0].(map[string]any)["local"]
		if n.IP != eth {
			t.Errorf("node %s: eth0 %s, ip says %v", n.Name, n.IP, eth)
		}
		for _, p := range n.Pods {
			got := ipJSON(t, netns.Name(lab, p.Name), "addr", "show", "eth0")[0]["addr_info"].([]any)[0].(map[string]any)["local"]
			if p.IP != got {
				t.Errorf("pod %s: %s, ip says %v", p.Name, p.IP, got)
			}
			if len(ipJSON(t, ns, "link", "show", p.HostVeth)) != 1 {
				t.Errorf("pod %s: no %s in %s", p.Name, p.HostVeth, n.Name)
			}
		}
		// bridge fdb: the tunnel's far end.
		out, err := exec.Command("bridge", "-n", ns, "fdb", "show", "dev", "flannel.1").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range tp.Tunnels {
			if tn.From == n.Name && !strings.Contains(string(out), "dst "+tn.Dst) {
				t.Errorf("tunnel %s -> %s to %s, bridge fdb says:\n%s", tn.From, tn.To, tn.Dst, out)
			}
		}
	}
	// Damage behind klab's back, with iproute2.
	for _, cmd := range [][]string{
		{"ip", "-n", netns.Name(lab, "node2"), "link", "del", "flannel.1"},
		{"ip", "netns", "del", netns.Name(lab, "pod-a")},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	tp = Read(l)
	var drawn []string
	drawn = append(drawn, tp.Problems...)
	for _, n := range tp.Nodes {
		drawn = append(drawn, n.Damage...)
		for _, p := range n.Pods {
			drawn = append(drawn, p.Damage...)
		}
	}
	infos, err := cluster.List(state)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(infos, func(x cluster.LabInfo) bool { return x.Name == lab })
	if i < 0 {
		t.Fatalf("klab list does not show lab %s", lab)
	}
	for _, want := range []string{"node node2 has no flannel.1", "pod pod-a has no namespace"} {
		inList := slices.ContainsFunc(infos[i].Problems, func(p string) bool { return strings.Contains(p, want) })
		inPicture := slices.ContainsFunc(drawn, func(p string) bool { return strings.Contains(p, want) })
		if !inList || !inPicture {
			t.Errorf("%q: in klab list %v, in the picture %v\nlist: %q\npicture: %q", want, inList, inPicture, infos[i].Problems, drawn)
		}
	}
	if len(tp.Tunnels) != 1 {
		t.Errorf("after node2's flannel.1 is gone, %d tunnels are drawn, want node1's one: %+v", len(tp.Tunnels), tp.Tunnels)
	}
}
