package klabtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/cni"
	"github.com/klab-dev/klab/pkg/netns"
)

// CNI makes New wire its pods with the real CNI plugins, as 'klab pod add
// --cni' does: flannel's delegate chain (bridge, host-local, portmap) from
// /usr/lib/cni (or $KLAB_CNI_PATH), run through libcni. Without the
// plugins the test is skipped with the command that installs them.
func CNI() Option { return func(c *config) { c.cni = true } }

// RequireCNIPlugins skips t unless the CNI plugins klab runs are installed.
func RequireCNIPlugins(t testing.TB) {
	t.Helper()
	if missing := cni.Missing(cni.Paths(), cni.Plugins...); len(missing) > 0 {
		t.Skipf("klabtest: CNI plugins %v are not installed: apt-get install containernetworking-plugins (or set KLAB_CNI_PATH)", missing)
	}
}

// AddPodCNI adds a pod on node wired by the real CNI plugins.
func (l *Lab) AddPodCNI(name, node string) *Pod {
	l.t.Helper()
	RequireCNIPlugins(l.t)
	if err := l.Update(func(c *cluster.Cluster) error {
		_, err := c.AddPodCNI(cluster.PodSpec{Name: name, Node: node})
		return err
	}); err != nil {
		l.t.Fatalf("klabtest: add CNI pod %s: %v", name, err)
	}
	return l.Pod(name)
}

// Conflist is the chain klab runs for CNI-wired pods on this node:
// flannel's delegate config rendered from the node's subnet.env
// (cni.DelegateList), host-local's files shared with klab's allocator, so
// addresses never collide with the lab's pods. A plugin author can splice
// their own plugin into it.
func (n *Node) Conflist() []byte {
	t := n.lab.t
	t.Helper()
	var list []byte
	if err := n.lab.Update(func(c *cluster.Cluster) (err error) {
		list, err = c.CNINodeConflist(n.Name)
		return err
	}); err != nil {
		t.Fatalf("klabtest: %v", err)
	}
	return list
}

// Sandbox is an empty network namespace of the lab (lo down, no
// interfaces), a container as a runtime creates it before calling CNI:
// any plugin chain can be run against it from the node with ADD, CHECK and
// DEL. It is removed with the lab.
type Sandbox struct {
	Name string
	NS   string
	node *Node
	a    cni.Attachment
	pod  *Pod
}

// Sandbox creates an empty container namespace on the node.
func (n *Node) Sandbox(name string) *Sandbox {
	t := n.lab.t
	t.Helper()
	if err := netns.ValidateObject("sandbox", name); err != nil {
		t.Fatalf("klabtest: %v", err)
	}
	ns := netns.Name(n.lab.Name, name)
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatalf("klabtest: sandbox %s: %v", name, err)
	}
	t.Cleanup(func() { netns.Delete(ns) })
	return &Sandbox{Name: name, NS: ns, node: n, a: cni.Attachment{HostNS: n.NS, NetNS: ns, ContainerID: name, IfName: cluster.PodIface,
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}}}}
}

func (s *Sandbox) runner(pluginDirs []string) cni.Runner {
	if len(pluginDirs) == 0 {
		pluginDirs = cni.Paths()
	}
	return cni.Runner{Paths: pluginDirs, CacheDir: filepath.Join(s.node.lab.StateDir, s.node.lab.Name, "cni", "cache")}
}

// Add runs ADD of conflist for the sandbox from the node's namespace, with
// plugins searched in pluginDirs (default /usr/lib/cni), and returns the
// result; Pod is then a handle for traffic from the sandbox.
func (s *Sandbox) Add(conflist []byte, pluginDirs ...string) (*cni.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := s.runner(pluginDirs).Add(ctx, conflist, s.a)
	if err != nil {
		return nil, err
	}
	if r.Addr.IsValid() {
		s.pod = &Pod{Name: s.Name, Node: s.node.Name, IP: r.Addr.Addr(), NS: s.NS, lab: s.node.lab}
	}
	return r, nil
}

// Check runs CHECK of conflist for the sandbox.
func (s *Sandbox) Check(conflist []byte, pluginDirs ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.runner(pluginDirs).Check(ctx, conflist, s.a)
}

// Del runs DEL of conflist for the sandbox.
func (s *Sandbox) Del(conflist []byte, pluginDirs ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.runner(pluginDirs).Del(ctx, conflist, s.a)
}

// Pod is a handle to the sandbox as a pod (Do, Exec, Ping, Get) once Add
// gave it an address; it fails the test before.
func (s *Sandbox) Pod() *Pod {
	t := s.node.lab.t
	t.Helper()
	if s.pod == nil {
		t.Fatalf("klabtest: sandbox %s has no address: run Add first", s.Name)
	}
	return s.pod
}
