package cluster

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
	corev1 "k8s.io/api/core/v1"
)

// decodeAll is what an agent holds after listing etcd.
func decodeAll(t *testing.T, objs map[string]string) map[string]any {
	t.Helper()
	out := map[string]any{}
	for k, v := range objs {
		o := decodeObject(k, []byte(v), func(f string, a ...any) { t.Errorf("decode "+f, a...) })
		if o == nil {
			t.Fatalf("%s did not decode", k)
		}
		out[k] = o
	}
	return out
}

// The agent's view of the objects the CLI writes renders the same
// services as the CLI's own lab: names, ClusterIPs, ports, affinity,
// endpoints in order, unready ones left out.
func TestProxyObjectsRoundTrip(t *testing.T) {
	pods := []*Pod{
		{Name: "a", Node: "node1", IP: netip.MustParseAddr("10.244.1.2"), Labels: map[string]string{"app": "web"}},
		{Name: "b", Node: "node2", IP: netip.MustParseAddr("10.244.2.2"), Labels: map[string]string{"app": "web"}, Unready: true},
		{Name: "c", Node: "node2", IP: netip.MustParseAddr("10.244.2.3"), Labels: map[string]string{"app": "web"}},
		{Name: "prod/d", Node: "node1", IP: netip.MustParseAddr("10.244.1.3")},
	}
	l := &Lab{Name: "t", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12"), ProxyMode: ProxyNFTables,
		Nodes: []*Node{{Name: "node1", PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, {Name: "node2", PodCIDR: netip.MustParsePrefix("10.244.2.0/24")}}, Pods: pods,
		Services: []*Service{
			{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.2"), Selector: map[string]string{"app": "web"}, Affinity: nat.AffinityClientIP,
				Ports: []nat.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080}, {Name: "dns", Protocol: nat.UDP, Port: 53}}},
			{Name: "local", ClusterIP: netip.MustParseAddr("10.96.0.5"), Endpoints: []string{"a", "c"}, Affinity: nat.AffinityNone, ExternalTrafficPolicy: nat.PolicyLocal,
				Ports: []nat.ServicePort{{Port: 80, NodePort: 30081}}},
			{Name: "listed", ClusterIP: netip.MustParseAddr("10.96.0.3"), Endpoints: []string{"c", "a"}, Affinity: nat.AffinityNone, Ports: []nat.ServicePort{{Port: 81}}},
			{Name: "prod/api", ClusterIP: netip.MustParseAddr("10.96.0.4"), Endpoints: []string{"d"}, Affinity: nat.AffinityNone, Ports: []nat.ServicePort{{Port: 443, TargetPort: 8443}}},
			{Name: "none", Type: ServiceHeadless, Selector: map[string]string{"app": "web"}},
			{Name: "ext", Type: ServiceExternalName, ExternalName: "example.com"},
		}}
	objs := l.proxyObjects()
	for _, k := range []string{"/registry/services/specs/default/web", "/registry/endpointslices/default/web", "/registry/services/specs/prod/api",
		"/registry/endpointslices/prod/api", "/registry/services/specs/default/ext", KubeProxyConfigKey} {
		if _, ok := objs[k]; !ok {
			t.Errorf("no %s among %v", k, keysSorted(objs))
		}
	}
	if _, ok := objs["/registry/endpointslices/default/ext"]; ok {
		t.Error("an ExternalName service got an EndpointSlice")
	}
	got := labFromObjects(&Lab{Name: "t", ClusterCIDR: l.ClusterCIDR, ServiceCIDR: l.ServiceCIDR, Nodes: l.Nodes}, decodeAll(t, objs))
	if got.Mode() != ProxyNFTables {
		t.Errorf("mode from the ConfigMap: %s", got.Mode())
	}
	want, have := l.natServices(), got.natServices()
	slices.SortFunc(want, func(x, y nat.Service) int { return strings.Compare(Key(x.Namespace, x.Name), Key(y.Namespace, y.Name)) })
	if !servicesEqual(want, have) {
		t.Fatalf("agent renders\n%+v\nCLI renders\n%+v", have, want)
	}
	for _, n := range l.Nodes { // per node: Local keeps the node's own endpoints
		a, _ := l.Rules(n)
		b, _ := got.Rules(n)
		if a.Text() != b.Text() {
			t.Fatalf("the agent's iptables rules for %s differ from the CLI's", n.Name)
		}
		if n.Name == "node2" && !strings.Contains(a.Text(), "10.244.2.3") {
			t.Fatal("no endpoint rendered")
		}
	}
}

// Objects written by hand: no targetRef (named by address), a slice
// joined by its label, garbage refused with a reason.
func TestProxyObjectsByHand(t *testing.T) {
	var logged []string
	logf := func(f string, a ...any) { logged = append(logged, f) }
	objs := map[string]any{}
	for k, v := range map[string]string{
		"/registry/services/specs/default/web":     `{"metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.9","ports":[{"port":80,"targetPort":8080}]}}`,
		"/registry/endpointslices/default/web-x":   `{"metadata":{"name":"web-x","namespace":"default","labels":{"kubernetes.io/service-name":"web"}},"endpoints":[{"addresses":["10.244.1.7"]},{"addresses":["10.244.1.8"],"conditions":{"ready":false}}]}`,
		"/registry/endpointslices/default/nolabel": `{"metadata":{"name":"nolabel","namespace":"default"},"endpoints":[{"addresses":["10.244.1.9"]}]}`,
		"/registry/services/specs/default/bad":     `{not json`,
		"/registry/services/specs/default/noip":    `{"metadata":{"name":"noip","namespace":"default"},"spec":{"clusterIP":"banana"}}`,
	} {
		if o := decodeObject(k, []byte(v), logf); o != nil {
			objs[k] = o
		}
	}
	if len(logged) != 3 {
		t.Errorf("logged %d refusals, want 3 (no label, bad JSON, bad clusterIP): %q", len(logged), logged)
	}
	l := labFromObjects(&Lab{Name: "t"}, objs)
	svcs := l.natServices()
	if len(svcs) != 1 || len(svcs[0].Endpoints) != 1 || svcs[0].Endpoints[0].IP.String() != "10.244.1.7" || svcs[0].Ports[0].TargetPort != 8080 {
		t.Fatalf("services from hand-written objects: %+v", svcs)
	}
	if !slices.ContainsFunc(l.Pods, func(p *Pod) bool { return p.Name == "ip-10-244-1-7" }) {
		t.Errorf("an endpoint without targetRef is named by its address: %v", l.Pods)
	}
}

func TestProxyModeOf(t *testing.T) {
	for in, want := range map[string]string{"mode: nftables\n": "nftables", "kind: KubeProxyConfiguration\nmode: \"iptables\"\n": "iptables", "x: y": ""} {
		if got := proxyModeOf(configMap(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func keysSorted(m map[string]string) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, " ")
}

func configMap(conf string) *corev1.ConfigMap {
	return &corev1.ConfigMap{Data: map[string]string{"config.conf": conf}}
}

// benchLab is a lab of 1,000 services over 20 pods, for the CLI's and the
// agent's per-sync work.
func benchLab() *Lab {
	l := &Lab{Name: "b", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12")}
	for i := range 20 {
		l.Pods = append(l.Pods, &Pod{Name: "p" + strconv.Itoa(i), Node: "node1", IP: netip.AddrFrom4([4]byte{10, 244, 1, byte(2 + i)})})
	}
	for i := range 1000 {
		l.Services = append(l.Services, &Service{Name: "s" + strconv.Itoa(i), ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(1 + i/250), byte(1 + i%250)}),
			Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Affinity: nat.AffinityNone, Endpoints: []string{"p" + strconv.Itoa(i%20), "p" + strconv.Itoa((i+1)%20)}})
	}
	return l
}

// BenchmarkProxyObjects is the CLI's cost per verb at 1,000 services: the
// objects of the lab before and after, as JSON.
func BenchmarkProxyObjects(b *testing.B) {
	l := benchLab()
	for b.Loop() {
		l.proxyObjects()
	}
}

// BenchmarkLabFromObjects is an agent's cost per sync at 1,000 services:
// the lab rebuilt from its decoded objects.
func BenchmarkLabFromObjects(b *testing.B) {
	l := benchLab()
	objs := map[string]any{}
	for k, v := range l.proxyObjects() {
		objs[k] = decodeObject(k, []byte(v), func(string, ...any) {})
	}
	for b.Loop() {
		labFromObjects(l, objs).natServices()
	}
}
