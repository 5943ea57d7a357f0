package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// webPods are seed 003's six-pod service, three pods per node.
var webPods = [][2]string{{"web-1", "node1"}, {"web-2", "node1"}, {"web-3", "node1"}, {"web-4", "node2"}, {"web-5", "node2"}, {"web-6", "node2"}}

// serviceLab is seed003's two-node flannel network plus six web pods
// (label app=web) each serving HTTP on 8080 and UDP on 5353, a client pod on
// node1, and an HTTP server on the external host.
func serviceLab(t *testing.T) *Cluster {
	t.Helper()
	c := seed003(t, BackendVXLAN)
	serve := addWebPods(t, c)
	serve(ExternalName)
	return c
}

// addWebPods adds webPods (label app=web) each serving HTTP on 8080 and UDP
// on 5353, and a client pod on node1; it returns the function that serves
// HTTP on 8080 in another object, stopped at cleanup like the rest.
func addWebPods(t *testing.T, c *Cluster) (serve func(obj string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	serve = func(obj string) {
		l, err := probe.Listen(c.NS(obj), ":8080")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go probe.ServeHTTP(ctx, l, obj)
	}
	for _, p := range webPods {
		if _, err := c.AddPod(PodSpec{Name: p[0], Node: p[1], Labels: map[string]string{"app": "web"}}); err != nil {
			t.Fatal(err)
		}
		serve(p[0])
		u, err := probe.ListenUDP(c.NS(p[0]), ":5353")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		go probe.ServeUDP(ctx, u, p[0])
	}
	if _, err := c.AddPod(PodSpec{Name: "client", Node: "node1"}); err != nil {
		t.Fatal(err)
	}
	return serve
}

func addService(t *testing.T, c *Cluster, s ServiceSpec) *Service {
	t.Helper()
	svc, err := c.AddService(s)
	if err != nil {
		t.Fatalf("add service %s: %v", s.Name, err)
	}
	return svc
}

// tally sends n HTTP requests (a new connection each) from obj's namespace
// and counts the answers by the pod that served them.
func tally(t *testing.T, c *Cluster, obj, url string, n int) map[string]int {
	t.Helper()
	client := probe.Client(c.NS(obj), 2*time.Second)
	out := map[string]int{}
	for i := 0; i < n; i++ {
		body, err := probe.Get(context.Background(), client, url)
		if err != nil {
			t.Fatalf("request %d from %s to %s: %v", i, obj, url, err)
		}
		out[probe.FirstLine(body)]++
	}
	return out
}

// chiSquare is Pearson's statistic of counts against a uniform split.
func chiSquare(counts map[string]int, cats []string, n int) float64 {
	exp := float64(n) / float64(len(cats))
	x := 0.0
	for _, c := range cats {
		d := float64(counts[c]) - exp
		x += d * d / exp
	}
	return x
}

func saveRules(t *testing.T, c *Cluster, node string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", c.NS(node), "iptables-save"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save in %s: %v: %s", node, err, out)
	}
	return string(out)
}

func conntrack(t *testing.T, c *Cluster, node string) []*netlink.ConntrackFlow {
	t.Helper()
	h, err := netns.Handle(c.NS(node))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	return flows
}

func TestServiceClusterIPSpreadsOverSixEndpoints(t *testing.T) {
	c := serviceLab(t)
	svc := addService(t, c, ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}})
	if svc.ClusterIP != netip.MustParseAddr("10.96.0.2") {
		t.Errorf("ClusterIP = %s, want the lowest free address 10.96.0.2", svc.ClusterIP)
	}
	// The kernel holds kube-proxy's layout in both nodes: one statistic rule
	// per endpoint but the last, with probabilities 1/6 ... 1/2.
	for _, node := range []string{"node1", "node2"} {
		text := saveRules(t, c, node, "-t", "nat")
		probs := regexp.MustCompile(`-A KUBE-SVC-\S+ .*--probability (0\.\d+) -j KUBE-SEP-`).FindAllStringSubmatch(text, -1)
		want := []string{"0.1666", "0.2000", "0.2500", "0.3333", "0.5000"}
		if len(probs) != len(want) {
			t.Fatalf("%s: %d statistic rules, want %d:\n%s", node, len(probs), len(want), text)
		}
		for i, p := range probs {
			if !strings.HasPrefix(p[1], want[i]) {
				t.Errorf("%s: endpoint %d probability %s, want %s...", node, i, p[1], want[i])
			}
		}
		if n := strings.Count(text, "-j DNAT --to-destination 10.244."); n != 6 {
			t.Errorf("%s: %d DNAT rules, want 6", node, n)
		}
	}
	// 600 new connections from a pod and from a node: every endpoint is hit,
	// and the split is uniform. Chi-square with 5 degrees of freedom exceeds
	// 45 with probability 1.5e-8; an endpoint missing from 600 requests has
	// probability 6*(5/6)^600 = 2e-47. Neither can flake.
	var names []string
	for _, p := range webPods {
		names = append(names, p[0])
	}
	for _, from := range []string{"client", "node2"} {
		got := tally(t, c, from, "http://10.96.0.2:80/", 600)
		for _, n := range names {
			if got[n] == 0 {
				t.Errorf("from %s: endpoint %s never answered: %v", from, n, got)
			}
		}
		if x := chiSquare(got, names, 600); x > 45 {
			t.Errorf("from %s: split %v is not uniform (chi-square %.1f > 45)", from, got, x)
		}
	}
	// From node2 the connection is DNATed to a pod and, because the node is
	// not a pod, masqueraded: to flannel.1's address (10.244.2.0) when the
	// pod is on node1, as seed 003's conntrack listing shows.
	found := false
	for _, f := range conntrack(t, c, "node2") {
		if f.Forward.DstIP.Equal(svc.ClusterIP.AsSlice()) && f.Forward.DstPort == 80 &&
			strings.HasPrefix(f.Reverse.SrcIP.String(), "10.244.1.") && f.Reverse.SrcPort == 8080 &&
			f.Reverse.DstIP.String() == "10.244.2.0" && f.Forward.SrcIP.String() == "192.168.1.102" {
			found = true
			break
		}
	}
	if !found {
		t.Errorf("node2 has no conntrack entry 192.168.1.102 -> 10.96.0.2:80 replied by a node1 pod to 10.244.2.0 (DNAT + MASQUERADE)")
	}
}

func TestServiceNodePortFromExternalHost(t *testing.T) {
	c := serviceLab(t)
	addService(t, c, ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30080}}, Endpoints: []string{"web-1", "web-4"}})
	for _, node := range []string{"192.168.1.101", "192.168.1.102"} {
		got := tally(t, c, ExternalName, "http://"+node+":30080/", 60)
		if got["web-1"] == 0 || got["web-4"] == 0 || got["web-1"]+got["web-4"] != 60 {
			t.Errorf("NodePort on %s: answers %v, want both web-1 and web-4", node, got)
		}
	}
	// NodePort traffic is masqueraded: the pod on the other node answers
	// node2's flannel.1 address, the one on node2 its cni0 address.
	web1, web4 := c.Lab.Pod("web-1").IP.String(), c.Lab.Pod("web-4").IP.String()
	var remote, local bool
	for _, f := range conntrack(t, c, "node2") {
		if f.Forward.SrcIP.String() != ExternalIP.String() || f.Forward.DstPort != 30080 {
			continue
		}
		switch {
		case f.Reverse.SrcIP.String() == web1 && f.Reverse.DstIP.String() == "10.244.2.0":
			remote = true
		case f.Reverse.SrcIP.String() == web4 && f.Reverse.DstIP.String() == "10.244.2.1":
			local = true
		}
	}
	if !remote || !local {
		t.Errorf("node2 conntrack: masqueraded NodePort entries to web-1 via flannel.1 (%v) and to web-4 via cni0 (%v)", remote, local)
	}
}

func TestServiceHairpinAffinityUDPAndNoEndpoints(t *testing.T) {
	c := serviceLab(t)
	self := addService(t, c, ServiceSpec{Name: "self", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"web-2"}})
	sticky := addService(t, c, ServiceSpec{Name: "sticky", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}, Affinity: nat.AffinityClientIP})
	dns := addService(t, c, ServiceSpec{Name: "dns", Ports: []nat.ServicePort{{Name: "dns", Protocol: nat.UDP, Port: 53, TargetPort: 5353}, {Name: "http", Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}})
	empty := addService(t, c, ServiceSpec{Name: "empty", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "none"}})

	t.Run("hairpin", func(t *testing.T) {
		// web-2 reaches itself through its own service: DNAT back to its
		// own address, masqueraded (KUBE-SEP's -s rule) so the reply
		// returns through the node.
		got := tally(t, c, "web-2", "http://"+self.ClusterIP.String()+"/", 5)
		if got["web-2"] != 5 {
			t.Errorf("hairpin answers %v, want web-2 x5", got)
		}
	})
	t.Run("affinity", func(t *testing.T) {
		got := tally(t, c, "client", "http://"+sticky.ClusterIP.String()+"/", 50)
		if len(got) != 1 {
			t.Errorf("ClientIP affinity spread one client over %v, want one endpoint", got)
		}
		if !strings.Contains(saveRules(t, c, "node1", "-t", "nat"), "-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-") {
			t.Error("no '-m recent --rcheck' rule in node1")
		}
	})
	t.Run("udp", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 30; i++ {
			body, err := probe.UDPRequest(context.Background(), c.NS("client"), dns.ClusterIP.String()+":53", 2*time.Second)
			if err != nil {
				t.Fatalf("UDP request %d: %v", i, err)
			}
			seen[probe.FirstLine(body)] = true
		}
		if len(seen) < 2 {
			t.Errorf("30 UDP requests (new source port each) all answered by %v", seen)
		}
		got := tally(t, c, "client", "http://"+dns.ClusterIP.String()+":80/", 5)
		if len(got) == 0 {
			t.Error("second port of a multi-port service did not answer")
		}
	})
	t.Run("no endpoints", func(t *testing.T) {
		// kube-proxy REJECTs in the filter table: the client gets an
		// immediate "connection refused", not a timeout.
		_, err := probe.Get(context.Background(), probe.Client(c.NS("client"), 2*time.Second), "http://"+empty.ClusterIP.String()+"/")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("service without endpoints: %v, want connection refused", err)
		}
		if !strings.Contains(saveRules(t, c, "node1", "-t", "filter"), "default/empty has no endpoints") {
			t.Error("no REJECT rule for default/empty in node1's filter table")
		}
	})
}

// chainPackets sums the packet counters of a chain's rules in a node: each
// new connection to a service matches exactly one of its KUBE-SVC rules.
func chainPackets(t *testing.T, c *Cluster, node, chain string) int {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\[(\d+):\d+\] -A ` + regexp.QuoteMeta(chain) + ` `)
	ms := re.FindAllStringSubmatch(saveRules(t, c, node, "-c", "-t", "nat"), -1)
	if ms == nil {
		t.Fatalf("chain %s has no rules in %s", chain, node)
	}
	total := 0
	for _, m := range ms {
		var n int
		fmt.Sscan(m[1], &n)
		total += n
	}
	return total
}

func TestEndpointChangeRewritesOnlyThatService(t *testing.T) {
	c := serviceLab(t)
	a := addService(t, c, ServiceSpec{Name: "a", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}})
	b := addService(t, c, ServiceSpec{Name: "b", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"web-1", "web-4"}})
	chain := func(s *Service) string { return nat.SVCChain("default/"+s.Name, nat.TCP) }
	tally(t, c, "client", "http://"+a.ClusterIP.String()+"/", 10)
	tally(t, c, "client", "http://"+b.ClusterIP.String()+"/", 10)
	beforeA, beforeB := chainPackets(t, c, "node1", chain(a)), chainPackets(t, c, "node1", chain(b))
	if beforeA == 0 || beforeB == 0 {
		t.Fatalf("no packets counted in the services' chains (a %d, b %d)", beforeA, beforeB)
	}
	// Deleting a pod takes it out of service a (selector) only. Rewriting a
	// chain resets its counters, so counters that survive prove which
	// chains iptables-restore left alone.
	gone := c.Lab.Pod("web-6").IP.String() + ":8080"
	if err := c.DelPod("web-6"); err != nil {
		t.Fatal(err)
	}
	if got := chainPackets(t, c, "node1", chain(b)); got != beforeB {
		t.Errorf("service b's chain counter went %d -> %d: it was rewritten although b did not change", beforeB, got)
	}
	if got := chainPackets(t, c, "node1", chain(a)); got != 0 {
		t.Errorf("service a's chain counter is %d: it should have been rewritten (reset to 0)", got)
	}
	text := saveRules(t, c, "node1", "-t", "nat")
	if strings.Contains(text, gone) {
		t.Errorf("the deleted pod web-6 (%s) is still a DNAT target", gone)
	}
	if n := strings.Count(text, "-A "+chain(a)+" "); n != 6 { // masq rule + 5 endpoints
		t.Errorf("service a has %d rules after losing an endpoint, want 6", n)
	}
	// Explicit endpoints can be replaced too; a pod with the label joins a.
	if err := c.SetEndpoints("b", []string{"web-2"}); err != nil {
		t.Fatal(err)
	}
	if got := tally(t, c, "client", "http://"+b.ClusterIP.String()+"/", 10); got["web-2"] != 10 {
		t.Errorf("after set-endpoints, b answers %v, want web-2 only", got)
	}
	if _, err := c.AddPod(PodSpec{Name: "web-7", Node: "node2", Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(saveRules(t, c, "node2", "-t", "nat"), "-A "+chain(a)+" "); n != 7 {
		t.Errorf("service a has %d rules in node2 after web-7 joined, want 7", n)
	}
}

func TestPodEgressIsMasqueraded(t *testing.T) {
	c := serviceLab(t)
	body, err := probe.Get(context.Background(), probe.Client(c.NS("client"), 2*time.Second), "http://"+ExternalIP.String()+":8080/")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "client: 192.168.1.101:") {
		t.Errorf("the external host saw %q, want node1's address 192.168.1.101 as the source", body)
	}
	// Pod to pod across nodes keeps the pod's address (no masquerade).
	l, err := probe.Listen(c.NS("pod-c"), ":8081")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go probe.ServeHTTP(ctx, l, "pod-c")
	body, err = probe.Get(context.Background(), probe.Client(c.NS("client"), 2*time.Second), "http://10.244.2.2:8081/")
	if err != nil {
		t.Fatal(err)
	}
	client := c.Lab.Pod("client").IP.String()
	if !strings.Contains(body, "client: "+client+":") {
		t.Errorf("pod-c saw %q, want the client pod's own address %s", body, client)
	}
}

func TestServiceBadInputChangesNothing(t *testing.T) {
	c := serviceLab(t)
	addService(t, c, ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30080}}, Endpoints: []string{"web-1"}})
	before := saveRules(t, c, "node1")
	for _, tc := range []struct {
		spec ServiceSpec
		want string
	}{
		{ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"web-1"}}, "already exists"},
		{ServiceSpec{Name: "x", Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"nope"}}, `endpoint "nope" is not a pod`},
		{ServiceSpec{Name: "x", Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"web-1", "web-1"}}, "twice"},
		{ServiceSpec{Name: "x", Ports: []nat.ServicePort{{Port: 80, NodePort: 30080}}, Endpoints: []string{"web-1"}}, "already used by service"},
		{ServiceSpec{Name: "x", ClusterIP: netip.MustParseAddr("10.244.1.9"), Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"web-1"}}, "outside the service CIDR"},
		{ServiceSpec{Name: "x", Ports: []nat.ServicePort{{Port: 70000}}, Endpoints: []string{"web-1"}}, "out of range"},
		{ServiceSpec{Name: "Bad_Name", Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"web-1"}}, "service name"},
	} {
		_, err := c.AddService(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddService(%+v) = %v, want an error containing %q", tc.spec, err, tc.want)
		}
	}
	if after := saveRules(t, c, "node1"); stripComments(after) != stripComments(before) {
		t.Errorf("bad input changed node1's rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if len(c.Lab.Services) != 1 {
		t.Errorf("lab has %d services after bad input, want 1", len(c.Lab.Services))
	}
}

// stripComments drops iptables-save's "# Generated/Completed" timestamps.
func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
