package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// With --dns the lab runs cluster DNS as Kubernetes does: two DNS pods in
// kube-system on different nodes behind kube-dns at 10.96.0.10, every pod
// with the kubelet's resolv.conf. Read back with the real dig and getent
// from pods (through 'ip netns exec', which uses /etc/netns): A records of
// Services, the search path across namespaces, NXDOMAIN with the SOA, TCP,
// PTR, a name outside the cluster forwarded to the external host; answers
// follow a new Service within a second; the query itself is DNAT by
// kube-proxy's rules (conntrack); destroy removes the /etc/netns entries.
func TestClusterDNS(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig is not installed (apt-get install bind9-dnsutils; scripts/install-deps.sh does it)")
	}
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "dn")
	k.destroyOnCleanup(lab)
	k.must("--lab", lab, "node", "add", "node1", "--dns")
	k.must("--lab", lab, "node", "add", "node2")
	out := string(k.stdout(t, "--lab", lab, "get", "pods", "-n", "kube-system", "-o", "wide"))
	if !strings.Contains(out, "node1") || !strings.Contains(out, "node2") || strings.Count(out, "coredns-") != 2 {
		t.Errorf("DNS pods not one per node:\n%s", out)
	}
	k.must("--lab", lab, "namespace", "add", "other")
	k.must("--lab", lab, "pod", "add", "client", "--node", "node1")
	k.must("--lab", lab, "pod", "add", "other/web-1", "--node", "node2", "-l", "app=web")
	k.must("--lab", lab, "service", "add", "other/web", "--port", "80", "--cluster-ip", "10.96.0.80", "--selector", "app=web")
	pod := netns.Name(lab, "client")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", pod}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if rc := run("cat", "/etc/resolv.conf"); rc != "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5" {
		t.Errorf("resolv.conf:\n%s", rc)
	}
	// The servers see a change within a second (they poll the state).
	dig := func(q, want string, args ...string) {
		t.Helper()
		var got string
		for start := time.Now(); time.Since(start) < time.Second; time.Sleep(50 * time.Millisecond) {
			if got = run(append(append([]string{"dig", "+short", "+time=1", "+tries=1"}, args...), q)...); got == want {
				return
			}
		}
		t.Errorf("dig %s %s = %q, want %q within a second", strings.Join(args, " "), q, got, want)
	}
	dig("kube-dns.kube-system.svc.cluster.local", "10.96.0.10")
	dig("web.other.svc.cluster.local", "10.96.0.80")
	dig("www.example.test", "203.0.113.10")
	if got := run("getent", "hosts", "web.other"); !strings.HasPrefix(got, "10.96.0.80") {
		t.Errorf("getent hosts web.other (search path) = %q", got)
	}
	dig("web.other.svc.cluster.local", "10.96.0.80", "+tcp")
	dig("10.96.0.80", "web.other.svc.cluster.local.", "-x")
	if got := run("dig", "nope.default.svc.cluster.local"); !strings.Contains(got, "status: NXDOMAIN") || !strings.Contains(got, "IN\tSOA") {
		t.Errorf("NXDOMAIN without SOA:\n%s", got)
	}
	// klab curl resolves through the cluster DNS too: a fully qualified
	// service name, which only the DNS knows, reaches the pod.
	k.must("--lab", lab, "serve", "other/web-1", "--port", "80")
	if out := k.must("--lab", lab, "curl", "client", "http://web.other.svc.cluster.local/"); !strings.HasPrefix(out, "other/web-1") {
		t.Errorf("klab curl by DNS name: %s", out)
	}
	// A new service is answered within a second.
	k.must("--lab", lab, "service", "add", "db", "--port", "5432", "--cluster-ip", "10.96.0.81", "--endpoints", "client")
	dig("db.default.svc.cluster.local", "10.96.0.81")
	// The lookup went through kube-proxy's DNAT to a DNS pod.
	ct, _ := exec.Command("ip", "netns", "exec", netns.Name(lab, "node1"), "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.10", "--dport", "53").CombinedOutput()
	if !strings.Contains(string(ct), "dst=10.96.0.10") || !strings.Contains(string(ct), "src=10.244.") {
		t.Errorf("no DNAT'ed DNS flow in node1's conntrack:\n%s", ct)
	}
	k.must("destroy", lab)
	if ents, _ := filepath.Glob(filepath.Join("/etc/netns", netns.Prefix+lab+".*")); len(ents) > 0 {
		t.Errorf("destroy left %v", ents)
	}
	if _, err := os.Stat(filepath.Join("/etc/netns", pod)); err == nil {
		t.Error("the pod's /etc/netns entry is still there")
	}
}
