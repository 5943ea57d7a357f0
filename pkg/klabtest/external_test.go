package klabtest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/klabtest"
)

// TestExternalModule runs 'go test' in testdata/external, a module of its
// own that requires klab through a replace directive and builds a 2-node
// lab with klabtest: the API works from outside klab's module (no
// internal/ package can be reached from there).
//
// It runs offline, from the module cache that building klab filled: a copy
// of the module with the replace pointing at this checkout and klab's own
// go.sum added to its go.sum, so a dependency klab adds later needs no
// checksum lookup either (GOFLAGS=-mod=mod, GOPROXY=off).
func TestExternalModule(t *testing.T) {
	klabtest.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: skips building and running the external test module")
	}
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum", "crossnode_test.go"} {
		b, err := os.ReadFile(filepath.Join("testdata/external", f))
		if err != nil {
			t.Fatal(err)
		}
		switch f {
		case "go.mod":
			b = []byte(strings.Replace(string(b), "=> ../../../..", "=> "+root, 1))
		case "go.sum":
			main, err := os.ReadFile(filepath.Join(root, "go.sum"))
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, main...)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	cmd := exec.Command(gobin, "test", "-count=1", "-v", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test in the external module: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestCrossNode") {
		t.Fatalf("the external module's test did not run:\n%s", out)
	}
}
