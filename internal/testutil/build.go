package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
	buildOut  []byte
)

// Klab builds the klab binary once per test process (static, as shipped)
// and returns its path. klab-etcd, the control plane's etcd server, is
// built beside it, where 'klab __serve --proto etcd' looks for it first.
// Main removes both at the end.
func Klab(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		buildDir, buildErr = os.MkdirTemp("", "klab-test-bin-")
		if buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "klab")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		// One go build of both packages, into the directory: the two
		// link in parallel.
		cmd := exec.Command(gobin, "build", "-o", buildDir+string(filepath.Separator), "./cmd/klab", "./cmd/klab-etcd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build klab: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

func cleanupBuild() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}
