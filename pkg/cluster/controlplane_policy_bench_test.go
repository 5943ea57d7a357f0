package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// benchPolicy is policy i of BenchmarkPolicyChange: pods app=a<i%20>
// admit app=a<(i+1)%20> on port.
func benchPolicy(i, port int) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(int32(port))
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultNamespace, Name: fmt.Sprintf("np-%d", i)},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", i%20)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", (i+1)%20)}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p}}}}}}
}

// BenchmarkPolicyChange changes one NetworkPolicy (its port) in a lab of
// 10 nodes x 10 pods holding 100 policies (each selects the 5 pods of one
// of 20 apps and admits another app), in direct mode (the CLI compiles
// every node's plan and applies the changed chains there, nodes in
// parallel) and in control-plane mode (the CLI writes the policy to
// etcd; every node's agent compiles its node with its long-lived
// policy.Compiler, applies the diff and acks), in the same run. ms/change
// is until the verb returns with every node enforcing the change (etcd:
// every agent acked the revision, after its apply). Both proxy modes.
// Run with -benchtime 10x.
func BenchmarkPolicyChange(b *testing.B) {
	testutil.RequireRoot(b)
	bin := testutil.Klab(b)
	const nodes, pods, policies = 10, 10, 100
	for _, row := range [][2]string{{ProxyIPTables, "direct"}, {ProxyIPTables, "etcd"}, {ProxyNFTables, "direct"}, {ProxyNFTables, "etcd"}} {
		proxy, mode := row[0], row[1]
		b.Run(fmt.Sprintf("%dnodes-%dpods-%dpolicies/%s/%s", nodes, nodes*pods, policies, proxy, mode), func(b *testing.B) {
			c := modeLab(b, bin, "np", proxy, mode)
			spec := flannelSpec(nodes, pods)
			for i := range spec.Pods {
				spec.Pods[i].Labels = map[string]string{"app": fmt.Sprintf("a%d", i%20)}
			}
			if _, _, err := c.Build(spec); err != nil {
				b.Fatal(err)
			}
			var all []*networkingv1.NetworkPolicy
			for i := range policies {
				all = append(all, benchPolicy(i, 8080))
			}
			if err := c.setPolicyObjects(all, nil); err != nil {
				b.Fatal(err)
			}
			if err := c.takePolicyLag(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if err := c.setPolicyObjects([]*networkingv1.NetworkPolicy{benchPolicy(50, 8081-i%2)}, nil); err != nil {
					b.Fatal(err)
				}
				if err := c.takePolicyLag(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(t0).Microseconds())/1000/float64(b.N), "ms/change")
			b.StopTimer()
			if mode == "etcd" {
				if log, err := c.AgentLog("node1"); err == nil {
					b.Log(tailOf(log, 2))
				}
			}
		})
	}
}
