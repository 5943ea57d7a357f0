package explain

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
)

// CrashEnv names the test hook that proves klab's crash safety: with
// KLAB_CRASH_AFTER=N in its environment, a klab process sends itself
// SIGKILL right after its Nth kernel operation (counted by CrashPoint), as
// if the machine had killed it there. The crash tests build a lab once per
// N and check that 'klab destroy' still removes everything. Unset (the
// normal case) it costs one atomic add per operation.
const CrashEnv = "KLAB_CRASH_AFTER"

var (
	crashOnce  sync.Once
	crashAfter int64
	crashOps   atomic.Int64
)

// CrashPoint marks the end of one kernel (or state file) operation. Every
// Log method calls it, with or without a Log, so operations are counted
// even when nobody records the commands; code that changes something
// without logging it calls it directly.
func CrashPoint() {
	crashOnce.Do(func() {
		crashAfter, _ = strconv.ParseInt(os.Getenv(CrashEnv), 10, 64)
	})
	if n := crashOps.Add(1); crashAfter > 0 && n == crashAfter {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late, but never run on
	}
}

// Ops is the number of operations CrashPoint has counted in this process.
func Ops() int64 { return crashOps.Load() }
