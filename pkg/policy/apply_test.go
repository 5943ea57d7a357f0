package policy

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/klab-dev/klab/pkg/plan"
)

func verbs(p plan.Plan) string {
	var v []string
	for _, op := range p {
		v = append(v, string(op.Verb))
	}
	return strings.Join(v, ", ")
}

func compileNode(t *testing.T, s State, node string) *Plan {
	t.Helper()
	p, err := Compile(s, CompileOptions{Lab: "demo", Node: node})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The plan of a change is the difference: everything for a fresh node, a
// set's new member for a pod that joins a peer, only the changed chain for
// a changed policy, nothing for no change; stale sets are destroyed after
// the rules that named them are gone.
func TestPlanApply(t *testing.T) {
	ns := "klab.demo.node2"
	allow := dbAllow([]networkingv1.NetworkPolicyPeer{{PodSelector: ml("role", "frontend")}})
	s1 := demo(allow)
	p1 := compileNode(t, s1, "node2")

	fresh := PlanApply(ns, nil, p1, nil)
	if got, want := verbs(fresh), "sysctl, ipset restore, iptables-restore, iptables"; got != want {
		t.Fatalf("fresh node: %s, want %s\n%s", got, want, fresh)
	}
	if fresh[0].Key != BridgeNFKey || fresh[3].Rules.Action != "-I" || fresh[3].Rules.Chain != "FORWARD" {
		t.Errorf("fresh node:\n%s", fresh)
	}
	if !strings.Contains(fresh[2].Rules.Input, ":"+DispatchChain+" - [0:0]") || !fresh[2].Rules.NoFlush {
		t.Errorf("the first restore does not declare the dispatch chain:\n%s", fresh[2].Rules.Input)
	}
	if p := PlanApply(ns, p1, p1, nil); len(p) != 0 {
		t.Errorf("no change planned:\n%s", p)
	}

	// A new frontend pod: one add to the peer set, no rule rewritten.
	s2 := demo(allow)
	s2.Pods = append(s2.Pods, Pod{Namespace: "default", Name: "web2", Labels: map[string]string{"role": "frontend"}, IP: ip("10.244.1.9"), Node: "node1"})
	p2 := compileNode(t, s2, "node2")
	inc := PlanApply(ns, p1, p2, nil)
	if verbs(inc) != "ipset restore" || !strings.Contains(inc[0].Sets, " 10.244.1.9 -exist\n") || strings.Contains(inc[0].Sets, "swap") {
		t.Errorf("a new peer pod:\n%s", inc)
	}

	// A new pod the policy selects: its chain, one appended jump, no list
	// rewritten; and when it goes, one deleted jump and its chain deleted.
	s4 := demo(allow)
	s4.Pods = append(s4.Pods, Pod{Namespace: "default", Name: "db2", Labels: map[string]string{"app": "db"}, IP: ip("10.244.2.9"), Node: "node2"})
	p4 := compileNode(t, s4, "node2")
	add := PlanApply(ns, p1, p4, nil)
	if verbs(add) != "iptables-restore" || !strings.Contains(add[0].Rules.Input, "\n-A "+IngressChain+" -d 10.244.2.9/32 ") || strings.Contains(add[0].Rules.Input, ":"+IngressChain+" ") || strings.Contains(add[0].Rules.Input, ":"+DispatchChain+" ") {
		t.Errorf("a new selected pod:\n%s", add)
	}
	del := PlanApply(ns, p4, p1, nil)
	if verbs(del) != "iptables-restore" || !strings.Contains(del[0].Rules.Input, "\n-D "+IngressChain+" -d 10.244.2.9/32 ") || !strings.Contains(del[0].Rules.Input, "\n-X KLAB-NPI-") {
		t.Errorf("a selected pod gone:\n%s", del)
	}

	// The policy changes its peer: the db chain is rewritten (not the
	// dispatch chain), the new set built and swapped in first, the old one
	// destroyed last.
	s3 := demo(dbAllow([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: ml("team", "blue")}}))
	p3 := compileNode(t, s3, "node2")
	ch := PlanApply(ns, p1, p3, nil)
	if got, want := verbs(ch), "ipset restore, iptables-restore, ipset restore"; got != want {
		t.Fatalf("changed peer: %s, want %s\n%s", got, want, ch)
	}
	if !strings.Contains(ch[0].Sets, "swap ") || !strings.HasPrefix(ch[2].Sets, "destroy KLAB-P-") {
		t.Errorf("set order:\n%s", ch)
	}
	if strings.Contains(ch[1].Rules.Input, ":"+DispatchChain+" ") {
		t.Errorf("the dispatch chain was rewritten although no pod's isolation changed:\n%s", ch[1].Rules.Input)
	}

	// Resync against a read kernel: the jump goes into the transaction,
	// a stale chain and set are removed, a correct sysctl is left alone.
	k := &Kernel{Chains: []string{DispatchChain, "KLAB-NPI-STALE"}, Sets: []string{"KLAB-P-STALE"}, BridgeNF: "1"}
	rs := PlanApply(ns, nil, p1, k)
	if got, want := verbs(rs), "ipset restore, iptables-restore, ipset restore"; got != want {
		t.Fatalf("resync: %s, want %s\n%s", got, want, rs)
	}
	in := rs[1].Rules.Input
	if !strings.Contains(in, "-X KLAB-NPI-STALE\n") || !strings.Contains(in, "-I FORWARD 1 -m comment --comment \"klab demo network policies\" -j "+DispatchChain+"\n") || rs[2].Sets != "destroy KLAB-P-STALE\n" {
		t.Errorf("resync:\n%s", rs)
	}

	// Removal: jump, chains, sets.
	rm := PlanRemove(ns, "demo", p1, nil)
	if got, want := verbs(rm), "iptables, iptables-restore, ipset restore"; got != want || rm[0].Rules.Action != "-D" {
		t.Fatalf("remove: %s, want %s\n%s", got, want, rm)
	}
	for _, c := range chainsOf(p1) {
		if !strings.Contains(rm[1].Rules.Input, "-X "+c.name+"\n") {
			t.Errorf("remove keeps %s:\n%s", c.name, rm[1].Rules.Input)
		}
	}
}
