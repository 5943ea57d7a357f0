package klabtest_test

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/klabtest"
	"github.com/klab-dev/klab/pkg/netns"
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
	dir := externalModule(t)
	cmd := exec.Command(goBin(), "test", "-count=1", "-v", "./...")
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

// TestRemovedOnAbort compiles the external module's test binary and runs
// its TestAbort twice: once it panics with a lab up, once it is sent
// SIGINT with a lab up. Both times the lab's namespaces are gone when the
// binary has exited (ip netns list as the independent reader).
func TestRemovedOnAbort(t *testing.T) {
	klabtest.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: skips building the external test module")
	}
	t.Parallel()
	dir := externalModule(t)
	bin := filepath.Join(t.TempDir(), "klabuser.test")
	cmd := exec.Command(goBin(), "test", "-c", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	for _, mode := range []string{"panic", "interrupt"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(bin, "-test.run", "^TestAbort$", "-test.v")
			cmd.Env = append(os.Environ(), "KLABUSER_ABORT="+mode)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var lab string
			var log strings.Builder
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "lab" && f[2] == "up" {
					lab = f[1]
					break
				}
			}
			if lab == "" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the lab never came up:\n%s", log.String())
			}
			t.Cleanup(func() { removeLab(lab) })
			if mode == "interrupt" {
				// (The panicking one may be gone already.)
				if n := labNamespaces(t, lab); n == 0 {
					t.Fatalf("ip netns list shows no namespace of %s while it is up", lab)
				}
				cmd.Process.Signal(os.Interrupt)
			}
			go io.Copy(&log, stdout)
			err = cmd.Wait()
			if err == nil {
				t.Fatalf("the test binary exited 0 after the %s:\n%s", mode, log.String())
			}
			if n := labNamespaces(t, lab); n != 0 {
				t.Fatalf("after the %s, ip netns list still shows %d namespaces of %s:\n%s", mode, n, lab, log.String())
			}
		})
	}
}

func labNamespaces(t *testing.T, lab string) int {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Skipf("needs ip (iproute2): %v", err)
	}
	return strings.Count(string(out), "klab."+lab+".")
}

func removeLab(lab string) {
	nss, _ := netns.List(lab)
	for _, ns := range nss {
		netns.Delete(ns)
	}
}

// externalModule copies testdata/external to a temporary directory, with
// the replace pointing at this checkout and klab's go.sum appended.
func externalModule(t *testing.T) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ents, err := os.ReadDir("testdata/external")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		f := e.Name()
		b, err := os.ReadFile(filepath.Join("testdata/external", f))
		if err != nil {
			t.Fatal(err)
		}
		switch f {
		case "go.mod":
			// Only klab itself is required: its own go.mod (in the module
			// cache with everything it needs) decides the versions, so a
			// dependency klab bumps later needs no download here either.
			b = []byte("module example.com/klabuser\n\ngo 1.26.8\n\nrequire github.com/klab-dev/klab v0.0.0\n\nreplace github.com/klab-dev/klab => " + root + "\n")
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
	return dir
}

func goBin() string {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		return "go"
	}
	return gobin
}
