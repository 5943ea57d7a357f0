package journey

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/k8s"
	"github.com/klab-dev/klab/pkg/policy"
)

// In nftables mode the journey's policy verdict is confirmed by the
// kernel's trace: the probe's packet meets the counted drop rule of table
// ip klab-policy, shown with its text, and the verdict says so. In
// iptables mode on iptables-nft the traced drop is the pod chain's -j DROP
// rule, as iptables-save prints it.
func TestJourneyPolicyTraced(t *testing.T) {
	t.Run("nftables", func(t *testing.T) { testJourneyPolicy(t, cluster.ProxyNFTables) })
	t.Run("iptables-nft", func(t *testing.T) {
		if !iptablesNFT() {
			t.Skip("iptables here is not iptables-nft: the verdict comes from the counter diff")
		}
		testJourneyPolicy(t, cluster.ProxyIPTables)
	})
}

func testJourneyPolicy(t *testing.T, mode string) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "n2")
	state := t.TempDir()
	c, err := cluster.Open(state, lab, &cluster.Options{ProxyMode: mode}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := cluster.Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	for _, n := range []string{"node1", "node2"} {
		if _, err := c.AddNode(cluster.NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range [][2]string{{"pod-a", "node1"}, {"pod-c", "node2"}} {
		if _, err := c.AddPod(cluster.PodSpec{Name: p[0], Node: p[1], Labels: map[string]string{"app": p[0]}}); err != nil {
			t.Fatal(err)
		}
	}
	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-c", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "pod-c"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if _, err := c.Apply(&k8s.Set{NetworkPolicies: []*networkingv1.NetworkPolicy{deny}}, nil); err != nil {
		t.Fatal(err)
	}
	l := c.Lab
	listen(t, l, "pod-c")
	rep, err := Run(t.Context(), l, mustPlan(t, l, "pod-a", "pod-c", 8080), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	if mode == cluster.ProxyIPTables {
		var hit bool
		for _, h := range rep.Rules {
			hit = hit || (h.Node == "node2" && strings.HasPrefix(h.Chain, "KLAB-NPI-") && strings.HasSuffix(h.Rule, "-j DROP"))
		}
		if !hit || !rep.RulesTraced || !strings.Contains(rep.Policy, "(confirmed: drop rule node2 KLAB-NPI-") {
			t.Errorf("iptables-nft: traced=%v, verdict %q, hits %v", rep.RulesTraced, rep.Policy, rep.Rules)
		}
		return
	}
	var drop bool
	for _, h := range rep.NFTrace {
		drop = drop || (h.Node == "node2" && h.Table == policy.NFTTable && h.Verdict == "drop" && strings.HasPrefix(h.Rule, "counter drop comment \"klab "+lab+" drop ingress default/pod-c\""))
	}
	if !drop {
		t.Errorf("the trace lacks node2's counted drop in table ip %s: %v", policy.NFTTable, rep.NFTrace)
	}
	if !strings.Contains(rep.Policy, "dropped at node2 ingress of default/pod-c") || !strings.Contains(rep.Policy, "(confirmed: drop rule node2 ") || !strings.Contains(rep.Policy, "table ip "+policy.NFTTable) {
		t.Errorf("policy verdict not confirmed by the trace: %q", rep.Policy)
	}
}

func mustPlan(t *testing.T, l *cluster.Lab, from, to string, port int) *Plan {
	t.Helper()
	p, err := PlanPath(l, from, to, l.Pod(to).IP, TCP, port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
