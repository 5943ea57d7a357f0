// Package testutil holds the helpers klab's privileged tests share: the
// root check that skips cleanly, and unique lab names whose namespaces are
// removed even when a test fails.
package testutil

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/pkg/netns"
)

// RequireRoot skips the test, before it creates anything, when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: this test builds real namespaces, links and rules (run 'sudo make test')")
	}
}

// LabName returns a unique lab name starting with prefix, and registers a
// cleanup that deletes every namespace of that lab, whatever the test did;
// also when the test binary is interrupted (Ctrl-C, SIGTERM), which skips
// the cleanups: the labs of running tests are removed before it exits.
func LabName(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%06x", prefix, rand.IntN(1<<24))
	track(name)
	t.Cleanup(func() {
		RemoveLab(name)
		untrack(name)
	})
	return name
}

var (
	liveMu sync.Mutex
	live   = map[string]bool{} // labs of tests that have not finished
	watch  sync.Once
)

func track(lab string) {
	watch.Do(func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		go func() {
			s := <-sig
			liveMu.Lock()
			for l := range live {
				RemoveLab(l)
			}
			fmt.Fprintf(os.Stderr, "testutil: %v: removed the namespaces of %d labs\n", s, len(live))
			os.Exit(2)
		}()
	})
	liveMu.Lock()
	live[lab] = true
	liveMu.Unlock()
}

func untrack(lab string) {
	liveMu.Lock()
	delete(live, lab)
	liveMu.Unlock()
}

// RemoveLab deletes every namespace of a lab.
func RemoveLab(lab string) {
	nss, _ := netns.List(lab)
	for _, ns := range nss {
		netns.Delete(ns)
	}
}
