package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
)

func TestValidateExternalEtcd(t *testing.T) {
	ext := agent.EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}}
	withPrefix := ext
	withPrefix.Prefix = "/lab-a/network"
	for _, tc := range []struct {
		name string
		o    Options
		want string // "" for valid
	}{
		{"external", Options{Etcd: ext}, ""},
		{"external with --control-plane etcd", Options{ControlPlane: "etcd", Etcd: ext}, ""},
		{"external in miss mode", Options{Etcd: ext, FlannelMode: "miss", LeaseTTL: 5 * time.Second}, ""},
		{"external with a prefix", Options{Etcd: withPrefix}, ""},
		{"a prefix with the embedded etcd", Options{ControlPlane: "etcd", Etcd: agent.EtcdConfig{Prefix: "/x"}}, ""},
		{"a prefix alone", Options{Etcd: agent.EtcdConfig{Prefix: "/x"}}, "--etcd-prefix /x needs a control plane"},
		{"TLS files without endpoints", Options{ControlPlane: "etcd", Etcd: agent.EtcdConfig{CAFile: "/ca.pem"}}, "are for an external etcd: add --etcd-endpoints"},
		{"another control plane", Options{ControlPlane: "consul", Etcd: ext}, "leave out --control-plane consul"},
		{"calico", Options{Backend: BackendCalico, Etcd: ext}, "leave --etcd-endpoints out"},
		{"a malformed endpoint", Options{Etcd: agent.EtcdConfig{Endpoints: []string{"10.0.0.5:2379"}}}, "is not an etcd client URL"},
	} {
		err := tc.o.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}

	cp := Options{Etcd: withPrefix}.newControlPlane(DefaultUnderlayCIDR)
	if cp.Kind != ControlPlaneEtcd || !cp.External || cp.IP.IsValid() || cp.Endpoints[0] != "http://10.0.0.5:2379" || cp.KeyPrefix() != "/lab-a/network" || len(cp.Owner) != 16 || cp.Claimed {
		t.Errorf("control plane of an external etcd: %+v", cp)
	}
	l := &Lab{Name: "ee", ControlPlane: cp}
	if l.hasCPNode() || l.externalEndpoints() != "http://10.0.0.5:2379" {
		t.Errorf("lab with an external etcd: control-plane node %v, endpoints %q", l.hasCPNode(), l.externalEndpoints())
	}
	c := &Cluster{Lab: l}
	if err := c.CheckOptions(Options{Etcd: agent.EtcdConfig{Endpoints: []string{"http://10.0.0.6:2379"}}}, func(f string) bool { return f == "etcd-endpoints" }); err == nil || !strings.Contains(err.Error(), "already uses etcd-endpoints http://10.0.0.5:2379") {
		t.Errorf("another --etcd-endpoints for an existing lab: %v", err)
	}
}

// TestEtcdctlCommand: the equivalent etcdctl of each kind of etcd, and
// destroy's cleanup as a command.
func TestEtcdctlCommand(t *testing.T) {
	emb := Options{ControlPlane: "etcd"}.newControlPlane(DefaultUnderlayCIDR)
	if got := etcdctlCommand(emb, "klab.x.control-plane"); got != "ip netns exec klab.x.control-plane etcdctl --endpoints http://192.168.1.100:2379" {
		t.Errorf("embedded: %s", got)
	}
	ext := Options{Etcd: agent.EtcdConfig{Endpoints: []string{"https://a:2379", "https://b:2379"}, CAFile: "/etc/ca dir/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}}.newControlPlane(DefaultUnderlayCIDR)
	if got := etcdctlCommand(ext, ""); got != "etcdctl --endpoints https://a:2379,https://b:2379 --cacert '/etc/ca dir/ca.pem' --cert /c.pem --key /k.pem" {
		t.Errorf("external: %s", got)
	}
	l := &Lab{Name: "ee", ClusterCIDR: DefaultClusterCIDR, ControlPlane: ext, Nodes: []*Node{{Name: "node1", PodCIDR: DefaultClusterCIDR}}}
	if p := planEtcdCleanup(l); len(p) != 0 {
		t.Errorf("cleanup of an etcd never claimed: %v", p)
	}
	ext.Claimed = true
	p := planEtcdCleanup(l)
	if len(p) != 1 || !strings.Contains(p[0].Command(), "del --prefix /registry/") || !strings.Contains(p[0].Command(), "del /coreos.com/network/subnets/10.244.0.0-16") {
		t.Errorf("cleanup: %v", p)
	}
}
