package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/plan"
)

// calicoBuild is a two-node calico lab with a pod on each node.
var calicoBuild = [][]string{
	{"node", "add", "node1", "--backend", "calico", "--bgp-graceful-restart", "2s"},
	{"node", "add", "node2"},
	{"pod", "add", "pod-a", "--node", "node1"},
	{"pod", "add", "pod-b", "--node", "node2"},
}

// birdsOf lists the BIRD processes of a lab of this CLI's state directory
// (their command line names their configuration under it).
func (c *cli) birdsOf(lab string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	dir := filepath.Join(c.state, lab) + "/"
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) && strings.Contains(string(b), "bird") {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// A calico build SIGKILLed after any one of its operations (BIRD's start
// and reconfiguration included) is listed, repaired to a healthy lab
// whose BIRDs all run, and destroyed with no namespace, file or BIRD left.
// After the full build the pods talk across nodes by BGP.
func TestCalicoCrashAtEveryOperation(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(cluster.BirdBinary); err != nil {
		t.Skip("bird2 is not installed: apt-get install bird2")
	}
	k := newCLI(t)
	lab := testutil.LabName(t, "cacrash")
	k.destroyOnCleanup(lab)
	total := 0
	for i, step := range calicoBuild {
		for n := 1; ; n++ {
			for _, prev := range calicoBuild[:i] {
				k.must(append([]string{"--lab", lab}, prev...)...)
			}
			r := k.run([]string{fmt.Sprintf("%s=%d", plan.CrashEnv, n)}, append([]string{"--lab", lab}, step...)...)
			completed := r.code == 0
			what := fmt.Sprintf("klab %s killed at operation %d", strings.Join(step, " "), n)
			if !completed && r.signal != syscall.SIGKILL {
				t.Fatalf("%s: exit %d, signal %v\n%s", what, r.code, r.signal, r.out)
			}
			if !completed {
				if _, err := cluster.Load(k.state, lab); err == nil {
					if rr := k.run(nil, "repair", lab); rr.code != 0 {
						t.Fatalf("%s: klab repair: exit %d\n%s", what, rr.code, rr.out)
					}
					for _, li := range k.list(lab) {
						if li.Damaged() {
							t.Fatalf("%s: still damaged after repair: %v", what, li.Problems)
						}
					}
				}
			}
			k.must("destroy", lab)
			k.assertClean(lab, what+", then destroyed")
			if b := k.birdsOf(lab); len(b) > 0 {
				t.Fatalf("%s, then destroyed: BIRD left running: %v", what, b)
			}
			if completed {
				total += n - 1
				break
			}
		}
	}
	t.Logf("%d crash points of a calico build: listed, repaired, destroyed cleanly", total)
	for _, step := range calicoBuild {
		k.must(append([]string{"--lab", lab}, step...)...)
	}
	out := ""
	for try := 0; try < 40; try++ {
		r := k.run(nil, "--lab", lab, "ping", "pod-a", "pod-b", "-c", "1")
		if out = r.out; r.code == 0 && strings.Contains(out, "ttl=62") {
			break
		}
	}
	if !strings.Contains(out, "ttl=62") {
		t.Errorf("pod-a -> pod-b after the build: %s", out)
	}
	k.must("destroy", lab)
	k.assertClean(lab, "final destroy")
}
