package netns_test

import (
	"os"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// A stale file under /run/netns with a klab name (a build killed between
// creating the file and mounting the namespace on it, or a reboot with a
// persistent /run) does not block creating that namespace.
func TestEnsureReplacesStaleFile(t *testing.T) {
	testutil.RequireRoot(t)
	name := netns.Name(testutil.LabName(t, "rlstale"), "node1")
	t.Cleanup(func() { netns.Delete(name) })
	if err := os.MkdirAll(netns.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(netns.Path(name), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(name) {
		t.Fatal("a plain file counts as a namespace")
	}
	created, err := netns.Ensure(name)
	if err != nil || !created || !netns.Exists(name) {
		t.Fatalf("Ensure over a stale file: created=%v err=%v exists=%v", created, err, netns.Exists(name))
	}
	if err := netns.Delete(name); err != nil || netns.Exists(name) {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := os.Stat(netns.Path(name)); !os.IsNotExist(err) {
		t.Fatalf("Delete left %s", netns.Path(name))
	}
}
