package klabtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/probe"
)

// Option configures New.
type Option func(*config)

type config struct {
	prefix      string
	nodes       int
	podsPerNode int
	opts        cluster.Options
	services    []cluster.ServiceSpec
	klab        string // klab binary, for servers run as processes (DNS)
	cni         bool   // pods wired by the real CNI plugins (cni.go)
	stateDir    string
}

// Nodes sets the number of nodes, node1 ... nodeN (default 2).
func Nodes(n int) Option { return func(c *config) { c.nodes = n } }

// PodsPerNode sets how many pods each node gets (default 1). Pods are named
// after seed 003 — pod-a, pod-b on node1, then pod-c, pod-d on node2 with
// two per node — or pod-<node>-<k> beyond 26 pods.
func PodsPerNode(n int) Option { return func(c *config) { c.podsPerNode = n } }

// Backend chooses how pod traffic crosses nodes: cluster.BackendVXLAN
// (default, flannel.1) or cluster.BackendHostGW (routes via node IPs).
func Backend(b string) Option { return func(c *config) { c.opts.Backend = b } }

// ClusterOptions sets every lab-wide setting at once (CIDRs, MTU, VNI,
// port); options given after it refine it.
func ClusterOptions(o cluster.Options) Option { return func(c *config) { c.opts = o } }

// Service adds a ClusterIP Service on port, forwarding to targetPort of the
// named endpoint pods, programmed as kube-proxy's iptables chains in every
// node.
func Service(name string, port, targetPort int, endpoints ...string) Option {
	return func(c *config) {
		c.services = append(c.services, cluster.ServiceSpec{Name: name, Endpoints: endpoints,
			Ports: []nat.ServicePort{{Protocol: nat.TCP, Port: port, TargetPort: targetPort}}})
	}
}

// DNS turns on the cluster DNS (kube-dns at 10.96.0.10, two DNS pods). Its
// servers are processes of the klab binary at klabBinary (build it with
// 'go build github.com/klab-dev/klab/cmd/klab').
func DNS(klabBinary string) Option {
	return func(c *config) { c.opts.DNS = true; c.klab = klabBinary }
}

// Prefix starts the lab's name (default "kt"); the rest is random, so
// parallel tests and packages never collide.
func Prefix(p string) Option { return func(c *config) { c.prefix = p } }

// StateDir keeps the lab's state (state.json, IPAM files, subnet.env) in
// dir instead of a test temporary directory; the klab CLI finds the lab
// there with --state-dir.
func StateDir(dir string) Option { return func(c *config) { c.stateDir = dir } }

// Lab is a running lab. Its fields describe what New built; methods that
// change the lab (AddPod) update them.
type Lab struct {
	Name     string
	StateDir string
	Nodes    []*Node
	Pods     []*Pod

	t           testing.TB
	ownDir      bool // StateDir is the test's temporary directory
	klab        string
	destroyOnce sync.Once
	mu          sync.Mutex
	nodes       map[string]*Node
	pods        map[string]*Pod
}

// Node is a node of a lab: a network namespace on the underlay.
type Node struct {
	Name    string
	IP      netip.Addr   // its eth0 address on the underlay
	PodCIDR netip.Prefix // its /24 lease
	NS      string       // its network namespace, under /run/netns
	lab     *Lab
}

// Pod is a pod of a lab: a network namespace plugged into its node's cni0.
type Pod struct {
	Name string
	Node string
	IP   netip.Addr
	NS   string
	lab  *Lab
}

// RequireRoot skips t, before anything is created, unless the test runs as
// root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("klabtest needs root to build network namespaces, links and rules: run the test as root (sudo go test, or a privileged container)")
	}
}

// New builds a lab for the test and registers its removal with t.Cleanup.
// A lab that cannot be built fails the test (and leaves nothing behind).
func New(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	RequireRoot(t)
	cfg := config{prefix: "kt", nodes: 2, podsPerNode: 1}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.nodes < 1 {
		t.Fatalf("klabtest: %d nodes: a lab needs at least one", cfg.nodes)
	}
	if cfg.cni {
		RequireCNIPlugins(t)
	}
	ownDir := cfg.stateDir == ""
	if ownDir {
		cfg.stateDir = t.TempDir()
	}
	l := &Lab{Name: fmt.Sprintf("%s-%06x", cfg.prefix, rand.IntN(1<<24)), StateDir: cfg.stateDir, ownDir: ownDir, t: t, klab: cfg.klab,
		nodes: map[string]*Node{}, pods: map[string]*Pod{}}
	if err := netns.ValidateLab(l.Name); err != nil {
		t.Fatalf("klabtest: %v", err)
	}
	// Registered before anything exists: whatever happens next, the lab goes.
	track(l)
	t.Cleanup(l.Destroy)
	var spec cluster.Spec
	for i := 1; i <= cfg.nodes; i++ {
		spec.Nodes = append(spec.Nodes, cluster.NodeSpec{Name: fmt.Sprintf("node%d", i)})
	}
	total := cfg.nodes * cfg.podsPerNode
	for i := 1; i <= cfg.nodes; i++ {
		for k := 1; k <= cfg.podsPerNode; k++ {
			name := fmt.Sprintf("pod-%d-%d", i, k)
			if total <= 26 {
				name = "pod-" + string(rune('a'+(i-1)*cfg.podsPerNode+k-1))
			}
			spec.Pods = append(spec.Pods, cluster.PodSpec{Name: name, Node: fmt.Sprintf("node%d", i)})
		}
	}
	o := cfg.opts
	err := l.open(&o, func(c *cluster.Cluster) error {
		pods := spec.Pods
		if cfg.cni {
			spec.Pods = nil
		}
		if _, _, err := c.Build(spec); err != nil {
			return err
		}
		for _, p := range pods {
			if !cfg.cni {
				break
			}
			if _, err := c.AddPodCNI(p); err != nil {
				return fmt.Errorf("CNI pod %s: %w", p.Name, err)
			}
		}
		for _, s := range cfg.services {
			if _, err := c.AddService(s); err != nil {
				return fmt.Errorf("service %s: %w", s.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("klabtest: build lab %s: %v", l.Name, err)
	}
	return l
}

// Update opens the lab (taking its lock) and calls fn with it, for changes
// klabtest has no method for (services, NetworkPolicies, pods with fixed
// addresses); Nodes and Pods are refreshed afterwards.
func (l *Lab) Update(fn func(c *cluster.Cluster) error) error { return l.open(nil, fn) }

func (l *Lab) open(create *cluster.Options, fn func(c *cluster.Cluster) error) error {
	c, err := cluster.Open(l.StateDir, l.Name, create, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if l.klab != "" {
		bin, lab, dir := l.klab, l.Name, l.StateDir
		c.Serve = func(target, proto string, port int) []string {
			return []string{bin, "__serve", "--name", target, "--port", fmt.Sprint(port), "--proto", proto, "--lab", lab, "--state-dir", dir}
		}
	}
	ferr := fn(c)
	l.refresh(c)
	return ferr
}

// refresh rebuilds the handles from the lab's state, keeping the existing
// ones (tests hold pointers to them).
func (l *Lab) refresh(c *cluster.Cluster) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Nodes, l.Pods = nil, nil
	for _, n := range c.Lab.Nodes {
		h := l.nodes[n.Name]
		if h == nil {
			h = &Node{Name: n.Name, lab: l}
			l.nodes[n.Name] = h
		}
		h.IP, h.PodCIDR, h.NS = n.IP, n.PodCIDR, c.NS(n.Name)
		l.Nodes = append(l.Nodes, h)
	}
	seen := map[string]bool{}
	for _, p := range c.Lab.Pods {
		h := l.pods[p.Name]
		if h == nil {
			h = &Pod{Name: p.Name, lab: l}
			l.pods[p.Name] = h
		}
		h.Node, h.IP, h.NS = p.Node, p.IP, c.NS(p.Name)
		l.Pods = append(l.Pods, h)
		seen[p.Name] = true
	}
	for name := range l.pods {
		if !seen[name] {
			delete(l.pods, name)
		}
	}
}

// Node returns the named node; an unknown name fails the test.
func (l *Lab) Node(name string) *Node {
	l.t.Helper()
	l.mu.Lock()
	n := l.nodes[name]
	l.mu.Unlock()
	if n == nil {
		l.t.Fatalf("klabtest: lab %s has no node %q", l.Name, name)
	}
	return n
}

// Pod returns the named pod; an unknown name fails the test.
func (l *Lab) Pod(name string) *Pod {
	l.t.Helper()
	l.mu.Lock()
	p := l.pods[name]
	l.mu.Unlock()
	if p == nil {
		l.t.Fatalf("klabtest: lab %s has no pod %q", l.Name, name)
	}
	return p
}

// AddPod adds a pod on node, wired as every other pod, and returns it.
func (l *Lab) AddPod(name, node string) *Pod {
	l.t.Helper()
	if err := l.Update(func(c *cluster.Cluster) error {
		_, err := c.AddPod(cluster.PodSpec{Name: name, Node: node})
		return err
	}); err != nil {
		l.t.Fatalf("klabtest: add pod %s: %v", name, err)
	}
	return l.Pod(name)
}

// Underlay is the namespace of the switch joining the nodes' eth0
// (bridge underlay0).
func (l *Lab) Underlay() string { return netns.Name(l.Name, cluster.UnderlayName) }

// remove destroys the lab: servers, namespaces, /etc/netns entries, state.
// If the state is unreadable, the namespaces are removed by name.
func (l *Lab) remove() {
	defer untrack(l)
	if err := cluster.Destroy(l.StateDir, l.Name, nil, nil); err != nil {
		l.t.Errorf("klabtest: destroy lab %s: %v", l.Name, err)
	}
	removeNamespaces(l.Name)
}

func removeNamespaces(lab string) {
	nss, _ := netns.List(lab)
	for _, ns := range nss {
		netns.Delete(ns)
	}
}

// Labs of tests that are still running, removed if the binary is
// interrupted: a signal skips t.Cleanup.
var (
	liveMu sync.Mutex
	live   = map[*Lab]bool{}
	watch  sync.Once
)

func track(l *Lab) {
	watch.Do(func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		go func() {
			s := <-sig
			liveMu.Lock()
			n := len(live)
			for l := range live {
				cluster.Destroy(l.StateDir, l.Name, nil, nil)
				removeNamespaces(l.Name)
				if l.ownDir {
					// The signal skips the testing package's removal
					// of t.TempDir (…/TestName123/001): do it here.
					os.RemoveAll(filepath.Dir(l.StateDir))
				}
			}
			fmt.Fprintf(os.Stderr, "klabtest: %v: removed %d labs\n", s, n)
			os.Exit(2)
		}()
	})
	liveMu.Lock()
	live[l] = true
	liveMu.Unlock()
}

func untrack(l *Lab) {
	liveMu.Lock()
	delete(live, l)
	liveMu.Unlock()
}

// Do runs fn inside the node's network namespace (see Pod.Do).
func (n *Node) Do(fn func() error) error { return Do(n.NS, fn) }

// Exec runs a command in the node's network namespace and returns its
// combined output (see Pod.Exec).
func (n *Node) Exec(argv ...string) (string, error) { return Exec(n.NS, argv...) }

// Do runs fn inside the pod's network namespace: sockets fn opens live
// there (and stay there after it returns), netlink and /proc/sys/net show
// the pod's view. See the package-level Do for the thread handling.
func (p *Pod) Do(fn func() error) error { return Do(p.NS, fn) }

// Exec runs a command in the pod's network namespace (as 'ip netns exec'
// without its /sys and /etc/netns mounts) and returns its combined output.
func (p *Pod) Exec(argv ...string) (string, error) { return Exec(p.NS, argv...) }

// Ping sends three ICMP echo requests from the pod to dst and returns an
// error unless every one was answered.
func (p *Pod) Ping(dst netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := probe.Ping(ctx, p.NS, dst, probe.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, p.Name, err)
	}
	if r.Received != r.Sent {
		return fmt.Errorf("ping %s from %s: %d of %d answered", dst, p.Name, r.Received, r.Sent)
	}
	return nil
}

// Serve starts klab's HTTP echo server in the pod on port (it answers with
// the pod's name, then the client address it saw) and stops it when the
// test ends. It runs in this process: the listening socket is opened in the
// pod's namespace, the serving goroutines run anywhere.
func (p *Pod) Serve(port int) {
	t := p.lab.t
	t.Helper()
	ln, err := probe.Listen(p.NS, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("klabtest: serve in %s: %v", p.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); probe.ServeHTTP(ctx, ln, p.Name) }()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
}

// Get fetches url from inside the pod and returns the body.
func (p *Pod) Get(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return probe.Get(ctx, probe.Client(p.NS, 5*time.Second), url)
}

// URL is http://<pod ip>:<port>/.
func (p *Pod) URL(port int) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(p.IP, uint16(port)))
}

// String names the pod and its address.
func (p *Pod) String() string { return p.Name + " (" + p.IP.String() + ")" }

// String names the node and its address.
func (n *Node) String() string { return n.Name + " (" + n.IP.String() + ")" }

// trimmed is a command's output without its trailing newline.
func trimmed(b []byte) string { return strings.TrimRight(string(b), "\n") }

// ServiceIP returns the ClusterIP of the named Service; an unknown name
// fails the test.
func (l *Lab) ServiceIP(name string) netip.Addr {
	l.t.Helper()
	st, err := cluster.Load(l.StateDir, l.Name)
	if err != nil {
		l.t.Fatalf("klabtest: %v", err)
	}
	s := st.Service(name)
	if s == nil {
		l.t.Fatalf("klabtest: lab %s has no service %q", l.Name, name)
	}
	return s.ClusterIP
}

// Destroy removes the lab now (t.Cleanup does it anyway; calling both is
// fine): for a benchmark that builds many labs, or a test that checks
// what removal leaves.
func (l *Lab) Destroy() {
	l.destroyOnce.Do(l.remove)
}
