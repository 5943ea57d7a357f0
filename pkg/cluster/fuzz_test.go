package cluster

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
)

// FuzzParseLabels: --label key=value pairs. Never panics; accepted labels
// have non-empty keys and keep every pair's value.
func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"app=web", "app=web,tier=db", "=x", "x", "a==b", "a=", "k=v=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kvs := strings.Split(s, ",")
		m, err := ParseLabels(kvs)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		for k := range m {
			if k == "" {
				t.Fatalf("%q: empty key accepted", s)
			}
		}
		for _, kv := range kvs {
			k, v, _ := strings.Cut(kv, "=")
			if _, ok := m[k]; !ok {
				t.Fatalf("%q: key %q lost", s, k)
			}
			_ = v
		}
	})
}

// FuzzPlanNode: 'klab node add NAME --ip IP --pod-cidr CIDR' and the
// lab-wide CIDR flags, validated without touching the kernel. Never panics;
// every rejection is one sentence; an accepted node has a valid, short
// name, an address inside the underlay that is not reserved or taken, and a
// pod subnet inside the cluster network that overlaps no other node's.
func FuzzPlanNode(f *testing.F) {
	f.Add("node2", "192.168.1.102", "10.244.2.0/24", "10.244.0.0/16", "192.168.1.0/24")
	f.Add("node1", "", "", "", "")
	f.Add("n", "192.168.1.1", "10.244.1.0/24", "10.244.0.0/16", "192.168.1.0/24")
	f.Add("underlay", "192.168.1.255", "10.245.0.0/24", "10.0.0.0/8", "10.1.0.0/16")
	f.Add("a-very-long-node-name", "10.0.0.1", "10.244.1.0/25", "10.244.0.0/24", "192.168.1.0/30")
	f.Fuzz(func(t *testing.T, name, ip, podCIDR, clusterCIDR, underlayCIDR string) {
		var o Options
		for _, c := range []struct {
			s   string
			dst *netip.Prefix
		}{{clusterCIDR, &o.ClusterCIDR}, {underlayCIDR, &o.UnderlayCIDR}} {
			if c.s == "" {
				continue
			}
			p, err := ipam.ParseCIDR("--cidr", c.s)
			if err != nil {
				return
			}
			*c.dst = p
		}
		if err := o.Validate(); err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		o = o.withDefaults()
		l := &Lab{Name: "rl-fuzz", Backend: o.Backend, ClusterCIDR: o.ClusterCIDR, ServiceCIDR: o.ServiceCIDR, UnderlayCIDR: o.UnderlayCIDR,
			UnderlayGateway: o.UnderlayCIDR.Addr().Next(), UnderlayMTU: o.UnderlayMTU, VNI: o.VNI, Port: o.Port, Created: time.Unix(0, 0)}
		c := &Cluster{Lab: l}
		first, err := c.PlanNode(NodeSpec{Name: "node1"})
		if err != nil {
			t.Fatalf("a first default node is refused in %+v: %v", o, err)
		}
		l.Nodes = append(l.Nodes, first)
		spec := NodeSpec{Name: name}
		if ip != "" {
			a, err := netip.ParseAddr(ip)
			if err != nil || !a.Is4() {
				return
			}
			spec.IP = a
		}
		if podCIDR != "" {
			p, err := netip.ParsePrefix(podCIDR)
			if err != nil || !p.Addr().Is4() {
				return
			}
			spec.PodCIDR = p
		}
		n, err := c.PlanNode(spec)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		switch {
		case netns.ValidateObject("node", n.Name) != nil || len(n.Name) > 15 || n.Name == UnderlayName || n.Name == ExternalName || n.Name == "node1":
			t.Fatalf("name %q accepted", n.Name)
		case !l.UnderlayCIDR.Contains(n.IP) || n.IP == l.UnderlayCIDR.Addr() || n.IP == l.UnderlayGateway || n.IP == first.IP || !l.UnderlayCIDR.Contains(n.IP.Next()):
			t.Fatalf("address %v accepted in %v (gateway %v, node1 %v)", n.IP, l.UnderlayCIDR, l.UnderlayGateway, first.IP)
		case n.PodCIDR.Masked() != n.PodCIDR || !l.ClusterCIDR.Contains(n.PodCIDR.Addr()) || n.PodCIDR.Bits() < l.ClusterCIDR.Bits() || n.PodCIDR.Overlaps(first.PodCIDR):
			t.Fatalf("pod CIDR %v accepted in %v (node1 %v)", n.PodCIDR, l.ClusterCIDR, first.PodCIDR)
		}
	})
}
