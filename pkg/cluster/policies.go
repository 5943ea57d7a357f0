package cluster

// The lab's NetworkPolicies as objects (applied from manifests, kept in the
// state) and the policy.State every change of pods, namespaces or policies
// re-derives: SetPolicies (policy.go) then plans each node's chains and sets
// as a diff against what it applied last.

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"

	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/policy"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Policy returns the NetworkPolicy ns/name, or nil.
func (l *Lab) Policy(ns, name string) *networkingv1.NetworkPolicy {
	for _, p := range l.Policies {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

// PolicyState is what the lab's NetworkPolicies are evaluated against: its
// namespaces with their labels, its pods with labels, addresses, nodes and
// named ports, the external host, the nodes' own addresses.
func (l *Lab) PolicyState() policy.State {
	st := policy.State{NodeIPs: map[string][]netip.Addr{}, Policies: l.Policies,
		External: []policy.External{{Name: ExternalName, IP: ExternalIP}}}
	for _, n := range l.AllNamespaces() {
		st.Namespaces = append(st.Namespaces, policy.Namespace{Name: n.Name, Labels: n.Labels})
	}
	for _, p := range l.Pods {
		pp := policy.Pod{Namespace: p.Namespace(), Name: p.ShortName(), Labels: p.Labels, IP: p.IP, Node: p.Node}
		for _, cp := range p.Ports {
			proto := corev1.ProtocolTCP
			if cp.Protocol == nat.UDP {
				proto = corev1.ProtocolUDP
			}
			pp.Ports = append(pp.Ports, policy.Port{Name: cp.Name, Port: int32(cp.Port), Protocol: proto})
		}
		st.Pods = append(st.Pods, pp)
	}
	for _, n := range l.Nodes {
		// The node's own addresses: its underlay address, cni0's and
		// flannel.1's.
		st.NodeIPs[n.Name] = []netip.Addr{n.IP, ipam.Gateway(n.PodCIDR), n.PodCIDR.Masked().Addr()}
		if l.Backend == BackendCalico {
			st.NodeIPs[n.Name] = []netip.Addr{n.IP} // no cni0: the block's addresses are pods', but the VXLAN tunnel's
			if n.TunnelIP.IsValid() {
				st.NodeIPs[n.Name] = append(st.NodeIPs[n.Name], n.TunnelIP)
			}
		}
	}
	return st
}

// syncPolicies makes every node enforce the lab's policies as they stand
// (or clears them when the last one went). With no policy ever applied it
// does nothing. In a control-plane lab it writes the namespaces, pods and
// policies to etcd instead and waits for the nodes' agents
// (controlplane_policy.go).
func (c *Cluster) syncPolicies() error {
	if c.agentsProgram() {
		return c.publishPolicies()
	}
	if len(c.Lab.Policies) > 0 {
		return c.SetPolicies(c.Lab.PolicyState())
	}
	if files, _ := filepath.Glob(filepath.Join(c.Dir(), "policy", "*.json")); len(files) > 0 {
		return c.ClearPolicies()
	}
	return nil
}

// setPolicyObjects replaces (or adds) NetworkPolicies in the lab and
// programs the nodes (or, in a control-plane lab, writes them to etcd); on
// failure the lab's list is put back.
func (c *Cluster) setPolicyObjects(add []*networkingv1.NetworkPolicy, del []*networkingv1.NetworkPolicy) error {
	if len(add)+len(del) > 0 {
		if err := c.onFirstMachine("NetworkPolicies"); err != nil {
			return err
		}
	}
	keep := c.Lab.Policies
	next := slices.Clone(keep)
	for _, np := range append(slices.Clone(add), del...) {
		next = slices.DeleteFunc(next, func(o *networkingv1.NetworkPolicy) bool { return o.Namespace == np.Namespace && o.Name == np.Name })
	}
	next = append(next, add...)
	sort.SliceStable(next, func(i, j int) bool {
		return next[i].Namespace+"/"+next[i].Name < next[j].Namespace+"/"+next[j].Name
	})
	c.Lab.Policies = next
	if err := c.syncPolicies(); isPolicyLag(err) {
		// In etcd already: the lab records the change, the caller reports
		// the lag once it saved the state (takePolicyLag).
		c.policyLag = err
	} else if err != nil {
		c.Lab.Policies = keep
		return err
	}
	return nil
}

// policyCheck reports an error from syncing policies after a pod or
// namespace change: the change happened, the nodes' policies may lag.
func policyCheck(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s, but the nodes' NetworkPolicy rules could not follow (run 'klab repair'): %w", what, err)
}
