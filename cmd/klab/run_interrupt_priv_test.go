package main

import (
	"bufio"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// Ctrl-C during 'klab run' (twice: the second one while the first is being
// handled) stops the lab at a consistent point: klab says where it stopped
// and how to remove the lab, exits 130, 'klab list' finds nothing damaged,
// and 'klab destroy' leaves nothing. The signals are sent when the runner
// shows a given command, so they land while a build command runs or just
// before it; the checks hold wherever they land.
func TestCtrlCDuringRun(t *testing.T) {
	t.Parallel()
	for _, at := range []string{"klab node add node2", "klab pod add pod-a", "klab ping pod-a pod-b"} {
		t.Run(strings.ReplaceAll(at, " ", "_"), func(t *testing.T) {
			k := newCLI(t)
			lab := testutil.LabName(t, "rlrun")
			k.destroyOnCleanup(lab)
			cmd := k.cmd([]string{"NO_COLOR=1"}, "run", "flannel-crossnode", "--yes", "--lab", lab)
			pr, pw := io.Pipe()
			cmd.Stdout, cmd.Stderr = pw, pw
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			waited := make(chan error, 1)
			go func() { err := cmd.Wait(); pw.Close(); waited <- err }()
			sc := bufio.NewScanner(pr)
			sent := false
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
				if !sent && strings.Contains(sc.Text(), "$ "+at) {
					cmd.Process.Signal(os.Interrupt)
					cmd.Process.Signal(os.Interrupt)
					sent = true
				}
			}
			r := exitResult(t, out.String(), <-waited)
			if !sent {
				t.Fatalf("the lab never showed %q:\n%s", at, out.String())
			}
			if r.code != 130 || !strings.Contains(r.out, "interrupted") || !strings.Contains(r.out, "klab destroy "+lab) {
				t.Fatalf("klab run interrupted at %q: exit %d (signal %v), want 130 and how to remove the lab:\n%s", at, r.code, r.signal, r.out)
			}
			for _, li := range k.list(lab) {
				if li.Damaged() {
					t.Fatalf("lab damaged after Ctrl-C at %q: %v\n%s", at, li.Problems, r.out)
				}
			}
			t.Logf("Ctrl-C at %q:\n%s", at, tail(r.out, 6))
			k.must("destroy", lab)
			k.assertClean(lab, "destroy after Ctrl-C in klab run")
		})
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
