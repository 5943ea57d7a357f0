package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/policy"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The agent's view of the namespaces, pods and NetworkPolicies the CLI
// writes compiles, for every node, to the plan the CLI compiles from its
// own lab; the keys are the API server's.
func TestPolicyObjectsRoundTrip(t *testing.T) {
	tcp := intstr.FromString("http")
	l := &Lab{Name: "t", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), ProxyMode: ProxyNFTables,
		Nodes: []*Node{{Name: "node1", IP: netip.MustParseAddr("192.168.1.101"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
			{Name: "node2", IP: netip.MustParseAddr("192.168.1.102"), PodCIDR: netip.MustParsePrefix("10.244.2.0/24")}},
		Namespaces: []*Namespace{{Name: "prod", Labels: map[string]string{"team": "a", MetadataNameLabel: "prod"}}},
		Pods: []*Pod{
			{Name: "client", Node: "node1", IP: netip.MustParseAddr("10.244.1.2"), Labels: map[string]string{"role": "client"}},
			{Name: "prod/db", Node: "node2", IP: netip.MustParseAddr("10.244.2.2"), Labels: map[string]string{"app": "db"},
				Ports: []ContainerPort{{Name: "http", Port: 8080, Protocol: nat.TCP}}},
			{Name: "prod/web", Node: "node1", IP: netip.MustParseAddr("10.244.1.3"), Labels: map[string]string{"app": "web"}, Unready: true},
		},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "deny"}, Spec: networkingv1.NetworkPolicySpec{}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "db"}, Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &tcp}}}}}},
		}}
	objs := l.policyObjects()
	for _, k := range []string{"/registry/networkpolicies/prod/db", "/registry/networkpolicies/prod/deny", "/registry/pods/default/client",
		"/registry/pods/prod/db", "/registry/namespaces/prod", "/registry/namespaces/default", "/registry/namespaces/kube-system"} {
		if _, ok := objs[k]; !ok {
			t.Errorf("no %s among %v", k, keysSorted(objs))
		}
	}
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal([]byte(objs["/registry/networkpolicies/prod/db"]), &np); err != nil || np.Kind != "NetworkPolicy" || np.APIVersion != "networking.k8s.io/v1" {
		t.Fatalf("stored policy: %+v %v", np.TypeMeta, err)
	}
	held := map[string]any{}
	for k, v := range objs {
		if o := decodePolicyObject(k, []byte(v), func(f string, a ...any) { t.Errorf("decode "+f, a...) }); o != nil {
			held[k] = o
		} else {
			t.Fatalf("%s did not decode", k)
		}
	}
	held[KubeProxyConfigKey] = decodeObject(KubeProxyConfigKey, []byte(l.proxyObjects()[KubeProxyConfigKey]), t.Logf)
	st, mode := policyStateFromObjects(&Lab{Name: "t", ClusterCIDR: l.ClusterCIDR, Nodes: l.Nodes}, held)
	if mode != ProxyNFTables {
		t.Errorf("mode from the ConfigMap: %s", mode)
	}
	var cc policy.Compiler
	for _, n := range l.Nodes {
		want, err := policy.Compile(l.PolicyState(), policy.CompileOptions{Lab: "t", Node: n.Name})
		if err != nil {
			t.Fatal(err)
		}
		got, err := cc.Compile(st, policy.CompileOptions{Lab: "t", Node: n.Name})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("%s: the agent compiles\n%+v\nthe CLI\n%+v", n.Name, got, want)
		}
		if n.Name == "node2" && (len(got.Pods) != 1 || got.Pods[0].Ingress == nil) {
			t.Fatalf("node2 filters %+v", got.Pods)
		}
	}
}

// What a hand edit can hold that the agent cannot use is ignored with a
// line naming the key and the reason, not compiled into the node.
func TestDecodePolicyObjectRejects(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{"/registry/networkpolicies/x/bad", `{"metadata":{"namespace":"x","name":"bad"},"spec":{"podSelector":{"matchExpressions":[{"key":"a","operator":"Nope"}]}}}`, "ignoring /registry/networkpolicies/x/bad"},
		{"/registry/networkpolicies/x/noname", `{"spec":{}}`, "metadata.namespace and metadata.name are required"},
		{"/registry/networkpolicies/x/json", `{`, "ignoring"},
		{"/registry/pods/x/pending", `{"metadata":{"namespace":"x","name":"pending"},"spec":{"nodeName":"node1"}}`, "not running yet"},
		{"/registry/namespaces/x", `[]`, "not a Namespace"},
	} {
		var said []string
		if o := decodePolicyObject(tc.key, []byte(tc.value), func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) }); o != nil {
			t.Errorf("%s decoded to %+v", tc.key, o)
		}
		if len(said) != 1 {
			t.Errorf("%s: logged %q", tc.key, said)
			continue
		}
		if line := strings.Join(said, ""); !strings.Contains(line, tc.want) {
			t.Errorf("%s: logged %q, want %q", tc.key, line, tc.want)
		}
	}
}

// A write is the difference from what was written last: changed and new
// keys put, gone ones deleted, unchanged ones left alone (a hand edit of
// them stays), sorted, as the etcdctl txn script shows.
func TestEtcdDiff(t *testing.T) {
	old := map[string]string{"/registry/pods/default/a": digest("A"), "/registry/pods/default/b": digest("B"), "/registry/pods/default/gone": digest("G")}
	cur := map[string]string{"/registry/pods/default/a": "A", "/registry/pods/default/b": "B2", "/registry/namespaces/x": "X"}
	ops, script := etcdDiff(old, cur, func(k string) string { return digest(cur[k]) })
	want := "put /registry/namespaces/x \"X\"\nput /registry/pods/default/b \"B2\"\ndel /registry/pods/default/gone\n"
	if script != want || len(ops) != 3 {
		t.Fatalf("%d ops, script:\n%s\nwant:\n%s", len(ops), script, want)
	}
	if ops, _ := etcdDiff(map[string]string{"k": digest("v")}, map[string]string{"k": "v"}, func(string) string { return digest("v") }); len(ops) != 0 {
		t.Errorf("nothing changed, yet %d ops", len(ops))
	}
}

// The policy role waits for the proxy role's sync of a mode, bounded; no
// gate (the CLI) never waits.
func TestAppliedModeWait(t *testing.T) {
	ctx := context.Background()
	var none *appliedMode
	if !none.wait(ctx, ProxyNFTables, time.Millisecond) {
		t.Error("a nil gate waited")
	}
	m := &appliedMode{}
	if m.wait(ctx, ProxyIPTables, 20*time.Millisecond) {
		t.Error("no sync yet, but the wait succeeded")
	}
	m.set(ProxyIPTables)
	if !m.wait(ctx, ProxyIPTables, time.Millisecond) {
		t.Error("synced iptables, but the wait failed")
	}
	done := make(chan bool)
	go func() { done <- m.wait(ctx, ProxyNFTables, 2*time.Second) }()
	time.Sleep(10 * time.Millisecond)
	m.set(ProxyNFTables)
	if !<-done {
		t.Error("the wait missed the switch to nftables")
	}
}
