package testutil

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// Main runs a package's tests (call it from TestMain). As root it also
// snapshots the host's network namespace before and after the run and fails
// the package, with a readable diff, if anything changed: klab must never
// touch the host's own network. Every package with privileged tests calls
// it; packages run in parallel under 'go test ./...', but none may touch the
// host namespace, so each package's comparison stays valid. KLAB_NO_HOSTSNAP=1
// turns the check off (for debugging on a host whose network is changing).
func Main(m *testing.M) {
	var before *HostSnapshot
	if os.Geteuid() == 0 && os.Getenv("KLAB_NO_HOSTSNAP") == "" && !fuzzWorker() {
		var err error
		if before, err = TakeHostSnapshot(); err != nil {
			fmt.Fprintf(os.Stderr, "testutil: snapshot of the host network namespace failed: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if before != nil {
		after, err := TakeHostSnapshot()
		switch {
		case err != nil:
			fmt.Fprintf(os.Stderr, "testutil: snapshot of the host network namespace failed: %v\n", err)
			code = 1
		default:
			if d := before.Diff(after); d != "" {
				fmt.Fprintf(os.Stderr, "FAIL: the tests changed the HOST network namespace (klab must only ever work inside its own namespaces):\n%s", d)
				code = 1
			}
		}
	}
	cleanupBuild()
	os.Exit(code)
}

func fuzzWorker() bool {
	for _, a := range os.Args {
		if strings.Contains(a, "fuzzworker") {
			return true
		}
	}
	return false
}
