package cluster

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// /run/flannel (here a stand-in path) is created marked as klab's, kept
// while any klab namespace exists, removed with the last one; a directory
// klab did not create, or one with content, is never removed.
func TestRunFlannelOwnership(t *testing.T) {
	testutil.RequireRoot(t)
	saved := runFlannel
	t.Cleanup(func() { runFlannel = saved })
	runFlannel = filepath.Join(t.TempDir(), "flannel")
	state := t.TempDir()
	if err := EnsureRunFlannel(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(runFlannel, runFlannelMarker)); err != nil {
		t.Fatalf("no marker: %v", err)
	}
	lab := testutil.LabName(t, "rlflan")
	if _, err := netns.Ensure(netns.Name(lab, "node1")); err != nil {
		t.Fatal(err)
	}
	CleanupHostDirs(state)
	if _, err := os.Stat(runFlannel); err != nil {
		t.Fatal("removed while a klab namespace exists")
	}
	netns.Delete(netns.Name(lab, "node1"))
	CleanupHostDirs(state)
	if others, _ := netns.List(""); len(others) > 0 {
		t.Logf("other klab namespaces exist on this machine (%d): removal not checked", len(others))
	} else if _, err := os.Stat(runFlannel); !os.IsNotExist(err) {
		t.Fatalf("klab's %s not removed with the last namespace", runFlannel)
	}
	// Not klab's: never removed.
	os.RemoveAll(runFlannel)
	os.Mkdir(runFlannel, 0o755)
	CleanupHostDirs(state)
	if _, err := os.Stat(runFlannel); err != nil {
		t.Fatal("removed a directory klab did not create")
	}
	os.RemoveAll(runFlannel)
	EnsureRunFlannel()
	os.WriteFile(filepath.Join(runFlannel, "subnet.env"), []byte("FLANNEL_NETWORK=10.244.0.0/16\n"), 0o644)
	CleanupHostDirs(state)
	if _, err := os.Stat(filepath.Join(runFlannel, "subnet.env")); err != nil {
		t.Fatal("removed a directory with content")
	}
}
