package klabtest_test

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/klabtest"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// The handles match the kernel, read back with ip; traffic crosses nodes
// and a Service; everything is gone after the lab's cleanups.
func TestLab(t *testing.T) {
	klabtest.RequireRoot(t)
	t.Parallel()
	var name string
	t.Run("lab", func(t *testing.T) {
		lab := klabtest.New(t, klabtest.PodsPerNode(2), klabtest.Service("web", 80, 8080, "pod-c"))
		name = lab.Name
		if len(lab.Nodes) != 2 || len(lab.Pods) != 4 {
			t.Fatalf("%d nodes, %d pods; want 2, 4", len(lab.Nodes), len(lab.Pods))
		}
		a, c := lab.Pod("pod-a"), lab.Pod("pod-c")
		if a.Node != "node1" || c.Node != "node2" {
			t.Fatalf("pod-a on %s, pod-c on %s", a.Node, c.Node)
		}
		out, err := a.Exec("ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(out, a.IP.String()+"/24") {
			t.Fatalf("ip addr in pod-a: %q, %v; want %s", out, err, a.IP)
		}
		out, err = lab.Node("node1").Exec("ip", "-o", "link", "show", "flannel.1")
		if err != nil || !strings.Contains(out, "flannel.1") {
			t.Fatalf("flannel.1 on node1: %q, %v", out, err)
		}
		c.Serve(8080)
		capture := lab.Capture("node2:flannel.1", "pod-c:eth0")
		body, err := a.Get("http://" + lab.ServiceIP("web").String() + "/")
		if err != nil || !strings.HasPrefix(body, "pod-c") {
			t.Fatalf("GET the web Service from pod-a: %q, %v", body, err)
		}
		// kube-proxy's DNAT happened in node1: pod-c sees its own address
		// as the destination, pod-a's as the source.
		capture.Expect("tcp and dst host "+c.IP.String()+" and dst port 8080 and src host "+a.IP.String(), 1)
		if err := a.Ping(c.IP); err != nil {
			t.Fatal(err)
		}
	})
	if nss, _ := netns.List(name); len(nss) != 0 {
		t.Fatalf("namespaces left after the cleanup: %v", nss)
	}
}

// Pod.Do runs on a thread inside the pod: netlink without a handle sees
// the pod's links; afterwards the caller is back in its own namespace; a
// panic in fn reaches the caller and the thread is not reused.
func TestDo(t *testing.T) {
	t.Parallel()
	// The caller's own thread, pinned: /proc/self/ns/net would be the
	// process's main thread, which parallel tests' goroutines may run on
	// while they are inside a namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	host, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	lab := klabtest.New(t, klabtest.Nodes(1))
	p := lab.Pod("pod-a")
	var addrs []netlink.Addr
	if err := p.Do(func() (err error) {
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		found = found || a.IP.Equal(p.IP.AsSlice())
	}
	if !found {
		t.Fatalf("pod-a's addresses seen from Do: %v; want %s", addrs, p.IP)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), "boom") {
				t.Fatalf("recover() = %v; want the panic from fn", r)
			}
		}()
		p.Do(func() error { panic("boom") })
	}()
	// The caller's thread never left its namespace.
	if self, _ := os.Readlink("/proc/thread-self/ns/net"); self != host {
		t.Fatalf("the caller's thread is in %s, want its own %s", self, host)
	}
}

// A lab with a fixed state dir is visible to the klab CLI.
func TestStateDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lab := klabtest.New(t, klabtest.Nodes(1), klabtest.StateDir(dir))
	l, err := cluster.Load(dir, lab.Name)
	if err != nil || len(l.Pods) != 1 {
		t.Fatalf("state in %s: %v, %v", dir, l, err)
	}
	p := lab.AddPod("extra", "node1")
	if !p.IP.IsValid() || lab.Pod("extra") != p {
		t.Fatalf("AddPod: %+v", p)
	}
	if _, err := exec.LookPath("ip"); err == nil {
		out, _ := exec.Command("ip", "netns", "list").Output()
		if !strings.Contains(string(out), p.NS) {
			t.Fatalf("ip netns list lacks %s:\n%s", p.NS, out)
		}
	}
}

// A plugin chain run by hand against a node, as a plugin author would run
// theirs: the sandbox gets eth0 and an address from the node's subnet,
// reaches a pod on the other node, passes CHECK; after DEL its veth is
// gone from cni0 (read back with ip).
func TestSandbox(t *testing.T) {
	klabtest.RequireCNIPlugins(t)
	t.Parallel()
	lab := klabtest.New(t)
	n := lab.Node("node1")
	list := n.Conflist()
	sb := n.Sandbox("plugin-test")
	res, err := sb.Add(list)
	if err != nil {
		t.Fatal(err)
	}
	if !n.PodCIDR.Contains(res.Addr.Addr()) || res.Addr.Addr() == lab.Pod("pod-a").IP {
		t.Fatalf("sandbox address %s: want a free one in %s", res.Addr, n.PodCIDR)
	}
	if err := sb.Pod().Ping(lab.Pod("pod-b").IP); err != nil {
		t.Fatal(err)
	}
	if err := sb.Check(list); err != nil {
		t.Fatal(err)
	}
	if err := sb.Del(list); err != nil {
		t.Fatal(err)
	}
	out, err := n.Exec("ip", "-o", "link", "show", "dev", res.HostVeth)
	if err == nil {
		t.Fatalf("%s still exists after DEL: %s", res.HostVeth, out)
	}
}

// With DNS, the lab's cluster DNS answers a pod (dig, inside the pod, as
// the reader): a Service's name resolves to its ClusterIP, and the
// schema record of the Kubernetes DNS specification is there.
func TestDNS(t *testing.T) {
	klabtest.RequireRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig: apt-get install bind9-dnsutils")
	}
	t.Parallel()
	lab := klabtest.New(t, klabtest.Nodes(2), klabtest.DNS(testutil.Klab(t)), klabtest.Service("web", 80, 8080, "pod-b"))
	a := lab.Pod("pod-a")
	// The DNS server picks up the lab's state when it changes: the
	// Service added after it started may take a moment to appear.
	want := lab.ServiceIP("web").String()
	var out string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out, err = a.Exec("dig", "+short", "+time=2", "+tries=3", "@10.96.0.10", "web.default.svc.cluster.local"); err == nil && strings.TrimSpace(out) == want {
			break
		}
	}
	if err != nil || strings.TrimSpace(out) != want {
		t.Fatalf("dig web from pod-a: %q, %v; want %s", out, err, want)
	}
	out, err = a.Exec("dig", "+short", "+time=2", "+tries=3", "@10.96.0.10", "dns-version.cluster.local", "TXT")
	if err != nil || !strings.Contains(out, "1.1.0") {
		t.Fatalf("dig dns-version from pod-a: %q, %v", out, err)
	}
}
