package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestCompilerMatchesCompile walks a random sequence of changes (a policy
// replaced, added or removed, a pod added, removed or relabelled, a
// namespace relabelled) and checks after each that a long-lived Compiler's
// plans for both nodes equal a fresh Compile's.
func TestCompilerMatchesCompile(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	pick := func(xs ...string) string { return xs[rng.Intn(len(xs))] }
	var st State
	for _, ns := range []string{"x", "y", "z"} {
		st.Namespaces = append(st.Namespaces, Namespace{Name: ns, Labels: map[string]string{"team": pick("a", "b")}})
	}
	newPod := func(i int) Pod {
		return Pod{Namespace: pick("x", "y", "z"), Name: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": pick("a", "b", "c")},
			IP: netip.AddrFrom4([4]byte{10, 244, byte(1 + i%2), byte(10 + i)}), Node: []string{"n1", "n2"}[i%2],
			Ports: []Port{{Name: "http", Port: int32(80 + rng.Intn(2)), Protocol: tcp}}}
	}
	for i := range 12 {
		st.Pods = append(st.Pods, newPod(i))
	}
	randPolicy := func(n int) *networkingv1.NetworkPolicy {
		return np(fmt.Sprintf("np%d", n), pick("x", "y", "z"), *ml("app", pick("a", "b", "c")), func(s *networkingv1.NetworkPolicySpec) {
			peer := networkingv1.NetworkPolicyPeer{PodSelector: ml("app", pick("a", "b", "c"))}
			switch rng.Intn(4) {
			case 1:
				peer = networkingv1.NetworkPolicyPeer{NamespaceSelector: ml("team", pick("a", "b"))}
			case 2:
				peer = networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{"10.244.1.0/24"}}}
			}
			port := pport(intstr.FromInt32(int32(80+rng.Intn(2))), &tcp, 0)
			if rng.Intn(3) == 0 {
				port = pport(intstr.FromString("http"), &tcp, 0)
			}
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: []networkingv1.NetworkPolicyPort{port}}}
			if rng.Intn(2) == 0 {
				s.PolicyTypes = []networkingv1.PolicyType{"Ingress", "Egress"}
				s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{peer}, Ports: []networkingv1.NetworkPolicyPort{port}}}
			}
		})
	}
	for n := range 8 {
		st.Policies = append(st.Policies, randPolicy(n))
	}
	var cc Compiler
	next := 100
	for step := range 120 {
		// The next state: the old one is not modified (a Compiler may
		// hold its pods and policies).
		s := State{Namespaces: slices.Clone(st.Namespaces), Pods: slices.Clone(st.Pods), Policies: slices.Clone(st.Policies)}
		switch rng.Intn(7) {
		case 0:
			s.Policies[rng.Intn(len(s.Policies))] = randPolicy(rng.Intn(8))
		case 1:
			s.Policies = append(s.Policies, randPolicy(next))
			next++
		case 2:
			if len(s.Policies) > 1 {
				i := rng.Intn(len(s.Policies))
				s.Policies = slices.Delete(s.Policies, i, i+1)
			}
		case 3:
			s.Pods = append(s.Pods, newPod(next%200))
			next++
		case 4:
			if len(s.Pods) > 1 {
				i := rng.Intn(len(s.Pods))
				s.Pods = slices.Delete(s.Pods, i, i+1)
			}
		case 5:
			i := rng.Intn(len(s.Pods))
			s.Pods[i].Labels = map[string]string{"app": pick("a", "b", "c")}
		case 6:
			i := rng.Intn(len(s.Namespaces))
			s.Namespaces[i] = Namespace{Name: s.Namespaces[i].Name, Labels: map[string]string{"team": pick("a", "b")}}
		}
		if _, err := NewEvaluator(s); err != nil {
			continue // e.g. a duplicate pod name: not a state
		}
		dup := map[string]bool{}
		ok := true
		for _, p := range s.Policies {
			ok = ok && !dup[p.Namespace+"/"+p.Name]
			dup[p.Namespace+"/"+p.Name] = true
		}
		if !ok {
			continue
		}
		st = s
		for _, node := range []string{"n1", "n2"} {
			opts := CompileOptions{Lab: "inc", Node: node}
			want, err := Compile(st, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cc.Compile(st, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d node %s: the Compiler's plan differs from Compile's\n got %+v\nwant %+v", step, node, got, want)
			}
		}
	}
}

var _ = corev1.ProtocolTCP
var _ = metav1.LabelSelector{}
