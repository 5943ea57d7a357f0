package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/netns"
)

// 'klab bench' builds growing labs up to --max-nodes, reports each size and
// leaves nothing behind.
func TestBenchVerb(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "bn-verb")
	state := t.TempDir()
	saved := globals
	t.Cleanup(func() { globals = saved })
	out := captureStdout(t, func() error {
		root := newRoot()
		root.SetArgs([]string{"--state-dir", state, "--lab", lab, "bench", "--max-nodes", "2", "--pods", "1", "-o", "json"})
		return root.Execute()
	})
	var res struct {
		Steps []bench.Step
		Stop  bench.Stop
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if len(res.Steps) != 2 || res.Steps[1].Nodes != 2 || res.Steps[1].Pods != 2 || res.Steps[1].Up <= 0 || res.Stop.Reason != "max" {
		t.Errorf("result %+v", res)
	}
	for _, l := range []string{lab, lab + "-q"} {
		if nss, _ := netns.List(l); len(nss) != 0 {
			t.Errorf("namespaces left: %v", nss)
		}
	}
	if _, err := os.Stat(state + "/" + lab); err == nil {
		t.Errorf("state of %s left", lab)
	}
}

func TestBenchVerbBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	saved := globals
	t.Cleanup(func() { globals = saved })
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"bench", "--budget", "0s"}, "must be positive"},
		{[]string{"--lab", "a-lab-name-that-is-thirty-one-ch", "bench"}, "not valid for klab bench"},
		{[]string{"bench", "--pods", "300"}, "out of range"},
	} {
		root := newRoot()
		root.SetArgs(append([]string{"--state-dir", t.TempDir()}, tc.args...))
		var err error
		captureStdout(t, func() error { err = root.Execute(); return nil })
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.err)
		}
	}
}

// captureStdout runs f with os.Stdout redirected and returns what it wrote.
func captureStdout(t *testing.T, f func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		done <- b.String()
	}()
	ferr := f()
	w.Close()
	os.Stdout = old
	out := <-done
	if ferr != nil {
		t.Fatalf("%v\n%s", ferr, out)
	}
	return out
}
