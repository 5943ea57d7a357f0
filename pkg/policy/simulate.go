package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Contains reports whether ip is a member, as the kernel's ipset decides:
// hash:ip, an exact address; hash:net, the most specific entry containing
// ip, which must not be nomatch.
func (s *IPSet) Contains(ip netip.Addr) bool {
	best, bestBits, noMatch := false, -1, false
	for _, e := range s.Entries {
		p := parseEntry(e.Addr)
		if p.Contains(ip) && p.Bits() > bestBits {
			best, bestBits, noMatch = true, p.Bits(), e.NoMatch
		}
	}
	return best && !noMatch
}

// Simulate walks the plan's chains as the kernel would for the first packet
// of a connection crossing FORWARD from src to dst (replies pass on
// conntrack state; loopback and a pod's traffic with its own node never
// cross FORWARD). It returns whether the packet passes and the comment of
// the rule that decided each isolated side (the drop comment, or the
// admitting rule's).
func (p *Plan) Simulate(src, dst netip.Addr, proto corev1.Protocol, port int32) (bool, []string) {
	var trail []string
	for _, pp := range p.Pods {
		if pp.Egress != nil && pp.IP == src {
			ok, why := walk(p, pp.Egress, dst, proto, port, "egress", pp.Pod)
			trail = append(trail, why)
			if !ok {
				return false, trail
			}
		}
	}
	for _, pp := range p.Pods {
		if pp.Ingress != nil && pp.IP == dst {
			ok, why := walk(p, pp.Ingress, src, proto, port, "ingress", pp.Pod)
			trail = append(trail, why)
			if !ok {
				return false, trail
			}
		}
	}
	return true, trail
}

func walk(p *Plan, c *Chain, peer netip.Addr, proto corev1.Protocol, port int32, dir, pod string) (bool, string) {
	for _, r := range c.Rules {
		if r.Set != "" {
			s := p.Set(r.Set)
			if s == nil || !s.Contains(peer) {
				continue
			}
		}
		if r.Protocol != "" && r.Protocol != proto {
			continue
		}
		if r.Ports != "" && !inPorts(r.Ports, port) {
			continue
		}
		return true, r.Comment
	}
	return false, DropComment(p.Lab, dir, pod)
}

func inPorts(spec string, port int32) bool {
	lo, hi, ok := strings.Cut(spec, ":")
	l, err := strconv.Atoi(lo)
	if err != nil {
		panic(fmt.Sprintf("policy: bad port spec %q", spec))
	}
	if !ok {
		return int32(l) == port
	}
	h, _ := strconv.Atoi(hi)
	return port >= int32(l) && port <= int32(h)
}
