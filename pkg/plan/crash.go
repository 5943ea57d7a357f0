package plan

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// The crash-test hook. It proves klab's crash safety:
//
//	KLAB_CRASH_AFTER=N     a klab process sends itself SIGKILL right after its
//	                       Nth kernel (or state file) operation, as if the
//	                       machine killed it there; N1,N2,... for several points
//	KLAB_CRASH_SIGNAL=INT  send SIGINT (a Ctrl-C) instead, or TERM, HUP; the
//	                       process goes on and handles it as it would a real one
//
// The crash tests build a lab once per N and check that 'klab destroy'
// still removes everything; the interrupt tests check the rollback. Every
// klab process counts its own operations. Unset (the normal case) the hook
// costs one atomic add per operation.
const (
	CrashEnv       = "KLAB_CRASH_AFTER"
	CrashSignalEnv = "KLAB_CRASH_SIGNAL"
)

var (
	crashOnce   sync.Once
	crashAt     map[int64]bool
	crashSignal = syscall.SIGKILL
	crashOps    atomic.Int64
)

// CrashPoint marks the end of one kernel (or state file) operation. The
// Applier calls it after every operation it executes, and nothing else
// does.
func CrashPoint() {
	crashOnce.Do(loadCrashEnv)
	n := crashOps.Add(1)
	if crashAt == nil || !crashAt[n] {
		return
	}
	syscall.Kill(os.Getpid(), crashSignal)
	if crashSignal == syscall.SIGKILL {
		select {} // never runs on: the kernel kills the process first
	}
}

func loadCrashEnv() {
	for _, f := range strings.Split(os.Getenv(CrashEnv), ",") {
		if n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64); err == nil && n > 0 {
			if crashAt == nil {
				crashAt = map[int64]bool{}
			}
			crashAt[n] = true
		}
	}
	switch os.Getenv(CrashSignalEnv) {
	case "INT":
		crashSignal = syscall.SIGINT
	case "TERM":
		crashSignal = syscall.SIGTERM
	case "HUP":
		crashSignal = syscall.SIGHUP
	}
}

// crashEnabled reports whether crash points are set (KLAB_CRASH_AFTER).
func crashEnabled() bool {
	crashOnce.Do(loadCrashEnv)
	return crashAt != nil
}

// Ops is the number of operations CrashPoint has counted in this process.
func Ops() int64 { return crashOps.Load() }
