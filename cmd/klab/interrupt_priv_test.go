package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/vishvananda/netlink"
)

// Ctrl-C (SIGINT) at any operation of 'klab node add' or 'klab pod add',
// once or twice (a second Ctrl-C during the rollback), stops the command
// at a consistent point: it exits 130 saying what is up and how to remove
// it, and the lab is exactly as before the command (or, if the signal came
// after the last step, has the new object complete). 'klab list' finds
// nothing damaged, and node1 has no stale route to an unfinished node2.
func TestInterruptAtEveryOperation(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "rlint")
	k.destroyOnCleanup(lab)
	k.must("--lab", lab, "node", "add", "node1")
	k.must("--lab", lab, "pod", "add", "pod-a", "--node", "node1")
	nsBefore, _ := netns.List(lab)
	for _, tc := range []struct {
		step  []string
		obj   string
		reset []string
	}{
		{[]string{"node", "add", "node2"}, "node2", []string{"node", "del", "node2"}},
		{[]string{"pod", "add", "pod-b", "--node", "node1"}, "pod-b", []string{"pod", "del", "pod-b"}},
	} {
		for _, double := range []bool{false, true} {
			for n := 1; ; n++ {
				points := fmt.Sprint(n)
				if double {
					points = fmt.Sprintf("%d,%d", n, n+1)
				}
				r := k.run([]string{plan.CrashEnv + "=" + points, plan.CrashSignalEnv + "=INT"}, append([]string{"--lab", lab}, tc.step...)...)
				what := fmt.Sprintf("klab %s, SIGINT after operation(s) %s", strings.Join(tc.step, " "), points)
				l, err := cluster.Load(k.state, lab)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				added := slices.Contains(l.Names(), tc.obj)
				switch {
				case r.code == 0:
				case r.code != 130:
					t.Fatalf("%s: exit %d (signal %v), want 130\n%s", what, r.code, r.signal, r.out)
				case !strings.Contains(r.out, "interrupted:") || !strings.Contains(r.out, "klab destroy "+lab):
					t.Fatalf("%s: no message saying what is up and how to remove it:\n%s", what, r.out)
				case added != strings.Contains(r.out, "was done just before"):
					t.Fatalf("%s: %s added=%v, but klab said:\n%s", what, tc.obj, added, r.out)
				}
				for _, li := range k.list(lab) {
					if li.Damaged() {
						t.Fatalf("%s: lab damaged: %v", what, li.Problems)
					}
				}
				if !added {
					if nss, _ := netns.List(lab); !slices.Equal(nss, nsBefore) {
						t.Fatalf("%s: namespaces %v, want %v", what, nss, nsBefore)
					}
					assertNoRouteTo(t, lab, "node1", netip.MustParsePrefix("10.244.2.0/24"), what)
				}
				if r.code == 0 || added {
					if r.code == 0 && !added {
						t.Fatalf("%s: exit 0 but %s is not in the state", what, tc.obj)
					}
					k.must(append([]string{"--lab", lab}, tc.reset...)...)
				}
				if r.code == 0 {
					t.Logf("%s: completed; every earlier operation was an interruption point", what)
					break
				}
			}
		}
	}
}

func assertNoRouteTo(t *testing.T, lab, node string, dst netip.Prefix, what string) {
	t.Helper()
	h, err := netns.Handle(netns.Name(lab, node))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == dst.String() {
			t.Fatalf("%s: %s still has a route to %s: %v", what, node, dst, r)
		}
	}
}
