package cluster

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
)

// Repair brings every kind of damage back to the state: a pod namespace
// deleted by hand, a node's cni0 deleted, the underlay's port of a node
// deleted, a half-added node peered into node1, an unknown namespace, a
// service chain deleted behind klab's back and a stale one left over, a
// dead server. Afterwards 'klab list' finds nothing, traffic flows (a pod
// rebuilt, across nodes, through the service), and node1 has no entry for
// the removed node.
func TestRepair(t *testing.T) {
	c := rlLab(t, "rlrep", []string{"node1", "node2"}, [][2]string{{"pod-a", "node1"}, {"pod-c", "node2"}})
	if _, err := c.AddService(ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"pod-c"}}); err != nil {
		t.Fatal(err)
	}
	lab := c.Lab.Name
	// Damage.
	orphan := &Node{Name: "node3", IP: mustAddr("192.168.1.103"), PodCIDR: mustPrefix("10.244.3.0/24"), VtepMAC: MAC(lab, "node3", "vtep").String()}
	if err := c.buildNode(orphan); err != nil {
		t.Fatal(err)
	}
	if err := c.peer(c.Lab.Node("node1"), orphan); err != nil {
		t.Fatal(err)
	}
	if err := netns.Delete(c.NS("pod-a")); err != nil {
		t.Fatal(err)
	}
	h := handle(t, c, "node2")
	br, _ := h.LinkByName("cni0")
	if err := h.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	uh := handle(t, c, UnderlayName)
	port, _ := uh.LinkByName("node2")
	if err := uh.LinkDel(port); err != nil { // node2's eth0 goes with it
		t.Fatal(err)
	}
	if _, err := netns.Ensure(c.NS("ghost")); err != nil {
		t.Fatal(err)
	}
	svcChain := ""
	for _, ch := range mustOwned(t, c, "node1") {
		if strings.HasPrefix(ch.Name, "KUBE-SVC-") {
			svcChain = ch.Name
		}
	}
	iptables(t, c, "node1", "-t", "nat", "-F", svcChain)
	iptables(t, c, "node1", "-t", "nat", "-N", "KUBE-SEP-STALESTALESTALE")
	iptables(t, c, "node1", "-t", "nat", "-A", "KUBE-SEP-STALESTALESTALE", "-m", "comment", "--comment", "klab:"+lab+" stale", "-j", "RETURN")
	c.Lab.Servers = append(c.Lab.Servers, &Server{Target: "pod-c", Proto: "tcp", Port: 8080, PID: deadPID(t)})
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	before := labInfo(t, c.StateDir, lab)
	if len(before.Problems) < 6 || before.Repair != "klab repair "+lab {
		t.Fatalf("damage not seen: %+v", before)
	}
	wantProblem(t, before, "node node1's iptables rules differ", svcChain, "KUBE-SEP-STALESTALESTALE", "klab repair "+lab)

	rep, err := c.Repair()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("repair: %+v", rep)
	if !slices.Contains(rep.Rebuilt, "pod pod-a") || !slices.Contains(rep.Removed, c.NS("node3")) || !slices.Contains(rep.Removed, c.NS("ghost")) || len(rep.Forgot) != 1 {
		t.Errorf("report %+v", rep)
	}
	if after := labInfo(t, c.StateDir, lab); after.Damaged() {
		t.Fatalf("still damaged after repair:\n  %s", strings.Join(after.Problems, "\n  "))
	}
	assertNoRoute(t, c, "node1", "10.244.3.0/24")
	ping(t, c, "pod-a", "pod-c")
	ping(t, c, "pod-c", "pod-a")
	tcp(t, c, "pod-a", "pod-c")
	// Repair of a healthy lab changes nothing visible.
	if _, err := c.Repair(); err != nil {
		t.Fatal(err)
	}
	if after := labInfo(t, c.StateDir, lab); after.Damaged() {
		t.Fatalf("a second repair damaged the lab: %v", after.Problems)
	}
}

func mustOwned(t *testing.T, c *Cluster, node string) []nat.Chain {
	t.Helper()
	chains, err := nat.ReadOwned(c.NS(node), c.Lab.Name)
	if err != nil {
		t.Fatal(err)
	}
	return chains
}

func iptables(t *testing.T, c *Cluster, node string, args ...string) {
	t.Helper()
	err := netns.Do(c.NS(node), func() error {
		out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("iptables %v: %v: %s", args, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func assertNoRoute(t *testing.T, c *Cluster, node, dst string) {
	t.Helper()
	routes, err := handle(t, c, node).RouteList(nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == dst {
			t.Fatalf("%s still has a route to %s", node, dst)
		}
	}
}
