package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
)

// extEtcd is Debian's etcd (/usr/bin/etcd) on simulated machine m2 and
// the klab CLI on m1 (testutil.Machines): an external etcd reached over
// the machines' LAN, as a real cluster's would be.
type extEtcd struct {
	t      testing.TB
	m1, m2 *testutil.Machine
	bin    string
	state  string // m1's klab state directory
	url    string // etcd's client URL on m2
	data   string // etcd's data directory
	tls    []string
	ctl    []string // etcdctl's TLS flags
	proc   *exec.Cmd
}

func newExtEtcd(t testing.TB, scheme string) *extEtcd {
	t.Helper()
	testutil.RequireRoot(t)
	for _, tool := range []string{"/usr/bin/etcd", "etcdctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian etcd-server and etcd-client: scripts/install-deps.sh installs them)", tool)
		}
	}
	ms := testutil.Machines(t, "ee", 2)
	e := &extEtcd{t: t, m1: ms[0], m2: ms[1], bin: testutil.Klab(t), state: t.TempDir(), data: t.TempDir(),
		url: scheme + "://" + ms[1].Addr + ":2379"}
	return e
}

// start runs etcd on m2 (again, on the same data) and waits until it
// answers.
func (e *extEtcd) start() {
	e.t.Helper()
	url := e.url
	args := append([]string{"--name", "ee", "--data-dir", e.data, "--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "ee=http://127.0.0.1:2380", "--logger", "zap"}, e.tls...)
	cmd := e.m2.Command("/usr/bin/etcd", args...)
	lf, err := os.Create(filepath.Join(e.data, "etcd.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.proc = cmd
	e.t.Cleanup(e.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.m2.Try("etcdctl", e.ctlArgs("endpoint", "health")...); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(e.data, "etcd.log"))
			e.t.Fatalf("etcd on m2 did not answer at %s:\n%s", url, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *extEtcd) stop() {
	if e.proc == nil {
		return
	}
	e.proc.Process.Signal(syscall.SIGTERM)
	e.proc.Wait()
	e.proc = nil
}

func (e *extEtcd) ctlArgs(args ...string) []string {
	return append(append([]string{"--endpoints", e.url, "--dial-timeout", "2s"}, e.ctl...), args...)
}

// etcdctl runs etcdctl on m2.
func (e *extEtcd) etcdctl(args ...string) string {
	e.t.Helper()
	return e.m2.Run("etcdctl", e.ctlArgs(args...)...)
}

// keys lists every key etcd holds.
func (e *extEtcd) keys() []string {
	e.t.Helper()
	return strings.Fields(e.etcdctl("get", "", "--prefix", "--keys-only"))
}

// klab runs the CLI on m1.
func (e *extEtcd) klab(args ...string) (string, error) {
	cmd := e.m1.Command(e.bin, append([]string{"--state-dir", e.state}, args...)...)
	cmd.Env = append(os.Environ(), "KLAB_LAB=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *extEtcd) must(args ...string) string {
	e.t.Helper()
	out, err := e.klab(args...)
	if err != nil {
		e.t.Fatalf("on m1: klab %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// newLab names a lab and destroys it on m1 when the test ends, before the
// machines go.
func (e *extEtcd) newLab() string {
	lab := testutil.LabName(e.t, "ee")
	e.t.Cleanup(func() { e.klab("destroy", lab) })
	return lab
}

// refused runs a node add that must fail in one sentence containing want,
// and leave nothing of the lab on m1.
func (e *extEtcd) refused(want string, args ...string) time.Duration {
	e.t.Helper()
	lab := e.newLab()
	others := e.m1.Processes()
	start := time.Now()
	out, err := e.klab(append([]string{"node", "add", "node1", "--lab", lab}, args...)...)
	took := time.Since(start)
	if err == nil {
		e.t.Fatalf("node add %v: succeeded, want a refusal:\n%s", args, out)
	}
	if !strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		e.t.Fatalf("node add %v: want one line containing %q, got:\n%s", args, want, out)
	}
	e.t.Logf("refused in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
	e.assertGone(lab, others)
	return took
}

// assertGone checks that m1 holds nothing of lab: no namespace, no
// process (none at all, with others nil; else none but others that do
// not name the lab), no state.
func (e *extEtcd) assertGone(lab string, others []int) {
	e.t.Helper()
	for _, ns := range e.m1.Netns() {
		if strings.Contains(ns, lab) {
			e.t.Errorf("m1 still has namespace %s", ns)
		}
	}
	for _, pid := range e.m1.Processes() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if others == nil || strings.Contains(string(cmdline), lab) || !slices.Contains(others, pid) {
			e.t.Errorf("m1 still runs process %d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	for _, f := range []string{filepath.Join(e.state, lab), filepath.Join(e.state, lab+".lock")} {
		if _, err := os.Lstat(f); err == nil {
			e.t.Errorf("m1 still has %s", f)
		}
	}
}

func (e *extEtcd) labState(lab string) *cluster.Lab {
	e.t.Helper()
	l, err := cluster.Load(e.state, lab)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// agentConns are the PIDs of the agent processes ('klab __agent --node
// NODE') holding a TCP connection to m2 in m1's own namespace, by node,
// as ss -tnp there shows them.
func (e *extEtcd) agentConns() map[string][]int {
	e.t.Helper()
	ss := e.m1.Run("ss", "-tnpH", "state", "established", "dst", e.m2.Addr)
	agents := map[string][]int{}
	for _, line := range strings.Split(ss, "\n") {
		for _, f := range strings.Split(line, "pid=")[1:] {
			pid, _ := strconv.Atoi(strings.SplitN(f, ",", 2)[0])
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			args := strings.Split(string(cmdline), "\x00")
			if i := slices.Index(args, "--node"); slices.Contains(args, "__agent") && i > 0 && i+1 < len(args) && !slices.Contains(agents[args[i+1]], pid) {
				agents[args[i+1]] = append(agents[args[i+1]], pid)
			}
		}
	}
	return agents
}

// hostNet is what m1's own namespace holds: links, addresses, routes,
// rules, one per line, sorted. It first waits (up to 3 s) until IPv6 has
// settled on a new machine: no address still tentative (duplicate address
// detection), eth0's link-local route in place.
func hostNet(m *testutil.Machine) []string {
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m.Run("ip", "-6", "addr", "show", "tentative") == "" && strings.Contains(m.Run("ip", "-6", "route", "show", "table", "all"), "fe80::/64 dev eth0") {
			break
		}
	}
	var lines []string
	for _, args := range [][]string{{"-o", "link", "show"}, {"-o", "addr", "show"}, {"route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}, {"rule", "show"}, {"-6", "rule", "show"}} {
		for _, l := range strings.Split(m.Run("ip", args...), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	slices.Sort(lines)
	return lines
}

// sameNet fails the test if m's namespace gained or lost a line of hostNet.
func sameNet(t testing.TB, m *testutil.Machine, before []string, when string) {
	t.Helper()
	after := hostNet(m)
	var gained, lost []string
	for _, l := range after {
		if !slices.Contains(before, l) {
			gained = append(gained, l)
		}
	}
	for _, l := range before {
		if !slices.Contains(after, l) {
			lost = append(lost, l)
		}
	}
	if len(gained)+len(lost) > 0 {
		t.Errorf("%s, %s's own namespace changed:\ngained:\n  %s\nlost:\n  %s", when, m.Name, strings.Join(gained, "\n  "), strings.Join(lost, "\n  "))
	}
}

// TestExternalEtcd: a two-node lab on m1 whose control plane is Debian's
// etcd on m2 (--etcd-endpoints). A lease written by hand for node1's
// preferred subnet (10.244.1.0/24) by another PublicIP makes node1 take
// another subnet, as flanneld does (flannel-io/flannel
// pkg/subnet/etcd/local_manager.go, tryAcquireLease: a subnet someone
// else's lease holds is skipped for a free one). The pods ping across
// nodes; etcd holds flannel's keys with both PublicIPs; the agents' etcd
// sockets are in m1's namespace, which gains no link, address, route or
// rule; a second lab is refused by the first one's claim; with etcd stopped
// the pods still ping; destroy leaves nothing on m1 and, in etcd, only the
// lease written by hand.
func TestExternalEtcd(t *testing.T) {
	t.Parallel()
	e := newExtEtcd(t, "http")
	e.start()
	hand := `{"PublicIP":"192.168.1.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:c8"}}`
	e.etcdctl("put", "/coreos.com/network/subnets/10.244.1.0-24", hand)
	before := hostNet(e.m1)

	lab := e.newLab()
	e.must("node", "add", "node1", "--lab", lab, "--etcd-endpoints", e.url)
	e.must("node", "add", "node2", "--lab", lab)
	e.must("pod", "add", "pa", "--node", "node1", "--lab", lab)
	e.must("pod", "add", "pb", "--node", "node2", "--lab", lab)
	e.must("ping", "pa", "pb", "-c", "2", "--lab", lab)

	l := e.labState(lab)
	cp := l.ControlPlane
	if cp == nil || !cp.External || !slices.Equal(cp.Endpoints, []string{e.url}) || !cp.Claimed {
		t.Fatalf("lab state's control plane: %+v", cp)
	}
	if got := l.Node("node1").PodCIDR.String(); got != "10.244.2.0/24" {
		t.Errorf("node1 leased %s; want 10.244.2.0/24 (10.244.1.0/24 is 192.168.1.200's)", got)
	}
	if slices.Contains(e.m1.Netns(), "klab."+lab+".control-plane") {
		t.Error("a lab with an external etcd has a control-plane namespace")
	}
	kv := e.etcdctl("get", "--prefix", "/coreos.com/network")
	for _, want := range []string{"/coreos.com/network/config", `"PublicIP":"192.168.1.101"`, `"PublicIP":"192.168.1.102"`, "/coreos.com/network/subnets/10.244.2.0-24", "/coreos.com/network/subnets/10.244.3.0-24"} {
		if !strings.Contains(kv, want) {
			t.Errorf("etcdctl get --prefix /coreos.com/network lacks %s:\n%s", want, kv)
		}
	}

	// Every agent's etcd sockets are in m1's namespace (ss there names
	// the agent processes); none is in a node's.
	if agents := e.agentConns(); len(agents["node1"]) == 0 || len(agents["node2"]) == 0 {
		t.Errorf("ss -tnp on m1 shows no etcd connection of some agent: %v", agents)
	}
	for _, n := range []string{"node1", "node2"} {
		if out := e.m1.Run("ip", "netns", "exec", "klab."+lab+"."+n, "ss", "-tnH"); strings.Contains(out, ":2379") {
			t.Errorf("node %s holds an etcd socket:\n%s", n, out)
		}
	}
	sameNet(t, e.m1, before, "with the lab up")

	// An agent restarted by its supervisor, by 'agent start' and by
	// 'repair' (its supervisor killed) dials from m1's namespace again.
	old := e.agentConns()["node2"][0]
	syscall.Kill(old, syscall.SIGKILL)
	waitFor(t, 5*time.Second, "node2's agent restarted by its supervisor, connected from m1", func() bool {
		pids := e.agentConns()["node2"]
		return len(pids) > 0 && !slices.Contains(pids, old)
	})
	e.must("agent", "stop", "node1", "--lab", lab)
	if pids := e.agentConns()["node1"]; len(pids) != 0 {
		t.Errorf("node1's agent stopped, but processes %v hold etcd connections", pids)
	}
	e.must("agent", "start", "node1", "--lab", lab)
	if len(e.agentConns()["node1"]) == 0 {
		t.Error("node1's agent started again has no etcd connection in m1")
	}
	for _, s := range e.labState(lab).Servers {
		if s.Target == "node1" && s.Proto == "agent" {
			syscall.Kill(s.PID, syscall.SIGKILL) // the supervisor; its agent dies with it
		}
	}
	waitFor(t, 5*time.Second, "node1's agent gone with its supervisor", func() bool { return len(e.agentConns()["node1"]) == 0 })
	e.must("repair", "--lab", lab)
	if len(e.agentConns()["node1"]) == 0 {
		t.Error("node1's agent started by repair has no etcd connection in m1")
	}
	e.must("ping", "pa", "pb", "-c", "1", "--lab", lab)

	// One lab per etcd.
	e.refused("already runs lab "+lab+"'s control plane", "--etcd-endpoints", e.url)

	// etcd down: the kernel keeps the agents' entries.
	e.stop()
	e.must("ping", "pa", "pb", "-c", "1", "--lab", lab)
	e.start()
	waitFor(t, 10*time.Second, "both agents connected to etcd again, from m1", func() bool {
		a := e.agentConns()
		return len(a["node1"]) > 0 && len(a["node2"]) > 0
	})

	e.must("destroy", lab)
	e.assertGone(lab, nil)
	sameNet(t, e.m1, before, "after destroy")
	if keys := e.keys(); !slices.Equal(keys, []string{"/coreos.com/network/subnets/10.244.1.0-24"}) {
		t.Errorf("etcd after destroy holds %v; want only the lease written by hand", keys)
	}
	if out := e.etcdctl("lease", "list"); !strings.Contains(out, "found 0 leases") {
		t.Errorf("etcd after destroy still has leases:\n%s", out)
	}
}

// TestExternalEtcdRefused: bad --etcd-* input is refused in one sentence,
// with nothing left on m1 and nothing written to etcd: a malformed URL, an
// unreachable etcd (within a few seconds), an etcd holding another
// network's config, TLS files that are missing; --dry-run writes nothing.
// Then a lab under another --etcd-prefix runs beside that config, and a
// destroy while etcd is down removes it from m1 and names what stays.
func TestExternalEtcdRefused(t *testing.T) {
	t.Parallel()
	e := newExtEtcd(t, "http")
	e.start()
	other := `{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}`
	e.etcdctl("put", "/coreos.com/network/config", other)

	// --dry-run shows the claim as the etcdctl txn it is and the agent's
	// inherited namespace, and changes nothing.
	dry := e.newLab()
	out := e.must("node", "add", "node1", "--lab", dry, "--dry-run", "--etcd-endpoints", e.url)
	for _, want := range []string{"etcdctl --endpoints " + e.url + " txn <<'EOF'", `put /klab/lab "{\"lab\":\"` + dry, "3</proc/self/ns/net &"} {
		if !strings.Contains(out, want) {
			t.Errorf("--dry-run lacks %q:\n%s", want, out)
		}
	}
	e.assertGone(dry, nil)

	e.refused("is not an etcd client URL", "--etcd-endpoints", "10.250.0.2:2379")
	if took := e.refused("is unreachable", "--etcd-endpoints", "http://10.250.0.9:2379"); took > 8*time.Second {
		t.Errorf("an unreachable etcd took %v to refuse", took)
	}
	e.refused("holds another network's config", "--etcd-endpoints", e.url)
	e.refused("--etcd-cafile /nonexistent/ca.pem: no such file", "--etcd-endpoints", "https://10.250.0.2:2379", "--etcd-cafile", "/nonexistent/ca.pem")
	if keys := e.keys(); !slices.Equal(keys, []string{"/coreos.com/network/config"}) {
		t.Errorf("etcd after the refusals holds %v; want only the config put by hand", keys)
	}
	if got := strings.TrimSpace(e.etcdctl("get", "--print-value-only", "/coreos.com/network/config")); got != other {
		t.Errorf("the config changed: %s", got)
	}

	// Another --etcd-prefix keeps this lab's flannel keys apart from that
	// config. Destroyed while etcd is down, the lab goes from m1, and
	// destroy says what it left in etcd.
	lab := e.newLab()
	e.must("node", "add", "node1", "--lab", lab, "--etcd-endpoints", e.url, "--etcd-prefix", "/ee/network")
	e.stop()
	out = e.must("destroy", lab)
	if !strings.Contains(out, "etcd at "+e.url+" does not answer, so the keys it wrote stay there") || !strings.Contains(out, "etcdctl --endpoints "+e.url+" del --prefix /klab/") {
		t.Errorf("destroy with etcd down does not say what stays there:\n%s", out)
	}
	t.Logf("destroy with etcd down: %s", strings.TrimSpace(out))
	e.assertGone(lab, nil)
	e.start()
	if keys := e.keys(); !slices.Equal(keys, []string{"/coreos.com/network/config", "/ee/network/config", "/ee/network/subnets/10.244.1.0-24", "/klab/lab", "/klab/policy/nodes/node1", "/klab/proxy/nodes/node1", "/klab/underlay/192.168.1.101", "/registry/minions/node1"}) {
		t.Errorf("etcd after a destroy while it was down holds %v", keys)
	}
}

// TestExternalEtcdTLS: etcd on m2 serves https and checks client
// certificates (--cert-file, --key-file, --trusted-ca-file,
// --client-cert-auth; certificates made in the test). A lab with
// flanneld's --etcd-cafile/--etcd-certfile/--etcd-keyfile runs its agent
// over TLS (its lease is in etcd); a CA that did not sign etcd's
// certificate, a client certificate etcd does not trust and none at all
// are each refused in one sentence, leaving nothing.
func TestExternalEtcdTLS(t *testing.T) {
	t.Parallel()
	e := newExtEtcd(t, "https")
	dir := t.TempDir()
	a := testutil.NewPKI(t, dir, "a", e.m2.Addr)
	b := testutil.NewPKI(t, dir, "b", e.m2.Addr)
	e.tls = []string{"--cert-file", a.ServerCert, "--key-file", a.ServerKey, "--trusted-ca-file", a.CA, "--client-cert-auth"}
	e.ctl = []string{"--cacert", a.CA, "--cert", a.ClientCert, "--key", a.ClientKey}
	e.start()

	ep := []string{"--etcd-endpoints", e.url}
	e.refused("refuses the TLS connection", append(ep, "--etcd-cafile", b.CA, "--etcd-certfile", a.ClientCert, "--etcd-keyfile", a.ClientKey)...)
	e.refused("refuses the TLS connection", append(ep, "--etcd-cafile", a.CA, "--etcd-certfile", b.ClientCert, "--etcd-keyfile", b.ClientKey)...)
	e.refused("add --etcd-certfile and --etcd-keyfile", append(ep, "--etcd-cafile", a.CA)...)
	if keys := e.keys(); len(keys) != 0 {
		t.Fatalf("etcd after the refusals holds %v", keys)
	}

	lab := e.newLab()
	e.must(append([]string{"node", "add", "node1", "--lab", lab, "--etcd-prefix", "/ee/network", "--etcd-cafile", a.CA, "--etcd-certfile", a.ClientCert, "--etcd-keyfile", a.ClientKey}, ep...)...)
	if kv := e.etcdctl("get", "--prefix", "/ee/network/subnets/"); !strings.Contains(kv, `"PublicIP":"192.168.1.101"`) {
		t.Fatalf("no lease of node1 under --etcd-prefix /ee/network:\n%s", kv)
	}
	e.must("destroy", lab)
	e.assertGone(lab, nil)
	if keys := e.keys(); len(keys) != 0 {
		t.Errorf("etcd after destroy holds %v", keys)
	}
}

// BenchmarkExternalEtcd times the klab CLI on m1 building a two-node lab
// (first node add: the lab and its control plane; second node add; both
// wait for the agents), with the lab's embedded etcd and with Debian's
// etcd on m2 (--etcd-endpoints), in the same run.
func BenchmarkExternalEtcd(b *testing.B) {
	e := newExtEtcd(b, "http")
	e.start()
	for _, mode := range []string{"embedded", "external"} {
		b.Run(mode, func(b *testing.B) {
			var first, second []float64
			for i := 0; i < b.N; i++ {
				lab := testutil.LabName(b, "ee")
				args := []string{"--control-plane", "etcd"}
				if mode == "external" {
					args = []string{"--etcd-endpoints", e.url}
				}
				t0 := time.Now()
				e.must(append([]string{"node", "add", "node1", "--lab", lab}, args...)...)
				t1 := time.Now()
				e.must("node", "add", "node2", "--lab", lab)
				first, second = append(first, ms(t1.Sub(t0))), append(second, ms(time.Since(t1)))
				e.must("destroy", lab)
			}
			b.ReportMetric(median(first), "first-node-ms")
			b.ReportMetric(median(second), "second-node-ms")
		})
	}
}
