package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/plan"
)

// crossnodeBuild is the flannel-crossnode network: two nodes, a pod on
// each, a server (a process) in one of them, and a NodePort Service in
// front of it (kube-proxy's rules in every node).
var crossnodeBuild = [][]string{
	{"node", "add", "node1"},
	{"node", "add", "node2"},
	{"pod", "add", "pod-a", "--node", "node1"},
	{"pod", "add", "pod-c", "--node", "node2"},
	{"serve", "pod-c", "--port", "8080"},
	{"service", "add", "web", "--port", "80", "--target-port", "8080", "--endpoints", "pod-c", "--node-port", "30080"},
}

// A build SIGKILLed right after any one of its kernel (or state file)
// operations is found, repaired and removed completely. For every command
// of the build, and every operation N of that command (KLAB_CRASH_AFTER=N),
// the commands before it run normally and the command is killed at N; then
// 'klab list' must show the lab; 'klab repair' must bring it back to a
// state that 'klab list' finds healthy (when the lab has a state at all);
// for every repairRecheck-th crash point the rest of the build runs and
// real traffic must flow; finally 'klab destroy' must leave no namespace,
// mount, process, state file or lock. N grows until the command completes,
// so every operation is covered.
func TestCrashAtEveryOperationThenDestroy(t *testing.T) {
	t.Parallel()
	const repairRecheck = 8
	k := newCLI(t)
	lab := testutil.LabName(t, "rlcrash")
	k.destroyOnCleanup(lab)
	start := time.Now()
	total, repaired, traffic := 0, 0, 0
	for i, step := range crossnodeBuild {
		for n := 1; ; n++ {
			for _, prev := range crossnodeBuild[:i] {
				k.must(append([]string{"--lab", lab}, prev...)...)
			}
			r := k.run([]string{fmt.Sprintf("%s=%d", plan.CrashEnv, n)}, append([]string{"--lab", lab}, step...)...)
			completed := r.code == 0
			what := fmt.Sprintf("klab %s killed at operation %d", strings.Join(step, " "), n)
			if !completed && r.signal != syscall.SIGKILL {
				t.Fatalf("%s: exit %d, signal %v, want SIGKILL or success\n%s", what, r.code, r.signal, r.out)
			}
			if !completed {
				// The damaged lab must be visible (and listing must work).
				found := false
				for _, li := range k.list(lab) {
					found = found || li.Name == lab
				}
				if !found && len(k.leftovers(lab)) > 0 {
					t.Errorf("%s: 'klab list' does not show the lab, but it left: %v", what, k.leftovers(lab))
				}
				if _, err := cluster.Load(k.state, lab); err == nil {
					if rr := k.run(nil, "repair", lab); rr.code != 0 {
						t.Fatalf("%s: klab repair: exit %d\n%s", what, rr.code, rr.out)
					}
					for _, li := range k.list(lab) {
						if li.Damaged() {
							t.Fatalf("%s: still damaged after repair: %v", what, li.Problems)
						}
					}
					repaired++
					if (total+n)%repairRecheck == 0 {
						for _, rest := range crossnodeBuild[i:] {
							if rr := k.run(nil, append([]string{"--lab", lab}, rest...)...); rr.code != 0 && !strings.Contains(rr.out, "already") {
								t.Fatalf("%s, repaired: klab %s: exit %d\n%s", what, strings.Join(rest, " "), rr.code, rr.out)
							}
						}
						if err := check(k, lab); err != nil {
							t.Fatalf("%s, repaired and completed: %v", what, err)
						}
						traffic++
					}
				}
			}
			k.must("destroy", lab)
			k.assertClean(lab, what+", then destroyed")
			if completed {
				t.Logf("klab %s: %d operations, each a crash point", strings.Join(step, " "), n-1)
				total += n - 1
				break
			}
		}
	}
	t.Logf("%d crash points: all listed and destroyed cleanly, %d repaired (the others had no state yet), %d of those completed and checked with traffic, in %s",
		total, repaired, traffic, time.Since(start).Round(time.Millisecond))
}

// A destroy that is itself killed part way is finished by the next one.
func TestCrashDuringDestroy(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "rlcrashd")
	k.destroyOnCleanup(lab)
	for n := 1; ; n++ {
		for _, step := range crossnodeBuild {
			k.must(append([]string{"--lab", lab}, step...)...)
		}
		r := k.run([]string{fmt.Sprintf("%s=%d", plan.CrashEnv, n)}, "destroy", lab)
		if r.code == 0 {
			k.assertClean(lab, "destroy")
			t.Logf("destroy: %d operations, each a crash point", n-1)
			return
		}
		if r.signal != syscall.SIGKILL {
			t.Fatalf("destroy with crash point %d: exit %d, signal %v\n%s", n, r.code, r.signal, r.out)
		}
		k.must("destroy", lab)
		k.assertClean(lab, fmt.Sprintf("destroy killed at operation %d, then destroy again", n))
	}
}
