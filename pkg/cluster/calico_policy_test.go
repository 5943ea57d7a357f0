package cluster

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/probe"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCalicoNetworkPolicy enforces a NetworkPolicy on routed pods: web
// (node1) admits only app=client; a client on the same node and one on
// node2 get through, an other pod on each node does not. Same-node
// traffic is routed between two cali veths, so it crosses FORWARD like
// cross-node traffic does.
func TestCalicoNetworkPolicy(t *testing.T) {
	t.Parallel()
	c := calicoLab(t, 2, nil)
	for _, p := range []struct{ name, node, app string }{
		{"web", "node1", "web"}, {"client1", "node1", "client"}, {"other1", "node1", "other"},
		{"client2", "node2", "client"}, {"other2", "node2", "other"},
	} {
		if _, err := c.AddPod(PodSpec{Name: p.name, Node: p.node, Labels: map[string]string{"app": p.app}}); err != nil {
			t.Fatal(err)
		}
	}
	waitRoutes(t, c, 15*time.Second)
	l, err := probe.Listen(c.NS("web"), ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go probe.ServeHTTP(ctx, l, "web")
	web := c.Lab.Pod("web").IP.String()
	reach := func(from string) bool {
		// A dropped SYN is retransmitted after 1 s: give up before that.
		dctx, dcancel := context.WithTimeout(ctx, 900*time.Millisecond)
		defer dcancel()
		conn, err := probe.Dial(dctx, c.NS(from), "tcp", net.JoinHostPort(web, "8080"))
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	for _, from := range []string{"client1", "other1", "client2", "other2"} {
		if !reach(from) {
			t.Fatalf("%s cannot reach web before any policy", from)
		}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-from-clients", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
			}}}},
		},
	}
	if err := c.setPolicyObjects([]*networkingv1.NetworkPolicy{np}, nil); err != nil {
		t.Fatal(err)
	}
	for from, want := range map[string]bool{"client1": true, "other1": false, "client2": true, "other2": false} {
		if got := reach(from); got != want {
			t.Errorf("%s -> web: reachable %v, want %v under the policy", from, got, want)
		}
	}
}
