package cluster

import (
	"fmt"
	"sort"
	"strings"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/vxlan"
)

// kernelProblems compares the links a lab's state implies with the links in
// its namespaces (have: the objects whose namespace exists) and describes
// what is missing: a partly built node or pod, as a crash leaves it.
func kernelProblems(l *Lab, have map[string]bool) []string {
	var out []string
	links := func(obj string) map[string]bool {
		h, err := netns.Handle(netns.Name(l.Name, obj))
		if err != nil {
			return nil
		}
		defer h.Close()
		ls, err := h.LinkList()
		if err != nil {
			return nil
		}
		m := map[string]bool{}
		for _, k := range ls {
			m[k.Attrs().Name] = true
		}
		return m
	}
	var under map[string]bool
	if have[UnderlayName] {
		under = links(UnderlayName)
		if under != nil && !under[UnderlayBridge] {
			out = append(out, fmt.Sprintf("the underlay namespace has no %s bridge (partly built): destroy the lab ('klab destroy %s') and build it again", UnderlayBridge, l.Name))
		}
	}
	for _, n := range l.Nodes {
		if !have[n.Name] {
			continue
		}
		want := []string{NodeUplink, bridge.DefaultName}
		if l.Backend == BackendCalico {
			want = []string{NodeUplink}
			if l.calicoVXLAN() {
				want = append(want, CalicoVXLANDevice)
			}
		}
		if l.Backend == BackendVXLAN {
			want = append(want, vxlan.DeviceName(l.VNI))
		}
		for _, p := range l.PodsOn(n.Name) {
			want = append(want, p.HostVeth)
		}
		got := links(n.Name)
		if got == nil {
			continue
		}
		for _, w := range want {
			if !got[w] {
				out = append(out, fmt.Sprintf("node %s has no %s (partly built): 'klab node del %s --lab %s' and add it again, or 'klab destroy %s'", n.Name, w, n.Name, l.Name, l.Name))
			}
		}
		if under != nil && !under[n.Name] {
			out = append(out, fmt.Sprintf("node %s has no port on the underlay bridge: 'klab node del %s --lab %s' and add it again", n.Name, n.Name, l.Name))
		}
		// On a machine that joined, the agents render the services from
		// etcd, which this machine's state does not copy: no drift check.
		if d := rulesDrift(l, n); len(d) > 0 && !l.Joined() {
			out = append(out, fmt.Sprintf("node %s's iptables rules differ from the lab's services (%s; an interrupted service change): 'klab repair %s' rewrites them", n.Name, strings.Join(d, ", "), l.Name))
		}
	}
	out = append(out, policyProblems(l, have)...)
	for _, p := range l.Pods {
		if !have[p.Name] {
			continue
		}
		if got := links(p.Name); got != nil && !got[PodIface] {
			out = append(out, fmt.Sprintf("pod %s has no %s (partly built): 'klab pod del %s --lab %s' and add it again", p.Name, PodIface, p.Name, l.Name))
		}
	}
	return out
}

// isUnderlayPort reports whether the lab's underlay bridge has a port named
// obj: obj was (being) built as a node.
func isUnderlayPort(lab, obj string) bool {
	h, err := netns.Handle(netns.Name(lab, UnderlayName))
	if err != nil {
		return false
	}
	defer h.Close()
	_, err = h.LinkByName(obj)
	return err == nil
}

// rulesDrift compares the iptables rules the lab owns in a node (read back
// with iptables-save) with what the lab's state renders for it, by chain
// and rule count (iptables rewrites rules, so the text is not compared):
// what a service change killed between programming the nodes and saving
// the state leaves. It returns one description per difference.
func rulesDrift(l *Lab, n *Node) []string {
	if l.NFTables() {
		return nftDrift(l, n)
	}
	want, err := l.Rules(n)
	if err != nil {
		return nil
	}
	have, err := nat.ReadOwned(netns.Name(l.Name, n.Name), l.Name)
	if err != nil {
		return nil
	}
	type key struct {
		t    nat.Table
		name string
	}
	wantN := map[key]int{}
	for _, t := range []nat.Table{nat.NAT, nat.Filter} {
		for _, ch := range want.Chains(t) {
			rules, _ := want.ChainRules(t, ch)
			wantN[key{t, ch}] = len(rules)
		}
	}
	for _, j := range want.Jumps() {
		wantN[key{j.Table, j.Chain}]++
	}
	haveN := map[key]int{}
	for _, ch := range have {
		haveN[key{ch.Table, ch.Name}] = len(ch.Rules)
	}
	var out []string
	for k, w := range wantN {
		if h, ok := haveN[k]; !ok && w > 0 {
			out = append(out, fmt.Sprintf("%s/%s missing", k.t, k.name))
		} else if h != w {
			out = append(out, fmt.Sprintf("%s/%s has %d rules, not %d", k.t, k.name, h, w))
		}
	}
	for k, h := range haveN {
		if _, ok := wantN[k]; !ok && h > 0 {
			out = append(out, fmt.Sprintf("%s/%s is not the lab's", k.t, k.name))
		}
	}
	out = append(out, iptablesNFTDrift(l, n)...)
	sort.Strings(out)
	return out
}
