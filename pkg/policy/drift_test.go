package policy

import (
	"os/exec"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

func inNS(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// TestDriftAndRepair programs a node's policies, then damages them with
// the kernel's own tools — a set member deleted with ipset, a rule deleted
// from a pod chain and a chain of the dispatch emptied with iptables, the
// FORWARD jump removed — and checks that Drift names each, that PlanRepair
// restores them (read back with ipset list and iptables-save), and that a
// repaired node drifts no more and plans nothing.
func TestDriftAndRepair(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"ipset", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/install-deps.sh installs it)", tool)
		}
	}
	lab := testutil.LabName(t, "dp")
	ns := netns.Name(lab, "node2")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(ns) })
	st := demo(dbAllow([]networkingv1.NetworkPolicyPeer{{PodSelector: ml("role", "frontend")}, {IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}}}))
	next, err := Compile(st, CompileOptions{Lab: lab, Node: "node2"})
	if err != nil {
		t.Fatal(err)
	}
	a := &plan.Applier{Discard: true}
	defer a.Close()
	if err := a.Apply(PlanApply(ns, nil, next, nil)); err != nil {
		t.Fatal(err)
	}
	read := func() *Content {
		t.Helper()
		c, err := ReadContent(ns, lab)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if d := read().Drift(next); len(d) != 0 {
		t.Fatalf("a freshly programmed node drifts:\n%s", strings.Join(d, "\n"))
	}
	if p := PlanRepair(ns, next, read()); p != nil {
		t.Fatalf("repair of a healthy node plans:\n%s", p)
	}

	db := next.Pods[0].Ingress
	var peerSet, netSet string
	for _, s := range next.Sets {
		if s.Type == HashIP {
			peerSet = s.Name
		} else {
			netSet = s.Name
		}
	}
	inNS(t, ns, "ipset", "del", peerSet, "10.244.1.5")
	inNS(t, ns, "ipset", "add", netSet, "192.168.7.0/24")
	inNS(t, ns, "iptables", "-D", db.Name, "1")
	inNS(t, ns, "iptables", "-F", IngressChain)
	inNS(t, ns, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", JumpComment(lab), "-j", DispatchChain)

	d := strings.Join(read().Drift(next), "\n")
	for _, want := range []string{
		"set " + peerSet + " (pods of podSelector role=frontend in namespace default) lacks 10.244.1.5",
		"set " + netSet + " (ipBlock 10.0.0.0/8 except 10.1.0.0/16) has 192.168.7.0/24, which the policies do not give",
		"chain " + db.Name + " has 3 rule(s) that differ from the 4 the policies give",
		"chain " + IngressChain + " has 0 rule(s) that differ from the 1 the policies give",
		"the FORWARD jump to " + DispatchChain + " is missing",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("drift lacks %q:\n%s", want, d)
		}
	}
	p := PlanRepair(ns, next, read())
	if p == nil {
		t.Fatal("no repair planned for a damaged node")
	}
	if err := a.Apply(p); err != nil {
		t.Fatal(err)
	}
	if l := inNS(t, ns, "ipset", "list", peerSet); !strings.Contains(l, "\n10.244.1.5\n") {
		t.Errorf("ipset list %s after repair:\n%s", peerSet, l)
	}
	if l := inNS(t, ns, "ipset", "list", netSet); strings.Contains(l, "192.168.7.0/24") {
		t.Errorf("ipset list %s still has the stray member:\n%s", netSet, l)
	}
	save := inNS(t, ns, "iptables-save", "-t", "filter")
	if n := strings.Count(save, "-A "+db.Name+" "); n != 4 {
		t.Errorf("%s has %d rules after repair, want 4:\n%s", db.Name, n, save)
	}
	if !strings.Contains(save, "-A "+IngressChain+" -d 10.244.2.5/32 ") || strings.Count(save, "--comment \""+JumpComment(lab)+"\" -j "+DispatchChain) != 1 {
		t.Errorf("dispatch or jump not restored:\n%s", save)
	}
	if d := read().Drift(next); len(d) != 0 {
		t.Errorf("a repaired node still drifts:\n%s", strings.Join(d, "\n"))
	}
}
