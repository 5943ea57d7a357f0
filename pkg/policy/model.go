package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Namespace is a namespace and its labels. A pod whose namespace is not
// listed is treated as if its namespace carried only the
// kubernetes.io/metadata.name label.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Port is one declared container port (what a named port resolves to).
type Port struct {
	Name     string
	Port     int32
	Protocol corev1.Protocol
}

// Pod is what the policy engine needs of a pod.
type Pod struct {
	Namespace string
	Name      string
	Labels    map[string]string
	IP        netip.Addr
	Node      string
	Ports     []Port
}

// Key is "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// External is a named address outside the pod network (the lab's external
// host, a node's underlay address), used to name it in explanations.
type External struct {
	Name string
	IP   netip.Addr
}

// State is everything a verdict depends on.
type State struct {
	Namespaces []Namespace
	Pods       []Pod
	External   []External
	// NodeIPs maps a node name to its addresses, so that traffic between a
	// pod and its own node can be recognised (see Evaluate).
	NodeIPs  map[string][]netip.Addr
	Policies []*networkingv1.NetworkPolicy
}

// Endpoint is one end of a connection: a pod ("namespace/name"), a node
// (its name: the node's own network stack) or a bare address (which is
// resolved to a pod or node when it is one).
type Endpoint struct {
	Pod  string
	Node string
	IP   netip.Addr
}

// PodEndpoint names a pod, "namespace/name" (a bare name means default/name).
func PodEndpoint(name string) Endpoint {
	if !strings.Contains(name, "/") {
		name = "default/" + name
	}
	return Endpoint{Pod: name}
}

// IPEndpoint names an address.
func IPEndpoint(ip netip.Addr) Endpoint { return Endpoint{IP: ip} }

// NodeEndpoint names a node's own network stack (kubelet, a process on the
// node).
func NodeEndpoint(node string) Endpoint { return Endpoint{Node: node} }

// Connection is the first packet of a connection (TCP) or flow (UDP).
type Connection struct {
	Src, Dst Endpoint
	Protocol corev1.Protocol // "" means TCP
	Port     int32
}

// policy is a NetworkPolicy with its selectors parsed and defaults applied.
type policy struct {
	np      *networkingv1.NetworkPolicy
	ns      string
	key     string
	sel     labels.Selector
	ingress bool // effective policyTypes
	egress  bool
	in, out []rule
}

type rule struct {
	index int // 0-based position in spec.ingress / spec.egress
	all   bool
	peers []peer
	ports []networkingv1.NetworkPolicyPort // protocol defaulted
}

type peer struct {
	podSel labels.Selector // nil: every pod (namespaceSelector alone)
	nsSel  labels.Selector // nil: the policy's own namespace
	block  *ipBlock
	desc   string
	key    string // canonical, for set names
}

type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (b *ipBlock) contains(ip netip.Addr) bool {
	if !b.cidr.Contains(ip) {
		return false
	}
	for _, e := range b.except {
		if e.Contains(ip) {
			return false
		}
	}
	return true
}

// compilePolicies parses selectors and CIDRs once and applies the API
// defaults the API server would have applied: protocol TCP, policyTypes
// [Ingress] plus Egress when spec.egress is non-empty
// (k8s.io/api networking/v1 types.go, NetworkPolicySpec.PolicyTypes).
func compilePolicies(nps []*networkingv1.NetworkPolicy) ([]*policy, error) {
	return compilePoliciesWith(nps, compilePolicy)
}

// compilePoliciesWith is compilePolicies with one policy's compilation
// given (a Compiler's reuses unchanged policies).
func compilePoliciesWith(nps []*networkingv1.NetworkPolicy, one func(*networkingv1.NetworkPolicy) (*policy, error)) ([]*policy, error) {
	out := make([]*policy, 0, len(nps))
	for _, np := range nps {
		p, err := one(np)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, nil
}

// compilePolicy parses one policy (see compilePolicies).
func compilePolicy(np *networkingv1.NetworkPolicy) (*policy, error) {
	{
		ns := np.Namespace
		if ns == "" {
			ns = "default"
		}
		p := &policy{np: np, ns: ns, key: ns + "/" + np.Name}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return nil, fmt.Errorf("policy %s: spec.podSelector: %w", p.key, err)
		}
		p.sel = sel
		if len(np.Spec.PolicyTypes) == 0 {
			p.ingress = true
			p.egress = len(np.Spec.Egress) > 0
		}
		for _, t := range np.Spec.PolicyTypes {
			switch t {
			case networkingv1.PolicyTypeIngress:
				p.ingress = true
			case networkingv1.PolicyTypeEgress:
				p.egress = true
			default:
				return nil, fmt.Errorf("policy %s: spec.policyTypes: %q is not Ingress or Egress", p.key, t)
			}
		}
		for i, r := range np.Spec.Ingress {
			cr, err := compileRule(ns, i, r.From, r.Ports)
			if err != nil {
				return nil, fmt.Errorf("policy %s: spec.ingress[%d]: %w", p.key, i, err)
			}
			p.in = append(p.in, cr)
		}
		for i, r := range np.Spec.Egress {
			cr, err := compileRule(ns, i, r.To, r.Ports)
			if err != nil {
				return nil, fmt.Errorf("policy %s: spec.egress[%d]: %w", p.key, i, err)
			}
			p.out = append(p.out, cr)
		}
		return p, nil
	}
}

func compileRule(ns string, index int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (rule, error) {
	r := rule{index: index, all: len(peers) == 0}
	tcp := corev1.ProtocolTCP
	for _, p := range ports {
		if p.Protocol == nil {
			p.Protocol = &tcp
		}
		r.ports = append(r.ports, p)
	}
	for _, p := range peers {
		var cp peer
		switch {
		case p.IPBlock != nil:
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				return r, fmt.Errorf("a peer may not specify both ipBlock and a selector")
			}
			pfx, err := netip.ParsePrefix(p.IPBlock.CIDR)
			if err != nil {
				return r, fmt.Errorf("ipBlock.cidr: %w", err)
			}
			b := &ipBlock{cidr: pfx.Masked()}
			for _, e := range p.IPBlock.Except {
				ep, err := netip.ParsePrefix(e)
				if err != nil {
					return r, fmt.Errorf("ipBlock.except: %w", err)
				}
				b.except = append(b.except, ep.Masked())
			}
			sort.Slice(b.except, func(i, j int) bool { return b.except[i].String() < b.except[j].String() })
			cp.block = b
			cp.desc = "ipBlock " + b.cidr.String()
			var ex []string
			for _, e := range b.except {
				ex = append(ex, e.String())
			}
			if len(ex) > 0 {
				cp.desc += " except " + strings.Join(ex, ",")
			}
			cp.key = "net|" + b.cidr.String() + "|" + strings.Join(ex, ",")
		case p.PodSelector == nil && p.NamespaceSelector == nil:
			return r, fmt.Errorf("a peer must specify podSelector, namespaceSelector or ipBlock")
		default:
			podKey, nsKey := "*", "ns="+ns
			var parts []string
			if p.NamespaceSelector != nil {
				s, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
				if err != nil {
					return r, fmt.Errorf("namespaceSelector: %w", err)
				}
				cp.nsSel = s
				nsKey = "nssel=" + s.String()
				parts = append(parts, "namespaceSelector "+describeSelector(s))
			}
			if p.PodSelector != nil {
				s, err := metav1.LabelSelectorAsSelector(p.PodSelector)
				if err != nil {
					return r, fmt.Errorf("podSelector: %w", err)
				}
				cp.podSel = s
				podKey = s.String()
				parts = append(parts, "podSelector "+describeSelector(s))
			}
			cp.desc = strings.Join(parts, " and ")
			cp.key = "pods|" + nsKey + "|" + podKey
		}
		r.peers = append(r.peers, cp)
	}
	return r, nil
}

func describeSelector(s labels.Selector) string {
	if s.Empty() {
		return "{}"
	}
	return s.String()
}

func describePorts(ports []networkingv1.NetworkPolicyPort) string {
	var out []string
	for _, p := range ports {
		s := strings.ToLower(string(*p.Protocol))
		switch {
		case p.Port == nil:
			s += "/any"
		case p.EndPort != nil:
			s += fmt.Sprintf("/%d-%d", p.Port.IntVal, *p.EndPort)
		default:
			s += "/" + p.Port.String()
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

func (r *rule) describe() string {
	var peers []string
	for _, p := range r.peers {
		peers = append(peers, p.desc)
	}
	s := strings.Join(peers, " or ")
	if r.all {
		s = "any peer"
	}
	if len(r.ports) > 0 {
		s += "; ports " + describePorts(r.ports)
	}
	return s
}
