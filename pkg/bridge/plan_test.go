package bridge

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/plan"
)

func TestPlan(t *testing.T) {
	cfg := Config{NS: "klab.demo.node1", Name: "cni0", Gateway: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450, MAC: net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}}
	have := func(change func(*plan.LinkState)) *plan.State {
		st := plan.Empty(cfg.NS)
		st.Exists = true
		l := &plan.LinkState{Link: plan.Link{Name: "cni0", Type: "bridge", MTU: 1450, MAC: cfg.MAC, Up: true}, Addrs: []netip.Prefix{cfg.Gateway}}
		if change != nil {
			change(l)
		}
		st.Links["cni0"] = l
		return st
	}
	for _, tc := range []struct {
		name string
		st   *plan.State
		want string
	}{
		{"nothing to do", have(nil), ""},
		{"new", plan.Empty(cfg.NS), "ip -n klab.demo.node1 link add cni0 address 0a:00:00:00:00:01 mtu 1450 up type bridge\nip -n klab.demo.node1 addr add 10.244.1.1/24 brd + dev cni0"},
		{"drifted", have(func(l *plan.LinkState) { l.MTU, l.Up, l.Addrs = 1500, false, nil }),
			"ip -n klab.demo.node1 link set cni0 mtu 1450\nip -n klab.demo.node1 link set cni0 up\nip -n klab.demo.node1 addr add 10.244.1.1/24 brd + dev cni0"},
		{"MAC changed", have(func(l *plan.LinkState) { l.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 9} }), "ip -n klab.demo.node1 link set cni0 address 0a:00:00:00:00:01"},
	} {
		p, err := Plan(cfg, tc.st)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(p.String()); got != tc.want {
			t.Errorf("%s: plan:\n%s\nwant:\n%s", tc.name, got, tc.want)
		}
	}
	st := have(func(l *plan.LinkState) { l.Type = "veth" })
	if _, err := Plan(cfg, st); err == nil || !strings.Contains(err.Error(), "is a veth, not a bridge: delete it") {
		t.Errorf("err = %v", err)
	}
}
