package cluster

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/policy"
	"github.com/klab-dev/klab/pkg/probe"
)

// localLab is two flannel nodes (node1 192.168.1.101, node2 192.168.1.102)
// with an HTTP echo pod on each (web-1 on node1, web-4 on node2, port
// 8080) and a client pod on node2.
func localLab(t *testing.T) *Cluster {
	t.Helper()
	return localLabMode(t, "")
}

// localLabMode is localLab with kube-proxy in the given proxy mode.
func localLabMode(t *testing.T, mode string) *Cluster {
	t.Helper()
	c := twoNodes(t, "dp", Options{Backend: BackendVXLAN, ProxyMode: mode})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, p := range [][2]string{{"web-1", "node1"}, {"web-4", "node2"}, {"client", "node2"}} {
		if _, err := c.AddPod(PodSpec{Name: p[0], Node: p[1]}); err != nil {
			t.Fatal(err)
		}
		l, err := probe.Listen(c.NS(p[0]), ":8080")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go probe.ServeHTTP(ctx, l, p[0])
	}
	return c
}

// curlFrom runs curl(1) in obj's namespace: the body, or "" when the
// connection timed out (curl's exit 28).
func curlFrom(t *testing.T, c *Cluster, obj, url string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", c.NS(obj), "curl", "-s", "--max-time", "1", url).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 28 {
			return ""
		}
		t.Fatalf("curl %s from %s: %v", url, obj, err)
	}
	return string(out)
}

// TestExternalTrafficPolicyLocal: a NodePort with the Local policy answers
// the external host only on the node hosting the endpoint, with the
// client's own address (the echo body and conntrack show 203.0.113.10, not
// a node address); the other node drops it (a timeout, counted on the
// DROP rule), yet pods still reach the NodePort on that node. Moving the
// endpoint moves the answering node.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	c := localLab(t)
	if _, err := c.AddService(ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30081}},
		Endpoints: []string{"web-1"}, ExternalTrafficPolicy: nat.PolicyLocal}); err != nil {
		t.Fatal(err)
	}
	svc := nat.SVCChain("default/web", nat.TCP)
	ext, svl := nat.EXTChain("default/web", nat.TCP), nat.SVLChain("default/web", nat.TCP)
	web1 := c.Lab.Pod("web-1").IP.String()

	// iptables-save, in upstream's layout (proxier_test.go
	// TestExternalTrafficPolicyLocal / TestOverallIPTablesRules ns2/svc2).
	n1, n2 := saveRules(t, c, "node1"), saveRules(t, c, "node2")
	for _, want := range []string{
		`-A ` + ext + ` -s 10.244.0.0/16 -m comment --comment "klab:` + c.Lab.Name + ` pod traffic for default/web external destinations" -j ` + svc,
		`-A ` + ext + ` -m comment --comment "klab:` + c.Lab.Name + ` masquerade LOCAL traffic for default/web external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
		`-A ` + ext + ` -m comment --comment "klab:` + c.Lab.Name + ` route LOCAL traffic for default/web external destinations" -m addrtype --src-type LOCAL -j ` + svc,
		`-A ` + ext + ` -m comment --comment "klab:` + c.Lab.Name + `" -j ` + svl,
		`-A ` + svl + ` -m comment --comment "klab:` + c.Lab.Name + ` default/web -> ` + web1 + `:8080" -j ` + nat.SEPChain("default/web", nat.TCP, web1+":8080"),
	} {
		if !strings.Contains(n1, want+"\n") {
			t.Errorf("node1 iptables-save lacks\n  %s\n%s", want, n1)
		}
	}
	if strings.Contains(n1, "no local endpoints") {
		t.Errorf("node1 hosts web-1 but drops its NodePort:\n%s", n1)
	}
	drop := `-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "klab:` + c.Lab.Name + ` default/web has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP`
	if !strings.Contains(n2, drop+"\n") {
		t.Errorf("node2 iptables-save lacks\n  %s\n%s", drop, n2)
	}
	if strings.Contains(n2, ":"+svl) || strings.Contains(n2, "-j "+svl) {
		t.Errorf("node2 has no endpoint of web but has %s:\n%s", svl, n2)
	}

	// Node with the endpoint: answered by web-1, which sees the client.
	body := curlFrom(t, c, ExternalName, "http://192.168.1.101:30081/")
	if !strings.HasPrefix(body, "web-1\n") || !strings.Contains(body, "client: "+ExternalIP.String()+":") {
		t.Errorf("external host -> node1:30081 got %q, want web-1 seeing client %s", body, ExternalIP)
	}
	found := false
	for _, f := range conntrack(t, c, "node1") {
		if f.Forward.SrcIP.String() == ExternalIP.String() && f.Forward.DstPort == 30081 &&
			f.Reverse.SrcIP.String() == web1 && f.Reverse.DstIP.String() == ExternalIP.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("node1 has no conntrack entry %s -> 192.168.1.101:30081 answered by %s to %s itself (DNAT, no SNAT)", ExternalIP, web1, ExternalIP)
	}
	// Node without: dropped, not refused, and the DROP rule counted it.
	if body := curlFrom(t, c, ExternalName, "http://192.168.1.102:30081/"); body != "" {
		t.Errorf("external host -> node2:30081 got %q, want a timeout (no local endpoint: DROP)", body)
	}
	if !regexp.MustCompile(`\[[1-9][0-9]*:[0-9]+\] ` + regexp.QuoteMeta(drop)).MatchString(saveRules(t, c, "node2", "-c")) {
		t.Errorf("node2's DROP rule counted no packet:\n%s", saveRules(t, c, "node2", "-c"))
	}
	// A pod reaching node2's NodePort is not subject to the policy.
	if body := curlFrom(t, c, "client", "http://192.168.1.102:30081/"); !strings.HasPrefix(body, "web-1\n") {
		t.Errorf("client pod -> node2:30081 got %q, want web-1 (pod traffic short-circuits to KUBE-SVC)", body)
	}

	// The endpoint moves to node2: node2 answers, node1 drops.
	if err := c.SetEndpoints("web", []string{"web-4"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		b2, b1 := curlFrom(t, c, ExternalName, "http://192.168.1.102:30081/"), curlFrom(t, c, ExternalName, "http://192.168.1.101:30081/")
		if strings.HasPrefix(b2, "web-4\n") && strings.Contains(b2, "client: "+ExternalIP.String()+":") && b1 == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after moving the endpoint to web-4: node2 answers %q (want web-4 seeing %s), node1 %q (want a timeout)", b2, ExternalIP, b1)
		}
	}
}

// TestExternalTrafficPolicyNeedsNodePort: the policy on a service without
// a NodePort is refused in one sentence, nothing changed.
func TestExternalTrafficPolicyNeedsNodePort(t *testing.T) {
	c := localLab(t)
	_, err := c.AddService(ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80}}, Endpoints: []string{"web-1"}, ExternalTrafficPolicy: nat.PolicyLocal})
	if err == nil || !strings.Contains(err.Error(), "needs a NodePort") {
		t.Fatalf("AddService(Local, no NodePort) = %v", err)
	}
	if c.Lab.Service("web") != nil {
		t.Error("the refused service was recorded")
	}
}

// TestRepairRestoresPolicies: a policy set member deleted with ipset and a
// dispatch chain flushed with iptables in node2 are flagged by 'klab list'
// (List) and restored by 'klab repair' (Repair), read back with ipset list
// and iptables-save; afterwards List finds nothing.
func TestRepairRestoresPolicies(t *testing.T) {
	c := localLab(t)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "from-pods", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}}}}
	if err := c.setPolicyObjects([]*networkingv1.NetworkPolicy{np}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(); err != nil { // as klab apply does after the change
		t.Fatal(err)
	}
	stateDir := filepath.Dir(c.Dir())
	problems := func() string {
		infos, err := List(stateDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			if i.Name == c.Lab.Name {
				return strings.Join(i.Problems, "\n")
			}
		}
		t.Fatalf("lab %s not listed", c.Lab.Name)
		return ""
	}
	if p := problems(); p != "" {
		t.Fatalf("a healthy lab has problems:\n%s", p)
	}
	ns := c.NS("node2")
	sets, err := exec.Command("ip", "netns", "exec", ns, "ipset", "list", "-n").Output()
	if err != nil {
		t.Fatal(err)
	}
	set := strings.Fields(string(sets))[0]
	web1 := c.Lab.Pod("web-1").IP.String()
	for _, argv := range [][]string{{"ipset", "del", set, web1}, {"iptables", "-F", policy.IngressChain}} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	p := problems()
	if !strings.Contains(p, "node node2's NetworkPolicy chains and sets differ") || !strings.Contains(p, "lacks "+web1) || !strings.Contains(p, "chain "+policy.IngressChain+" has 0 rule(s)") {
		t.Errorf("list after the damage:\n%s", p)
	}
	rep, err := c.Repair()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Policies) != 2 {
		t.Errorf("repair reports %q, want the two damages", rep.Policies)
	}
	if out, _ := exec.Command("ip", "netns", "exec", ns, "ipset", "list", set).Output(); !strings.Contains(string(out), "\n"+web1+"\n") {
		t.Errorf("ipset list %s after repair:\n%s", set, out)
	}
	if save := saveRules(t, c, "node2", "-t", "filter"); strings.Count(save, "-A "+policy.IngressChain+" ") != 2 {
		t.Errorf("%s after repair (want web-4's and client's jumps):\n%s", policy.IngressChain, save)
	}
	if p := problems(); p != "" {
		t.Errorf("problems after repair:\n%s", p)
	}
}

// TestExplainPolicyNFLOG: a connection a deny-all ingress policy drops is
// confirmed by the drop rule's counter and by its NFLOG event, whose
// prefix names the pod and direction; an allowed one logs nothing.
func TestExplainPolicyNFLOG(t *testing.T) {
	c := localLab(t)
	if _, err := c.AddPod(PodSpec{Name: "db", Node: "node2", Labels: map[string]string{"app": "db"}}); err != nil {
		t.Fatal(err)
	}
	l, err := probe.Listen(c.NS("db"), ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go probe.ServeHTTP(ctx, l, "db")
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-db", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if err := c.setPolicyObjects([]*networkingv1.NetworkPolicy{deny}, nil); err != nil {
		t.Fatal(err)
	}
	st := c.Lab.PolicyState()
	x, err := c.ExplainPolicy(st, policy.Connection{Src: policy.PodEndpoint("default/client"), Dst: policy.PodEndpoint("default/db"), Port: 8080}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := policy.NFLOGPrefix(c.Lab.Name, "ingress", "default/db")
	if !x.Confirmed || x.Verdict.Allowed || !slices.Contains(x.Logged, want) || !strings.Contains(x.Text, "NFLOG group 100 logged") {
		t.Errorf("explain client -> db: %+v, want a confirmed drop logged as %q", x, want)
	}
	x, err = c.ExplainPolicy(st, policy.Connection{Src: policy.PodEndpoint("default/client"), Dst: policy.PodEndpoint("default/web-1"), Port: 8080}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !x.Confirmed || !x.Verdict.Allowed || len(x.Logged) != 0 {
		t.Errorf("explain client -> web-1: %+v, want a confirmed allow, nothing logged", x)
	}
}

// TestExternalTrafficPolicyLocalNFTables is the Local policy in kube-proxy's
// nftables mode: node1 (web-1's) answers the external host with its own
// address and has the local- chain; node2 drops, by the drop element of
// no-endpoint-nodeports, read back with nft.
func TestExternalTrafficPolicyLocalNFTables(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (nftables; scripts/install-deps.sh installs it)")
	}
	c := localLabMode(t, ProxyNFTables)
	if _, err := c.AddService(ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30081}},
		Endpoints: []string{"web-1"}, ExternalTrafficPolicy: nat.PolicyLocal}); err != nil {
		t.Fatal(err)
	}
	list := func(node string) string {
		out, err := exec.Command("ip", "netns", "exec", c.NS(node), "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list in %s: %v: %s", node, err, out)
		}
		return string(out)
	}
	if l := list("node1"); !strings.Contains(l, "goto local-") || strings.Contains(l, `comment "default/web" : drop`) {
		t.Errorf("node1's kube-proxy table (web-1 is local):\n%s", l)
	}
	if l := list("node2"); !strings.Contains(l, `tcp . 30081 comment "default/web" : drop`) || strings.Contains(l, "chain local-") {
		t.Errorf("node2's kube-proxy table (no local endpoint):\n%s", l)
	}
	if body := curlFrom(t, c, ExternalName, "http://192.168.1.101:30081/"); !strings.HasPrefix(body, "web-1\n") || !strings.Contains(body, "client: "+ExternalIP.String()+":") {
		t.Errorf("external host -> node1:30081 got %q, want web-1 seeing %s", body, ExternalIP)
	}
	if body := curlFrom(t, c, ExternalName, "http://192.168.1.102:30081/"); body != "" {
		t.Errorf("external host -> node2:30081 got %q, want a timeout", body)
	}
	if body := curlFrom(t, c, "client", "http://192.168.1.102:30081/"); !strings.HasPrefix(body, "web-1\n") {
		t.Errorf("client pod -> node2:30081 got %q, want web-1", body)
	}
	// The endpoint moves: the per-node partial syncs follow.
	if err := c.SetEndpoints("web", []string{"web-4"}); err != nil {
		t.Fatal(err)
	}
	if l := list("node2"); !strings.Contains(l, "goto local-") || strings.Contains(l, `comment "default/web" : drop`) {
		t.Errorf("node2's table after the move:\n%s", l)
	}
	if body := curlFrom(t, c, ExternalName, "http://192.168.1.102:30081/"); !strings.HasPrefix(body, "web-4\n") || !strings.Contains(body, "client: "+ExternalIP.String()+":") {
		t.Errorf("external host -> node2:30081 after the move got %q, want web-4 seeing %s", body, ExternalIP)
	}
}
