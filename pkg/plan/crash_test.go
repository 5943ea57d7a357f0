package plan

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// With KLAB_CRASH_AFTER=N the process dies by SIGKILL right after the
// applier's operation N and not before (a child runs TestCrashHelper).
func TestCrashAfterKillsAtThatOperation(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "KLAB_CRASH_HELPER="+dir, CrashEnv+"=3")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed by SIGKILL: %v\n%s", err, out)
	}
	for i, want := range []bool{true, true, true, false, false} {
		_, err := os.Stat(filepath.Join(dir, string(rune('1'+i))))
		if (err == nil) != want {
			t.Errorf("file %d written: %v, want %v\n%s", i+1, err == nil, want, out)
		}
	}
	if strings.Contains(string(out), "applied") {
		t.Fatalf("helper finished its plan:\n%s", out)
	}
}

func TestCrashHelper(t *testing.T) {
	dir := os.Getenv("KLAB_CRASH_HELPER")
	if dir == "" {
		t.Skip("helper process of TestCrashAfterKillsAtThatOperation")
	}
	var p Plan
	for i := 1; i <= 5; i++ {
		p.Add(Op{Verb: WriteFile, File: &File{Path: filepath.Join(dir, string(rune('0'+i))), Data: []byte("x")}})
	}
	var a Applier
	if err := a.Apply(p); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("applied\n")
}
