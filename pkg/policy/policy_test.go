package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var (
	tcp = corev1.ProtocolTCP
	udp = corev1.ProtocolUDP
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// demo is seed 001's shape: default/db guarded by default/db-allow.
func demo(pols ...*networkingv1.NetworkPolicy) State {
	return State{
		Namespaces: []Namespace{{Name: "default"}, {Name: "other", Labels: map[string]string{"team": "blue"}}, {Name: "dev", Labels: map[string]string{"env": "dev"}}},
		Pods: []Pod{
			{Namespace: "default", Name: "db", Labels: map[string]string{"app": "db"}, IP: ip("10.244.2.5"), Node: "node2", Ports: []Port{{Name: "redis", Port: 6379, Protocol: tcp}, {Name: "dns", Port: 53, Protocol: udp}}},
			{Namespace: "default", Name: "web", Labels: map[string]string{"role": "frontend"}, IP: ip("10.244.1.5"), Node: "node1", Ports: []Port{{Name: "http", Port: 8080}}},
			{Namespace: "other", Name: "client", Labels: map[string]string{"role": "frontend"}, IP: ip("10.244.1.6"), Node: "node1"},
			{Namespace: "dev", Name: "tool", Labels: map[string]string{"app": "tool"}, IP: ip("10.244.2.6"), Node: "node2", Ports: []Port{{Name: "redis", Port: 7000, Protocol: tcp}}},
		},
		External: []External{{Name: "host", IP: ip("192.168.26.1")}},
		NodeIPs:  map[string][]netip.Addr{"node1": {ip("192.168.100.11")}, "node2": {ip("192.168.100.12")}},
		Policies: pols,
	}
}

func np(name, ns string, podSel metav1.LabelSelector, spec func(*networkingv1.NetworkPolicySpec)) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: networkingv1.NetworkPolicySpec{PodSelector: podSel}}
	if spec != nil {
		spec(&p.Spec)
	}
	return p
}

func ml(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func me(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

func pport(v intstr.IntOrString, proto *corev1.Protocol, end int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Port: &v, Protocol: proto}
	if end != 0 {
		p.EndPort = &end
	}
	return p
}

func dbAllow(from []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
	return np("db-allow", "default", *ml("app", "db"), func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: from, Ports: ports}}
	})
}

func TestEvaluate(t *testing.T) {
	frontend := []networkingv1.NetworkPolicyPeer{{PodSelector: ml("role", "frontend")}}
	p6379 := pport(intstr.FromInt32(6379), nil, 0)
	tests := []struct {
		name     string
		pols     []*networkingv1.NetworkPolicy
		src, dst Endpoint
		proto    corev1.Protocol
		port     int32
		allowed  bool
		reason   string // substring
	}{
		{"no policy", nil, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 6379, true, "allowed: other/client is not isolated for egress and default/db is not isolated for ingress"},
		{"podSelector same namespace admits", []*networkingv1.NetworkPolicy{dbAllow(frontend, p6379)}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6379, true,
			"allowed by default/db-allow ingress rule 1 (podSelector role=frontend; ports tcp/6379); default/web is not isolated for egress"},
		{"podSelector alone is the policy's namespace", []*networkingv1.NetworkPolicy{dbAllow(frontend, p6379)}, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 6379, false,
			"dropped at node2 ingress of default/db: selected by policy default/db-allow (ingress), no rule admits other/client:tcp/6379"},
		{"wrong port", []*networkingv1.NetworkPolicy{dbAllow(frontend, p6379)}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6380, false, "no rule admits default/web:tcp/6380"},
		{"protocol defaults to TCP", []*networkingv1.NetworkPolicy{dbAllow(frontend, p6379)}, PodEndpoint("web"), PodEndpoint("db"), udp, 6379, false, "no rule admits default/web:udp/6379"},
		{"namespaceSelector alone", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: ml("team", "blue")}})}, PodEndpoint("other/client"), PodEndpoint("db"), udp, 53, true, "namespaceSelector team=blue"},
		{"AND in one peer: pod does not match", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: ml("env", "dev"), PodSelector: ml("role", "frontend")}})}, PodEndpoint("dev/tool"), PodEndpoint("db"), tcp, 1, false, "no rule admits dev/tool"},
		{"OR in separate peers", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: ml("env", "dev")}, {PodSelector: ml("role", "frontend")}})}, PodEndpoint("dev/tool"), PodEndpoint("db"), tcp, 1, true, "namespaceSelector env=dev"},
		{"NotIn", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: me("kubernetes.io/metadata.name", metav1.LabelSelectorOpNotIn, "dev")}})}, PodEndpoint("dev/tool"), PodEndpoint("db"), tcp, 1, false, "dropped"},
		{"Exists", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: me("team", metav1.LabelSelectorOpExists)}})}, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 1, true, "namespaceSelector team"},
		{"DoesNotExist", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: me("team", metav1.LabelSelectorOpDoesNotExist)}})}, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 1, false, "dropped"},
		{"ingress named port resolves on the destination", []*networkingv1.NetworkPolicy{dbAllow(nil, pport(intstr.FromString("redis"), nil, 0))}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6379, true, "ports tcp/redis"},
		{"named port, other number", []*networkingv1.NetworkPolicy{dbAllow(nil, pport(intstr.FromString("redis"), nil, 0))}, PodEndpoint("web"), PodEndpoint("db"), tcp, 7000, false, "dropped"},
		{"named port needs its protocol", []*networkingv1.NetworkPolicy{dbAllow(nil, pport(intstr.FromString("dns"), nil, 0))}, PodEndpoint("web"), PodEndpoint("db"), udp, 53, false, "dropped"},
		{"egress named port resolves on the destination pod", []*networkingv1.NetworkPolicy{np("out", "default", *ml("role", "frontend"), func(s *networkingv1.NetworkPolicySpec) {
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{pport(intstr.FromString("redis"), nil, 0)}}}
		})}, PodEndpoint("web"), PodEndpoint("dev/tool"), tcp, 7000, true, "allowed by default/out egress rule 1"},
		{"egress named port never matches an address", []*networkingv1.NetworkPolicy{np("out", "default", *ml("role", "frontend"), func(s *networkingv1.NetworkPolicySpec) {
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{pport(intstr.FromString("redis"), nil, 0)}}}
		})}, PodEndpoint("web"), IPEndpoint(ip("192.168.26.1")), tcp, 6379, false, "dropped at node1 egress of default/web: selected by policy default/out (egress), no rule admits host(192.168.26.1):tcp/6379"},
		{"endPort range inclusive", []*networkingv1.NetworkPolicy{dbAllow(nil, pport(intstr.FromInt32(6000), nil, 6379))}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6379, true, "tcp/6000-6379"},
		{"endPort range above", []*networkingv1.NetworkPolicy{dbAllow(nil, pport(intstr.FromInt32(6000), nil, 6378))}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6379, false, "dropped"},
		{"ipBlock admits the external host", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.26.0/24"}}})}, IPEndpoint(ip("192.168.26.1")), PodEndpoint("db"), tcp, 6379, true, "ipBlock 192.168.26.0/24"},
		{"ipBlock except", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.26.0/24"}}}})}, IPEndpoint(ip("192.168.26.1")), PodEndpoint("db"), tcp, 6379, false, "no rule admits host(192.168.26.1):tcp/6379"},
		{"ipBlock matches pod addresses", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/24"}}})}, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 6379, true, "ipBlock 10.244.1.0/24"},
		{"selectors never match addresses", []*networkingv1.NetworkPolicy{dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}})}, IPEndpoint(ip("192.168.26.1")), PodEndpoint("db"), tcp, 6379, false, "dropped"},
		{"an address of a pod is that pod", []*networkingv1.NetworkPolicy{dbAllow(frontend)}, IPEndpoint(ip("10.244.1.5")), IPEndpoint(ip("10.244.2.5")), tcp, 6379, true, "allowed by default/db-allow"},
		{"own node always passes", []*networkingv1.NetworkPolicy{dbAllow(nil, p6379)}, NodeEndpoint("node2"), PodEndpoint("db"), tcp, 9, true, "between default/db and its own node node2 is never filtered"},
		{"other node is an address", []*networkingv1.NetworkPolicy{dbAllow(frontend)}, NodeEndpoint("node1"), PodEndpoint("db"), tcp, 9, false, "no rule admits node node1:tcp/9"},
		{"loopback", []*networkingv1.NetworkPolicy{np("deny", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) {
			s.PolicyTypes = []networkingv1.PolicyType{"Ingress", "Egress"}
		})}, PodEndpoint("db"), PodEndpoint("db"), tcp, 1, true, "to itself"},
		{"policyTypes default: egress rules make it Egress too", []*networkingv1.NetworkPolicy{np("e", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) {
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: ml("app", "db")}}}}
		})}, PodEndpoint("web"), PodEndpoint("other/client"), tcp, 80, false, "dropped at node1 egress of default/web: selected by policy default/e (egress), no rule admits other/client:tcp/80"},
		{"policyTypes default: Ingress always", []*networkingv1.NetworkPolicy{np("e", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) {
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{}}
		})}, PodEndpoint("other/client"), PodEndpoint("web"), tcp, 80, false, "dropped at node1 ingress of default/web"},
		{"Egress-only policy leaves ingress open", []*networkingv1.NetworkPolicy{np("e", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = []networkingv1.PolicyType{"Egress"} })}, PodEndpoint("other/client"), PodEndpoint("web"), tcp, 80, true, "not isolated for ingress"},
		{"both sides must admit", []*networkingv1.NetworkPolicy{dbAllow(frontend), np("deny-out", "other", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = []networkingv1.PolicyType{"Egress"} })}, PodEndpoint("other/client"), PodEndpoint("db"), tcp, 6379, false, "dropped at node1 egress of other/client: selected by policy other/deny-out (egress), no rule admits default/db:tcp/6379"},
		{"several selecting policies named", []*networkingv1.NetworkPolicy{dbAllow(frontend, p6379), np("deny", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = []networkingv1.PolicyType{"Ingress"} })}, PodEndpoint("dev/tool"), PodEndpoint("db"), tcp, 6379, false, "selected by policies default/db-allow, default/deny (ingress)"},
		{"policies are additive", []*networkingv1.NetworkPolicy{np("deny", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = []networkingv1.PolicyType{"Ingress"} }), dbAllow(frontend, p6379)}, PodEndpoint("web"), PodEndpoint("db"), tcp, 6379, true, "allowed by default/db-allow ingress rule 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := NewEvaluator(demo(tc.pols...))
			if err != nil {
				t.Fatal(err)
			}
			v, err := ev.Evaluate(Connection{Src: tc.src, Dst: tc.dst, Protocol: tc.proto, Port: tc.port})
			if err != nil {
				t.Fatal(err)
			}
			if v.Allowed != tc.allowed || !strings.Contains(v.Reason, tc.reason) {
				t.Errorf("got allowed=%v %q\nwant allowed=%v, reason containing %q", v.Allowed, v.Reason, tc.allowed, tc.reason)
			}
		})
	}
}

func TestEvaluatorErrors(t *testing.T) {
	bad := dbAllow([]networkingv1.NetworkPolicyPeer{{PodSelector: me("a", "Equals", "b")}})
	if _, err := NewEvaluator(demo(bad)); err == nil || !strings.Contains(err.Error(), "policy default/db-allow: spec.ingress[0]: podSelector") {
		t.Errorf("bad selector: %v", err)
	}
	ev, _ := NewEvaluator(demo())
	if _, err := ev.Evaluate(Connection{Src: PodEndpoint("nope"), Dst: PodEndpoint("db")}); err == nil {
		t.Error("unknown pod: want an error")
	}
}

func TestCompileAndRender(t *testing.T) {
	pols := []*networkingv1.NetworkPolicy{
		dbAllow([]networkingv1.NetworkPolicyPeer{{PodSelector: ml("role", "frontend")}, {IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.26.0/24"}}}},
			pport(intstr.FromInt32(6379), nil, 0), pport(intstr.FromString("dns"), &udp, 0), pport(intstr.FromInt32(7000), nil, 7010)),
		np("web-out", "default", *ml("role", "frontend"), func(s *networkingv1.NetworkPolicySpec) {
			s.PolicyTypes = []networkingv1.PolicyType{"Egress"} // else Ingress too
			s.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}}}}},
				{Ports: []networkingv1.NetworkPolicyPort{pport(intstr.FromString("redis"), nil, 0)}},
			}
		}),
		// Same selector as db-allow's peer: must share the set.
		np("also-frontend", "default", *ml("app", "db"), func(s *networkingv1.NetworkPolicySpec) {
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: ml("role", "frontend")}}}}
		}),
	}
	plan, err := Compile(demo(pols...), CompileOptions{Lab: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range plan.Sets {
		if len(s.Name+tmpSuffix) > 31 {
			t.Errorf("set %s: %d characters with the swap suffix, max 31", s.Name, len(s.Name+tmpSuffix))
		}
	}
	var db, web *PodPlan
	for i := range plan.Pods {
		p := &plan.Pods[i]
		for _, c := range []*Chain{p.Ingress, p.Egress} {
			if c != nil && len(c.Name) > 28 {
				t.Errorf("chain %s longer than 28", c.Name)
			}
		}
		switch p.Pod {
		case "default/db":
			db = p
		case "default/web":
			web = p
		}
	}
	if db == nil || db.Ingress == nil || db.Egress != nil || web.Egress == nil || web.Ingress != nil {
		t.Fatalf("isolation: db %+v web %+v", db, web)
	}
	// db ingress: also-frontend's rule (policies in name order), then
	// db-allow's ports (6379, dns->53/udp, 7000:7010) x its 2 peers.
	if got := len(db.Ingress.Rules); got != 7 {
		t.Errorf("db ingress rules: %d, want 7: %+v", got, db.Ingress.Rules)
	}
	frontendSet := db.Ingress.Rules[0].Set
	if db.Ingress.Rules[1].Set != frontendSet {
		t.Error("equal selectors in two policies do not share a set")
	}
	fs := plan.Set(frontendSet)
	if fs == nil || fs.Type != HashIP || fmt.Sprint(fs.Entries) != "[{10.244.1.5 false}]" {
		t.Errorf("frontend set (podSelector alone: own namespace only): %+v", fs)
	}
	if r := db.Ingress.Rules[3]; r.Protocol != udp || r.Ports != "53" {
		t.Errorf("named port dns on db: %+v", r)
	}
	if r := db.Ingress.Rules[6]; r.Ports != "7000:7010" {
		t.Errorf("range: %+v", r)
	}
	netSet := plan.Set(db.Ingress.Rules[2].Set)
	if netSet == nil || netSet.Type != HashNet || fmt.Sprint(netSet.Entries) != "[{192.168.0.0/16 false} {192.168.26.0/24 true}]" {
		t.Errorf("ipBlock set: %+v", netSet)
	}
	all := plan.Set(web.Egress.Rules[0].Set)
	if all == nil || fmt.Sprint(all.Entries) != "[{0.0.0.0/1 false} {10.0.0.0/8 true} {128.0.0.0/1 false}]" {
		t.Errorf("/0 must be split for hash:net: %+v", all)
	}
	// Egress named port: one set per number (db 6379, tool 7000).
	var named []Rule
	for _, r := range web.Egress.Rules[1:] {
		named = append(named, r)
	}
	if len(named) != 2 || named[0].Ports != "6379" || named[1].Ports != "7000" || fmt.Sprint(plan.Set(named[0].Set).Entries) != "[{10.244.2.5 false}]" {
		t.Errorf("egress named port rules: %+v", named)
	}

	ipt := RenderIPTables(nil, plan)
	for _, want := range []string{
		"*filter\n:KLAB-NETPOL - [0:0]\n",
		`-A KLAB-NETPOL -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "klab demo: replies of allowed connections pass" -j ACCEPT`,
		`-A KLAB-NETPOL -m comment --comment "klab demo: egress of isolated pods" -j KLAB-NETPOL-E` + "\n" + `-A KLAB-NETPOL -m comment --comment "klab demo: ingress of isolated pods" -j KLAB-NETPOL-I` + "\n",
		fmt.Sprintf(`-A KLAB-NETPOL-I -d 10.244.2.5/32 -m comment --comment "klab demo: ingress of default/db isolated by default/also-frontend,default/db-allow" -j %s`, db.Ingress.Name),
		fmt.Sprintf(`-A KLAB-NETPOL-E -s 10.244.1.5/32 -m comment --comment "klab demo: egress of default/web isolated by default/web-out" -j %s`, web.Egress.Name),
		fmt.Sprintf(`-A %s -m set --match-set %s src -p tcp -m tcp --dport 6379 -m comment --comment "klab demo: default/db-allow ingress rule 1: podSelector role=frontend tcp/6379" -j RETURN`, db.Ingress.Name, frontendSet),
		fmt.Sprintf(`-A %s -m set --match-set %s src -p udp -m udp --dport 53 -m comment`, db.Ingress.Name, frontendSet),
		fmt.Sprintf(`-A %s -m comment --comment "klab demo drop ingress default/db" -j NFLOG --nflog-group 100 --nflog-prefix "klab demo I default/db"`, db.Ingress.Name),
		fmt.Sprintf(`-A %s -m comment --comment "klab demo drop ingress default/db" -j DROP`, db.Ingress.Name),
		fmt.Sprintf(`-A %s -m set --match-set %s dst -p tcp -m tcp --dport 7000 -m comment`, web.Egress.Name, named[1].Set),
		"COMMIT\n",
	} {
		if !strings.Contains(ipt, want) {
			t.Errorf("iptables-restore text lacks\n%s\nin:\n%s", want, ipt)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(ipt), "\n") {
		if strings.HasPrefix(line, "-A ") && !strings.Contains(line, "-m comment --comment ") {
			t.Errorf("rule without a comment: %s", line)
		}
	}
	// Egress is decided before ingress: the dispatch chain jumps to the
	// egress list first.
	if strings.Index(ipt, "-j KLAB-NETPOL-E\n") > strings.Index(ipt, "-j KLAB-NETPOL-I\n") {
		t.Error("dispatch: egress must be checked before ingress")
	}

	full := RenderIPSets(nil, plan)
	want := fmt.Sprintf("create %[1]s-T hash:net family inet -exist\nflush %[1]s-T\nadd %[1]s-T 192.168.0.0/16\nadd %[1]s-T 192.168.26.0/24 nomatch\ncreate %[1]s hash:net family inet -exist\nswap %[1]s-T %[1]s\ndestroy %[1]s-T\n", netSet.Name)
	if !strings.Contains(full, want) {
		t.Errorf("full ipset restore lacks\n%s\nin:\n%s", want, full)
	}

	// A label change: web stops being a frontend, client's namespace pod
	// becomes one... and a new pod appears.
	st := demo(pols...)
	st.Pods[1].Labels = map[string]string{"role": "backend"}
	st.Pods = append(st.Pods, Pod{Namespace: "default", Name: "web2", Labels: map[string]string{"role": "frontend"}, IP: ip("10.244.1.7"), Node: "node1"})
	next, err := Compile(st, CompileOptions{Lab: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	inc := RenderIPSets(plan, next)
	del := fmt.Sprintf("del %s 10.244.1.5 -exist\n", frontendSet)
	add := fmt.Sprintf("add %s 10.244.1.7 -exist\n", frontendSet)
	if !strings.Contains(inc, del) || !strings.Contains(inc, add) || strings.Index(inc, del) > strings.Index(inc, add) {
		t.Errorf("incremental ipset restore must delete before adding:\n%s", inc)
	}
	if strings.Contains(inc, "swap "+frontendSet) {
		t.Errorf("an existing set is changed in place, not rebuilt:\n%s", inc)
	}
	// web's egress chain is gone: flushed and deleted in the same transaction.
	ipt2 := RenderIPTables(plan, next)
	if !strings.Contains(ipt2, ":"+web.Egress.Name+" - [0:0]\n") || !strings.Contains(ipt2, "-X "+web.Egress.Name+"\n") {
		t.Errorf("stale chain not removed:\n%s", ipt2)
	}
	// Sets no plan references any more are destroyed after iptables-restore.
	destroy := RenderIPSetDestroy(plan, next)
	for _, r := range web.Egress.Rules {
		if next.Set(r.Set) == nil && !strings.Contains(destroy, "destroy "+r.Set+"\n") {
			t.Errorf("set %s not destroyed:\n%s", r.Set, destroy)
		}
	}
}

func TestNodePlansHoldLocalPods(t *testing.T) {
	pols := []*networkingv1.NetworkPolicy{np("deny", "default", metav1.LabelSelector{}, func(s *networkingv1.NetworkPolicySpec) {
		s.PolicyTypes = []networkingv1.PolicyType{"Ingress", "Egress"}
	})}
	p1, _ := Compile(demo(pols...), CompileOptions{Lab: "demo", Node: "node1"})
	for _, p := range p1.Pods {
		if p.Node != "node1" {
			t.Errorf("node1's plan holds %s on %s", p.Pod, p.Node)
		}
	}
	p2, _ := Compile(demo(pols...), CompileOptions{Lab: "demo2", Node: "node1"})
	if p1.Pods[0].Ingress.Name == p2.Pods[0].Ingress.Name {
		t.Error("two labs share a chain name")
	}
}

// TestRandomPlansAgree draws random policies over a 3x3 model and checks,
// for every pair of pods and for the external host, both protocols and
// several ports, that the compiled plan (as the kernel would walk it, on
// the source's and the destination's node) gives the evaluator's verdict.
func TestRandomPlansAgree(t *testing.T) {
	rng := rand.New(rand.NewSource(13))
	nsNames := []string{"x", "y", "z"}
	var st State
	for _, ns := range nsNames {
		st.Namespaces = append(st.Namespaces, Namespace{Name: ns, Labels: map[string]string{"ns": ns}})
	}
	i := 0
	for _, ns := range nsNames {
		for _, p := range []string{"a", "b", "c"} {
			node := []string{"n1", "n2"}[i%2]
			pod := Pod{Namespace: ns, Name: p, Labels: map[string]string{"pod": p}, IP: netip.AddrFrom4([4]byte{10, 244, byte(1 + i%2), byte(10 + i)}), Node: node}
			if i%3 == 0 {
				pod.Labels["tier"] = "db"
			}
			for _, port := range []int32{80, 81} {
				for _, proto := range []corev1.Protocol{tcp, udp} {
					name := fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
					num := port
					if i%4 == 1 && port == 80 {
						num = 82 // the same name on another number
					}
					pod.Ports = append(pod.Ports, Port{Name: name, Port: num, Protocol: proto})
				}
			}
			st.Pods = append(st.Pods, pod)
			i++
		}
	}
	external := ip("192.168.26.1")
	pick := func(xs ...string) string { return xs[rng.Intn(len(xs))] }
	randSel := func(key string, vals ...string) *metav1.LabelSelector {
		switch rng.Intn(5) {
		case 0:
			return &metav1.LabelSelector{}
		case 1:
			return ml(key, pick(vals...))
		case 2:
			return me(key, metav1.LabelSelectorOpIn, pick(vals...), pick(vals...))
		case 3:
			return me(key, metav1.LabelSelectorOpNotIn, pick(vals...))
		default:
			return me(pick(key, "tier"), []metav1.LabelSelectorOperator{metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[rng.Intn(2)])
		}
	}
	randPeer := func() networkingv1.NetworkPolicyPeer {
		switch rng.Intn(5) {
		case 0:
			return networkingv1.NetworkPolicyPeer{PodSelector: randSel("pod", "a", "b", "c")}
		case 1:
			return networkingv1.NetworkPolicyPeer{NamespaceSelector: randSel("ns", "x", "y", "z")}
		case 2:
			return networkingv1.NetworkPolicyPeer{NamespaceSelector: randSel("ns", "x", "y", "z"), PodSelector: randSel("pod", "a", "b", "c")}
		case 3:
			b := &networkingv1.IPBlock{CIDR: pick("10.244.0.0/16", "10.244.1.0/24", "0.0.0.0/0", "192.168.26.0/24", "10.244.2.14/32")}
			if rng.Intn(2) == 0 && b.CIDR != "10.244.2.14/32" {
				b.Except = []string{pick("10.244.1.10/32", "10.244.1.0/25")}
				if b.CIDR == "192.168.26.0/24" {
					b.Except = []string{"192.168.26.1/32"}
				}
				if b.CIDR == "10.244.1.0/24" && b.Except[0] == "10.244.1.0/25" {
					b.Except = []string{"10.244.1.0/26"}
				}
			}
			return networkingv1.NetworkPolicyPeer{IPBlock: b}
		default:
			return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}}
		}
	}
	randPorts := func() []networkingv1.NetworkPolicyPort {
		var out []networkingv1.NetworkPolicyPort
		for n := rng.Intn(3); n > 0; n-- {
			var proto *corev1.Protocol
			switch rng.Intn(3) {
			case 0:
				proto = &tcp
			case 1:
				proto = &udp
			}
			switch rng.Intn(4) {
			case 0:
				out = append(out, networkingv1.NetworkPolicyPort{Protocol: proto})
			case 1:
				out = append(out, pport(intstr.FromInt32(int32(80+rng.Intn(3))), proto, 0))
			case 2:
				out = append(out, pport(intstr.FromInt32(79), proto, int32(80+rng.Intn(3))))
			default:
				out = append(out, pport(intstr.FromString(pick("serve-80-tcp", "serve-81-udp", "serve-80-udp", "nope")), proto, 0))
			}
		}
		return out
	}
	for iter := 0; iter < 150; iter++ {
		var pols []*networkingv1.NetworkPolicy
		for n := 1 + rng.Intn(4); n > 0; n-- {
			p := np(fmt.Sprintf("p%d", n), pick(nsNames...), *randSel("pod", "a", "b", "c"), func(s *networkingv1.NetworkPolicySpec) {
				for r := rng.Intn(3); r > 0; r-- {
					var peers []networkingv1.NetworkPolicyPeer
					for k := rng.Intn(3); k > 0; k-- {
						peers = append(peers, randPeer())
					}
					s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: randPorts()})
				}
				for r := rng.Intn(3); r > 0; r-- {
					var peers []networkingv1.NetworkPolicyPeer
					for k := rng.Intn(3); k > 0; k-- {
						peers = append(peers, randPeer())
					}
					s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: randPorts()})
				}
				switch rng.Intn(4) {
				case 0:
					s.PolicyTypes = []networkingv1.PolicyType{"Ingress", "Egress"}
				case 1:
					s.PolicyTypes = []networkingv1.PolicyType{"Egress"}
				}
			})
			pols = append(pols, p)
		}
		st.Policies = pols
		ev, err := NewEvaluator(st)
		if err != nil {
			t.Fatal(err)
		}
		plans := map[string]*Plan{"n1": ev.Compile(CompileOptions{Lab: "r", Node: "n1"}), "n2": ev.Compile(CompileOptions{Lab: "r", Node: "n2"})}
		ends := []Endpoint{IPEndpoint(external)}
		for _, p := range st.Pods {
			ends = append(ends, PodEndpoint(p.Key()))
		}
		addr := func(e Endpoint) (netip.Addr, string) {
			if e.Pod == "" {
				return e.IP, ""
			}
			for _, p := range st.Pods {
				if p.Key() == e.Pod {
					return p.IP, p.Node
				}
			}
			return netip.Addr{}, ""
		}
		for _, s := range ends {
			for _, d := range ends {
				if s == d {
					continue
				}
				for _, proto := range []corev1.Protocol{tcp, udp} {
					for _, port := range []int32{79, 80, 81, 82} {
						v, err := ev.Evaluate(Connection{Src: s, Dst: d, Protocol: proto, Port: port})
						if err != nil {
							t.Fatal(err)
						}
						sip, sn := addr(s)
						dip, dn := addr(d)
						got := true
						for _, n := range []string{sn, dn} {
							if n != "" {
								if ok, _ := plans[n].Simulate(sip, dip, proto, port); !ok {
									got = false
								}
							}
						}
						if got != v.Allowed {
							t.Fatalf("iteration %d: %v -> %v %s/%d: plan says %v, evaluator %v (%s)\npolicies: %+v", iter, s, d, proto, port, got, v.Allowed, v.Reason, pols)
						}
					}
				}
			}
		}
	}
}
