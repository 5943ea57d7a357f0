package graph

import (
	"fmt"
	"strings"

	"github.com/klab-dev/klab/pkg/topo"
)

// ids are short, stable identifiers of the drawn objects for Mermaid and
// DOT, which allow only a few characters in names: by position, so that
// "pod-a" and "pod_a" never collide.
type ids struct {
	node map[string]string
	pod  map[string]string
}

func newIDs(t *topo.Topology) ids {
	m := ids{node: map[string]string{}, pod: map[string]string{}}
	for i, n := range t.Nodes {
		m.node[n.Name] = fmt.Sprintf("n%d", i)
		for j, p := range n.Pods {
			m.pod[p.Name] = fmt.Sprintf("n%dp%d", i, j)
		}
	}
	return m
}

// label escapes a label for Mermaid's and DOT's double-quoted strings.
func label(s string) string {
	return strings.NewReplacer(`"`, "'", "\n", " ").Replace(s)
}

func vtepText(v *topo.VTEP) string {
	return fmt.Sprintf("%s VNI %d port %d", v.Dev, v.VNI, v.Port)
}

func tunnelText(tn topo.Tunnel) string {
	if tn.Kind == topo.TunnelVXLAN {
		s := fmt.Sprintf("vxlan VNI %d :%d to %s", tn.VNI, tn.Port, tn.Dst)
		if tn.Subnet != "" {
			s += " for " + tn.Subnet
		}
		return s
	}
	return fmt.Sprintf("route %s via %s", tn.Subnet, tn.Dst)
}

func podText(p topo.Pod) string {
	ip := p.IP
	if ip == "" {
		ip = "no address"
	}
	return fmt.Sprintf("%s %s", p.Name, ip)
}

func nodeText(n topo.Node) string {
	ip := n.IP
	if ip == "" {
		ip = "no eth0"
	}
	return fmt.Sprintf("%s %s (pods %s)", n.Name, ip, n.Subnet)
}

func serviceText(s topo.Service) string {
	ip := s.ClusterIP
	if ip == "" {
		ip = s.Type
	}
	return fmt.Sprintf("%s %s %s", s.Name, ip, strings.Join(s.Ports, ","))
}

func damaged(d []string) bool { return len(d) > 0 }
