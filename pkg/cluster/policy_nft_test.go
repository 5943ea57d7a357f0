package cluster

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klab-dev/klab/pkg/policy"
	"github.com/klab-dev/klab/pkg/policy/e2e"
)

// netpolLabNFT is netpolLab's conformance model in kube-proxy's nftables
// mode: the same nodes, pods and echo servers.
func netpolLabNFT(t *testing.T) *Cluster {
	t.Helper()
	return netpolLabMode(t, "n2", ProxyNFTables, "nft", "ipset", "iptables-save")
}

// nftPolicyChains reads `nft -j list table ip klab-policy` in ns (an
// independent client): chain name -> rule count; nil when there is no
// such table.
func nftPolicyChains(t *testing.T, ns string) map[string]int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", policy.NFTTable).Output()
	if err != nil {
		return nil
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j: %v", err)
	}
	m := map[string]int{}
	for _, o := range doc.Nftables {
		var x struct{ Name, Chain string }
		if raw, ok := o["chain"]; ok {
			json.Unmarshal(raw, &x)
			m[x.Name] += 0
		}
		if raw, ok := o["rule"]; ok {
			json.Unmarshal(raw, &x)
			m[x.Chain]++
		}
	}
	return m
}

// iptablesPolicyObjects is what iptables-save and ipset show of the
// iptables form of the policies in ns ("" when none).
func iptablesPolicyObjects(ns string) string {
	rules, _ := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "filter").CombinedOutput()
	sets, _ := exec.Command("ip", "netns", "exec", ns, "ipset", "list", "-n").CombinedOutput()
	var out []string
	for _, l := range strings.Split(string(rules), "\n") {
		if strings.Contains(l, "KLAB-N") {
			out = append(out, l)
		}
	}
	if s := strings.TrimSpace(string(sets)); s != "" {
		out = append(out, "sets: "+s)
	}
	return strings.Join(out, "\n")
}

// nftMatrixCases are the e2e cases run in nftables mode: every kind of
// peer and port the compiler renders (pod and namespace selectors, ipBlock
// with except and overlapping excepts, named ports, port ranges, egress,
// label updates as set element changes, protocols), not all 53, to keep
// the test short; the rendering is the same Plan as iptables mode's, whose
// test runs them all.
var nftMatrixCases = []string{
	"default-deny-ingress", "allow-from-x-b-by-podSelector", "podSelector-AND-namespaceSelector",
	"updated-namespace-before", "updated-namespace-after", "ports-81-from-y", "ingress-named-port-80-from-y",
	"egress-named-port-80", "ingress-and-egress-together", "egress-cidr-except", "cidr-and-except-two-policies",
	"udp-only-is-not-tcp", "ingress-port-range-81-82", "egress-port-range-79-80-udp", "ingress-ipblock-except-node2",
}

// NetworkPolicy on nftables nodes: the conformance matrices (a subset)
// measured with real TCP and UDP connections, the kernel read back with
// nft -j, iptables-save and ipset (no iptables rule, no ipset), a drop
// confirmed by the drop rule's counter over netlink, drift found and
// repaired, the policies moved by a mode switch both ways, and cleared.
func TestPolicyNFTables(t *testing.T) {
	c := netpolLabNFT(t)
	byName := map[string]e2e.Case{}
	for _, k := range e2e.Cases() {
		byName[k.Name] = k
	}
	check := func(t *testing.T, k e2e.Case) {
		t.Helper()
		if err := c.SetPolicies(modelState(c, k)); err != nil {
			t.Fatal(err)
		}
		flushConntrack(t, c)
		measured := make([]map[e2e.PodString]map[e2e.PodString]bool, len(k.Probes))
		var wg sync.WaitGroup
		for i, pr := range k.Probes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				measured[i] = measure(c, pr.Port, pr.Protocol, time.Second)
			}()
		}
		wg.Wait()
		for i, pr := range k.Probes {
			checkMatrix(t, c, pr, measured[i])
		}
	}
	start := time.Now()
	for i, name := range nftMatrixCases {
		k, ok := byName[name]
		if !ok {
			t.Fatalf("case %s is gone from pkg/policy/e2e", name)
		}
		t.Run(name, func(t *testing.T) {
			if i == len(nftMatrixCases)/2 {
				// node2 forgets what it applied: its table is replaced whole.
				os.Remove(c.policyNFTFile("node2"))
			}
			check(t, k)
			for _, n := range c.Lab.Nodes {
				ns := c.NS(n.Name)
				if ch := nftPolicyChains(t, ns); ch == nil || ch["forward"] != 3 {
					t.Errorf("%s: nft -j shows no table ip %s with its forward chain: %v", n.Name, policy.NFTTable, ch)
				}
				if s := iptablesPolicyObjects(ns); s != "" {
					t.Errorf("%s: an nftables node holds iptables policy objects:\n%s", n.Name, s)
				}
			}
		})
	}
	t.Logf("%d cases measured in nftables mode in %v", len(nftMatrixCases), time.Since(start).Round(time.Millisecond))

	t.Run("explain-drift-repair", func(t *testing.T) {
		st := modelState(c, byName["allow-from-x-b-by-podSelector"])
		if err := c.SetPolicies(st); err != nil {
			t.Fatal(err)
		}
		x, err := c.ExplainPolicy(st, policy.Connection{Src: policy.PodEndpoint("y/b"), Dst: policy.PodEndpoint("x/a"), Port: 80}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Log(x)
		if !x.Confirmed || x.Verdict.Allowed || x.Node != "node1" || x.Dropped == 0 {
			t.Errorf("drop not confirmed by the nftables counter: %+v", x)
		}
		if want := policy.NFLOGPrefix(c.Lab.Name, "ingress", "x/a"); !slices.Contains(x.Logged, want) {
			t.Errorf("the nftables log statement sent no NFLOG event %q: %v", want, x.Logged)
		}
		// The same counter, read by nft itself.
		out, _ := exec.Command("ip", "netns", "exec", c.NS("node1"), "nft", "list", "table", "ip", policy.NFTTable).CombinedOutput()
		if !strings.Contains(string(out), "counter packets ") || strings.Contains(string(out), "counter packets 0 bytes 0 drop comment \""+policy.DropComment(c.Lab.Name, "ingress", "x/a")+"\"") {
			t.Errorf("nft list shows no counted drop for x/a:\n%s", out)
		}
		// Behind klab's back: the table goes; explain says not confirmed,
		// drift says so, the next sync puts it back whole.
		if out, err := exec.Command("ip", "netns", "exec", c.NS("node1"), "nft", "delete", "table", "ip", policy.NFTTable).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if x, _ := c.ExplainPolicy(st, policy.Connection{Src: policy.PodEndpoint("y/b"), Dst: policy.PodEndpoint("x/a"), Port: 80}, time.Second); x == nil || x.Confirmed {
			t.Errorf("a drop the kernel did not make was confirmed: %+v", x)
		}
		if d := c.PolicyDrift("node1"); len(d) == 0 {
			t.Error("PolicyDrift finds nothing with the table gone")
		} else {
			t.Logf("drift: %v", d)
		}
		if err := c.SetPolicies(st); err != nil {
			t.Fatal(err)
		}
		if d := c.PolicyDrift("node1"); len(d) != 0 {
			t.Errorf("drift after the resync: %v", d)
		}
		if _, err := Attempt(context.Background(), c.NS("y-b"), corev1.ProtocolTCP, netip.AddrPortFrom(e2e.IPOf("x/a"), 80), time.Second); err == nil {
			t.Error("y/b -> x/a connects after the repair")
		}
	})

	t.Run("mode-switch", func(t *testing.T) {
		k := byName["allow-from-x-b-by-podSelector"]
		if err := c.SetProxyMode(ProxyIPTables); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Lab.Nodes {
			if ch := nftPolicyChains(t, c.NS(n.Name)); ch != nil {
				t.Errorf("%s: table ip %s survived the switch to iptables: %v", n.Name, policy.NFTTable, ch)
			}
			if s := iptablesPolicyObjects(c.NS(n.Name)); !strings.Contains(s, policy.DispatchChain) {
				t.Errorf("%s: no iptables policy chains after the switch:\n%s", n.Name, s)
			}
		}
		check(t, k)
		if err := c.SetProxyMode(ProxyNFTables); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Lab.Nodes {
			if ch := nftPolicyChains(t, c.NS(n.Name)); ch == nil {
				t.Errorf("%s: no table ip %s after the switch back", n.Name, policy.NFTTable)
			}
			if s := iptablesPolicyObjects(c.NS(n.Name)); s != "" {
				t.Errorf("%s: iptables policy objects survived the switch to nftables:\n%s", n.Name, s)
			}
		}
		check(t, k)
	})

	t.Run("clear", func(t *testing.T) {
		if err := c.ClearPolicies(); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Lab.Nodes {
			if ch := nftPolicyChains(t, c.NS(n.Name)); ch != nil {
				t.Errorf("%s: table ip %s survived ClearPolicies: %v", n.Name, policy.NFTTable, ch)
			}
		}
		if _, err := Attempt(context.Background(), c.NS("y-b"), corev1.ProtocolTCP, netip.AddrPortFrom(e2e.IPOf("x/a"), 80), time.Second); err != nil {
			t.Errorf("y/b -> x/a after ClearPolicies: %v", err)
		}
	})

	t.Run("list-and-repair", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "from-pods", Namespace: "default"},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}}}}
		if err := c.setPolicyObjects([]*networkingv1.NetworkPolicy{np}, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Save(); err != nil {
			t.Fatal(err)
		}
		problems := func() string {
			infos, err := List(filepath.Dir(c.Dir()))
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
			t.Fatalf("a healthy nftables lab with a policy has problems:\n%s", p)
		}
		if out, err := exec.Command("ip", "netns", "exec", c.NS("node2"), "nft", "delete", "table", "ip", policy.NFTTable).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if p := problems(); !strings.Contains(p, "node node2's NetworkPolicy") || !strings.Contains(p, "table ip "+policy.NFTTable+" missing") {
			t.Errorf("list after the table went:\n%s", p)
		}
		rep, err := c.Repair()
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Policies) == 0 {
			t.Error("repair reports no policy damage")
		}
		if ch := nftPolicyChains(t, c.NS("node2")); ch == nil || ch["forward"] != 3 {
			t.Errorf("node2's table after repair: %v", ch)
		}
		if s := iptablesPolicyObjects(c.NS("node2")); s != "" {
			t.Errorf("repair wrote iptables policy objects on an nftables node:\n%s", s)
		}
		if p := problems(); p != "" {
			t.Errorf("problems after repair:\n%s", p)
		}
	})
}
