package cluster

import (
	"strings"
	"testing"
	"time"
)

func TestValidateControlPlane(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string // "" for valid
	}{
		{Options{}, ""},
		{Options{ControlPlane: "etcd"}, ""},
		{Options{ControlPlane: "etcd", FlannelMode: "miss", LeaseTTL: 5 * time.Second}, ""},
		{Options{ControlPlane: "etcd", Backend: BackendHostGW}, ""},
		{Options{FlannelMode: "miss"}, "add --control-plane etcd"},
		{Options{LeaseTTL: time.Minute}, "--lease-ttl needs --control-plane etcd"},
		{Options{ControlPlane: "consul"}, `control plane "consul" is not known`},
		{Options{ControlPlane: "etcd", FlannelMode: "udp"}, `flannel mode "udp" is not known`},
		{Options{ControlPlane: "etcd", FlannelMode: "miss", Backend: BackendHostGW}, "mode of the vxlan backend"},
		{Options{ControlPlane: "etcd", LeaseTTL: time.Second}, "too short"},
		{Options{ControlPlane: "etcd", LeaseTTL: 2500 * time.Millisecond}, "whole seconds"},
	} {
		err := tc.o.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.o, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want an error containing %q", tc.o, err, tc.want)
		}
	}
	cp := Options{ControlPlane: "etcd"}.newControlPlane(DefaultUnderlayCIDR)
	if cp.IP.String() != "192.168.1.100" || cp.Endpoints[0] != "http://192.168.1.100:2379" || cp.LeaseTTL != 24*time.Hour {
		t.Errorf("control plane of a default lab: %+v", cp)
	}
}
