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
// ip klab-policy, shown with its text, and the verdict says so.
func TestJourneyPolicyNFTables(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "n2")
	state := t.TempDir()
	c, err := cluster.Open(state, lab, &cluster.Options{ProxyMode: cluster.ProxyNFTables}, nil)
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
