package explain

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// Operations are counted whether or not a Log records them.
func TestCrashPointCountsWithoutLog(t *testing.T) {
	var nilLog *Log
	start := Ops()
	nilLog.Add("x")
	nilLog.IP("ns", "link add %s", "a")
	nilLog.NSExec("ns", "sysctl %s", "b")
	l := &Log{}
	l.Add("y")
	l.IP("ns", "link del a")
	l.NSExec("ns", "true")
	if got := Ops() - start; got != 6 {
		t.Fatalf("counted %d operations, want 6", got)
	}
	if l.Len() != 3 || nilLog.Len() != 0 {
		t.Fatalf("log has %d commands", l.Len())
	}
}

// With KLAB_CRASH_AFTER=N the process dies by SIGKILL at operation N and
// not before (a child runs TestCrashHelper).
func TestCrashAfterKillsAtThatOperation(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "KLAB_CRASH_HELPER=1", CrashEnv+"=3")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed by SIGKILL: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "op 2 done") || strings.Contains(string(out), "op 3 done") {
		t.Fatalf("helper died at the wrong operation:\n%s", out)
	}
}

func TestCrashHelper(t *testing.T) {
	if os.Getenv("KLAB_CRASH_HELPER") == "" {
		t.Skip("helper process of TestCrashAfterKillsAtThatOperation")
	}
	var l *Log
	for i := 1; i <= 5; i++ {
		l.Add("op %d", i)
		os.Stdout.WriteString("op " + string(rune('0'+i)) + " done\n")
	}
}
