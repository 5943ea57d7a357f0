package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestNoEtcdServerLinked keeps the etcd server out of klab: its packages'
// init (and 12 MB) would be paid by every command. The server is
// cmd/klab-etcd's (docs/control-plane.md).
func TestNoEtcdServerLinked(t *testing.T) {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "go.etcd.io/etcd/server/") || p == "github.com/klab-dev/klab/pkg/etcdserver/server" {
			t.Errorf("cmd/klab imports %s: the etcd server belongs to cmd/klab-etcd only", p)
		}
	}
}
