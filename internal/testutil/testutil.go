// Package testutil holds the helpers klab's privileged tests share: the
// root check that skips cleanly, and unique lab names whose namespaces are
// removed even when a test fails.
package testutil

import (
	"fmt"
	"math/rand/v2"
	"os"
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
// cleanup that deletes every namespace of that lab, whatever the test did.
func LabName(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%06x", prefix, rand.IntN(1<<24))
	t.Cleanup(func() { RemoveLab(name) })
	return name
}

// RemoveLab deletes every namespace of a lab.
func RemoveLab(lab string) {
	nss, _ := netns.List(lab)
	for _, ns := range nss {
		netns.Delete(ns)
	}
}
