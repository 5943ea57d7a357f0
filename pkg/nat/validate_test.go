package nat

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := func() Service {
		return Service{Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []ServicePort{{Name: "http", Port: 80}}, Endpoints: eps("10.244.1.2")}
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		mod  func(s []Service) []Service
		err  string // substring; "" = valid
	}{
		{name: "valid", mod: func(s []Service) []Service { return s }},
		{name: "bad lab", cfg: Config{Lab: "Bad Lab"}, err: "lab name"},
		{name: "port 0", mod: func(s []Service) []Service { s[0].Ports[0].Port = 0; return s }, err: "port 0 is out of range"},
		{name: "port too big", mod: func(s []Service) []Service { s[0].Ports[0].Port = 65536; return s }, err: "port 65536 is out of range"},
		{name: "target port too big", mod: func(s []Service) []Service { s[0].Ports[0].TargetPort = 70000; return s }, err: "target port 70000"},
		{name: "sctp", mod: func(s []Service) []Service { s[0].Ports[0].Protocol = "sctp"; return s }, err: `protocol "sctp"`},
		{name: "uppercase TCP", mod: func(s []Service) []Service { s[0].Ports[0].Protocol = "TCP"; return s }, err: "use tcp or udp"},
		{name: "node port low", mod: func(s []Service) []Service { s[0].Ports[0].NodePort = 8080; return s }, err: "outside the node port range"},
		{name: "node port high", mod: func(s []Service) []Service { s[0].Ports[0].NodePort = 32768; return s }, err: "outside the node port range"},
		{name: "cluster IP outside", mod: func(s []Service) []Service { s[0].ClusterIP = ip("10.200.0.1"); return s }, err: "outside the service CIDR 10.96.0.0/12"},
		{name: "cluster IP network address", mod: func(s []Service) []Service { s[0].ClusterIP = ip("10.96.0.0"); return s }, err: "network or broadcast"},
		{name: "cluster IP missing", mod: func(s []Service) []Service { s[0].ClusterIP = netip.Addr{}; return s }, err: "cluster IP is missing"},
		{name: "duplicate cluster IP", mod: func(s []Service) []Service {
			b := ok()
			b.Name = "other"
			return append(s, b)
		}, err: "already used by service default/web"},
		{name: "duplicate service", mod: func(s []Service) []Service { b := ok(); b.ClusterIP = ip("10.96.0.11"); return append(s, b) }, err: "defined twice"},
		{name: "duplicate node port", mod: func(s []Service) []Service {
			s[0].Ports[0].NodePort = 30080
			b := ok()
			b.Name, b.ClusterIP = "b", ip("10.96.0.11")
			b.Ports[0].NodePort = 30080
			return append(s, b)
		}, err: "node port 30080 is already used by service default/web"},
		{name: "same node port tcp and udp in one service is fine", mod: func(s []Service) []Service {
			s[0].Ports = []ServicePort{{Name: "a", Port: 53, NodePort: 30053}, {Name: "b", Port: 53, Protocol: UDP, NodePort: 30053}}
			return s
		}},
		{name: "duplicate port names", mod: func(s []Service) []Service {
			s[0].Ports = append(s[0].Ports, ServicePort{Name: "http", Port: 81})
			return s
		}, err: `port name "http" is used twice`},
		{name: "unnamed port in multi-port service", mod: func(s []Service) []Service {
			s[0].Ports = append(s[0].Ports, ServicePort{Port: 81})
			return s
		}, err: "name every port"},
		{name: "same port twice", mod: func(s []Service) []Service {
			s[0].Ports = append(s[0].Ports, ServicePort{Name: "x", Port: 80})
			return s
		}, err: "port 80/tcp is defined twice"},
		{name: "no ports", mod: func(s []Service) []Service { s[0].Ports = nil; return s }, err: "has no ports"},
		{name: "bad affinity", mod: func(s []Service) []Service { s[0].Affinity = "Sticky"; return s }, err: "session affinity"},
		{name: "duplicate endpoint", mod: func(s []Service) []Service { s[0].Endpoints = eps("10.244.1.2", "10.244.1.2"); return s }, err: "listed twice"},
		{name: "bad service name", mod: func(s []Service) []Service { s[0].Name = "Web_1"; return s }, err: "service name"},
		{name: "overlapping CIDRs", cfg: Config{ClusterCIDR: pfx("10.0.0.0/8")}, err: "overlaps"},
		{name: "masquerade bit", cfg: Config{MasqueradeBit: 40}, err: "masquerade bit 40"},
		{name: "flannel pod CIDR outside", cfg: Config{Flannel: &FlannelMasq{PodCIDR: pfx("10.245.1.0/24")}}, err: "not inside cluster CIDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.Lab == "" {
				cfg.Lab = "v"
			}
			svcs := []Service{ok()}
			if tc.mod != nil {
				svcs = tc.mod(svcs)
			}
			err := Validate(cfg, svcs)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			case err != nil && strings.Count(strings.TrimSuffix(err.Error(), "."), ". ") > 0:
				t.Errorf("error is more than one sentence: %v", err)
			}
		})
	}
}

func TestAllocate(t *testing.T) {
	a, err := AllocateClusterIP(netip.Prefix{}, nil)
	if err != nil || a != ip("10.96.0.2") {
		t.Fatalf("first ClusterIP = %v, %v; want 10.96.0.2 (.1 is the kubernetes service)", a, err)
	}
	a, _ = AllocateClusterIP(pfx("10.96.0.0/12"), []netip.Addr{ip("10.96.0.2"), ip("10.96.0.3")})
	if a != ip("10.96.0.4") {
		t.Errorf("next = %v", a)
	}
	small := pfx("10.96.0.0/30") // .0 network, .1 kubernetes, .2 free, .3 broadcast
	a, _ = AllocateClusterIP(small, nil)
	if a != ip("10.96.0.2") {
		t.Errorf("small = %v", a)
	}
	if _, err := AllocateClusterIP(small, []netip.Addr{ip("10.96.0.2")}); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Errorf("full range: %v", err)
	}
	p, err := AllocateNodePort([]int{30000, 30001, 30003})
	if err != nil || p != 30002 {
		t.Errorf("node port = %d, %v", p, err)
	}
	all := make([]int, 0, NodePortMax-NodePortMin+1)
	for i := NodePortMin; i <= NodePortMax; i++ {
		all = append(all, i)
	}
	if _, err := AllocateNodePort(all); err == nil {
		t.Error("no error when every node port is used")
	}
}
