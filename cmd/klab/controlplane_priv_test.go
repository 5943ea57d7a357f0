package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// cpLab is a lab with a control plane, read back with Debian's etcdctl
// (run inside the lab's underlay namespace: etcd serves the lab only),
// ip and bridge.
type cpLab struct {
	*cli
	lab string
}

func newCPLab(t *testing.T, args ...string) *cpLab {
	t.Helper()
	c := newCLI(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	l := &cpLab{cli: c, lab: testutil.LabName(t, "cp")}
	t.Cleanup(func() { c.assertClean(l.lab, "after destroy") })
	c.destroyOnCleanup(l.lab) // runs before the check above
	l.must(append([]string{"node", "add", "node1", "--lab", l.lab, "--control-plane", "etcd"}, args...)...)
	return l
}

func (l *cpLab) ns(obj string) string { return "klab." + l.lab + "." + obj }

// etcdctl runs etcdctl against the lab's etcd.
func (l *cpLab) etcdctl(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns("underlay"), "etcdctl", "--endpoints", "http://192.168.1.100:2379", "--dial-timeout", "5s", "--command-timeout", "15s"}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// peerEntries reports whether node has the three entries of a peer
// (subnet via its .0 onlink, ARP .0 -> mac, FDB mac -> ip), as ip and
// bridge print them.
func (l *cpLab) peerEntries(node, subnet, mac, ip string) (route, arp, fdb bool) {
	gw := strings.TrimSuffix(subnet, "/24")
	r := sh(l.t, "ip", "-n", l.ns(node), "route", "show", subnet)
	n := sh(l.t, "ip", "-n", l.ns(node), "neigh", "show", "dev", "flannel.1")
	f := sh(l.t, "bridge", "-n", l.ns(node), "fdb", "show", "dev", "flannel.1")
	return strings.Contains(r, "via "+gw+" dev flannel.1 onlink"),
		strings.Contains(n, gw+" lladdr "+mac+" PERMANENT"),
		strings.Contains(f, mac+" dst "+ip+" self permanent")
}

// waitFor polls cond every 10 ms until it holds or timeout passes, and
// returns how long it took (or fails).
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func (l *cpLab) labState() *cluster.Lab {
	st, err := cluster.Load(l.state, l.lab)
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

func (l *cpLab) serverPID(target, proto string) int {
	for _, s := range l.labState().Servers {
		if s.Target == target && s.Proto == proto {
			return s.PID
		}
	}
	l.t.Fatalf("no %s server on %s", proto, target)
	return 0
}

func TestControlPlaneLeasesWatchExpiry(t *testing.T) {
	t.Parallel()
	l := newCPLab(t, "--lease-ttl", "3s")
	l.must("node", "add", "node2", "--lab", l.lab)
	l.must("node", "add", "node3", "--lab", l.lab)
	l.must("pod", "add", "pa", "--node", "node1", "--lab", l.lab)
	l.must("pod", "add", "pb", "--node", "node2", "--lab", l.lab)

	// The keys and values are flannel's.
	var cfg agent.NetConfig
	if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", "/coreos.com/network/config")), &cfg); err != nil || cfg.Network != "10.244.0.0/16" || cfg.Backend.Type != "vxlan" {
		t.Fatalf("config: %+v %v", cfg, err)
	}
	st := l.labState()
	for _, n := range st.Nodes {
		key := "/coreos.com/network/subnets/" + agent.SubnetKey(n.PodCIDR)
		var v map[string]any
		if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", key)), &v); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		mac := strings.Fields(sh(t, "ip", "-n", l.ns(n.Name), "-br", "link", "show", "flannel.1"))[2]
		bd, _ := v["BackendData"].(map[string]any)
		if v["PublicIP"] != n.IP.String() || v["PublicIPv6"] != nil || v["BackendType"] != "vxlan" || bd["VNI"] != 1.0 || bd["VtepMAC"] != mac {
			t.Errorf("%s = %v; want PublicIP %s, PublicIPv6 null, vxlan, VNI 1, VtepMAC %s (flannel.1's)", key, v, n.IP, mac)
		}
		var kv struct {
			Kvs []struct{ Lease int64 } `json:"kvs"`
		}
		json.Unmarshal([]byte(l.etcdctl("get", key, "-w", "json")), &kv)
		if len(kv.Kvs) != 1 || kv.Kvs[0].Lease == 0 {
			t.Fatalf("%s is not attached to an etcd lease: %+v", key, kv)
		}
		if ttl := l.etcdctl("lease", "timetolive", fmt.Sprintf("%x", kv.Kvs[0].Lease)); !strings.Contains(ttl, "granted with TTL(3s)") {
			t.Errorf("lease of %s: %s; want granted with TTL(3s)", key, ttl)
		}
	}
	l.must("ping", "pa", "pb", "-c", "2", "--lab", l.lab)
	// klab list sees no problem, and repair changes nothing (the agents own
	// flannel.1 and the peers; their processes are known).
	if infos := l.list(l.lab); len(infos) != 1 || len(infos[0].Problems) > 0 {
		t.Fatalf("klab list: %+v", infos)
	}
	if out := l.must("repair", "--explain", "--lab", l.lab); strings.Contains(out, "kill") || strings.Contains(out, "flannel.1") {
		t.Errorf("repair of a healthy control-plane lab changed something:\n%s", out)
	}

	// A lease written by hand reaches every node (within 1 s on a quiet
	// machine: the time is logged here and measured by
	// BenchmarkControlPlane; the bound below only catches a hang);
	// deleting it removes the entries again.
	const sn, mac, ip = "10.244.77.0/24", "02:aa:bb:cc:dd:ee", "192.168.1.177"
	l.etcdctl("put", "/coreos.com/network/subnets/10.244.77.0-24", `{"PublicIP":"`+ip+`","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"`+mac+`"}}`)
	start := time.Now()
	for _, n := range []string{"node1", "node2", "node3"} {
		waitFor(t, 5*time.Second-time.Since(start), "hand-written lease programmed on "+n, func() bool { r, a, f := l.peerEntries(n, sn, mac, ip); return r && a && f })
	}
	t.Logf("hand-written lease on all 3 nodes after %v", time.Since(start))
	l.etcdctl("del", "/coreos.com/network/subnets/10.244.77.0-24")
	start = time.Now()
	for _, n := range []string{"node1", "node2", "node3"} {
		waitFor(t, 5*time.Second-time.Since(start), "deleted lease removed from "+n, func() bool { r, a, f := l.peerEntries(n, sn, mac, ip); return !r && !a && !f })
	}
	t.Logf("deleted lease gone from all 3 nodes after %v", time.Since(start))

	// A killed agent is restarted by its supervisor and finds its lease:
	// same subnet, nothing reprogrammed.
	n1 := st.Node("node1")
	out := sh(t, "pgrep", "-f", "__agent --node node1 --lab "+l.lab)
	var pid int
	fmt.Sscan(out, &pid)
	logPath := l.labState().Servers[0].Log
	for _, s := range l.labState().Servers {
		if s.Target == "node1" && s.Proto == "agent" {
			logPath = s.Log
		}
	}
	// An established connection from pa to pb, kept across the restart.
	l.must("serve", "pb", "--port", "8080", "--lab", l.lab)
	pbIP := l.labState().Pod("pb").IP.String()
	var conn net.Conn
	if err := netns.Do(l.ns("pa"), func() (err error) { conn, err = net.DialTimeout("tcp", pbIP+":8080", 2*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	ask := func() string {
		t.Helper()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: pb\r\n\r\n"); err != nil {
			t.Fatalf("established connection: %v", err)
		}
		resp, err := http.ReadResponse(rd, nil)
		if err != nil {
			t.Fatalf("established connection: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	first := ask()
	before, _ := os.ReadFile(logPath)
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, 5*time.Second, "node1's agent restarted", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "listening: lease "+agent.SubnetKey(n1.PodCIDR)) == 2
	})
	after, _ := os.ReadFile(logPath)
	restart := string(after[len(before):])
	if strings.Contains(restart, "ensure:") || strings.Contains(restart, "sync: add:") || strings.Contains(restart, "remove:") {
		t.Errorf("restarted agent reprogrammed what was right:\n%s", restart)
	}
	l.must("ping", "pa", "pb", "-c", "1", "--lab", l.lab)
	if again := ask(); again != first {
		t.Errorf("the connection's answers differ across the agent's restart: %q, then %q", first, again)
	}

	// A stopped agent's lease expires after the TTL, and every peer
	// removes its entries; started again, it leases the same subnet.
	n3 := st.Node("node3")
	l.must("agent", "stop", "node3", "--lab", l.lab)
	d := waitFor(t, 10*time.Second, "node3's lease expired on node1 and node2", func() bool {
		r1, _, _ := l.peerEntries("node1", n3.PodCIDR.String(), n3.VtepMAC, n3.IP.String())
		r2, _, _ := l.peerEntries("node2", n3.PodCIDR.String(), n3.VtepMAC, n3.IP.String())
		return !r1 && !r2
	})
	t.Logf("stopped agent's lease (TTL 3s) gone from its peers after %v", d)
	if keys := l.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"); strings.Contains(keys, agent.SubnetKey(n3.PodCIDR)) {
		t.Fatalf("node3's lease still in etcd: %s", keys)
	}
	l.must("agent", "start", "node3", "--lab", l.lab)
	if v := l.etcdctl("get", "--print-value-only", "/coreos.com/network/subnets/"+agent.SubnetKey(n3.PodCIDR)); !strings.Contains(v, n3.IP.String()) {
		t.Fatalf("restarted node3 did not lease %s again: %q", n3.PodCIDR, v)
	}
	waitFor(t, 5*time.Second, "node3 peered again", func() bool {
		r, a, f := l.peerEntries("node1", n3.PodCIDR.String(), n3.VtepMAC, n3.IP.String())
		return r && a && f
	})

	// A supervisor killed with its agent: repair starts the agent again
	// (the supervisor covers a dying agent; repair a dying supervisor).
	sup := l.serverPID("node2", "agent")
	syscall.Kill(sup, syscall.SIGKILL)
	waitFor(t, 5*time.Second, "node2's agent dies with its supervisor", func() bool {
		return exec.Command("pgrep", "-f", "__agent --node node2 --lab "+l.lab).Run() != nil
	})
	if out := l.must("repair", "--lab", l.lab); !strings.Contains(out, "started agent of node2 again") {
		t.Errorf("repair after a killed supervisor: %s", out)
	}
	if exec.Command("pgrep", "-f", "__agent --node node2 --lab "+l.lab).Run() != nil {
		t.Error("repair did not start node2's agent")
	}

	// etcd stopped: the data plane keeps forwarding; when it comes back
	// the agents watch again and program new leases.
	etcd := l.serverPID("control-plane", "etcd")
	syscall.Kill(etcd, syscall.SIGSTOP)
	l.must("ping", "pa", "pb", "-c", "2", "--lab", l.lab)
	time.Sleep(time.Second)
	syscall.Kill(etcd, syscall.SIGCONT)
	l.etcdctl("put", "/coreos.com/network/subnets/10.244.78.0-24", `{"PublicIP":"192.168.1.178","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ef"}}`)
	waitFor(t, 8*time.Second, "a lease after etcd came back programmed on node2", func() bool {
		r, a, f := l.peerEntries("node2", "10.244.78.0/24", "02:aa:bb:cc:dd:ef", "192.168.1.178")
		return r && a && f
	})

	// node del removes the lease; the peers remove the entries.
	l.must("node", "del", "node3", "--lab", l.lab)
	if keys := l.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"); strings.Contains(keys, agent.SubnetKey(n3.PodCIDR)) {
		t.Fatalf("deleted node3's lease still in etcd: %s", keys)
	}
	if r, _, _ := l.peerEntries("node1", n3.PodCIDR.String(), n3.VtepMAC, n3.IP.String()); r {
		t.Fatal("node1 still routes to deleted node3")
	}
	l.must("destroy", l.lab)
}

func TestControlPlaneMissMode(t *testing.T) {
	t.Parallel()
	l := newCPLab(t, "--flannel-mode", "miss")
	l.must("node", "add", "node2", "--lab", l.lab)
	l.must("pod", "add", "pa", "--node", "node1", "--lab", l.lab)
	l.must("pod", "add", "pb", "--node", "node2", "--lab", l.lab)
	dev := sh(t, "ip", "-d", "-n", l.ns("node1"), "link", "show", "flannel.1")
	for _, w := range []string{"proxy", "l2miss", "l3miss", "nolearning"} {
		if !strings.Contains(dev, " "+w) {
			t.Errorf("flannel.1 lacks %s:\n%s", w, dev)
		}
	}
	if s := strings.TrimSpace(sh(t, "ip", "netns", "exec", l.ns("node1"), "cat", "/proc/sys/net/ipv4/neigh/flannel.1/app_solicit")); s != "3" {
		t.Errorf("app_solicit = %s, want 3", s)
	}
	pb := l.labState().Pod("pb")
	n2 := l.labState().Node("node2")
	if n := sh(t, "ip", "-n", l.ns("node1"), "neigh", "show", "dev", "flannel.1"); strings.TrimSpace(n) != "" {
		t.Fatalf("miss mode pre-programmed neighbours: %s", n)
	}
	if f := sh(t, "bridge", "-n", l.ns("node1"), "fdb", "show", "dev", "flannel.1"); strings.Contains(f, "dst") {
		t.Fatalf("miss mode pre-programmed FDB entries: %s", f)
	}
	if r := sh(t, "ip", "-n", l.ns("node1"), "route", "show", n2.PodCIDR.String()); !strings.Contains(r, "dev flannel.1 scope link") {
		t.Fatalf("route to node2's subnet: %q", r)
	}
	// klab agent log -f shows the misses live.
	follow := l.cmd(nil, "agent", "log", "node1", "-f", "--lab", l.lab)
	live := &syncWriter{b: &strings.Builder{}}
	follow.Stdout = live
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { follow.Process.Kill(); follow.Wait() }()
	out := l.run(nil, "ping", "pa", "pb", "-c", "4", "--lab", l.lab)
	waitFor(t, 5*time.Second, "klab agent log -f printing the L2MISS", func() bool { return strings.Contains(live.String(), "L2MISS #1") })
	follow.Process.Signal(syscall.SIGINT)
	follow.Wait()
	if !strings.Contains(out.out, "reply from "+pb.IP.String()) {
		t.Fatalf("no reply after the misses were answered:\n%s", out.out)
	}
	path, _ := (&cluster.Cluster{StateDir: l.cli.state, Lab: l.labState()}).AgentLog("node1")
	log, _ := os.ReadFile(path)
	i3 := strings.Index(string(log), "L3MISS #1: who has "+pb.IP.String())
	i2 := strings.Index(string(log), "L2MISS #1: where is VTEP "+n2.VtepMAC)
	if i3 < 0 || i2 < 0 || i2 < i3 {
		t.Fatalf("node1's agent log lacks L3MISS then L2MISS:\n%s", log)
	}
	if n := sh(t, "ip", "-n", l.ns("node1"), "neigh", "show", pb.IP.String(), "dev", "flannel.1"); !strings.Contains(n, "lladdr "+n2.VtepMAC) {
		t.Errorf("L3MISS answer missing: %q", n)
	}
	if f := sh(t, "bridge", "-n", l.ns("node1"), "fdb", "show", "dev", "flannel.1"); !strings.Contains(f, n2.VtepMAC+" dst "+n2.IP.String()) {
		t.Errorf("L2MISS answer missing: %q", f)
	}
	t.Logf("ping pa -> pb: %s; node1's agent answered %d L3MISS and %d L2MISS", strings.TrimSpace(out.out[strings.LastIndex(out.out, "---"):]),
		strings.Count(string(log), "L3MISS #"), strings.Count(string(log), "L2MISS #"))
	l.must("destroy", l.lab)
}

func TestControlPlaneBadInput(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--flannel-mode", "miss"}, "add --control-plane etcd"},
		{[]string{"--lease-ttl", "5s"}, "--lease-ttl needs --control-plane etcd"},
		{[]string{"--control-plane", "zookeeper"}, "not known"},
		{[]string{"--control-plane", "etcd", "--lease-ttl", "500ms"}, "too short"},
	} {
		lab := testutil.LabName(t, "cp")
		r := c.run(nil, append([]string{"node", "add", "node1", "--lab", lab}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.out, tc.want) || strings.Count(strings.TrimSpace(r.out), "\n") > 0 {
			t.Errorf("node add %v: exit %d, %q; want one sentence containing %q", tc.args, r.code, r.out, tc.want)
		}
		c.assertClean(lab, "after refused node add")
	}

	l := newCPLab(t)
	// A lease conflict: a subnet another claimant holds is skipped, by
	// the CLI and by an agent (flannel's tryAcquireLease).
	l.etcdctl("put", "/coreos.com/network/subnets/10.244.2.0-24", `{"PublicIP":"192.168.1.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:c8"}}`)
	l.must("node", "add", "node2", "--lab", l.lab)
	if got := l.labState().Node("node2").PodCIDR.String(); got != "10.244.3.0/24" {
		t.Errorf("node2 got %s while 10.244.2.0/24 is leased by another node; want 10.244.3.0/24", got)
	}
	if r := l.run(nil, "node", "add", "node3", "--pod-cidr", "10.244.2.0/24", "--lab", l.lab); r.code == 0 || !strings.Contains(r.out, "is leased in etcd by 192.168.1.200") {
		t.Errorf("node3 on a leased subnet: exit %d %q", r.code, r.out)
	}
	cli, err := agent.Dial([]string{"http://192.168.1.100:2379"}, l.ns("underlay"), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg := &agent.Registry{Cli: cli, Prefix: agent.DefaultPrefix}
	n1 := l.labState().Node("node1")
	got, _, err := reg.Acquire(context.Background(), netip.MustParsePrefix("10.244.0.0/16"), n1.PodCIDR, netip.MustParseAddr("192.168.1.250"), agent.Attrs(netip.MustParseAddr("192.168.1.250"), "vxlan", 1, nil), 5*time.Second)
	if err != nil || got == n1.PodCIDR {
		t.Errorf("a second claimant of %s got %s (%v); want another subnet", n1.PodCIDR, got, err)
	}
	if v := l.etcdctl("get", "--print-value-only", "/coreos.com/network/subnets/"+agent.SubnetKey(n1.PodCIDR)); !strings.Contains(v, n1.IP.String()) {
		t.Errorf("node1's lease was overwritten: %s", v)
	}

	// A stopped node's subnet leased by another node meanwhile: its agent
	// does not move to another subnet (its pods live in this one), and
	// says so.
	n2 := l.labState().Node("node2")
	l.must("agent", "stop", "node2", "--lab", l.lab)
	l.etcdctl("del", "/coreos.com/network/subnets/"+agent.SubnetKey(n2.PodCIDR))
	l.etcdctl("put", "/coreos.com/network/subnets/"+agent.SubnetKey(n2.PodCIDR), `{"PublicIP":"192.168.1.222","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:de"}}`)
	if r := l.run(nil, "agent", "start", "node2", "--lab", l.lab); r.code == 0 || !strings.Contains(r.out, "is leased by 192.168.1.222") || strings.Count(strings.TrimSpace(r.out), "\n") > 0 {
		t.Errorf("agent start with its subnet taken: exit %d %q", r.code, r.out)
	}

	// etcd holding another network's config.
	l.etcdctl("put", "/coreos.com/network/config", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	r := l.run(nil, "node", "add", "node4", "--lab", l.lab)
	if r.code == 0 || !strings.Contains(r.out, "holds another network's config") {
		t.Errorf("node add with another network's config: exit %d %q", r.code, r.out)
	}
	l.etcdctl("put", "/coreos.com/network/config", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`)

	// Unreachable etcd.
	etcd := l.serverPID("control-plane", "etcd")
	syscall.Kill(etcd, syscall.SIGSTOP)
	r = l.run(nil, "node", "add", "node5", "--lab", l.lab)
	syscall.Kill(etcd, syscall.SIGCONT)
	if r.code == 0 || !strings.Contains(r.out, "is unreachable") {
		t.Errorf("node add with etcd unreachable: exit %d %q", r.code, r.out)
	}
	for _, n := range []string{"node4", "node5"} {
		if _, err := os.Stat("/run/netns/" + l.ns(n)); err == nil {
			t.Errorf("refused %s left its namespace", n)
		}
	}
	l.must("destroy", l.lab)
}

// syncWriter is a strings.Builder safe to read while a command writes.
type syncWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
