package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/probe"
)

func TestValidateProxyMode(t *testing.T) {
	for _, tc := range []struct {
		mode, err string
	}{
		{"", ""}, {"iptables", ""}, {"nftables", ""},
		{"ipvs", "ipvs"}, {"userspace", `proxy mode "userspace" does not exist: use iptables or nftables`}, {"NFTables", "does not exist"},
	} {
		err := ValidateProxyMode(tc.mode)
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ValidateProxyMode(%q) = %v, want %q", tc.mode, err, tc.err)
		}
	}
	if !HasIPVS() && !strings.Contains(ValidateProxyMode("ipvs").Error(), "this kernel does not have") {
		t.Errorf("ipvs on a kernel without IP_VS: %v", ValidateProxyMode("ipvs"))
	}
	if err := (Options{ProxyMode: "bogus"}).Validate(); err == nil {
		t.Error("Options.Validate accepted proxy mode bogus")
	}
}

// nftLab is serviceLab's pods and servers on a lab created in nftables
// mode (lab prefix nf).
func nftLab(t *testing.T) *Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to read the kernel back (apt-get install nftables); klab itself writes over netlink")
	}
	c := twoNodes(t, "nf", Options{ProxyMode: ProxyNFTables})
	addWebPods(t, c)
	return c
}

// ruleset is `nft -j list ruleset` of a node, read by the nft binary (an
// independent client), indexed.
type ruleset struct {
	tables map[string]bool
	chains map[string]nftChain // "table/chain"
	rules  map[string]int      // "table/chain" -> rule count
	elems  map[string][]string // "table/set" -> elements, JSON-encoded
}

type nftChain struct {
	Table, Name, Type, Hook string
	Prio                    int
}

func readRuleset(t *testing.T, c *Cluster, node string) ruleset {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", c.NS(node), "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		t.Fatalf("nft -j list ruleset in %s: %v", node, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	rs := ruleset{tables: map[string]bool{}, chains: map[string]nftChain{}, rules: map[string]int{}, elems: map[string][]string{}}
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			var v struct {
				Table, Name, Chain, Type, Hook string
				Family                         string
				Prio                           int
				Elem                           []json.RawMessage
			}
			json.Unmarshal(raw, &v)
			switch kind {
			case "table":
				rs.tables[v.Family+" "+v.Name] = true
			case "chain":
				rs.chains[v.Table+"/"+v.Name] = nftChain{v.Table, v.Name, v.Type, v.Hook, v.Prio}
			case "rule":
				rs.rules[v.Table+"/"+v.Chain]++
			case "set", "map":
				for _, e := range v.Elem {
					rs.elems[v.Table+"/"+v.Name] = append(rs.elems[v.Table+"/"+v.Name], string(e))
				}
			}
		}
	}
	return rs
}

func (rs ruleset) hasElem(set, substr string) bool {
	return slices.ContainsFunc(rs.elems["kube-proxy/"+set], func(e string) bool { return strings.Contains(e, substr) })
}

func TestNFTablesModeServices(t *testing.T) {
	c := nftLab(t)
	web := addService(t, c, ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30080}}, Selector: map[string]string{"app": "web"}})
	b := addService(t, c, ServiceSpec{Name: "b", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"web-4"}})
	sticky := addService(t, c, ServiceSpec{Name: "sticky", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}, Affinity: nat.AffinityClientIP})
	dns := addService(t, c, ServiceSpec{Name: "dns", Ports: []nat.ServicePort{{Name: "dns", Protocol: nat.UDP, Port: 53, TargetPort: 5353}, {Name: "http", Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}})
	empty := addService(t, c, ServiceSpec{Name: "empty", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30081}}, Selector: map[string]string{"app": "none"}})
	svcChain := func(s *Service, proto nat.Protocol, port string) string {
		return nft.ServicePrefix + nft.PortChainBase("default", s.Name, proto, port)
	}

	t.Run("layout", func(t *testing.T) {
		for _, node := range []string{"node1", "node2"} {
			rs := readRuleset(t, c, node)
			if !rs.tables["ip kube-proxy"] || !rs.tables["ip flannel-ipv4"] {
				t.Fatalf("%s: tables %v, want ip kube-proxy and ip flannel-ipv4", node, rs.tables)
			}
			// kube-proxy's base chains at its priorities, flannel's two.
			for _, want := range []nftChain{
				{"kube-proxy", "nat-prerouting", "nat", "prerouting", -100}, {"kube-proxy", "nat-output", "nat", "output", -100},
				{"kube-proxy", "nat-postrouting", "nat", "postrouting", 100}, {"kube-proxy", "filter-forward", "filter", "forward", -110},
				{"kube-proxy", "filter-output-post-dnat", "filter", "output", -90},
				{"flannel-ipv4", "forward", "filter", "forward", 0}, {"flannel-ipv4", "postrtg", "nat", "postrouting", 100},
			} {
				if got := rs.chains[want.Table+"/"+want.Name]; got != want {
					t.Errorf("%s: chain %s/%s is %+v, want %+v", node, want.Table, want.Name, got, want)
				}
			}
			for _, ch := range []string{"services", "masquerading", "mark-for-masquerade", "cluster-ips-check", "reject-chain", svcChain(web, nat.TCP, ""), svcChain(dns, nat.UDP, "dns")} {
				if _, ok := rs.chains["kube-proxy/"+ch]; !ok {
					t.Errorf("%s: no chain %s", node, ch)
				}
			}
			if n := rs.rules["flannel-ipv4/postrtg"]; n != 6 {
				t.Errorf("%s: flannel's postrtg has %d rules, want 6", node, n)
			}
			if !rs.hasElem("service-ips", svcChain(web, nat.TCP, "")) || !rs.hasElem("service-nodeports", "30080") || !rs.hasElem("no-endpoint-services", empty.ClusterIP.String()) || !rs.hasElem("no-endpoint-nodeports", "30081") {
				t.Errorf("%s: kube-proxy's maps lack the services' elements: %v", node, rs.elems)
			}
			// An nftables node has no iptables rules of kube-proxy or flannel.
			if text := saveRules(t, c, node); strings.Contains(text, "KUBE-") || strings.Contains(text, "FLANNEL-") {
				t.Errorf("%s holds iptables KUBE-/FLANNEL- chains in nftables mode:\n%s", node, text)
			}
		}
	})
	t.Run("clusterip spread", func(t *testing.T) {
		got := tally(t, c, "client", "http://"+web.ClusterIP.String()+"/", 120)
		for _, p := range webPods {
			if got[p[0]] == 0 { // 6*(5/6)^120 = 2e-9
				t.Errorf("endpoint %s never answered 120 requests: %v", p[0], got)
			}
		}
	})
	t.Run("nodeport from external", func(t *testing.T) {
		for _, node := range []string{"192.168.1.101", "192.168.1.102"} {
			if got := tally(t, c, ExternalName, "http://"+node+":30080/", 40); len(got) < 2 {
				t.Errorf("NodePort on %s: answers %v, want several endpoints", node, got)
			}
		}
	})
	t.Run("affinity", func(t *testing.T) {
		if got := tally(t, c, "client", "http://"+sticky.ClusterIP.String()+"/", 30); len(got) != 1 {
			t.Errorf("ClientIP affinity spread one client over %v", got)
		}
		rs := readRuleset(t, c, "node1")
		client := c.Lab.Pod("client").IP.String()
		found := false
		for set, els := range rs.elems {
			if strings.HasPrefix(set, "kube-proxy/affinity-") && strings.Contains(set, "/sticky/") && slices.ContainsFunc(els, func(e string) bool { return strings.Contains(e, client) }) {
				found = true
			}
		}
		if !found {
			t.Errorf("no affinity-* set of sticky holds the client %s: %v", client, rs.elems)
		}
	})
	t.Run("udp and multiple ports", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 30; i++ {
			body, err := probe.UDPRequest(context.Background(), c.NS("client"), dns.ClusterIP.String()+":53", 2*time.Second)
			if err != nil {
				t.Fatalf("UDP request %d: %v", i, err)
			}
			seen[probe.FirstLine(body)] = true
		}
		if len(seen) < 2 {
			t.Errorf("30 UDP requests all answered by %v", seen)
		}
		if got := tally(t, c, "client", "http://"+dns.ClusterIP.String()+":80/", 5); len(got) == 0 {
			t.Error("second port of a multi-port service did not answer")
		}
	})
	t.Run("no endpoints rejects", func(t *testing.T) {
		_, err := probe.Get(context.Background(), probe.Client(c.NS("client"), 2*time.Second), "http://"+empty.ClusterIP.String()+"/")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("service without endpoints: %v, want connection refused", err)
		}
		_, err = probe.Get(context.Background(), probe.Client(c.NS(ExternalName), 2*time.Second), "http://192.168.1.101:30081/")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("NodePort without endpoints from the external host: %v, want connection refused", err)
		}
	})
	t.Run("readiness is a partial sync", func(t *testing.T) {
		c.A.Discard = false
		mark := len(c.A.Ran())
		if err := c.SetReady("web-1", false); err != nil {
			t.Fatal(err)
		}
		ran := c.A.Ran()[mark:]
		c.A.Discard = true
		if len(ran) != 3 { // one transaction per node, then the state
			t.Fatalf("set-ready ran %d operations, want an nft transaction per node and the state", len(ran))
		}
		for _, op := range ran[:2] {
			text := op.Command()
			if strings.Contains(text, "add table") || strings.Contains(text, "/b/") || !strings.Contains(text, "10.244.1.2") {
				t.Errorf("readiness change is not a partial sync of the services web-1 serves:\n%s", text)
			}
		}
		if got := tally(t, c, "client", "http://"+web.ClusterIP.String()+"/", 60); got["web-1"] > 0 {
			t.Errorf("unready web-1 still answered: %v", got)
		}
		if got := tally(t, c, "client", "http://"+b.ClusterIP.String()+"/", 5); got["web-4"] != 5 {
			t.Errorf("service b answers %v", got)
		}
		if err := c.SetReady("web-1", true); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("drift, repair, switch refused", func(t *testing.T) {
		if d := rulesDrift(c.Lab, c.Lab.Node("node1")); d != nil {
			t.Fatalf("healthy node reports drift %v", d)
		}
		// An interrupted sync, as an independent client makes it.
		ch := svcChain(web, nat.TCP, "")
		if out, err := exec.Command("ip", "netns", "exec", c.NS("node1"), "nft", "flush", "chain", "ip", "kube-proxy", ch).CombinedOutput(); err != nil {
			t.Fatalf("nft flush chain: %v: %s", err, out)
		}
		d := rulesDrift(c.Lab, c.Lab.Node("node1"))
		if len(d) != 1 || !strings.Contains(d[0], ch) {
			t.Errorf("drift after flushing %s: %v", ch, d)
		}
		if err := c.SetProxyMode(ProxyIPTables); err == nil || !strings.Contains(err.Error(), "klab repair") {
			t.Errorf("switching with drift: %v, want a refusal naming klab repair", err)
		}
		if _, err := c.Repair(); err != nil {
			t.Fatal(err)
		}
		if d := rulesDrift(c.Lab, c.Lab.Node("node1")); d != nil {
			t.Errorf("drift after repair: %v", d)
		}
		if got := tally(t, c, "client", "http://"+web.ClusterIP.String()+"/", 20); len(got) < 2 {
			t.Errorf("after repair: %v", got)
		}
	})
	t.Run("switch modes", func(t *testing.T) {
		if err := c.SetProxyMode(ProxyIPTables); err != nil {
			t.Fatal(err)
		}
		for _, node := range []string{"node1", "node2"} {
			rs := readRuleset(t, c, node)
			if rs.tables["ip kube-proxy"] || rs.tables["ip flannel-ipv4"] {
				t.Errorf("%s in iptables mode still has nftables mode's tables: %v", node, rs.tables)
			}
			if !strings.Contains(saveRules(t, c, node, "-t", "nat"), "-A KUBE-SVC-") {
				t.Errorf("%s in iptables mode has no KUBE-SVC chains", node)
			}
			if d := rulesDrift(c.Lab, c.Lab.Node(node)); d != nil {
				t.Errorf("%s drift after switch: %v", node, d)
			}
		}
		if got := tally(t, c, "client", "http://"+web.ClusterIP.String()+"/", 20); len(got) < 2 {
			t.Errorf("iptables mode after switch: %v", got)
		}
		if err := c.SetProxyMode(ProxyNFTables); err != nil {
			t.Fatal(err)
		}
		l, err := Load(c.StateDir, c.Lab.Name)
		if err != nil || l.ProxyMode != ProxyNFTables {
			t.Errorf("saved state's proxy mode = %v (%v), want nftables", l, err)
		}
		for _, node := range []string{"node1", "node2"} {
			if text := saveRules(t, c, node); strings.Contains(text, "KUBE-") || strings.Contains(text, "FLANNEL-") {
				t.Errorf("%s back in nftables mode keeps iptables chains:\n%s", node, text)
			}
			if d := rulesDrift(c.Lab, c.Lab.Node(node)); d != nil {
				t.Errorf("%s drift after switching back: %v", node, d)
			}
		}
		if got := tally(t, c, "client", "http://"+web.ClusterIP.String()+"/", 20); len(got) < 2 {
			t.Errorf("nftables mode after switching back: %v", got)
		}
	})
}
