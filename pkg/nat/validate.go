package nat

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/klab-dev/klab/pkg/netns"
)

// validPortName: Kubernetes port names are IANA service names, at most 15
// lowercase letters, digits and '-', starting and ending with a letter or
// digit. (Hand-written: Validate runs on every rendering of up to 10,000s
// of services.)
func validPortName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateConfig checks a Config. Every error is one sentence saying what is
// wrong and how to fix it.
func ValidateConfig(cfg Config) error {
	if err := netns.ValidateLab(cfg.Lab); err != nil {
		return err
	}
	c := cfg.withDefaults()
	if !c.ClusterCIDR.Addr().Is4() {
		return fmt.Errorf("cluster CIDR %s is not IPv4: klab's kube-proxy rules are IPv4 only, use a range such as 10.244.0.0/16", c.ClusterCIDR)
	}
	if !c.ServiceCIDR.Addr().Is4() || c.ServiceCIDR.Bits() > 30 {
		return fmt.Errorf("service CIDR %s is not an IPv4 range of at least 4 addresses: use a range such as 10.96.0.0/12", c.ServiceCIDR)
	}
	if c.ClusterCIDR.Overlaps(c.ServiceCIDR) {
		return fmt.Errorf("cluster CIDR %s overlaps service CIDR %s: pick disjoint ranges (for example 10.244.0.0/16 and 10.96.0.0/12)", c.ClusterCIDR, c.ServiceCIDR)
	}
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		return fmt.Errorf("masquerade bit %d is out of range: use a bit between 1 and 31 (kube-proxy's default is 14, mark 0x4000)", c.MasqueradeBit)
	}
	if f := c.Flannel; f != nil {
		if !f.PodCIDR.IsValid() || !f.PodCIDR.Addr().Is4() {
			return fmt.Errorf("flannel pod CIDR %q is not an IPv4 prefix: give the node's subnet lease, for example 10.244.1.0/24", f.PodCIDR)
		}
		if !c.ClusterCIDR.Contains(f.PodCIDR.Addr()) || f.PodCIDR.Bits() < c.ClusterCIDR.Bits() {
			return fmt.Errorf("flannel pod CIDR %s is not inside cluster CIDR %s: give a subnet of the cluster network", f.PodCIDR, c.ClusterCIDR)
		}
	}
	return nil
}

// Validate checks a whole service set against cfg before anything is
// rendered or applied: names, ClusterIPs (inside the service CIDR, unique),
// ports (1-65535, tcp or udp, unique names), NodePorts (30000-32767, unique),
// affinity and endpoints. It returns the first problem as one sentence.
func Validate(cfg Config, services []Service) error {
	if err := ValidateConfig(cfg); err != nil {
		return err
	}
	c := cfg.withDefaults()
	// Set-ups that run once per service are kept small (no maps per
	// service, no strings built unless there is an error): Validate runs on
	// every rendering, of up to 10,000s of services.
	type svcKey struct{ ns, name string }
	svcNames := make(map[svcKey]bool, len(services))
	clusterIPs := make(map[netip.Addr]int, len(services))
	nodePorts := make(map[int]int)
	goodNS := map[string]bool{}
	for i := range services {
		s := &services[i]
		ns := s.namespace()
		if !goodNS[ns] {
			if err := netns.ValidateObject("service namespace", ns); err != nil {
				return err
			}
			goodNS[ns] = true
		}
		if err := netns.ValidateObject("service", s.Name); err != nil {
			return err
		}
		id := func() string { return ns + "/" + s.Name }
		if svcNames[svcKey{ns, s.Name}] {
			return fmt.Errorf("service %s is defined twice: give each service a unique name", id())
		}
		svcNames[svcKey{ns, s.Name}] = true
		if err := validateClusterIP(c.ServiceCIDR, s.ClusterIP); err != nil {
			return fmt.Errorf("service %s: %w", id(), err)
		}
		if other, dup := clusterIPs[s.ClusterIP]; dup {
			return fmt.Errorf("service %s: cluster IP %s is already used by service %s: pick another address or let klab allocate one", id(), s.ClusterIP, services[other].namespace()+"/"+services[other].Name)
		}
		clusterIPs[s.ClusterIP] = i
		switch s.Affinity {
		case "", AffinityNone, AffinityClientIP:
		default:
			return fmt.Errorf("service %s: session affinity %q is unknown: use None or ClientIP", id(), s.Affinity)
		}
		switch s.ExternalTrafficPolicy {
		case "", PolicyCluster, PolicyLocal:
		default:
			return fmt.Errorf("service %s: external traffic policy %q is unknown: use Cluster or Local", id(), s.ExternalTrafficPolicy)
		}
		if s.AffinityTimeout < 0 || s.AffinityTimeout > 86400 {
			return fmt.Errorf("service %s: affinity timeout %d s is out of range: use 1-86400 seconds (0 means the default 10800)", id(), s.AffinityTimeout)
		}
		if len(s.Ports) == 0 {
			return fmt.Errorf("service %s has no ports: give at least one port", id())
		}
		for j, p := range s.Ports {
			if p.Name != "" && !validPortName(p.Name) {
				return fmt.Errorf("service %s: port name %q is not valid: use at most 15 lowercase letters, digits or '-'", id(), p.Name)
			}
			if len(s.Ports) > 1 && p.Name == "" {
				return fmt.Errorf("service %s has %d ports but port %d has no name: name every port of a multi-port service", id(), len(s.Ports), p.Port)
			}
			proto := p.protocol()
			if proto != TCP && proto != UDP {
				return fmt.Errorf("service %s: protocol %q of port %d is unknown: use tcp or udp", id(), p.Protocol, p.Port)
			}
			if p.Port < 1 || p.Port > 65535 {
				return fmt.Errorf("service %s: port %d is out of range: use 1-65535", id(), p.Port)
			}
			if p.TargetPort < 0 || p.TargetPort > 65535 {
				return fmt.Errorf("service %s: target port %d is out of range: use 1-65535 (or 0 for the same as the port)", id(), p.TargetPort)
			}
			if p.NodePort != 0 && (p.NodePort < NodePortMin || p.NodePort > NodePortMax) {
				return fmt.Errorf("service %s: node port %d is outside the node port range %d-%d: pick a port in the range or let klab allocate one", id(), p.NodePort, NodePortMin, NodePortMax)
			}
			// A service has a handful of ports: compare with the earlier ones.
			for _, q := range s.Ports[:j] {
				switch {
				case q.Name == p.Name:
					return fmt.Errorf("service %s: port name %q is used twice: give each port a unique name", id(), p.Name)
				case q.Port == p.Port && q.protocol() == proto:
					return fmt.Errorf("service %s: port %d/%s is defined twice: each port and protocol pair may appear once", id(), p.Port, proto)
				case p.NodePort != 0 && q.NodePort == p.NodePort && q.protocol() == proto:
					return fmt.Errorf("service %s: node port %d/%s is used by two of its ports: give each port its own node port", id(), p.NodePort, proto)
				}
			}
			if p.NodePort != 0 {
				// As in Kubernetes, a node port belongs to one service; that
				// service may use it for both tcp and udp.
				if other, dup := nodePorts[p.NodePort]; dup && other != i {
					return fmt.Errorf("service %s: node port %d is already used by service %s: pick another port or let klab allocate one", id(), p.NodePort, services[other].namespace()+"/"+services[other].Name)
				}
				nodePorts[p.NodePort] = i
			}
		}
		var seen map[netip.Addr]bool // only for long endpoint lists
		if len(s.Endpoints) > 16 {
			seen = make(map[netip.Addr]bool, len(s.Endpoints))
		}
		for j, e := range s.Endpoints {
			if !e.IP.IsValid() || !e.IP.Is4() || e.IP.IsUnspecified() || e.IP.IsMulticast() || e.IP.IsLoopback() {
				return fmt.Errorf("service %s: endpoint address %q is not a usable IPv4 unicast address: give the pod's IP", id(), e.IP)
			}
			dup := false
			if seen != nil {
				dup, seen[e.IP] = seen[e.IP], true
			} else {
				dup = slices.ContainsFunc(s.Endpoints[:j], func(o Endpoint) bool { return o.IP == e.IP })
			}
			if dup {
				return fmt.Errorf("service %s: endpoint %s is listed twice: list each endpoint once", id(), e.IP)
			}
		}
	}
	return nil
}

func validateClusterIP(cidr netip.Prefix, ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("cluster IP is missing: give an address in %s or let klab allocate one", cidr)
	}
	if !ip.Is4() || !cidr.Contains(ip) {
		return fmt.Errorf("cluster IP %s is outside the service CIDR %s: pick an address inside it", ip, cidr)
	}
	if ip == cidr.Addr() || ip == lastAddr(cidr) {
		return fmt.Errorf("cluster IP %s is the network or broadcast address of %s: pick another address", ip, cidr)
	}
	return nil
}

// lastAddr is the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
