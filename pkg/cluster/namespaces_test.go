package cluster

import (
	"github.com/klab-dev/klab/pkg/nat"
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	for _, tc := range []struct{ ref, key, ns, name string }{
		{"web", "web", "default", "web"},
		{"default/web", "web", "default", "web"},
		{"other/client", "other/client", "other", "client"},
	} {
		if got := NormalizeKey(tc.ref); got != tc.key {
			t.Errorf("NormalizeKey(%q) = %q, want %q", tc.ref, got, tc.key)
		}
		if ns, name := SplitKey(tc.ref); ns != tc.ns || name != tc.name {
			t.Errorf("SplitKey(%q) = %q %q", tc.ref, ns, name)
		}
	}
	l := &Lab{Name: "demo", Namespaces: []*Namespace{{Name: "other", Labels: map[string]string{MetadataNameLabel: "other"}}}}
	for ref, want := range map[string]string{
		"other/a":               "",
		"a":                     "",
		"kube-system/coredns-1": "",
		"nope/a":                `namespace "nope" does not exist in lab demo: create it first (klab namespace add nope)`,
		"Other/a":               `namespace name "Other" is not valid`,
		"other/a/b":             `write NAME or NAMESPACE/NAME`,
		"other/A":               `pod name "A" is not valid`,
	} {
		err := l.validateKey("pod", ref)
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("validateKey(%q) = %v, want %q", ref, err, want)
		}
	}
	if n := l.Namespace("kube-system"); n == nil || n.Labels[MetadataNameLabel] != "kube-system" {
		t.Errorf("built-in namespace: %+v", n)
	}
	if got := len(l.AllNamespaces()); got != 5 {
		t.Errorf("%d namespaces, want 4 built-in + other", got)
	}
	// A service selects pods of its own namespace only; endpoints named
	// without a namespace are in the service's.
	l.Pods = []*Pod{{Name: "web-1", Labels: map[string]string{"app": "web"}}, {Name: "other/web-2", Labels: map[string]string{"app": "web"}}}
	if got := l.EndpointPods(&Service{Name: "other/web", Selector: map[string]string{"app": "web"}}); len(got) != 1 || got[0].Name != "other/web-2" {
		t.Errorf("selector across namespaces: %v", got)
	}
	if got := l.EndpointPods(&Service{Name: "other/web", Endpoints: []string{"web-2", "default/web-1"}}); len(got) != 2 {
		t.Errorf("endpoints by name: %v", got)
	}
}

func TestDNSModel(t *testing.T) {
	l := &Lab{Name: "demo", ServiceCIDR: mustPrefix("10.96.0.0/12")}
	if got := l.DNSServiceIP().String(); got != "10.96.0.10" {
		t.Errorf("kube-dns ClusterIP %s, want 10.96.0.10 (kubeadm's)", got)
	}
	if got := l.ResolvConf("other"); got != "nameserver 10.96.0.10\nsearch other.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n" {
		t.Errorf("resolv.conf:\n%s", got)
	}
	l.Pods = []*Pod{{Name: "db-0", IP: mustAddr("10.244.1.5"), Labels: map[string]string{"app": "db"}, Hostname: "db-0", Subdomain: "db"},
		{Name: "db-1", IP: mustAddr("10.244.2.5"), Labels: map[string]string{"app": "db"}, Unready: true}}
	l.Services = []*Service{{Name: "db", Type: ServiceHeadless, Selector: map[string]string{"app": "db"}}}
	snap := l.DNSSnapshot()
	eps := snap.Endpoints("default", "db")
	if len(snap.Services()) != 1 || len(eps) != 2 || !eps[0].Ready || eps[1].Ready || snap.Pods()[0].Subdomain != "db" {
		t.Errorf("snapshot: %+v %+v %+v", snap.Services(), eps, snap.Pods())
	}
}

// The kubelet's service environment variables, in its format.
func TestServiceEnv(t *testing.T) {
	l := &Lab{Pods: []*Pod{{Name: "client"}, {Name: "other/c"}}, Services: []*Service{
		{Name: "web-svc", ClusterIP: mustAddr("10.96.0.11"), Ports: []nat.ServicePort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: nat.UDP}}},
		{Name: "other/db", ClusterIP: mustAddr("10.96.0.12"), Ports: []nat.ServicePort{{Port: 5432}}},
		{Name: "headless", Type: ServiceHeadless, Ports: []nat.ServicePort{{Port: 80}}},
	}}
	got := strings.Join(l.ServiceEnv(l.Pods[0]), "\n")
	want := strings.Join([]string{
		"WEB_SVC_SERVICE_HOST=10.96.0.11", "WEB_SVC_SERVICE_PORT=80", "WEB_SVC_SERVICE_PORT_HTTP=80", "WEB_SVC_SERVICE_PORT_DNS=53",
		"WEB_SVC_PORT=tcp://10.96.0.11:80",
		"WEB_SVC_PORT_80_TCP=tcp://10.96.0.11:80", "WEB_SVC_PORT_80_TCP_PROTO=tcp", "WEB_SVC_PORT_80_TCP_PORT=80", "WEB_SVC_PORT_80_TCP_ADDR=10.96.0.11",
		"WEB_SVC_PORT_53_UDP=udp://10.96.0.11:53", "WEB_SVC_PORT_53_UDP_PROTO=udp", "WEB_SVC_PORT_53_UDP_PORT=53", "WEB_SVC_PORT_53_UDP_ADDR=10.96.0.11",
	}, "\n")
	if got != want {
		t.Errorf("env of default/client:\n%s\nwant:\n%s", got, want)
	}
	if got := l.ServiceEnv(l.Pods[1]); len(got) == 0 || got[0] != "DB_SERVICE_HOST=10.96.0.12" {
		t.Errorf("env of other/c: %v", got)
	}
}
