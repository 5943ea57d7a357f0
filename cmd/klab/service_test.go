package main

import (
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nat"
)

func TestServiceFlagsSpec(t *testing.T) {
	base := func() serviceFlags { return serviceFlags{protocol: "tcp", svcType: "ClusterIP", affinity: "none"} }
	for _, tc := range []struct {
		name    string
		f       func(f *serviceFlags)
		portSet bool
		want    string // "" = ok; else part of the error
		check   func(t *testing.T, s cluster.ServiceSpec)
	}{
		{"one port", func(f *serviceFlags) { f.port, f.targetPort, f.endpoints = 80, 8080, []string{"a,b"} }, true, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if len(s.Ports) != 1 || s.Ports[0] != (nat.ServicePort{Protocol: nat.TCP, Port: 80, TargetPort: 8080}) || strings.Join(s.Endpoints, " ") != "a b" {
					t.Errorf("spec %+v", s)
				}
			}},
		{"node port implies NodePort", func(f *serviceFlags) { f.port, f.nodePort, f.selector = 80, "30080", []string{"app=web"} }, true, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if s.Ports[0].NodePort != 30080 || s.Selector["app"] != "web" {
					t.Errorf("spec %+v", s)
				}
			}},
		{"type NodePort allocates", func(f *serviceFlags) { f.port, f.svcType, f.endpoints = 80, "NodePort", []string{"a"} }, true, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if s.Ports[0].NodePort != cluster.AutoNodePort {
					t.Errorf("spec %+v", s)
				}
			}},
		{"multi port", func(f *serviceFlags) {
			f.tcp, f.udp, f.endpoints = []string{"53:5353"}, []string{"53:5353"}, []string{"a"}
		}, false, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if len(s.Ports) != 2 || s.Ports[0].Name != "53-5353" || s.Ports[1].Protocol != nat.UDP || s.Ports[1].TargetPort != 5353 {
					t.Errorf("spec %+v", s)
				}
			}},
		{"affinity", func(f *serviceFlags) { f.port, f.affinity, f.endpoints = 80, "ClientIP", []string{"a"} }, true, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if s.Affinity != nat.AffinityClientIP {
					t.Errorf("spec %+v", s)
				}
			}},
		{"no port", func(f *serviceFlags) { f.endpoints = []string{"a"} }, false, "needs a port", nil},
		{"no endpoints", func(f *serviceFlags) { f.port = 80 }, true, "needs endpoints", nil},
		{"port and tcp", func(f *serviceFlags) { f.port, f.tcp, f.endpoints = 80, []string{"80"}, []string{"a"} }, true, "not both", nil},
		{"bad port", func(f *serviceFlags) { f.port, f.endpoints = 0, []string{"a"} }, true, "out of range", nil},
		{"bad tcp spec", func(f *serviceFlags) { f.tcp, f.endpoints = []string{"80:x"}, []string{"a"} }, false, "write it like 80 or 80:8080", nil},
		{"bad protocol", func(f *serviceFlags) { f.port, f.protocol, f.endpoints = 80, "sctp", []string{"a"} }, true, "use tcp or udp", nil},
		{"bad node port", func(f *serviceFlags) { f.port, f.nodePort, f.endpoints = 80, "80", []string{"a"} }, true, "30000-32767", nil},
		{"bad type", func(f *serviceFlags) { f.port, f.svcType, f.endpoints = 80, "LoadBalancer", []string{"a"} }, true, "use ClusterIP or NodePort", nil},
		{"bad cluster ip", func(f *serviceFlags) { f.port, f.clusterIP, f.endpoints = 80, "10.96.0", []string{"a"} }, true, "not an IPv4 address", nil},
		{"empty endpoint", func(f *serviceFlags) { f.port, f.endpoints = 80, []string{"a,,b"} }, true, "empty name", nil},
		{"bad selector", func(f *serviceFlags) { f.port, f.selector = 80, []string{"app"} }, true, "key=value", nil},
		{"bad affinity", func(f *serviceFlags) { f.port, f.affinity, f.endpoints = 80, "cookie", []string{"a"} }, true, "none or clientip", nil},
		{"traffic policy local", func(f *serviceFlags) {
			f.port, f.svcType, f.trafficPolicy, f.endpoints = 80, "NodePort", "Local", []string{"a"}
		}, true, "",
			func(t *testing.T, s cluster.ServiceSpec) {
				if s.ExternalTrafficPolicy != nat.PolicyLocal || s.Ports[0].NodePort != cluster.AutoNodePort {
					t.Errorf("spec %+v", s)
				}
			}},
		{"traffic policy without node port", func(f *serviceFlags) { f.port, f.trafficPolicy, f.endpoints = 80, "local", []string{"a"} }, true, "add --type NodePort", nil},
		{"bad traffic policy", func(f *serviceFlags) {
			f.port, f.svcType, f.trafficPolicy, f.endpoints = 80, "NodePort", "nearest", []string{"a"}
		}, true, "use Cluster or Local", nil},
		{"node port on several ports", func(f *serviceFlags) { f.tcp, f.nodePort, f.endpoints = []string{"80", "443"}, "30080", []string{"a"} }, false, "cannot serve several ports", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := base()
			tc.f(&f)
			s, err := f.spec("web", tc.portSet)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			case tc.check != nil:
				tc.check(t, s)
			}
		})
	}
	if _, err := (serviceFlags{protocol: "tcp", port: 80, endpoints: []string{"a"}}).spec("Web_1", true); err == nil {
		t.Error("a service name with '_' and capitals was accepted")
	}
}
