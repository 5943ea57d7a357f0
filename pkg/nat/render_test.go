package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

func eps(addrs ...string) []Endpoint {
	out := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = Endpoint{IP: ip(a)}
	}
	return out
}

func TestChainNamesMatchKubeProxy(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{SVCChain("default/kubernetes:https", TCP), "KUBE-SVC-NPX46M4PTMTKRN6Y"},
		{SVCChain("kube-system/kube-dns:dns", UDP), "KUBE-SVC-TCOU7JCQXEZGVUNU"},
		{SVCChain("default/web:http", TCP), "KUBE-SVC-CDGGSHYLG3RE2FKL"},
		// From kube-proxy's proxier_test.go TestOverallIPTablesRules.
		{SVCChain("ns1/svc1:p80", TCP), "KUBE-SVC-XPGD46QRK7WJZT7O"},
		{SEPChain("ns1/svc1:p80", TCP, "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"},
		{EXTChain("ns3/svc3:p80", TCP), "KUBE-EXT-X27LE4BHSL4DOUIK"},
		{SEPChain("ns5/svc5:p80", TCP, "10.180.0.3:80"), "KUBE-SEP-I77PXRDZVX7PMWMN"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
	if n := len(SEPChain(strings.Repeat("n", 63)+"/"+strings.Repeat("s", 63)+":p", UDP, "1.2.3.4:5")); n > 28 {
		t.Errorf("chain name is %d chars, iptables allows 28", n)
	}
}

// normalize tokenizes a rule line, strips klab's comment prefix (and the
// comment itself when kube-proxy has none) and re-joins it, so klab's rules
// can be compared with kube-proxy's.
func normalize(t *testing.T, line, lab string) string {
	t.Helper()
	tok, err := tokenize(line)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := 0; i < len(tok); i++ {
		if tok[i] == "-m" && i+3 < len(tok) && tok[i+1] == "comment" {
			c := strings.TrimPrefix(strings.TrimPrefix(tok[i+3], "klab:"+lab), " ")
			i += 3
			if c == "" {
				continue
			}
			out = append(out, "-m", "comment", "--comment", quote(c))
			continue
		}
		out = append(out, quote(tok[i]))
	}
	return strings.Join(out, " ")
}

// TestMirrorsKubeProxy renders services of kube-proxy's own
// TestOverallIPTablesRules and compares the rules, modulo the klab comment
// prefix, with the expected output there (kube-proxy v1.28+ layout).
func TestMirrorsKubeProxy(t *testing.T) {
	cfg := Config{Lab: "kp", ClusterCIDR: pfx("10.0.0.0/8"), ServiceCIDR: pfx("172.30.0.0/16")}
	svcs := []Service{
		{Namespace: "ns1", Name: "svc1", ClusterIP: ip("172.30.0.41"), Ports: []ServicePort{{Name: "p80", Port: 80}}, Endpoints: eps("10.180.0.1")},
		{Namespace: "ns4", Name: "svc4", ClusterIP: ip("172.30.0.44"), Ports: []ServicePort{{Name: "p80", Port: 80, TargetPort: 80}}, Endpoints: eps("10.180.0.4", "10.180.0.5")},
		{Namespace: "ns5", Name: "svc5", ClusterIP: ip("172.30.0.45"), Ports: []ServicePort{{Name: "p80", Port: 80}}, Affinity: AffinityClientIP, AffinityTimeout: 10800, Endpoints: eps("10.180.0.3")},
		{Namespace: "ns6", Name: "svc6", ClusterIP: ip("172.30.0.46"), Ports: []ServicePort{{Name: "p80", Port: 80, TargetPort: 80}}},
	}
	r, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	upstream := `
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`
	var got []string
	for _, line := range strings.Split(r.Text(), "\n") {
		if strings.HasPrefix(line, "-A ") {
			got = append(got, normalize(t, line, "kp"))
		}
	}
	for _, want := range strings.Split(strings.TrimSpace(upstream), "\n") {
		w := normalize(t, want, "kp")
		if !slices.Contains(got, w) {
			t.Errorf("kube-proxy rule missing from klab's rendering:\n  %s", w)
		}
	}
	// Every klab rule carries the lab comment.
	for _, line := range strings.Split(r.TextWithJumps(), "\n") {
		if strings.HasPrefix(line, "-A ") && !strings.Contains(line, `--comment "klab:kp`) {
			t.Errorf("rule without klab comment: %s", line)
		}
	}
}

// TestSixEndpoints is kube-proxy's probability ladder, as full rule text.
func TestSixEndpoints(t *testing.T) {
	svc := Service{Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: eps("10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3", "10.244.3.2", "10.244.3.3")}
	r, err := Render(Config{Lab: "six"}, []Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	chain := SVCChain("default/web:http", TCP)
	var want []string
	want = append(want, `-A `+chain+` -m comment --comment "klab:six default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ`)
	probs := []string{"0.1666666667", "0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000"}
	for i, e := range svc.Endpoints {
		addr := e.IP.String() + ":8080"
		sep := SEPChain("default/web:http", TCP, addr)
		stat := ""
		if i < len(probs) {
			stat = " -m statistic --mode random --probability " + probs[i]
		}
		want = append(want, fmt.Sprintf(`-A %s -m comment --comment "klab:six default/web:http -> %s"%s -j %s`, chain, addr, stat, sep))
	}
	got, ok := r.ChainRules(NAT, chain)
	if !ok {
		t.Fatalf("no chain %s", chain)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("KUBE-SVC chain:\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// And the endpoint chains: hairpin masquerade then DNAT.
	sep := SEPChain("default/web:http", TCP, "10.244.2.3:8080")
	got, _ = r.ChainRules(NAT, sep)
	wantSep := []string{
		`-A ` + sep + ` -m comment --comment "klab:six default/web:http" -s 10.244.2.3 -j KUBE-MARK-MASQ`,
		`-A ` + sep + ` -m comment --comment "klab:six default/web:http" -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080`,
	}
	if !slices.Equal(got, wantSep) {
		t.Errorf("KUBE-SEP chain:\n got %q\nwant %q", got, wantSep)
	}
}

func TestNodePortIsLastAndFlannel(t *testing.T) {
	cfg := Config{Lab: "np", Flannel: &FlannelMasq{PodCIDR: pfx("10.244.1.0/24"), TCPOnly: true}}
	r, err := Render(cfg, []Service{
		{Name: "a", ClusterIP: ip("10.96.0.2"), Ports: []ServicePort{{Port: 80, NodePort: 30080}}, Endpoints: eps("10.244.1.2")},
		{Name: "b", ClusterIP: ip("10.96.0.3"), Ports: []ServicePort{{Port: 80, NodePort: 30081}}, Endpoints: eps("10.244.1.3")},
	})
	if err != nil {
		t.Fatal(err)
	}
	svc, _ := r.ChainRules(NAT, "KUBE-SERVICES")
	if len(svc) != 3 || !strings.HasSuffix(svc[2], "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS") {
		t.Errorf("KUBE-NODEPORTS jump is not the last rule of KUBE-SERVICES: %q", svc)
	}
	np, _ := r.ChainRules(NAT, "KUBE-NODEPORTS")
	if len(np) != 2 || !strings.Contains(np[0], "--dport 30080 -j "+EXTChain("default/a", TCP)) {
		t.Errorf("KUBE-NODEPORTS = %q", np)
	}
	fl, _ := r.ChainRules(NAT, "FLANNEL-POSTRTG")
	if len(fl) != 6 || !strings.Contains(fl[4], "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -p tcp -j MASQUERADE --random-fully") {
		t.Errorf("FLANNEL-POSTRTG = %q", fl)
	}
	fwd, _ := r.ChainRules(Filter, "FLANNEL-FWD")
	if len(fwd) != 2 {
		t.Errorf("FLANNEL-FWD = %q", fwd)
	}
	if _, ok := r.ChainRules(Filter, "FLANNEL-FWD"); !ok {
		t.Error("no FLANNEL-FWD")
	}
}

func TestRenderDeterministic(t *testing.T) {
	a := []Service{
		{Name: "b", ClusterIP: ip("10.96.0.3"), Ports: []ServicePort{{Port: 80}}, Endpoints: eps("10.244.1.3")},
		{Name: "a", ClusterIP: ip("10.96.0.2"), Ports: []ServicePort{{Port: 80}}, Endpoints: eps("10.244.1.2")},
	}
	b := []Service{a[1], a[0]}
	r1, _ := Render(Config{Lab: "d"}, a)
	r2, _ := Render(Config{Lab: "d"}, b)
	if r1.Text() != r2.Text() {
		t.Error("rendering depends on input order")
	}
}

func TestDiffOnlyChangedChains(t *testing.T) {
	cfg := Config{Lab: "diff"}
	svcs := []Service{
		{Name: "a", ClusterIP: ip("10.96.0.2"), Ports: []ServicePort{{Port: 80}}, Endpoints: eps("10.244.1.2", "10.244.1.3")},
		{Name: "b", ClusterIP: ip("10.96.0.3"), Ports: []ServicePort{{Port: 80}}, Endpoints: eps("10.244.1.4")},
	}
	r1, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if d := r1.Diff(r1); d != "" {
		t.Errorf("no-op diff is not empty:\n%s", d)
	}
	svcs[1].Endpoints = eps("10.244.1.5")
	r2, _ := Render(cfg, svcs)
	in, rewritten, deleted := r2.restoreInput(r1, nil, nil)
	oldSep := SEPChain("default/b", TCP, "10.244.1.4:80")
	newSep := SEPChain("default/b", TCP, "10.244.1.5:80")
	wantRe := []string{"nat/" + SVCChain("default/b", TCP), "nat/" + newSep}
	if !slices.Equal(rewritten, wantRe) || !slices.Equal(deleted, []string{"nat/" + oldSep}) {
		t.Errorf("rewritten %q deleted %q\ninput:\n%s", rewritten, deleted, in)
	}
	if strings.Contains(string(in), "*filter") || strings.Contains(string(in), "KUBE-SERVICES") {
		t.Errorf("diff touches unrelated chains:\n%s", in)
	}
	// Delete service a: KUBE-SERVICES changes, a's chains go away.
	r3, _ := Render(cfg, svcs[1:])
	_, rewritten, deleted = r3.restoreInput(r2, nil, nil)
	if !slices.Equal(rewritten, []string{"nat/KUBE-SERVICES"}) || len(deleted) != 3 {
		t.Errorf("rewritten %q deleted %q", rewritten, deleted)
	}
}
