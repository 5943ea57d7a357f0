package nat

import (
	"fmt"
	"net/netip"
)

// AllocateClusterIP returns the lowest free address of the service CIDR
// (DefaultServiceCIDR when cidr is zero), given the addresses already in use.
// It skips the network address and the first host address (.1): in a real
// cluster the apiserver reserves that one for the "kubernetes" service
// (default/kubernetes, 10.96.0.1). Kubernetes itself picks a random free
// address; klab picks the lowest so labs are reproducible. It is a pure
// function: the caller records the result.
func AllocateClusterIP(cidr netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if !cidr.IsValid() {
		cidr = DefaultServiceCIDR
	}
	cidr = cidr.Masked()
	if !cidr.Addr().Is4() || cidr.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("service CIDR %s is not an IPv4 range of at least 4 addresses: use a range such as 10.96.0.0/12", cidr)
	}
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a] = true
	}
	last := lastAddr(cidr)
	for a := cidr.Addr().Next().Next(); a.Less(last); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("service CIDR %s has no free address left: delete a service or use a larger range", cidr)
}

// AllocateNodePort returns the lowest free port of the node port range
// 30000-32767, given the ports already in use. Kubernetes picks a random
// free port; klab picks the lowest so labs are reproducible.
func AllocateNodePort(used []int) (int, error) {
	taken := make(map[int]bool, len(used))
	for _, p := range used {
		taken[p] = true
	}
	for p := NodePortMin; p <= NodePortMax; p++ {
		if !taken[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("every node port in %d-%d is in use: delete a NodePort service first", NodePortMin, NodePortMax)
}
