package cluster

// The lab's services as pkg/nat sees them, for callers that read the rules
// back (klab service show) and must name the same chains Rules renders.

import "github.com/klab-dev/klab/pkg/nat"

// NATService returns the lab's service name as pkg/nat's input, its
// endpoints resolved to the lab's pods: the conversion Rules renders from.
// It reports false if the lab has no such service.
func (l *Lab) NATService(name string) (nat.Service, bool) {
	for _, s := range l.natServices() {
		if s.Name == name {
			return s, true
		}
	}
	return nat.Service{}, false
}
