package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// newKPLab is newCPLab under this file's lab prefix.
func newKPLab(t *testing.T, args ...string) *cpLab {
	t.Helper()
	c := newCLI(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	l := &cpLab{cli: c, lab: testutil.LabName(t, "kp")}
	t.Cleanup(func() { c.assertClean(l.lab, "after destroy") })
	c.destroyOnCleanup(l.lab)
	l.must(append([]string{"node", "add", "node1", "--lab", l.lab, "--control-plane", "etcd"}, args...)...)
	return l
}

// dnatTargets is the sorted set of endpoints the node's kernel DNATs the
// lab's service to, read back with iptables-save.
func (l *cpLab) dnatTargets(node, svc string) []string {
	out := sh(l.t, "ip", "netns", "exec", l.ns(node), "iptables-save", "-t", "nat")
	re := regexp.MustCompile(`default/` + svc + `" .*-j DNAT --to-destination (\S+)`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1])
	}
	sort.Strings(got)
	return slices.Compact(got)
}

// spread is which pods answer n requests to url, curled from pod from.
func (l *cpLab) spread(from, url string, n int) map[string]int {
	seen := map[string]int{}
	for range n {
		out, _ := exec.Command("ip", "netns", "exec", l.ns(from), "curl", "-s", "-m", "2", url).Output()
		name := strings.Fields(string(out) + " -")[0]
		seen[name]++
	}
	return seen
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestControlPlaneProxy: kube-proxy's role over etcd. The CLI writes the
// Service and its EndpointSlice where the API server keeps them; the
// agents sync every node's rules from etcd. Read back with etcdctl,
// iptables-save and curl.
func TestControlPlaneProxy(t *testing.T) {
	t.Parallel()
	l := newKPLab(t)
	l.must("node", "add", "node2", "--lab", l.lab)
	l.must("node", "add", "node3", "--lab", l.lab)
	for _, p := range [][2]string{{"client", "node1"}, {"a", "node1"}, {"b", "node2"}, {"c", "node3"}} {
		l.must("pod", "add", p[0], "--node", p[1], "--lab", l.lab)
	}
	for _, p := range []string{"a", "b", "c"} {
		l.must("serve", p, "--port", "8080", "--lab", l.lab)
	}
	l.must("service", "add", "web", "--endpoints", "a,b", "--port", "80", "--target-port", "8080", "--lab", l.lab)
	st := l.labState()
	ip := st.Service("web").ClusterIP.String()
	ep := func(p string) string { return st.Pod(p).IP.String() + ":8080" }
	nodes := []string{"node1", "node2", "node3"}
	everyNode := func(what string, want ...string) {
		t.Helper()
		sort.Strings(want)
		d := waitFor(t, time.Second, what, func() bool {
			for _, n := range nodes {
				if !slices.Equal(l.dnatTargets(n, "web"), want) {
					return false
				}
			}
			return true
		})
		t.Logf("%s: every node in %v", what, d)
	}

	// The objects are under the API server's keys, as the official types.
	var svc corev1.Service
	if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", "/registry/services/specs/default/web")), &svc); err != nil || svc.Spec.ClusterIP != ip || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].TargetPort.IntVal != 8080 {
		t.Fatalf("service in etcd: %+v %v", svc.Spec, err)
	}
	sliceKey := "/registry/endpointslices/default/web"
	var es discoveryv1.EndpointSlice
	if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", sliceKey)), &es); err != nil || len(es.Endpoints) != 2 || es.Labels["kubernetes.io/service-name"] != "web" {
		t.Fatalf("endpointslice in etcd: %+v %v", es, err)
	}
	// The verb returned once every agent synced: no wait needed here.
	for _, n := range nodes {
		if got := l.dnatTargets(n, "web"); !slices.Equal(got, []string{ep("a"), ep("b")}) {
			t.Fatalf("%s DNATs web to %v right after service add", n, got)
		}
	}
	if got := keysOf(l.spread("client", "http://"+ip+"/", 16)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("curl to the ClusterIP reached %v, want a and b", got)
	}

	// An endpoint written by hand with etcdctl: every node follows, and
	// traffic goes only where the slice says.
	es.Endpoints = es.Endpoints[:1]
	cIP := st.Pod("c").IP.String()
	es.Endpoints[0].Addresses = []string{cIP}
	es.Endpoints[0].TargetRef.Name = "c"
	b, _ := json.Marshal(es)
	l.etcdctl("put", sliceKey, string(b))
	everyNode("a slice put by hand", ep("c"))
	if got := keysOf(l.spread("client", "http://"+ip+"/", 6)); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("curl after the hand edit reached %v, want only c", got)
	}
	l.etcdctl("del", sliceKey)
	everyNode("the slice deleted by hand")

	// Readiness goes through etcd too: an unready pod leaves every node.
	l.must("service", "set-endpoints", "web", "a,b,c", "--lab", l.lab)
	everyNode("set-endpoints", ep("a"), ep("b"), ep("c"))
	start := time.Now()
	l.must("pod", "set-ready", "b", "false", "--lab", l.lab)
	everyNode("pod b unready", ep("a"), ep("c"))
	if d := time.Since(start); d > time.Second {
		t.Errorf("an unready pod took %v to leave every node", d)
	}
	if !strings.Contains(l.etcdctl("get", "--print-value-only", sliceKey), `"ready":false`) {
		t.Error("the slice in etcd does not mark b unready")
	}
	l.must("pod", "set-ready", "b", "true", "--lab", l.lab)
	everyNode("pod b ready again", ep("a"), ep("b"), ep("c"))

	// An agent stopped during a service change catches up when started.
	l.must("agent", "stop", "node2", "--lab", l.lab)
	l.must("service", "set-endpoints", "web", "c", "--lab", l.lab)
	if got := l.dnatTargets("node2", "web"); !slices.Equal(got, []string{ep("a"), ep("b"), ep("c")}) {
		t.Fatalf("node2's rules changed with its agent stopped: %v", got)
	}
	if got := l.dnatTargets("node1", "web"); !slices.Equal(got, []string{ep("c")}) {
		t.Fatalf("node1 did not follow while node2's agent was stopped: %v", got)
	}
	l.must("agent", "start", "node2", "--lab", l.lab) // returns once it synced
	if got := l.dnatTargets("node2", "web"); !slices.Equal(got, []string{ep("c")}) {
		t.Fatalf("node2 after its agent started again: %v", got)
	}

	// etcd paused: the data plane keeps forwarding; when it is back the
	// agents reconcile a change written then.
	etcd := l.serverPID("control-plane", "etcd")
	syscall.Kill(etcd, syscall.SIGSTOP)
	if got := keysOf(l.spread("client", "http://"+ip+"/", 3)); !slices.Equal(got, []string{"c"}) {
		syscall.Kill(etcd, syscall.SIGCONT)
		t.Fatalf("with etcd paused, curl to the ClusterIP reached %v, want c", got)
	}
	time.Sleep(3 * time.Second) // long enough for the agents' keepalives to give up
	syscall.Kill(etcd, syscall.SIGCONT)
	l.must("service", "set-endpoints", "web", "a", "--lab", l.lab)
	everyNode("a change after etcd came back", ep("a"))

	// A node added now is built without the services; its agent's first
	// sync adds them before node add returns.
	l.must("node", "add", "node4", "--lab", l.lab)
	if got := l.dnatTargets("node4", "web"); !slices.Equal(got, []string{ep("a")}) {
		t.Fatalf("node4 right after node add DNATs web to %v", got)
	}
	nodes = append(nodes, "node4")

	l.must("service", "del", "web", "--lab", l.lab)
	if keys := l.etcdctl("get", "--prefix", "--keys-only", "/registry/services/") + l.etcdctl("get", "--prefix", "--keys-only", "/registry/endpointslices/"); strings.TrimSpace(keys) != "" {
		t.Fatalf("deleted service still in etcd: %s", keys)
	}
	everyNode("service deleted")
	l.must("destroy", l.lab)
}

// nftTargets is the sorted set of addresses the node's kube-proxy table
// DNATs to, read back with nft -j.
func (l *cpLab) nftTargets(node string) []string {
	out := sh(l.t, "ip", "netns", "exec", l.ns(node), "nft", "-j", "list", "ruleset")
	re := regexp.MustCompile(`"dnat": \{"addr": "([0-9.]+)", "port": (\d+)\}`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1]+":"+m[2])
	}
	sort.Strings(got)
	return slices.Compact(got)
}

// TestControlPlaneProxyNFTables: the agents sync kube-proxy's nftables
// mode with the CLI's own renderer, a hand edit in etcd reaches every
// node's table (nft -j), and a mode switch goes through kube-proxy's
// ConfigMap in etcd.
func TestControlPlaneProxyNFTables(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (Debian nftables)")
	}
	l := newKPLab(t, "--proxy-mode", "nftables")
	l.must("node", "add", "node2", "--lab", l.lab)
	l.must("pod", "add", "client", "--node", "node1", "--lab", l.lab)
	l.must("pod", "add", "a", "--node", "node1", "--lab", l.lab)
	l.must("pod", "add", "b", "--node", "node2", "--lab", l.lab)
	l.must("serve", "a", "--port", "8080", "--lab", l.lab)
	l.must("serve", "b", "--port", "8080", "--lab", l.lab)
	l.must("service", "add", "web", "--endpoints", "a,b", "--port", "80", "--target-port", "8080", "--lab", l.lab)
	st := l.labState()
	ip := st.Service("web").ClusterIP.String()
	a, b := st.Pod("a").IP.String()+":8080", st.Pod("b").IP.String()+":8080"
	for _, n := range []string{"node1", "node2"} {
		if got := l.nftTargets(n); !slices.Equal(got, []string{a, b}) {
			t.Fatalf("%s's nftables DNATs to %v, want a and b", n, got)
		}
	}
	// A hand edit: only b.
	sliceKey := "/registry/endpointslices/default/web"
	var es discoveryv1.EndpointSlice
	if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", sliceKey)), &es); err != nil {
		t.Fatal(err)
	}
	es.Endpoints = es.Endpoints[1:]
	v, _ := json.Marshal(es)
	l.etcdctl("put", sliceKey, string(v))
	waitFor(t, time.Second, "the hand edit in every node's nftables", func() bool {
		return slices.Equal(l.nftTargets("node1"), []string{b}) && slices.Equal(l.nftTargets("node2"), []string{b})
	})
	if got := keysOf(l.spread("client", "http://"+ip+"/", 6)); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("curl reached %v, want only b", got)
	}
	// A frozen agent: the verb waits (bounded), then names it; the change
	// is in etcd and the state, and the agent syncs it once it thaws.
	var pid int
	fmt.Sscan(sh(t, "pgrep", "-f", "__agent --node node2 --lab "+l.lab), &pid)
	syscall.Kill(pid, syscall.SIGSTOP)
	r := l.run(nil, "service", "set-endpoints", "web", "a", "--lab", l.lab)
	syscall.Kill(pid, syscall.SIGCONT)
	if r.code == 0 || !strings.Contains(r.out, "the agents of node2 have not synced them after") {
		t.Fatalf("set-endpoints with node2's agent frozen: exit %d: %s", r.code, r.out)
	}
	t.Logf("frozen agent: %s", strings.TrimSpace(r.out))
	if got := l.nftTargets("node1"); !slices.Equal(got, []string{a}) {
		t.Fatalf("node1 did not follow while node2's agent was frozen: %v", got)
	}
	waitFor(t, 2*time.Second, "node2's agent catching up after it thawed", func() bool { return slices.Equal(l.nftTargets("node2"), []string{a}) })
	if eps := l.labState().Service("web").Endpoints; !slices.Equal(eps, []string{"a"}) {
		t.Fatalf("the lab's state did not record the change: %v", eps)
	}
	l.must("service", "set-endpoints", "web", "b", "--lab", l.lab)

	// The mode switch is kube-proxy's ConfigMap in etcd.
	l.must("proxy-mode", "set", "iptables", "--lab", l.lab)
	if cm := l.etcdctl("get", "--print-value-only", "/registry/configmaps/kube-system/kube-proxy"); !strings.Contains(cm, `mode: iptables`) {
		t.Fatalf("kube-proxy's ConfigMap: %s", cm)
	}
	for _, n := range []string{"node1", "node2"} {
		if got := l.dnatTargets(n, "web"); !slices.Equal(got, []string{b}) {
			t.Errorf("%s in iptables mode DNATs to %v, want b (the slice in etcd)", n, got)
		}
		if out := sh(t, "ip", "netns", "exec", l.ns(n), "nft", "list", "tables"); strings.Contains(out, "kube-proxy") {
			t.Errorf("%s kept kube-proxy's nftables table after the switch: %s", n, out)
		}
	}
	l.must("destroy", l.lab)
}

// TestControlPlaneProxyReadiness: a failing readiness probe is a change
// of the EndpointSlice in etcd, and the pod leaves every node's rules.
func TestControlPlaneProxyReadiness(t *testing.T) {
	t.Parallel()
	l := newKPLab(t)
	l.must("node", "add", "node2", "--lab", l.lab)
	l.must("apply", "-f", "testdata/manifests/ready.yaml", "--lab", l.lab)
	sliceKey := "/registry/endpointslices/default/web"
	readyIn := func() map[string]bool {
		var es discoveryv1.EndpointSlice
		json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", sliceKey)), &es)
		out := map[string]bool{}
		for _, e := range es.Endpoints {
			out[e.TargetRef.Name] = e.Conditions.Ready != nil && *e.Conditions.Ready
		}
		return out
	}
	waitFor(t, 10*time.Second, "both pods ready in etcd", func() bool { r := readyIn(); return len(r) == 2 && !slices.Contains(mapValues(r), false) })
	st := l.labState()
	victim := st.Pods[0]
	want := []string{st.Pods[1].IP.String() + ":8080"}
	everyNode := func() bool {
		return slices.Equal(l.dnatTargets("node1", "web"), want) && slices.Equal(l.dnatTargets("node2", "web"), want)
	}
	start := time.Now()
	l.must("serve", victim.Name, "--port", "8080", "--stop", "--lab", l.lab)
	d := waitFor(t, 5*time.Second, victim.Name+" out of every node's rules after its server stopped", everyNode)
	if readyIn()[victim.ShortName()] {
		t.Errorf("the slice in etcd still marks %s ready", victim.Name)
	}
	t.Logf("server stopped -> probe failed (period 1 s) -> slice in etcd -> every node's rules: %v (%v since the stop)", d, time.Since(start))
	l.must("destroy", l.lab)
}

func mapValues[K comparable, V any](m map[K]V) []V {
	var out []V
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestControlPlaneProxySameAsDirect: the same objects, once synced by the
// agents from etcd and once written by the CLI in a direct-mode lab,
// leave the same iptables on every node (iptables-save, the lab's name
// aside) - also a NodePort service with externalTrafficPolicy Local,
// rendered per node, and a NetworkPolicy (enforced by the agents from etcd).
var npChain = regexp.MustCompile(`(KLAB-NP[A-Z]*-)[A-Z0-9]{16}`)

func TestControlPlaneProxySameAsDirect(t *testing.T) {
	t.Parallel()
	cp := newKPLab(t)
	direct := &cpLab{cli: cp.cli, lab: testutil.LabName(t, "kp")}
	t.Cleanup(func() { cp.assertClean(direct.lab, "after destroy") })
	cp.destroyOnCleanup(direct.lab) // runs before the check above
	direct.must("node", "add", "node1", "--lab", direct.lab)
	for _, l := range []*cpLab{cp, direct} {
		l.must("node", "add", "node2", "--lab", l.lab)
		l.must("pod", "add", "a", "--node", "node1", "--lab", l.lab)
		l.must("pod", "add", "b", "--node", "node2", "--lab", l.lab)
		l.must("pod", "add", "c", "--node", "node2", "--lab", l.lab)
		l.must("service", "add", "web", "--endpoints", "a,b,c", "--port", "80", "--target-port", "8080", "--affinity", "clientip", "--lab", l.lab)
		l.must("service", "add", "loc", "--endpoints", "b,c", "--port", "81", "--type", "NodePort", "--node-port", "30090", "--external-traffic-policy", "Local", "--lab", l.lab)
		l.must("pod", "set-ready", "c", "false", "--lab", l.lab)
		// NetworkPolicies go through etcd too: the agents enforce them.
		l.must("apply", "-f", "../../labs/manifests/networkpolicy/pods.yaml", "--lab", l.lab)
		l.must("apply", "-f", "../../labs/manifests/networkpolicy/deny-all.yaml", "--lab", l.lab)
		l.must("service", "set-endpoints", "web", "a,b", "--lab", l.lab)
	}
	rules := func(l *cpLab, node string) string {
		out := sh(t, "ip", "netns", "exec", l.ns(node), "iptables-save")
		var keep []string
		for _, line := range strings.Split(out, "\n") {
			if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, ":") { // comments, counters
				// Policy chains' names hash the lab's name too.
				keep = append(keep, npChain.ReplaceAllString(strings.ReplaceAll(line, l.lab, "LAB"), "${1}HASH"))
			}
		}
		sort.Strings(keep)
		return strings.Join(keep, "\n")
	}
	for _, n := range []string{"node1", "node2"} {
		a, b := rules(cp, n), rules(direct, n)
		if a != b {
			t.Errorf("%s: the agent's rules differ from direct mode's:\n--- control plane\n%s\n--- direct\n%s", n, a, b)
		}
		if !strings.Contains(a, "KUBE-SVL-") && n == "node2" {
			t.Errorf("%s has no Local chain:\n%s", n, a)
		}
		if !strings.Contains(a, "KLAB-NETPOL") {
			t.Errorf("%s has no NetworkPolicy chains:\n%s", n, a)
		}
	}
	cp.must("destroy", cp.lab)
	direct.must("destroy", direct.lab)
}
