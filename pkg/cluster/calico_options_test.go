package cluster

import (
	"net/netip"
	"strings"
	"testing"
)

// Bad calico settings are refused in one sentence that names the fix,
// before anything exists.
func TestCalicoOptionsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"ipip", Options{Backend: BackendCalico, Calico: CalicoSettings{Encapsulation: EncapIPIP}}, "CONFIG_NET_IPIP"},
		{"unknown encapsulation", Options{Backend: BackendCalico, Calico: CalicoSettings{Encapsulation: "gre"}}, "use none (routed by BGP) or vxlan"},
		{"block too large for the pool", Options{Backend: BackendCalico, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/24"), Calico: CalicoSettings{BlockSize: 22}}, "does not fit the pool 10.244.0.0/24"},
		{"block size out of range", Options{Backend: BackendCalico, Calico: CalicoSettings{BlockSize: 8}}, "use 20-32"},
		{"calico flag without calico", Options{Backend: BackendVXLAN, Calico: CalicoSettings{BlockSize: 26}}, "add --backend calico"},
		{"route reflector in VXLAN mode", Options{Backend: BackendCalico, Calico: CalicoSettings{Encapsulation: EncapVXLAN, RouteReflector: true}}, "runs no BGP"},
		{"flannel's miss mode", Options{Backend: BackendCalico, FlannelMode: "miss"}, "runs no flannel"},
		{"etcd control plane", Options{Backend: BackendCalico, ControlPlane: "etcd"}, "leave --control-plane and --lease-ttl out"},
		{"graceful restart out of range", Options{Backend: BackendCalico, Calico: CalicoSettings{GracefulRestart: 4000}}, "1-3600"},
	} {
		err := tc.o.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Count(err.Error(), ". ") > 0 {
			t.Errorf("%s: %v, want one sentence containing %q", tc.name, err, tc.want)
		}
	}
	if err := (Options{Backend: BackendCalico, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/24")}).Validate(); err != nil && !strings.Contains(err.Error(), "bird") {
		t.Errorf("a /24 pool holds four /26 blocks: %v", err)
	}
}

// Without BIRD, a calico lab is refused with the package to install
// (VXLAN mode needs no BIRD).
func TestCalicoNeedsBird(t *testing.T) {
	old := BirdBinary
	BirdBinary = "/nonexistent/bird"
	defer func() { BirdBinary = old }()
	err := Options{Backend: BackendCalico}.Validate()
	if err == nil || !strings.Contains(err.Error(), "apt-get install bird2") {
		t.Errorf("no bird: %v", err)
	}
	if err := (Options{Backend: BackendCalico, Calico: CalicoSettings{Encapsulation: EncapVXLAN}}).Validate(); err != nil {
		t.Errorf("VXLAN mode without bird: %v", err)
	}
}
