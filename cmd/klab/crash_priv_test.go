package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/explain"
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
// operations is removed completely by 'klab destroy': no namespace, mount,
// process, state file or lock of the lab is left. For every command of the
// build, and every operation N of that command (KLAB_CRASH_AFTER=N), the
// commands before it run normally, the command is killed at N, 'klab list'
// must still work, 'klab destroy' must succeed and leave nothing. N grows
// until the command completes, so every operation is covered.
func TestCrashAtEveryOperationThenDestroy(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "rlcrash")
	k.destroyOnCleanup(lab)
	start := time.Now()
	total, kills := 0, 0
	for i, step := range crossnodeBuild {
		for n := 1; ; n++ {
			for _, prev := range crossnodeBuild[:i] {
				k.must(append([]string{"--lab", lab}, prev...)...)
			}
			r := k.run([]string{fmt.Sprintf("%s=%d", explain.CrashEnv, n)}, append([]string{"--lab", lab}, step...)...)
			completed := r.code == 0
			if !completed && r.signal != syscall.SIGKILL {
				t.Fatalf("klab %s with crash point %d: exit %d, signal %v, want SIGKILL or success\n%s", strings.Join(step, " "), n, r.code, r.signal, r.out)
			}
			if !completed {
				kills++
				// The damaged lab must be visible (and listing must work).
				found := false
				for _, li := range k.list(lab) {
					found = found || li.Name == lab
				}
				if !found && len(k.leftovers(lab)) > 0 {
					t.Errorf("%s killed at operation %d: 'klab list' does not show the lab, but it left: %v", strings.Join(step, " "), n, k.leftovers(lab))
				}
			}
			k.must("destroy", lab)
			k.assertClean(lab, fmt.Sprintf("klab %s killed at operation %d, then destroyed", strings.Join(step, " "), n))
			if completed {
				t.Logf("klab %s: %d operations, each a crash point", strings.Join(step, " "), n-1)
				total += n - 1
				break
			}
		}
	}
	t.Logf("%d crash points (%d SIGKILLs), all destroyed cleanly, in %s", total, kills, time.Since(start).Round(time.Millisecond))
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
		r := k.run([]string{fmt.Sprintf("%s=%d", explain.CrashEnv, n)}, "destroy", lab)
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
