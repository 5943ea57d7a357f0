package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	networkingv1 "k8s.io/api/networking/v1"
)

// newNPLab is newCPLab under this file's lab prefix, with node2 and three
// pods applied from a manifest, each serving HTTP on port 80: client and
// other on node1, db on node2.
func newNPLab(t *testing.T, args ...string) *cpLab {
	t.Helper()
	c := newCLI(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	l := &cpLab{cli: c, lab: testutil.LabName(t, "np")}
	t.Cleanup(func() { c.assertClean(l.lab, "after destroy") })
	c.destroyOnCleanup(l.lab)
	l.must(append([]string{"node", "add", "node1", "--lab", l.lab, "--control-plane", "etcd"}, args...)...)
	l.must("node", "add", "node2", "--lab", l.lab)
	l.apply(npPod("client", "node1", "role: client") + "---\n" + npPod("other", "node1", "role: other") + "---\n" + npPod("db", "node2", "app: db"))
	return l
}

func npPod(name, node, label string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + ", labels: {" + label + "}}\nspec:\n  nodeName: " + node +
		"\n  containers: [{name: web, image: web, ports: [{name: http, containerPort: 80}]}]\n"
}

const (
	npDenyAll = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n"
	npAllowDB = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-allow-client}\nspec:\n  podSelector: {matchLabels: {app: db}}\n" +
		"  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: http}]}]\n"
	// npFromOther is written by hand with etcdctl: the JSON of a
	// networking.k8s.io/v1 NetworkPolicy admitting role=other to every
	// pod, so it changes both nodes (other -> db on node2, other -> client
	// on node1).
	npFromOther = `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"from-other","namespace":"default"},` +
		`"spec":{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{"from":[{"podSelector":{"matchLabels":{"role":"other"}}}]}]}}`
	npFromOtherKey  = "/registry/networkpolicies/default/from-other"
	npFromOtherYAML = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-other}\n" +
		"spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {role: other}}}]}]\n"
)

// apply applies a manifest with klab apply -f.
func (l *cpLab) apply(manifest string) string {
	l.t.Helper()
	f := filepath.Join(l.t.TempDir(), "m.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return l.must("apply", "-f", f, "--lab", l.lab)
}

// reaches reports whether pod from gets pod to's echo server's answer.
func (l *cpLab) reaches(from, to string) bool {
	ip := l.labState().Pod(to).IP.String()
	out, err := exec.Command("ip", "netns", "exec", l.ns(from), "curl", "-s", "-m", "1", "http://"+ip+"/").Output()
	return err == nil && strings.Fields(string(out) + " -")[0] == to
}

// expect checks pairs "from>to" against want with real connections.
func (l *cpLab) expect(stage string, want map[string]bool) {
	l.t.Helper()
	for pair, ok := range want {
		from, to, _ := strings.Cut(pair, ">")
		if got := l.reaches(from, to); got != ok && l.reaches(from, to) != ok { // a second try for a loaded machine
			l.t.Errorf("%s: %s -> %s connects=%v, want %v", stage, from, to, got, ok)
		}
	}
}

// policyAcks are the agents' policy acks by node.
func (l *cpLab) policyAcks() map[string]cluster.PolicyAck {
	out := map[string]cluster.PolicyAck{}
	for _, n := range []string{"node1", "node2"} {
		var a cluster.PolicyAck
		if json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", cluster.PolicyAckPrefix+n)), &a) == nil {
			out[n] = a
		}
	}
	return out
}

// etcdWrite runs etcdctl put or del and returns the revision it wrote.
func (l *cpLab) etcdWrite(args ...string) int64 {
	l.t.Helper()
	var r struct {
		Header struct {
			Revision int64 `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal([]byte(l.etcdctl(append(args, "-w", "json")...)), &r); err != nil || r.Header.Revision == 0 {
		l.t.Fatalf("etcdctl %v: %v", args, err)
	}
	return r.Header.Revision
}

// everyNodeAcks waits (1 s) until both agents acked rev.
func (l *cpLab) everyNodeAcks(what string, rev int64) time.Duration {
	l.t.Helper()
	d := waitFor(l.t, time.Second, what+" synced by every node's agent", func() bool {
		a := l.policyAcks()
		return a["node1"].Revision >= rev && a["node2"].Revision >= rev
	})
	l.t.Logf("%s: every node acked revision %d in %v", what, rev, d)
	return d
}

// TestControlPlanePolicy: NetworkPolicies through etcd, iptables mode.
// klab apply writes the policies, pods and namespaces under the API
// server's keys; each node's agent enforces them for its pods. Read back
// with etcdctl, iptables-save -c and curl between the pods.
func TestControlPlanePolicy(t *testing.T) {
	t.Parallel()
	l := newNPLab(t)
	if out := l.etcdctl("get", "--print-value-only", "/registry/pods/default/db"); !strings.Contains(out, `"podIP":"`+l.labState().Pod("db").IP.String()+`"`) || !strings.Contains(out, `"nodeName":"node2"`) {
		t.Fatalf("the pod in etcd: %s", out)
	}
	if out := l.etcdctl("get", "--print-value-only", "/registry/namespaces/default"); !strings.Contains(out, `"kind":"Namespace"`) {
		t.Fatalf("the namespace in etcd: %s", out)
	}
	l.expect("no policy", map[string]bool{"client>db": true, "other>db": true, "other>client": true})

	// Default deny, then an allow: the verbs return once every agent
	// acked, so the kernel enforces them right away.
	l.apply(npDenyAll)
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal([]byte(l.etcdctl("get", "--print-value-only", "/registry/networkpolicies/default/deny-all")), &np); err != nil || np.Kind != "NetworkPolicy" || np.Spec.PolicyTypes[0] != networkingv1.PolicyTypeIngress {
		t.Fatalf("the policy in etcd: %+v %v", np, err)
	}
	l.expect("deny-all", map[string]bool{"client>db": false, "other>db": false, "other>client": false})
	l.apply(npAllowDB)
	l.expect("deny-all + db-allow-client", map[string]bool{"client>db": true, "other>db": false, "other>client": false})
	if acks := l.policyAcks(); acks["node1"].Policies != 2 || acks["node2"].Pods != 1 || acks["node1"].Pods != 2 {
		t.Errorf("acks: %+v", acks)
	}
	for _, n := range []string{"node1", "node2"} {
		if out := sh(t, "ip", "netns", "exec", l.ns(n), "iptables-save", "-t", "filter"); !strings.Contains(out, "KLAB-NETPOL") {
			t.Errorf("%s has no policy chains:\n%s", n, out)
		}
	}

	// A policy written by hand with etcdctl: every node enforces it
	// within 1 s, and stops when it is deleted by hand.
	l.everyNodeAcks("a NetworkPolicy put by hand", l.etcdWrite("put", npFromOtherKey, npFromOther))
	l.expect("from-other put by hand", map[string]bool{"other>db": true, "other>client": true, "client>db": true})
	l.everyNodeAcks("the NetworkPolicy deleted by hand", l.etcdWrite("del", npFromOtherKey))
	l.expect("from-other deleted by hand", map[string]bool{"other>db": false, "other>client": false})

	// A pod's labels changed through the CLI: node2 admits it now.
	l.apply(npPod("other", "node1", "role: client"))
	l.expect("other relabelled role=client", map[string]bool{"other>db": true, "db>client": false})

	// An agent restart resyncs and rewrites nothing: the counters of
	// every rule (the drop rule that just counted db -> client included)
	// stay as they were.
	counters := func() string {
		var keep []string
		for _, line := range strings.Split(sh(t, "ip", "netns", "exec", l.ns("node1"), "iptables-save", "-c", "-t", "filter"), "\n") {
			if strings.Contains(line, "-A KLAB-NP") { // the policy chains' rules
				keep = append(keep, line)
			}
		}
		return strings.Join(keep, "\n")
	}
	before := counters()
	if !countedDrop.MatchString(before) {
		t.Fatalf("no drop rule counted db -> client on node1:\n%s", before)
	}
	l.must("agent", "stop", "node1", "--lab", l.lab)
	l.must("agent", "start", "node1", "--lab", l.lab)
	if first := l.firstPolicySync("node1"); !strings.Contains(first, "nothing changed") {
		t.Errorf("the restarted agent's first policy sync: %q", first)
	}
	if after := counters(); after != before {
		t.Errorf("the restarted agent rewrote rules:\n--- before\n%s\n--- after\n%s", before, after)
	}

	// A chain flushed while the agent was down: its first sync compares
	// with the kernel and rebuilds it.
	flush := func() {
		out := sh(t, "ip", "netns", "exec", l.ns("node1"), "iptables-save", "-t", "filter")
		m := regexp.MustCompile(`ingress of default/client isolated .* -j (KLAB-NPI-\S+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no ingress chain of client on node1:\n%s", out)
		}
		sh(t, "ip", "netns", "exec", l.ns("node1"), "iptables", "-F", m[1])
	}
	drifted := func() []string {
		if infos := l.list(l.lab); len(infos) == 1 {
			return infos[0].Problems
		}
		return []string{"lab not listed"}
	}
	l.must("agent", "stop", "node1", "--lab", l.lab)
	flush()
	l.must("agent", "start", "node1", "--lab", l.lab)
	if first := l.firstPolicySync("node1"); !strings.Contains(first, "kernel operation(s)") {
		t.Errorf("the first policy sync after a flush: %q", first)
	}
	l.expect("a chain flushed while the agent was down", map[string]bool{"db>client": false})
	if p := drifted(); len(p) > 0 {
		t.Errorf("after the agent's resync klab list says %v", p)
	}
	// klab list's drift check and klab repair, with the agent running.
	flush()
	if p := drifted(); len(p) != 1 || !strings.Contains(p[0], "NetworkPolicy chains") {
		t.Errorf("klab list after a flush: %v", p)
	}
	if out := l.must("repair", l.lab); !strings.Contains(out, "rebuilt policies") {
		t.Errorf("klab repair: %s", out)
	}
	l.expect("repaired", map[string]bool{"db>client": false, "client>db": true})

	// explain keeps working: the kernel enforces the lab's state.
	if out := l.must("policy", "explain", "db", "client:80", "--lab", l.lab); !strings.Contains(out, "confirmed") {
		t.Errorf("policy explain: %s", out)
	}

	// etcd paused: the nodes keep enforcing; a change after it resumes
	// reaches every node.
	etcd := l.serverPID("control-plane", "etcd")
	syscall.Kill(etcd, syscall.SIGSTOP)
	l.expect("etcd paused", map[string]bool{"client>db": true, "db>client": false})
	syscall.Kill(etcd, syscall.SIGCONT)
	l.apply(npPod("other", "node1", "role: other"))
	l.expect("after etcd resumed", map[string]bool{"other>db": false, "client>db": true})

	// etcd killed: the nodes keep enforcing; 'klab repair' starts etcd
	// again (its data is in the state directory), the agents' watches
	// resume (the etcd client retries them from the last revision; a
	// watch that ends makes the role list again with backoff), and the
	// next change reaches every node within the verb's bound.
	syscall.Kill(l.serverPID("control-plane", "etcd"), syscall.SIGKILL)
	l.expect("etcd killed", map[string]bool{"client>db": true, "other>db": false})
	if out := l.must("repair", l.lab); !strings.Contains(out, "etcd") {
		t.Errorf("repair with etcd killed: %s", out)
	}
	l.apply(npPod("other", "node1", "role: client"))
	l.expect("a change after etcd came back", map[string]bool{"other>db": true})
	l.must("destroy", l.lab)
}

// firstPolicySync waits (2 s) for the policy role's first sync line in
// the log of node's agent, just started: agent start returns once the
// acks in etcd are at the newest revision, which the stopped agent's
// last ack already is when nothing changed since.
func (l *cpLab) firstPolicySync(node string) string {
	l.t.Helper()
	var line string
	waitFor(l.t, 2*time.Second, "the first policy sync of "+node+"'s agent", func() bool {
		line = lastWith(strings.Split(l.must("agent", "log", node, "--lab", l.lab), "\n"), "policy: sync:")
		return line != ""
	})
	return line
}

// countedDrop is a policy drop rule that counted packets, in
// iptables-save -c.
var countedDrop = regexp.MustCompile(`(?m)^\[[1-9][0-9]*:[0-9]+\] -A KLAB-NP.* -j DROP`)

func lastWith(lines []string, s string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// TestControlPlanePolicyNFTables: in nftables mode each agent enforces
// its node's policies in table ip klab-policy (no iptables chain, no
// ipset), a policy put by hand reaches every node's table within 1 s, and
// a proxy mode switch through kube-proxy's ConfigMap moves them to the
// iptables form.
func TestControlPlanePolicyNFTables(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (Debian nftables)")
	}
	l := newNPLab(t, "--proxy-mode", "nftables")
	l.apply(npDenyAll + "---\n" + npAllowDB)
	l.expect("deny-all + db-allow-client", map[string]bool{"client>db": true, "other>db": false, "other>client": false})
	table := func(n string) string {
		out, _ := exec.Command("ip", "netns", "exec", l.ns(n), "nft", "-j", "list", "table", "ip", "klab-policy").CombinedOutput()
		return string(out)
	}
	for _, n := range []string{"node1", "node2"} {
		if out := table(n); !strings.Contains(out, `"chain"`) {
			t.Errorf("%s has no policy table: %s", n, out)
		}
		if out := sh(t, "ip", "netns", "exec", l.ns(n), "iptables-save", "-t", "filter"); strings.Contains(out, "KLAB-NP") {
			t.Errorf("%s has iptables policy chains in nftables mode:\n%s", n, out)
		}
	}
	before := table("node1")
	l.everyNodeAcks("a NetworkPolicy put by hand", l.etcdWrite("put", npFromOtherKey, npFromOther))
	if table("node1") == before {
		t.Error("node1's table did not change for the policy put by hand")
	}
	l.expect("from-other put by hand", map[string]bool{"other>db": true, "other>client": true})
	l.everyNodeAcks("the NetworkPolicy deleted by hand", l.etcdWrite("del", npFromOtherKey))
	l.expect("from-other deleted by hand", map[string]bool{"other>db": false})

	// A frozen agent: the verb waits (bounded), then names it; the policy
	// is in etcd and in the lab's state, and the agent enforces it once
	// it thaws.
	var pid int
	fmt.Sscan(sh(t, "pgrep", "-f", "__agent --node node2 --lab "+l.lab), &pid)
	syscall.Kill(pid, syscall.SIGSTOP)
	f := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(f, []byte(strings.ReplaceAll(npFromOtherYAML, "from-other", "from-other-2")), 0o600)
	r := l.run(nil, "apply", "-f", f, "--lab", l.lab)
	syscall.Kill(pid, syscall.SIGCONT)
	if r.code == 0 || !strings.Contains(r.out, "the network policies are in etcd") || !strings.Contains(r.out, "the agents of node2 have not synced them after") {
		t.Fatalf("apply with node2's agent frozen: exit %d: %s", r.code, r.out)
	}
	t.Logf("frozen agent: %s", strings.TrimSpace(r.out))
	if l.labState().Policy("default", "from-other-2") == nil {
		t.Error("the lab's state did not record the policy the frozen agent lagged on")
	}
	waitFor(t, 2*time.Second, "node2's agent catching up after it thawed", func() bool {
		return l.policyAcks()["node2"].Policies == 3
	})
	l.expect("from-other-2 after node2 thawed", map[string]bool{"other>db": true})
	l.must("delete", "-f", f, "--lab", l.lab)

	l.must("proxy-mode", "set", "iptables", "--lab", l.lab)
	for _, n := range []string{"node1", "node2"} {
		if out := table(n); strings.Contains(out, `"chain"`) {
			t.Errorf("%s kept the policy table after the switch to iptables", n)
		}
		if out := sh(t, "ip", "netns", "exec", l.ns(n), "iptables-save", "-t", "filter"); !strings.Contains(out, "KLAB-NETPOL") {
			t.Errorf("%s has no iptables policy chains after the switch:\n%s\n%s", n, out, l.must("agent", "log", n, "--lab", l.lab))
		}
	}
	l.expect("after the switch to iptables", map[string]bool{"client>db": true, "other>db": false})
	for _, n := range []string{"node1", "node2"} {
		if log := l.must("agent", "log", n, "--lab", l.lab); strings.Contains(log, "anyway") || strings.Contains(log, "policy: watch (") && !strings.Contains(log, "the policies move to its form") {
			t.Errorf("%s's agent:\n%s", n, log)
		}
	}
	l.must("destroy", l.lab)
}
