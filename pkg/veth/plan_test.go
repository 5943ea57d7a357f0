package veth

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/plan"
)

var pod = Attachment{
	OuterNS: "klab.demo.node1", OuterIface: "veth1a2b3c4d", Bridge: "cni0", Hairpin: true,
	InnerNS: "klab.demo.pod-a", InnerIface: "eth0", Addr: netip.MustParsePrefix("10.244.1.2/24"), MTU: 1450,
	MAC:    net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x0a},
	Routes: []Route{{Gw: netip.MustParseAddr("10.244.1.1")}, {Dst: netip.MustParsePrefix("10.244.0.0/16"), Gw: netip.MustParseAddr("10.244.1.1")}},
}

// states returns the recorded kernel state of a node and a pod wired as pod
// describes; change edits them.
func states(change func(outer, inner *plan.State)) (*plan.State, *plan.State) {
	outer, inner := plan.Empty(pod.OuterNS), plan.Empty(pod.InnerNS)
	outer.Exists, inner.Exists = true, true
	outer.Links["cni0"] = &plan.LinkState{Link: plan.Link{Name: "cni0", Type: "bridge", Up: true}, Index: 3}
	outer.Links[pod.OuterIface] = &plan.LinkState{Link: plan.Link{Name: pod.OuterIface, Type: "veth", MTU: 1450, Master: "cni0", Up: true}, Index: 5, Hairpin: true}
	inner.Links["lo"] = &plan.LinkState{Link: plan.Link{Name: "lo", Type: "device", Up: true}, Index: 1}
	inner.Links["eth0"] = &plan.LinkState{Link: plan.Link{Name: "eth0", Type: "veth", MTU: 1450, MAC: pod.MAC, Up: true}, Index: 2, Addrs: []netip.Prefix{pod.Addr}}
	for _, r := range pod.Routes {
		inner.Routes = append(inner.Routes, plan.Route{Dst: r.Dst, Gw: r.Gw, Dev: "eth0"})
	}
	if change != nil {
		change(outer, inner)
	}
	return outer, inner
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(outer, inner *plan.State)
		want   string
	}{
		{"nothing to do", nil, ""},
		{"a new pod: the pair in one request, then the inside", func(o, i *plan.State) {
			delete(o.Links, pod.OuterIface)
			*i = *plan.Empty(pod.InnerNS)
		}, `
ip -n klab.demo.node1 link add veth1a2b3c4d mtu 1450 master cni0 up type veth peer name eth0 txqueuelen 0 address 0a:00:00:00:00:0a mtu 1450 netns klab.demo.pod-a
bridge -n klab.demo.node1 link set dev veth1a2b3c4d hairpin on
ip -n klab.demo.pod-a link set lo up
ip -n klab.demo.pod-a addr add 10.244.1.2/24 brd + dev eth0
ip -n klab.demo.pod-a link set eth0 up
ip -n klab.demo.pod-a route replace default via 10.244.1.1 dev eth0
ip -n klab.demo.pod-a route replace 10.244.0.0/16 via 10.244.1.1 dev eth0`},
		{"hairpin off and the cluster route gone", func(o, i *plan.State) {
			o.Links[pod.OuterIface].Hairpin = false
			i.Routes = i.Routes[:1]
		}, `
bridge -n klab.demo.node1 link set dev veth1a2b3c4d hairpin on
ip -n klab.demo.pod-a route replace 10.244.0.0/16 via 10.244.1.1 dev eth0`},
		{"released from the bridge and down", func(o, i *plan.State) {
			o.Links[pod.OuterIface].Master = ""
			o.Links[pod.OuterIface].Up = false
		}, `
ip -n klab.demo.node1 link set veth1a2b3c4d master cni0
ip -n klab.demo.node1 link set veth1a2b3c4d up`},
		{"a stale outer end whose pod namespace is new: replaced", func(o, i *plan.State) { *i = *plan.Empty(pod.InnerNS) }, `
ip -n klab.demo.node1 link del veth1a2b3c4d   # a stale end without its peer
ip -n klab.demo.node1 link add veth1a2b3c4d mtu 1450 master cni0 up type veth peer name eth0 txqueuelen 0 address 0a:00:00:00:00:0a mtu 1450 netns klab.demo.pod-a`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, i := states(tc.change)
			p, err := Plan(pod, o, i)
			if err != nil {
				t.Fatal(err)
			}
			got, want := strings.TrimSpace(p.String()), strings.TrimSpace(tc.want)
			if got != want && !(strings.HasPrefix(tc.name, "a stale") && strings.HasPrefix(got, want)) {
				t.Errorf("plan:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestPlanRefusesForeignLinks(t *testing.T) {
	o, i := states(func(o, i *plan.State) { o.Links[pod.OuterIface].Type = "dummy" })
	if _, err := Plan(pod, o, i); err == nil || !strings.Contains(err.Error(), "is a dummy, not a veth") {
		t.Errorf("err = %v", err)
	}
	bad := pod
	bad.OuterIface = "a-name-longer-than-15"
	if _, err := Plan(bad, o, i); err == nil || !strings.Contains(err.Error(), "1-15 bytes") {
		t.Errorf("err = %v", err)
	}
}
