package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// rlLab opens a new lab named rl..., in a private state directory, with
// nodes and pods (pod name -> node), destroyed at the end.
func rlLab(t *testing.T, prefix string, nodes []string, pods [][2]string) *Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, prefix)
	state := t.TempDir()
	c, err := Open(state, lab, &Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		Destroy(state, lab, nil, nil)
	})
	for _, n := range nodes {
		if _, err := c.AddNode(NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pods {
		if _, err := c.AddPod(PodSpec{Name: p[0], Node: p[1]}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func labInfo(t *testing.T, state, lab string) LabInfo {
	t.Helper()
	infos, err := List(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		if i.Name == lab {
			return i
		}
	}
	t.Fatalf("klab list does not show lab %s", lab)
	return LabInfo{}
}

func wantProblem(t *testing.T, info LabInfo, parts ...string) {
	t.Helper()
	for _, p := range info.Problems {
		ok := true
		for _, s := range parts {
			ok = ok && strings.Contains(p, s)
		}
		if ok {
			return
		}
	}
	t.Errorf("lab %s: no problem mentioning %q in:\n  %s", info.Name, parts, strings.Join(info.Problems, "\n  "))
}

// List compares the state with the kernel and names each kind of damage a
// crash or a hand-made change leaves, with the command that fixes it; then
// destroy removes everything anyway.
func TestListFlagsDamage(t *testing.T) {
	c := rlLab(t, "rldmg", []string{"node1", "node2"}, [][2]string{{"pod-a", "node1"}, {"pod-c", "node2"}})
	lab, state := c.Lab.Name, c.StateDir
	if i := labInfo(t, state, lab); i.Damaged() || i.Fix != "" || len(i.Namespaces) != 6 {
		t.Fatalf("healthy lab listed as %+v", i)
	}
	// A node killed half way through 'klab node add': namespace, uplink,
	// no state.
	if err := c.buildNode(&Node{Name: "node3", IP: mustAddr("192.168.1.103"), PodCIDR: mustPrefix("10.244.3.0/24")}); err != nil {
		t.Fatal(err)
	}
	// A pod namespace deleted by hand, a bridge deleted by hand, a
	// namespace nobody knows, a server that died.
	if err := netns.Delete(c.NS("pod-a")); err != nil {
		t.Fatal(err)
	}
	h := handle(t, c, "node2")
	br, err := h.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Ensure(c.NS("ghost")); err != nil {
		t.Fatal(err)
	}
	c.Lab.Servers = append(c.Lab.Servers, &Server{Target: "pod-c", Proto: "tcp", Port: 8080, PID: deadPID(t)})
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	i := labInfo(t, state, lab)
	wantProblem(t, i, "node3", "klab node add node3 --lab "+lab)
	wantProblem(t, i, "pod pod-a has no namespace", "klab pod del pod-a --lab "+lab)
	wantProblem(t, i, "node node2 has no cni0", "klab node del node2")
	wantProblem(t, i, netns.Name(lab, "ghost"), "ip netns del "+netns.Name(lab, "ghost"))
	wantProblem(t, i, "server on pod-c port 8080", "is not running", "--stop")
	if i.Fix != "klab destroy "+lab {
		t.Errorf("fix %q", i.Fix)
	}

	// A lab whose state is corrupt, and one whose destroy was cut short
	// after the state file went: both listed, both destroyed.
	corrupt, cut := lab+"-c", lab+"-d"
	t.Cleanup(func() { testutil.RemoveLab(corrupt); testutil.RemoveLab(cut) })
	os.MkdirAll(filepath.Join(state, corrupt), 0o700)
	os.WriteFile(StateFile(state, corrupt), []byte(`{"name": "x", "nodes": [`), 0o600)
	if _, err := netns.Ensure(netns.Name(corrupt, "node1")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(state, cut, "ipam", "node1"), 0o700)
	wantProblem(t, labInfo(t, state, corrupt), "corrupt", "klab destroy "+corrupt)
	wantProblem(t, labInfo(t, state, cut), "has no state file")

	c.Close()
	done, err := DestroyMatching(state, func(l string) bool { return strings.HasPrefix(l, lab) }, nil, nil)
	if err != nil || len(done) != 3 {
		t.Fatalf("destroyed %v: %v", done, err)
	}
	for _, l := range []string{lab, corrupt, cut} {
		if nss, _ := netns.List(l); len(nss) > 0 {
			t.Errorf("lab %s: namespaces left: %v", l, nss)
		}
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(state)
		t.Errorf("state directory left with %v", ents)
	}
}

// countdown is a context that reports "cancelled" after n checks, to
// interrupt a build at each of its interruption points in turn.
type countdown struct {
	context.Context
	n int
}

func (c *countdown) Err() error {
	if c.n <= 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

// An interrupted first 'node add' leaves nothing at all (not even the
// underlay or the lab directory); an interrupted later one leaves the lab
// exactly as it was, without peer entries for the unfinished node.
func TestInterruptedAddNodeRollsBack(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "rlintr")
	state := t.TempDir()
	for k := 0; ; k++ {
		c, err := Open(state, lab, &Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Ctx = &countdown{context.Background(), k}
		_, err = c.AddNode(NodeSpec{Name: "node1"})
		c.Close()
		if err == nil {
			break
		}
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("check %d: %v", k, err)
		}
		if nss, _ := netns.List(lab); len(nss) > 0 {
			t.Fatalf("interrupted first node add (check %d) left %v", k, nss)
		}
		if _, err := os.Stat(filepath.Join(state, lab)); err == nil {
			t.Fatalf("interrupted first node add (check %d) left the lab directory", k)
		}
	}
	t.Cleanup(func() { Destroy(state, lab, nil, nil) })
	before, _ := netns.List(lab)
	for k := 0; ; k++ {
		c, err := Open(state, lab, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Ctx = &countdown{context.Background(), k}
		_, err = c.AddNode(NodeSpec{Name: "node2"})
		if err == nil {
			c.Close()
			break
		}
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("check %d: %v", k, err)
		}
		if after, _ := netns.List(lab); len(after) != len(before) {
			t.Fatalf("interrupted node add (check %d): namespaces %v, want %v", k, after, before)
		}
		h := handle(t, c, "node1")
		routes, _ := h.RouteList(nil, 2)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "10.244.2.0/24" {
				t.Fatalf("interrupted node add (check %d) left node1 a route to node2's pods", k)
			}
		}
		if i := labInfo(t, state, lab); i.Damaged() {
			t.Fatalf("interrupted node add (check %d): %v", k, i.Problems)
		}
		c.Close()
	}
}

// Addresses held by pods the state does not know (a 'pod add' killed after
// allocating) are released by the next 'pod add' on that node.
func TestStaleAddressReleased(t *testing.T) {
	c := rlLab(t, "rlipam", []string{"node1"}, nil)
	store := c.ipamStore(c.Lab.Node("node1"))
	ghost, err := store.Allocate("ghost", PodIface, mustAddr("10.244.1.2"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.AddPod(PodSpec{Name: "pod-a", Node: "node1", IP: ghost})
	if err != nil {
		t.Fatalf("the address of a crashed pod add is not reusable: %v", err)
	}
	used, _ := store.Used()
	if len(used) != 1 || used[p.IP] != "pod-a" {
		t.Fatalf("allocations %v", used)
	}
}

func deadPID(t *testing.T) int {
	t.Helper()
	for pid := 4_000_000; pid > 1_000_000; pid-- {
		if !alive(pid) {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
