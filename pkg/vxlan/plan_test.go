package vxlan

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/plan"
)

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

const ns = "klab.demo.node1"

var (
	cfg = Config{NS: ns, VNI: 1, Port: 8472, Local: netip.MustParseAddr("192.168.1.101"), Underlay: "eth0", MTU: 1450,
		MAC: mac("0a:00:00:00:00:01"), Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	peer2 = Peer{Subnet: netip.MustParsePrefix("10.244.2.0/24"), VtepMAC: mac("0a:00:00:00:00:02"), PublicIP: netip.MustParseAddr("192.168.1.102")}
	peer3 = Peer{Subnet: netip.MustParsePrefix("10.244.3.0/24"), VtepMAC: mac("0a:00:00:00:00:03"), PublicIP: netip.MustParseAddr("192.168.1.103")}
)

// node is the recorded kernel state of a fully programmed node1 that
// knows peer2 and peer3; change edits a copy of it.
func node(change func(*plan.State)) *plan.State {
	st := plan.Empty(ns)
	st.Exists = true
	st.Links["eth0"] = &plan.LinkState{Link: plan.Link{Name: "eth0", Type: "veth", MTU: 1500, Up: true}, Index: 2}
	st.Links["flannel.1"] = &plan.LinkState{Link: plan.Link{Name: "flannel.1", Type: "vxlan", MTU: 1450, MAC: cfg.MAC, Up: true,
		VNI: 1, Local: cfg.Local, Dev: "eth0", Port: 8472}, Index: 4, Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}}
	for _, p := range []Peer{peer2, peer3} {
		arp, fdb, rt := entries("flannel.1", p)
		st.Neighs = append(st.Neighs, arp)
		st.FDB = append(st.FDB, fdb)
		st.Routes = append(st.Routes, rt)
	}
	if change != nil {
		change(st)
	}
	return st
}

func commands(p plan.Plan) string { return strings.TrimSpace(p.String()) }

func TestPlanDeviceAndPeers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		st     *plan.State
		want   string
		prefix bool // want is the start of the plan
	}{
		{name: "nothing to do", st: node(nil)},
		{name: "an empty namespace gets the device in flannel's order", st: plan.Empty(ns), want: `
ip -n klab.demo.node1 link add flannel.1 address 0a:00:00:00:00:01 mtu 1450 type vxlan id 1 local 192.168.1.101 dev eth0 dstport 8472 nolearning
ip -n klab.demo.node1 addr add 10.244.1.0/32 dev flannel.1
ip -n klab.demo.node1 link set flannel.1 up
ip -n klab.demo.node1 neigh replace 10.244.2.0 lladdr 0a:00:00:00:00:02 dev flannel.1 nud permanent
bridge -n klab.demo.node1 fdb replace 0a:00:00:00:00:02 dev flannel.1 dst 192.168.1.102 self permanent
ip -n klab.demo.node1 route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
ip -n klab.demo.node1 neigh replace 10.244.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1 nud permanent
bridge -n klab.demo.node1 fdb replace 0a:00:00:00:00:03 dev flannel.1 dst 192.168.1.103 self permanent
ip -n klab.demo.node1 route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink`},
		{name: "one neighbour missing", st: node(func(s *plan.State) { s.Neighs = s.Neighs[1:] }), want: `
ip -n klab.demo.node1 neigh replace 10.244.2.0 lladdr 0a:00:00:00:00:02 dev flannel.1 nud permanent`},
		{name: "a neighbour with a stale MAC", st: node(func(s *plan.State) { s.Neighs[1].MAC = mac("0a:00:00:00:00:99") }), want: `
ip -n klab.demo.node1 neigh replace 10.244.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1 nud permanent`},
		{name: "device down and without its address", st: node(func(s *plan.State) {
			s.Links["flannel.1"].Up = false
			s.Links["flannel.1"].Addrs = nil
		}), want: `
ip -n klab.demo.node1 addr add 10.244.1.0/32 dev flannel.1
ip -n klab.demo.node1 link set flannel.1 up`},
		{name: "incompatible flannel.1 replaced, its entries programmed again", st: node(func(s *plan.State) { s.Links["flannel.1"].Port = 4789 }), want: `
ip -n klab.demo.node1 link del flannel.1   # incompatible port: replaced
ip -n klab.demo.node1 link add flannel.1 address 0a:00:00:00:00:01 mtu 1450 type vxlan id 1 local 192.168.1.101 dev eth0 dstport 8472 nolearning
ip -n klab.demo.node1 addr add 10.244.1.0/32 dev flannel.1
ip -n klab.demo.node1 link set flannel.1 up
ip -n klab.demo.node1 neigh replace 10.244.2.0 lladdr 0a:00:00:00:00:02 dev flannel.1 nud permanent
bridge -n klab.demo.node1 fdb replace 0a:00:00:00:00:02 dev flannel.1 dst 192.168.1.102 self permanent
ip -n klab.demo.node1 route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
ip -n klab.demo.node1 neigh replace 10.244.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1 nud permanent
bridge -n klab.demo.node1 fdb replace 0a:00:00:00:00:03 dev flannel.1 dst 192.168.1.103 self permanent
ip -n klab.demo.node1 route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink`},
		{name: "a different VNI is incompatible too", st: node(func(s *plan.State) { s.Links["flannel.1"].VNI = 7 }), want: "ip -n klab.demo.node1 link del flannel.1   # incompatible vni: replaced", prefix: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanDevice(cfg, tc.st)
			p.Add(PlanPeers(ns, 1, []Peer{peer2, peer3}, tc.st)...)
			got, want := commands(p), strings.TrimSpace(tc.want)
			if got != want && !(tc.prefix && strings.HasPrefix(got, want)) {
				t.Errorf("plan:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// What a plan creates is marked New (a failed apply removes it); what it
// only changes is not.
func TestPlanMarksNewObjects(t *testing.T) {
	p := PlanPeers(ns, 1, []Peer{peer2}, node(func(s *plan.State) {
		s.Neighs[0].MAC = mac("0a:00:00:00:00:99") // stale: replaced, not new
		s.Routes = s.Routes[1:]                    // missing: new
	}))
	if len(p) != 2 || p[0].Verb != plan.NeighReplace || p[0].New || p[1].Verb != plan.RouteReplace || !p[1].New {
		t.Fatalf("plan %+v", p)
	}
}

func TestPlanDelPeerRouteFirst(t *testing.T) {
	got := commands(PlanDelPeer(ns, 1, peer2, node(nil)))
	want := `ip -n klab.demo.node1 route del 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
bridge -n klab.demo.node1 fdb del 0a:00:00:00:00:02 dev flannel.1 dst 192.168.1.102 self
ip -n klab.demo.node1 neigh del 10.244.2.0 dev flannel.1`
	if got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
	if p := PlanDelPeer(ns, 1, peer2, node(func(s *plan.State) { s.Routes, s.FDB, s.Neighs = nil, nil, nil })); len(p) != 0 {
		t.Errorf("entries already gone: %s", p)
	}
}

func TestPlanHostGW(t *testing.T) {
	st := plan.Empty(ns)
	got := commands(PlanHostGW(ns, "eth0", []Peer{peer2}, st))
	if got != "ip -n klab.demo.node1 route replace 10.244.2.0/24 via 192.168.1.102 dev eth0" {
		t.Errorf("plan: %s", got)
	}
	st.Routes = append(st.Routes, HostGWRoute("eth0", peer2))
	if p := PlanHostGW(ns, "eth0", []Peer{peer2}, st); len(p) != 0 {
		t.Errorf("route there already: %s", p)
	}
}
