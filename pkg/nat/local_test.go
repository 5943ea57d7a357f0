package nat

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// localService is kube-proxy's TestExternalTrafficPolicyLocal service
// (kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go): ns1/svc1:p80
// at 172.30.0.41 with the Local external traffic policy, endpoint
// 10.180.0.1 on another node and 10.180.2.1 on the rendered one. Upstream's
// NodePort 3001 is outside klab's 30000-32767 range; it is 30001 here and
// in the expected rules below (the only change).
func localService(node string) (Config, []Service) {
	cfg := Config{Lab: "kp", ClusterCIDR: pfx("10.0.0.0/8"), ServiceCIDR: pfx("172.30.0.0/16"), NodeName: node}
	return cfg, []Service{{
		Namespace: "ns1", Name: "svc1", ClusterIP: ip("172.30.0.41"),
		Ports:                 []ServicePort{{Name: "p80", Port: 80, NodePort: 30001}},
		ExternalTrafficPolicy: PolicyLocal,
		Endpoints:             []Endpoint{{IP: ip("10.180.0.1"), NodeName: "host2"}, {IP: ip("10.180.2.1"), NodeName: "host1"}},
	}}
}

// serviceLines is the normalized rules of a rendering that belong to one
// service: its own chains and its lines in the shared chains.
func serviceLines(t *testing.T, r *Ruleset, name string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(r.Text(), "\n") {
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		n := normalize(t, line, "kp")
		f := strings.Fields(n)
		if strings.HasPrefix(f[1], "KUBE-SEP-") || strings.HasPrefix(f[1], "KUBE-SVC-") || strings.HasPrefix(f[1], "KUBE-SVL-") || strings.HasPrefix(f[1], "KUBE-EXT-") || strings.Contains(n, name) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func sortedLines(t *testing.T, text string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		out = append(out, normalize(t, strings.TrimSpace(l), "kp"))
	}
	slices.Sort(out)
	return out
}

func diffLines(t *testing.T, got, want []string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("kube-proxy rule missing from klab's rendering:\n  %s", w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			t.Errorf("klab rule kube-proxy does not write:\n  %s", g)
		}
	}
}

// TestLocalMirrorsKubeProxy: on the node with an endpoint, exactly the
// service's rules of upstream's TestExternalTrafficPolicyLocal (external
// and load-balancer IPs left out: klab has neither).
func TestLocalMirrorsKubeProxy(t *testing.T) {
	cfg, svcs := localService("host1")
	r, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, serviceLines(t, r, "ns1/svc1"), sortedLines(t, `
		-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30001 -j KUBE-EXT-XPGD46QRK7WJZT7O
		-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "pod traffic for ns1/svc1:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVL-XPGD46QRK7WJZT7O
		-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
		-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
		-A KUBE-SEP-ZX7GRIZKSNUQ3LAJ -m comment --comment ns1/svc1:p80 -s 10.180.2.1 -j KUBE-MARK-MASQ
		-A KUBE-SEP-ZX7GRIZKSNUQ3LAJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.2.1:80
		-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
		-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
		-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.2.1:80" -j KUBE-SEP-ZX7GRIZKSNUQ3LAJ
		-A KUBE-SVL-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.2.1:80" -j KUBE-SEP-ZX7GRIZKSNUQ3LAJ`))
	if rules, ok := r.ChainRules(Filter, chainExternalServices); !ok || len(rules) != 0 {
		t.Errorf("KUBE-EXTERNAL-SERVICES on a node with a local endpoint = %q, want empty", rules)
	}
}

// TestLocalNoLocalEndpoints: a node without endpoints of the service, as
// ns2/svc2 of upstream's TestOverallIPTablesRules: DROP in
// KUBE-EXTERNAL-SERVICES, KUBE-EXT without the final jump, no KUBE-SVL.
func TestLocalNoLocalEndpoints(t *testing.T) {
	cfg, svcs := localService("host3")
	svcs[0].Endpoints = svcs[0].Endpoints[:1]
	r, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, serviceLines(t, r, "ns1/svc1"), sortedLines(t, `
		-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30001 -j DROP
		-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30001 -j KUBE-EXT-XPGD46QRK7WJZT7O
		-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "pod traffic for ns1/svc1:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
		-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XPGD46QRK7WJZT7O
		-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
		-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
		-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
		-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ`))
}

// TestLocalPerNode: one Renderer for every node (as a lab uses it) gives
// each node its own KUBE-SVL chain; a Cluster service's rules are still
// shared.
func TestLocalPerNode(t *testing.T) {
	var rn Renderer
	_, svcs := localService("")
	svcs = append(svcs, Service{Namespace: "ns1", Name: "web", ClusterIP: ip("172.30.0.50"), Ports: []ServicePort{{Port: 80, NodePort: 30002}}, Endpoints: svcs[0].Endpoints})
	svl := SVLChain("ns1/svc1:p80", TCP)
	for round := 0; round < 2; round++ {
		for _, tc := range []struct{ node, local string }{{"host1", "10.180.2.1:80"}, {"host2", "10.180.0.1:80"}, {"host3", ""}} {
			cfg, _ := localService(tc.node)
			r, err := rn.Render(cfg, svcs)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := Render(cfg, svcs)
			if r.Text() != want.Text() {
				t.Fatalf("round %d node %s: the cached rendering differs from a fresh one", round, tc.node)
			}
			rules, ok := r.ChainRules(NAT, svl)
			if tc.local == "" {
				if ok {
					t.Errorf("node %s has %s without local endpoints: %q", tc.node, svl, rules)
				}
				continue
			}
			if !ok || len(rules) != 1 || !strings.Contains(rules[0], tc.local) {
				t.Errorf("node %s: %s = %q, want one jump to %s", tc.node, svl, rules, tc.local)
			}
		}
	}
}

// TestLocalSimulated follows packets through the rendered rules
// (kube-proxy's runPacketFlowTests cases for the Local policy).
func TestLocalSimulated(t *testing.T) {
	for _, tc := range []struct {
		name, node string
		pkt        Packet
		dnat       string // "" = no DNAT
		masquerade bool
		verdict    string
	}{
		{"external to NodePort hits only the local endpoint, unmasqueraded", "host1",
			Packet{Src: ip("203.0.113.10"), Dst: ip("192.168.0.2"), Proto: TCP, DPort: 30001, Local: []netip.Addr{ip("192.168.0.2")}, Rand: 0.01},
			"10.180.2.1:80", false, "ACCEPT"},
		{"external to NodePort on a node without local endpoints is dropped", "host3",
			Packet{Src: ip("203.0.113.10"), Dst: ip("192.168.0.3"), Proto: TCP, DPort: 30001, Local: []netip.Addr{ip("192.168.0.3")}},
			"", false, "DROP"},
		{"pod to NodePort on a node without local endpoints uses any endpoint", "host3",
			Packet{Src: ip("10.0.0.2"), Dst: ip("192.168.0.3"), Proto: TCP, DPort: 30001, Local: []netip.Addr{ip("192.168.0.3")}, Rand: 0.01},
			"10.180.0.1:80", false, "ACCEPT"},
		{"the node itself to its NodePort is masqueraded, any endpoint", "host3",
			Packet{Src: ip("192.168.0.3"), Dst: ip("192.168.0.3"), Proto: TCP, DPort: 30001, Local: []netip.Addr{ip("192.168.0.3")}, FromNode: true, Rand: 0.01},
			"10.180.0.1:80", true, "ACCEPT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, svcs := localService(tc.node)
			r, err := Render(cfg, svcs)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := ParseRules(r.TextWithJumps())
			if err != nil {
				t.Fatal(err)
			}
			res := rs.Simulate(tc.pkt)
			got := ""
			if res.DNAT.IsValid() {
				got = res.DNAT.String()
			}
			if got != tc.dnat || res.Masquerade != tc.masquerade || res.Verdict != tc.verdict {
				t.Errorf("dnat %q masquerade %v verdict %s, want %q %v %s\nchains %v", got, res.Masquerade, res.Verdict, tc.dnat, tc.masquerade, tc.verdict, res.Chains)
			}
		})
	}
}

func TestLocalValidate(t *testing.T) {
	cfg, svcs := localService("host1")
	svcs[0].ExternalTrafficPolicy = "local"
	if err := Validate(cfg, svcs); err == nil || !strings.Contains(err.Error(), "use Cluster or Local") {
		t.Errorf("Validate(policy \"local\") = %v", err)
	}
}
