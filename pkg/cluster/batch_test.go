package cluster

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

func openTestLab(t *testing.T) *Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "t-batch")
	state := t.TempDir()
	c, err := Open(state, lab, &Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return c
}

// Build on top of an existing lab: new nodes peer with old ones, pods land
// on old and new nodes, traffic flows, and the state is saved.
func TestBuildExtendsLab(t *testing.T) {
	c := openTestLab(t)
	if _, err := c.AddNode(NodeSpec{Name: "node1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPod(PodSpec{Name: "pod-a", Node: "node1"}); err != nil {
		t.Fatal(err)
	}
	nodes, pods, err := c.Build(Spec{
		Nodes: []NodeSpec{{Name: "node2"}, {Name: "node3", PodCIDR: netip.MustParsePrefix("10.244.7.0/24")}},
		Pods:  []PodSpec{{Name: "pod-b", Node: "node1"}, {Name: "pod-c", Node: "node2"}, {Name: "pod-d", Node: "node3", IP: netip.MustParseAddr("10.244.7.9")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || len(pods) != 3 || nodes[0].IP.String() != "192.168.1.102" || nodes[1].PodCIDR.String() != "10.244.7.0/24" {
		t.Fatalf("nodes %+v pods %+v", nodes, pods)
	}
	if pods[0].IP.String() != "10.244.1.3" || pods[1].IP.String() != "10.244.2.2" || pods[2].IP.String() != "10.244.7.9" {
		t.Errorf("pod addresses %s %s %s", pods[0].IP, pods[1].IP, pods[2].IP)
	}
	saved, err := Load(c.StateDir, c.Lab.Name)
	if err != nil || len(saved.Nodes) != 3 || len(saved.Pods) != 4 {
		t.Fatalf("saved state: %+v %v", saved, err)
	}
	ping(t, c, "pod-a", "pod-d") // old pod to a new node's pod
	ping(t, c, "pod-c", "pod-a") // new node to an old node
	ping(t, c, "pod-a", "pod-b") // same node
}

// Bad input anywhere in the batch changes nothing.
func TestBuildBadInputChangesNothing(t *testing.T) {
	c := openTestLab(t)
	if _, err := c.AddNode(NodeSpec{Name: "node1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, err string
		s         Spec
	}{
		{"duplicate node in batch", "already taken by a node", Spec{Nodes: []NodeSpec{{Name: "node2"}, {Name: "node2"}}}},
		{"pod named like a new node", "already taken by a node", Spec{Nodes: []NodeSpec{{Name: "node2"}}, Pods: []PodSpec{{Name: "node2", Node: "node1"}}}},
		{"duplicate pod in batch", "already taken by a pod", Spec{Pods: []PodSpec{{Name: "p", Node: "node1"}, {Name: "p", Node: "node1"}}}},
		{"unknown node", "does not exist", Spec{Nodes: []NodeSpec{{Name: "node2"}}, Pods: []PodSpec{{Name: "p", Node: "node9"}}}},
		{"same IP twice", "already used", Spec{Pods: []PodSpec{{Name: "p", Node: "node1", IP: netip.MustParseAddr("10.244.1.5")}, {Name: "q", Node: "node1", IP: netip.MustParseAddr("10.244.1.5")}}}},
		{"IP outside subnet", "outside the node's pod subnet", Spec{Pods: []PodSpec{{Name: "p", Node: "node1"}, {Name: "q", Node: "node1", IP: netip.MustParseAddr("10.244.9.5")}}}},
		{"overlapping subnets in batch", "overlaps", Spec{Nodes: []NodeSpec{{Name: "node2", PodCIDR: netip.MustParsePrefix("10.244.5.0/24")}, {Name: "node3", PodCIDR: netip.MustParsePrefix("10.244.5.0/25")}}}},
	} {
		_, _, err := c.Build(tc.s)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: got %v, want error containing %q", tc.name, err, tc.err)
		}
		if len(c.Lab.Nodes) != 1 || len(c.Lab.Pods) != 0 {
			t.Fatalf("%s: state changed: %d nodes %d pods", tc.name, len(c.Lab.Nodes), len(c.Lab.Pods))
		}
		if nss, _ := netns.List(c.Lab.Name); len(nss) != 3 {
			t.Fatalf("%s: namespaces changed: %v", tc.name, nss)
		}
		if used, _ := c.ipamStore(c.Lab.Node("node1")).Used(); len(used) != 0 {
			t.Fatalf("%s: addresses left allocated: %v", tc.name, used)
		}
	}
}

// A kernel failure half-way through removes everything the batch created.
func TestBuildRollback(t *testing.T) {
	c := openTestLab(t)
	if _, err := c.AddNode(NodeSpec{Name: "node1"}); err != nil {
		t.Fatal(err)
	}
	// A bridge holding the host-veth name of pod-y makes its build fail
	// after node2, the peering and pod-x are done.
	h := handle(t, c, "node1")
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: vethName(c.Lab.Name, "pod-y")}}); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Build(Spec{Nodes: []NodeSpec{{Name: "node2"}}, Pods: []PodSpec{{Name: "pod-x", Node: "node1"}, {Name: "pod-y", Node: "node1"}}})
	if err == nil {
		t.Fatal("Build succeeded over a conflicting link")
	}
	if len(c.Lab.Nodes) != 1 || len(c.Lab.Pods) != 0 {
		t.Errorf("state after rollback: %d nodes %d pods", len(c.Lab.Nodes), len(c.Lab.Pods))
	}
	for _, obj := range []string{"node2", "pod-x", "pod-y"} {
		if netns.Exists(c.NS(obj)) {
			t.Errorf("rollback left namespace %s", obj)
		}
	}
	if _, err := h.LinkByName(vethName(c.Lab.Name, "pod-x")); err == nil {
		t.Error("rollback left pod-x's host veth on node1")
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "10.244.2.0/24" {
			t.Error("node1 still routes to node2's subnet")
		}
	}
	if used, _ := c.ipamStore(c.Lab.Node("node1")).Used(); len(used) != 0 {
		t.Errorf("addresses left allocated: %v", used)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "nodes", "node2")); err == nil {
		t.Error("node2's files left behind")
	}
}
