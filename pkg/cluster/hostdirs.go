package cluster

// Host directories: what klab leaves in the host's filesystem outside the
// state directory (/run/flannel) and its clean-up once no lab is left.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
)

// RunFlannel is the mount point 'klab exec NODE' uses for the node's
// subnet.env; runFlannelMarker, inside it, says that klab created it (the
// bind mount hides the marker inside 'klab exec', and a real flannel's
// directory has none).
const (
	RunFlannel       = "/run/flannel"
	runFlannelMarker = ".klab-created"
)

// runFlannel is RunFlannel; tests point it elsewhere.
var runFlannel = RunFlannel

// EnsureRunFlannel creates /run/flannel, marked as klab's, if it does not
// exist.
func EnsureRunFlannel() error {
	if _, err := os.Stat(runFlannel); err == nil {
		return nil
	}
	if err := os.Mkdir(runFlannel, 0o755); err != nil {
		if os.IsExist(err) {
			return nil
		}
		return fmt.Errorf("create %s: %w", runFlannel, err)
	}
	return os.WriteFile(filepath.Join(runFlannel, runFlannelMarker), []byte("created by klab as the mount point of a node's subnet.env in 'klab exec'; removed by 'klab destroy' once no lab is left\n"), 0o644)
}

// CleanupHostDirs removes what klab left in the host's filesystem once no
// lab is left: the lock files (each only while holding it) and the state
// directory itself if empty; and /run/flannel, if klab created it and no
// klab namespace exists any more (it is shared by every lab of every state
// directory).
func CleanupHostDirs(stateDir string) error {
	dirs, err := labDirs(stateDir)
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		ents, _ := os.ReadDir(stateDir)
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				continue
			}
			p := filepath.Join(stateDir, e.Name())
			if f, ok := tryLockPath(p); ok {
				os.Remove(p)
				f.Close()
			}
		}
	}
	// Older versions marked /run/flannel as theirs in the state directory.
	legacy := filepath.Join(stateDir, ".created-run-flannel")
	_, err = os.Stat(legacy)
	legacyMarked := err == nil
	if nss, err := netns.List(""); err == nil && len(nss) == 0 {
		ents, err := os.ReadDir(runFlannel)
		switch {
		case err == nil && len(ents) == 1 && ents[0].Name() == runFlannelMarker:
			os.Remove(filepath.Join(runFlannel, runFlannelMarker))
			os.Remove(runFlannel)
		case err == nil && len(ents) == 0 && legacyMarked:
			os.Remove(runFlannel)
		}
	}
	if _, err := os.Stat(runFlannel); legacyMarked && errors.Is(err, os.ErrNotExist) {
		os.Remove(legacy)
	}
	if len(dirs) == 0 {
		os.Remove(stateDir) // only succeeds when empty
	}
	return nil
}
