package cluster

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
)

func TestNATService(t *testing.T) {
	ip := netip.MustParseAddr
	l := &Lab{Name: "demo",
		Pods: []*Pod{
			{Name: "a", Node: "node1", IP: ip("10.244.1.2"), Labels: map[string]string{"app": "web"}},
			{Name: "b", Node: "node2", IP: ip("10.244.2.2")},
		},
		Services: []*Service{
			{Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []nat.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "web"}},
			{Name: "db", ClusterIP: ip("10.96.0.11"), Ports: []nat.ServicePort{{Port: 5432}}, Affinity: nat.AffinityClientIP, Endpoints: []string{"b", "gone"}},
		},
	}
	for _, tc := range []struct {
		name string
		want nat.Service
		ok   bool
	}{
		{"web", nat.Service{Namespace: "default", Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []nat.ServicePort{{Port: 80}},
			Endpoints: []nat.Endpoint{{IP: ip("10.244.1.2"), PodName: "a", NodeName: "node1"}}}, true},
		{"db", nat.Service{Namespace: "default", Name: "db", ClusterIP: ip("10.96.0.11"), Ports: []nat.ServicePort{{Port: 5432}}, Affinity: nat.AffinityClientIP,
			Endpoints: []nat.Endpoint{{IP: ip("10.244.2.2"), PodName: "b", NodeName: "node2"}}}, true},
		{"nope", nat.Service{}, false},
	} {
		got, ok := l.NATService(tc.name)
		if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("NATService(%q) = %+v, %v; want %+v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
