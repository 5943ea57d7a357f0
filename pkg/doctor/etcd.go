package doctor

import (
	"os"
	"os/exec"
	"path/filepath"

	"github.com/klab-dev/klab/pkg/etcdserver"
)

// EtcdChecks look for the etcd server of control-plane labs (--control-plane
// etcd) the way klab looks for it (etcdserver.Find): klab-etcd beside this
// klab or on PATH, else Debian's etcd.
func EtcdChecks() []Check {
	const name = "etcd server"
	dir := ""
	if self, err := os.Executable(); err == nil {
		dir = filepath.Dir(self)
	}
	b, err := etcdserver.Find(dir, exec.LookPath)
	if err != nil {
		return []Check{{name, Warn, "no klab-etcd beside klab or on PATH, and no etcd: --control-plane etcd cannot run its etcd", "build it with 'make' (bin/klab-etcd) or apt-get install etcd-server"}}
	}
	if err := b.ReadVersion(); err != nil {
		return []Check{{name, Warn, err.Error(), "build klab-etcd with 'make' (bin/klab-etcd)"}}
	}
	detail := b.Path + " (" + b.Why + ")"
	if b.Version != "" {
		detail += ", etcd " + b.Version
	}
	return []Check{{name, OK, detail + ": --control-plane etcd runs it", ""}}
}
