package cluster

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/plan"
)

// Service is a Kubernetes Service of the lab. Its endpoints are pods, named
// in Endpoints or chosen by Selector (pod labels), and resolved to addresses
// each time the rules are rendered: a pod that is deleted drops out of its
// services, and a pod added later with a matching label (or a listed name)
// joins them, as the endpoints controller would do.
type Service struct {
	Name string `json:"name"`
	// Type is empty for a ClusterIP service (NodePort ones have node
	// ports), ServiceHeadless (clusterIP: None) or ServiceExternalName:
	// kube-proxy writes no rules for the last two (DNS answers for them).
	Type         string            `json:"type,omitempty"`
	ExternalName string            `json:"externalName,omitempty"`
	ClusterIP    netip.Addr        `json:"clusterIP"`
	Ports        []nat.ServicePort `json:"ports"`
	Affinity     nat.Affinity      `json:"affinity,omitempty"`
	Endpoints    []string          `json:"endpoints,omitempty"`
	Selector     map[string]string `json:"selector,omitempty"`
	// ExternalTrafficPolicy is Local or empty (Cluster): see
	// nat.Service.ExternalTrafficPolicy.
	ExternalTrafficPolicy nat.TrafficPolicy `json:"externalTrafficPolicy,omitempty"`
}

// ServiceSpec asks for a service; a zero ClusterIP is allocated from the
// lab's service CIDR, and a NodePort of -1 is allocated from 30000-32767.
type ServiceSpec struct {
	Type         string // "", ServiceHeadless or ServiceExternalName
	ExternalName string
	Name         string
	ClusterIP    netip.Addr
	Ports        []nat.ServicePort
	Affinity     nat.Affinity
	Endpoints    []string
	Selector     map[string]string
	// ExternalTrafficPolicy: Local keeps NodePort clients' addresses (only
	// endpoints on the receiving node); empty or Cluster is the default.
	ExternalTrafficPolicy nat.TrafficPolicy
}

// AutoNodePort in a ServiceSpec's port asks for an allocated node port.
const AutoNodePort = -1

// Service types beyond ClusterIP/NodePort: no ClusterIP, no rules.
const (
	ServiceHeadless     = "Headless"
	ServiceExternalName = "ExternalName"
)

// proxied reports whether kube-proxy programs the service.
func (s *Service) proxied() bool { return s.Type != ServiceHeadless && s.Type != ServiceExternalName }

// Service returns the service with that key or reference ("name",
// "default/name", "namespace/name"), or nil.
func (l *Lab) Service(ref string) *Service {
	key := NormalizeKey(ref)
	for _, s := range l.Services {
		if s.Name == key {
			return s
		}
	}
	return nil
}

// endpointKey is the key of a pod a service names: relative to the
// service's namespace unless it names its own.
func endpointKey(s *Service, pod string) string {
	if strings.Contains(pod, "/") {
		return NormalizeKey(pod)
	}
	return Key(s.Namespace(), pod)
}

// EndpointPods lists the pods backing a service now — the ready pods it
// selects — in the order the service names them (Endpoints) or by name
// (Selector).
func (l *Lab) EndpointPods(s *Service) []*Pod {
	return slices.DeleteFunc(l.SelectedPods(s), func(p *Pod) bool { return p.Unready })
}

// SelectedPods lists the pods a service selects, ready or not.
func (l *Lab) SelectedPods(s *Service) []*Pod {
	var out []*Pod
	if s.Selector != nil {
		ns := s.Namespace()
		for _, p := range l.Pods {
			if p.Namespace() == ns && matches(s.Selector, p.Labels) {
				out = append(out, p)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out
	}
	for _, name := range s.Endpoints {
		if p := l.Pod(endpointKey(s, name)); p != nil {
			out = append(out, p)
		}
	}
	return out
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// natServices is the lab's services as pkg/nat's input, endpoints resolved.
func (l *Lab) natServices() []nat.Service {
	out := make([]nat.Service, 0, len(l.Services))
	for _, s := range l.Services {
		if !s.proxied() {
			continue
		}
		ns := nat.Service{Namespace: s.Namespace(), Name: s.ShortName(), ClusterIP: s.ClusterIP, Ports: s.Ports, Affinity: s.Affinity, ExternalTrafficPolicy: s.ExternalTrafficPolicy}
		for _, p := range l.EndpointPods(s) {
			ns.Endpoints = append(ns.Endpoints, nat.Endpoint{IP: p.IP, PodName: p.Name, NodeName: p.Node})
		}
		out = append(out, ns)
	}
	return out
}

// natConfig is the per-node setting of the rendering: kube-proxy's ranges
// and flannel's masquerade for the node's own subnet lease.
func (l *Lab) natConfig(n *Node) nat.Config {
	return nat.Config{
		Lab: l.Name, ClusterCIDR: l.ClusterCIDR, ServiceCIDR: l.ServiceCIDR,
		Flannel: &nat.FlannelMasq{PodCIDR: n.PodCIDR},
		// The node's own endpoints, for services with the Local policy.
		NodeName: n.Name,
	}
}

// Rules renders the iptables rules of one node as the lab stands: kube-proxy's
// chains for every service plus flannel's masquerade.
func (l *Lab) Rules(n *Node) (*nat.Ruleset, error) {
	return nat.Render(l.natConfig(n), l.natServices())
}

// PlanService validates a service request against the lab and fills in the
// allocated fields (ClusterIP, node ports), without touching the kernel.
func (c *Cluster) PlanService(s ServiceSpec) (*Service, error) {
	l := c.Lab
	if err := l.validateKey("service", s.Name); err != nil {
		return nil, err
	}
	s.Name = NormalizeKey(s.Name)
	if l.Service(s.Name) != nil {
		return nil, fmt.Errorf("service %q already exists in lab %s: delete it first (klab service del %s) or choose another name", s.Name, l.Name, s.Name)
	}
	if len(s.Endpoints) > 0 && s.Selector != nil {
		return nil, fmt.Errorf("service %s has both --endpoints and --selector: choose pods by name or by label, not both", s.Name)
	}
	seen := map[string]bool{}
	for _, e := range s.Endpoints {
		if seen[e] {
			return nil, fmt.Errorf("service %s lists pod %q twice in --endpoints: list each pod once", s.Name, e)
		}
		seen[e] = true
		if l.Pod(endpointKey(&Service{Name: s.Name}, e)) == nil {
			// Across machines, a pod of another machine's node will do
			// (kubelet.go).
			if o, _ := c.RemotePod(endpointKey(&Service{Name: s.Name}, e)); o == nil {
				return nil, c.unknownPod(s.Name, e)
			}
		}
	}
	var usedIPs []netip.Addr
	var usedPorts []int
	// Across machines, around what the other machines' Services hold
	// (serviceclaims.go).
	cl, err := c.claims()
	if err != nil {
		return nil, err
	}
	if cl != nil {
		for ip := range cl.ips {
			usedIPs = append(usedIPs, ip)
		}
		for p := range cl.ports {
			usedPorts = append(usedPorts, p)
		}
	}
	for _, o := range l.Services {
		usedIPs = append(usedIPs, o.ClusterIP)
		for _, p := range o.Ports {
			if p.NodePort > 0 {
				usedPorts = append(usedPorts, p.NodePort)
			}
		}
	}
	svc := &Service{Name: s.Name, Type: s.Type, ExternalName: s.ExternalName, ClusterIP: s.ClusterIP, Ports: slices.Clone(s.Ports), Affinity: s.Affinity,
		Endpoints: slices.Clone(s.Endpoints), Selector: maps.Clone(s.Selector), ExternalTrafficPolicy: s.ExternalTrafficPolicy}
	if svc.ExternalTrafficPolicy == nat.PolicyCluster {
		svc.ExternalTrafficPolicy = "" // the default, stored as such
	}
	if svc.ExternalTrafficPolicy != "" && !slices.ContainsFunc(svc.Ports, func(p nat.ServicePort) bool { return p.NodePort != 0 }) {
		return nil, fmt.Errorf("service %s: external traffic policy %s needs a NodePort (the policy applies to traffic arriving at a node): add --type NodePort, or leave the policy out", s.Name, svc.ExternalTrafficPolicy)
	}
	if !svc.proxied() {
		svc.ClusterIP = netip.Addr{}
		return svc, nil
	}
	if !svc.ClusterIP.IsValid() {
		ip, err := nat.AllocateClusterIP(l.ServiceCIDR, usedIPs)
		if err != nil {
			return nil, err
		}
		svc.ClusterIP = ip
	}
	for i := range svc.Ports {
		if svc.Ports[i].NodePort == AutoNodePort {
			p, err := nat.AllocateNodePort(usedPorts)
			if err != nil {
				return nil, err
			}
			svc.Ports[i].NodePort = p
			usedPorts = append(usedPorts, p)
		}
	}
	if err := c.checkClaims(svc, cl); err != nil {
		return nil, err
	}
	// Render once for validation: names, ranges, duplicates, the lot.
	all := append(slices.Clone(l.Services), svc)
	if _, err := nat.Render(l.natConfig(&Node{Name: "plan", PodCIDR: firstSubnet(l)}), (&Lab{Name: l.Name, Pods: l.Pods, Services: all}).natServices()); err != nil {
		return nil, err
	}
	return svc, nil
}

// firstSubnet is any valid pod subnet, for validating renderings before a
// lab has nodes.
func firstSubnet(l *Lab) netip.Prefix {
	if len(l.Nodes) > 0 {
		return l.Nodes[0].PodCIDR
	}
	return netip.PrefixFrom(l.ClusterCIDR.Addr(), max(l.ClusterCIDR.Bits(), 24))
}

// AddService validates, records and programs a service into every node.
func (c *Cluster) AddService(s ServiceSpec) (*Service, error) {
	svc, err := c.PlanService(s)
	if err != nil {
		return nil, err
	}
	err = c.changeServices(func(l *Lab) { l.Services = append(l.Services, svc) })
	if err != nil {
		return nil, err
	}
	return svc, nil
}

// DelService removes a service from the lab and from every node.
func (c *Cluster) DelService(name string) error {
	if c.Lab.Service(name) == nil {
		return fmt.Errorf("service %q does not exist in lab %s: see 'klab service list'", name, c.Lab.Name)
	}
	return c.changeServices(func(l *Lab) {
		l.Services = slices.DeleteFunc(slices.Clone(l.Services), func(s *Service) bool { return s.Name == name })
	})
}

// SetEndpoints replaces the pods a service names (or, with a selector,
// switches it to an explicit list), and reprograms the nodes.
func (c *Cluster) SetEndpoints(name string, pods []string) error {
	s := c.Lab.Service(name)
	if s == nil {
		return fmt.Errorf("service %q does not exist in lab %s: see 'klab service list'", name, c.Lab.Name)
	}
	for _, p := range pods {
		if c.Lab.Pod(p) == nil {
			return c.unknownPod(name, p)
		}
	}
	upd := *s
	upd.Endpoints, upd.Selector = slices.Clone(pods), nil
	return c.changeServices(func(l *Lab) {
		l.Services = slices.Clone(l.Services)
		for i, o := range l.Services {
			if o.Name == name {
				l.Services[i] = &upd
			}
		}
	})
}

// changeServices applies a change of the lab's services to every node's
// iptables, then saves the lab (see commit).
func (c *Cluster) changeServices(change func(l *Lab)) error {
	before := *c.Lab
	change(c.Lab)
	undo, err := c.claimServices(&before, c.Lab) // across machines (serviceclaims.go)
	if err != nil {
		*c.Lab = before
		return err
	}
	if err := c.commit(&before); err != nil {
		undo()
		return err
	}
	return nil
}

// commit makes the kernel and the state file follow a change of c.Lab,
// whose previous version is before: every node's iptables is reprogrammed
// (only when a service's rendering changed), then the state is saved. On
// failure the nodes and c.Lab are put back as they were.
func (c *Cluster) commit(before *Lab) error {
	after := *c.Lab
	if err := c.syncRules(before, &after); err != nil {
		*c.Lab = *before
		return err
	}
	if err := c.Save(); err != nil {
		c.syncRules(&after, before)
		*c.Lab = *before
		return err
	}
	return c.takeProxyLag()
}

// syncRules reprograms every node of after from the rendering of before to
// that of after. Each node gets one iptables-restore --noflush that
// rewrites only the chains whose rules changed: the previous rendering is
// re-derived from the previous state, which is what the kernel holds, the
// way kube-proxy keeps its last rendering. Nodes run in parallel (each is
// an exec); the ones that succeeded are rolled back when one fails. When no
// service's endpoints or ports changed it touches nothing.
func (c *Cluster) syncRules(before, after *Lab) error {
	if c.agentsProgram() && c.agentProxy == nil {
		return c.publishServices(before, after) // the agents sync (controlplane_proxy.go)
	}
	if len(after.Nodes) == 0 || servicesEqual(before.natServices(), after.natServices()) {
		return nil
	}
	if after.NFTables() {
		return c.syncNFT(before, after)
	}
	type result struct {
		node      *Node
		prev, cur *nat.Ruleset
		changed   bool
	}
	res := make([]result, len(after.Nodes))
	// One Renderer for every node, before and after: the services' rules
	// are the same on every node, so this renders them once, then copies.
	var rn nat.Renderer
	afterSvcs, beforeSvcs := after.natServices(), before.natServices()
	plans := make([]plan.Plan, len(after.Nodes))
	for i, n := range after.Nodes {
		cur, err := rn.Render(after.natConfig(n), afterSvcs)
		if err != nil {
			return err
		}
		prev, err := rn.Render(before.natConfig(n), beforeSvcs)
		if err != nil || before.Node(n.Name) == nil {
			prev = nil // unknown: the plan reads the kernel instead
		}
		p, out, err := nat.Plan(c.NS(n.Name), cur, prev)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		res[i] = result{node: n, prev: prev, cur: cur, changed: out.Changed()}
		plans[i] = p
	}
	// Nodes run in parallel (each is an exec).
	c.A.Ctx = c.Ctx
	err := c.A.ApplyAll(plans, len(plans))
	if err == nil {
		return nil
	}
	for _, r := range res {
		if r.changed && r.prev != nil {
			if p, _, perr := nat.Plan(c.NS(r.node.Name), r.prev, r.cur); perr == nil {
				c.A.Apply(p)
			}
		}
	}
	return err
}

// servicesEqual reports whether two resolved service sets render the same.
func servicesEqual(a, b []nat.Service) bool {
	return slices.EqualFunc(a, b, func(x, y nat.Service) bool {
		return x.Name == y.Name && x.ClusterIP == y.ClusterIP && x.Affinity == y.Affinity && x.ExternalTrafficPolicy == y.ExternalTrafficPolicy &&
			x.AffinityTimeout == y.AffinityTimeout && slices.Equal(x.Ports, y.Ports) && slices.Equal(x.Endpoints, y.Endpoints)
	})
}

// planNodeRules plans the node's rules: kube-proxy's chains for every
// service of the lab and flannel's masquerade. A namespace that does not
// exist yet gets them in one iptables-restore; an existing one is compared
// with what its kernel holds (see nat.Plan).
func (c *Cluster) planNodeRules(n *Node, st *plan.State) (plan.Plan, error) {
	if c.Lab.NFTables() {
		return c.planNodeNFT(n, st)
	}
	cleanup, err := c.planNFTCleanup(n, st)
	if err != nil {
		return nil, err
	}
	rs, err := c.proxyLab(st).Rules(n)
	if err != nil {
		return nil, err
	}
	if !st.Exists {
		return nat.PlanNew(c.NS(n.Name), rs), nil
	}
	p, _, err := nat.Plan(c.NS(n.Name), rs, c.agentProxy.last())
	if err != nil {
		return nil, fmt.Errorf("program iptables of node %s: %w", n.Name, err)
	}
	c.agentProxy.rendered(rs)
	return append(cleanup, p...), nil
}

// unknownPod is the error for an endpoint that names no pod.
func (c *Cluster) unknownPod(svc, pod string) error {
	if len(c.Lab.Pods) == 0 {
		return fmt.Errorf("service %s: endpoint %q is not a pod: lab %s has no pods yet, add them first (klab pod add %s --node NODE)", svc, pod, c.Lab.Name, pod)
	}
	return fmt.Errorf("service %s: endpoint %q is not a pod of lab %s: use pods from 'klab pod list' (%s)", svc, pod, c.Lab.Name, strings.Join(c.podNames(), ", "))
}

func (c *Cluster) podNames() []string {
	var out []string
	for _, p := range c.Lab.Pods {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// SetReady marks a pod ready or not, as the kubelet's readiness probe
// does: an unready pod leaves every Service's endpoints on every node
// (one iptables-restore per node), a ready one joins them again.
func (c *Cluster) SetReady(pod string, ready bool) error {
	p := c.Lab.Pod(pod)
	if p == nil {
		return fmt.Errorf("pod %q does not exist in lab %s: see 'klab pod list'", pod, c.Lab.Name)
	}
	if p.Unready == !ready {
		return nil
	}
	if err := c.changeServices(func(l *Lab) {
		l.Pods = slices.Clone(l.Pods)
		for i, o := range l.Pods {
			if o == p {
				q := *p
				q.Unready = !ready
				l.Pods[i] = &q
			}
		}
	}); err != nil {
		return err
	}
	if c.Lab.spansMachines() {
		// The Pod object carries the Ready condition there: the
		// endpointslice controller reads other machines' pods from it
		// (endpointslices.go).
		return policyCheck("pod "+pod+" is marked", c.syncPolicies())
	}
	return nil
}
