package policy

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Evaluator answers "is this connection allowed, and why" from the policies
// alone. Build one per State with NewEvaluator; it is read-only afterwards
// and safe for concurrent use.
type Evaluator struct {
	state    State
	policies []*policy
	byNS     map[string][]*policy // the policies of each namespace, in order
	pods     map[string]*Pod
	podByIP  map[netip.Addr]*Pod
	nodeByIP map[netip.Addr]string
	extByIP  map[netip.Addr]string
	nsLabels map[string]labels.Set
}

// NewEvaluator parses the state's policies (an invalid selector or CIDR is
// an error naming the policy and field).
func NewEvaluator(s State) (*Evaluator, error) {
	ps, err := compilePolicies(s.Policies)
	if err != nil {
		return nil, err
	}
	return newEvaluator(s, ps)
}

// newEvaluator is NewEvaluator with the policies already parsed.
func newEvaluator(s State, ps []*policy) (*Evaluator, error) {
	e := &Evaluator{state: s, policies: ps, byNS: map[string][]*policy{}, pods: map[string]*Pod{}, podByIP: map[netip.Addr]*Pod{},
		nodeByIP: map[netip.Addr]string{}, extByIP: map[netip.Addr]string{}, nsLabels: map[string]labels.Set{}}
	for _, p := range ps {
		e.byNS[p.ns] = append(e.byNS[p.ns], p)
	}
	for _, n := range s.Namespaces {
		l := labels.Set{}
		for k, v := range n.Labels {
			l[k] = v
		}
		l[corev1.LabelMetadataName] = n.Name
		e.nsLabels[n.Name] = l
	}
	for i := range e.state.Pods {
		p := &e.state.Pods[i]
		if _, dup := e.pods[p.Key()]; dup {
			return nil, fmt.Errorf("pod %s listed twice", p.Key())
		}
		e.pods[p.Key()] = p
		if p.IP.IsValid() {
			e.podByIP[p.IP] = p
		}
	}
	for n, ips := range s.NodeIPs {
		for _, ip := range ips {
			e.nodeByIP[ip] = n
		}
	}
	for _, x := range s.External {
		e.extByIP[x.IP] = x.Name
	}
	return e, nil
}

func (e *Evaluator) namespaceLabels(ns string) labels.Set {
	if l, ok := e.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{corev1.LabelMetadataName: ns}
}

// Side is the verdict of one direction: egress at the source pod or
// ingress at the destination pod.
type Side struct {
	// Pod is the pod whose policies decide ("" when that end is not a pod:
	// nothing is enforced there).
	Pod  string
	Node string
	// Isolated: at least one policy selects Pod for this direction.
	Isolated bool
	// Selecting lists those policies, "namespace/name".
	Selecting []string
	Allowed   bool
	// When Isolated and Allowed: the first admitting policy, its rule
	// (1-based: rule 1 is spec.ingress[0] / spec.egress[0]) and that rule
	// described ("podSelector role=frontend").
	Policy string
	Rule   int
	Peer   string
}

// Verdict is the answer for one connection.
type Verdict struct {
	Allowed bool
	Egress  Side
	Ingress Side
	// Reason is one sentence: "allowed by default/db-allow ingress rule 1
	// (podSelector role=frontend)" or "dropped at node2 ingress of
	// default/db: selected by policy default/db-allow (ingress), no rule
	// admits other/client:tcp/6379".
	Reason string
}

func (v Verdict) String() string { return v.Reason }

type end struct {
	pod  *Pod
	node string // the node's own stack
	ip   netip.Addr
	name string
}

func (e *Evaluator) resolve(ep Endpoint) (end, error) {
	switch {
	case ep.Pod != "":
		p, ok := e.pods[ep.Pod]
		if !ok {
			return end{}, fmt.Errorf("no pod %s", ep.Pod)
		}
		return end{pod: p, ip: p.IP, name: p.Key()}, nil
	case ep.Node != "":
		var ip netip.Addr
		if ips := e.state.NodeIPs[ep.Node]; len(ips) > 0 {
			ip = ips[0]
		}
		return end{node: ep.Node, ip: ip, name: "node " + ep.Node}, nil
	case ep.IP.IsValid():
		if p, ok := e.podByIP[ep.IP]; ok {
			return end{pod: p, ip: p.IP, name: p.Key()}, nil
		}
		if n, ok := e.nodeByIP[ep.IP]; ok {
			return end{node: n, ip: ep.IP, name: "node " + n}, nil
		}
		name := ep.IP.String()
		if x, ok := e.extByIP[ep.IP]; ok {
			name = x + "(" + ep.IP.String() + ")"
		}
		return end{ip: ep.IP, name: name}, nil
	}
	return end{}, fmt.Errorf("empty endpoint")
}

// Evaluate returns the verdict for the first packet of c. Replies of an
// allowed connection always pass (policies are stateful), so only the
// direction of the first packet matters.
//
// Semantics, per k8s.io/api networking/v1 types.go:
//   - a pod is isolated for ingress (egress) when some policy in its
//     namespace selects it and has Ingress (Egress) in its effective
//     policyTypes; a pod not isolated for a direction allows everything in
//     it;
//   - a connection passes when egress at the source pod AND ingress at the
//     destination pod allow it; an isolated side allows it when ANY rule of
//     ANY selecting policy admits it (policies are additive, no order);
//   - a rule admits when one of its peers (an empty list: any peer) matches
//     AND one of its ports (an empty list: any port) matches;
//   - peer: podSelector alone selects pods of the policy's namespace;
//     namespaceSelector alone every pod of the selected namespaces; both in
//     one peer, pods matching both; ipBlock, addresses in cidr and not in
//     except;
//   - port: protocol (default TCP) must match; a number (with endPort, the
//     inclusive range); a name, the TARGET pod's container port of that
//     name and protocol (the destination pod, for ingress and for egress;
//     an egress named port never matches a non-pod destination).
//
// Choices where the API leaves it to the implementation (also in doc.go):
// ipBlock peers match pod addresses too (as Calico and kube-router do and as
// the upstream e2e CIDR tests expect); traffic between a pod and its own
// node, and a pod's traffic to itself, is never filtered.
func (e *Evaluator) Evaluate(c Connection) (Verdict, error) {
	src, err := e.resolve(c.Src)
	if err != nil {
		return Verdict{}, fmt.Errorf("source: %w", err)
	}
	dst, err := e.resolve(c.Dst)
	if err != nil {
		return Verdict{}, fmt.Errorf("destination: %w", err)
	}
	proto := c.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	what := fmt.Sprintf("%s/%d", strings.ToLower(string(proto)), c.Port)
	if src.pod != nil && dst.pod != nil && src.pod == dst.pod {
		return Verdict{Allowed: true, Reason: fmt.Sprintf("allowed: %s to itself (%s) never leaves the pod, policies do not apply", src.name, what)}, nil
	}
	if src.pod != nil && dst.node != "" && src.pod.Node == dst.node || dst.pod != nil && src.node != "" && dst.pod.Node == src.node {
		p, n := src.pod, dst.node
		if p == nil {
			p, n = dst.pod, src.node
		}
		return Verdict{Allowed: true, Reason: fmt.Sprintf("allowed: traffic between %s and its own node %s is never filtered", p.Key(), n)}, nil
	}
	v := Verdict{}
	if src.pod != nil {
		v.Egress = e.side(src.pod, false, dst, proto, c.Port)
	} else {
		v.Egress = Side{Allowed: true}
	}
	if dst.pod != nil {
		v.Ingress = e.side(dst.pod, true, src, proto, c.Port)
	} else {
		v.Ingress = Side{Allowed: true}
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	switch {
	case !v.Egress.Allowed:
		v.Reason = dropReason("egress", v.Egress, dst.name, what)
	case !v.Ingress.Allowed:
		v.Reason = dropReason("ingress", v.Ingress, src.name, what)
	default:
		var by []string
		for _, s := range []struct {
			dir string
			s   Side
		}{{"egress", v.Egress}, {"ingress", v.Ingress}} {
			if s.s.Isolated {
				by = append(by, fmt.Sprintf("%s %s rule %d (%s)", s.s.Policy, s.dir, s.s.Rule, s.s.Peer))
			}
		}
		var free []string
		if v.Egress.Pod != "" && !v.Egress.Isolated {
			free = append(free, v.Egress.Pod+" is not isolated for egress")
		}
		if v.Ingress.Pod != "" && !v.Ingress.Isolated {
			free = append(free, v.Ingress.Pod+" is not isolated for ingress")
		}
		if len(by) == 0 {
			v.Reason = "allowed: " + strings.Join(free, " and ")
			if len(free) == 0 {
				v.Reason = "allowed: neither end is a pod"
			}
		} else {
			v.Reason = "allowed by " + strings.Join(by, " and ")
			if len(free) > 0 {
				v.Reason += "; " + strings.Join(free, " and ")
			}
		}
	}
	return v, nil
}

func dropReason(dir string, s Side, other, what string) string {
	where := dir + " of " + s.Pod
	if s.Node != "" {
		where = s.Node + " " + where
	}
	word := "policy"
	if len(s.Selecting) > 1 {
		word = "policies"
	}
	return fmt.Sprintf("dropped at %s: selected by %s %s (%s), no rule admits %s:%s", where, word, strings.Join(s.Selecting, ", "), dir, other, what)
}

// side decides one direction for pod p; other is the far end.
func (e *Evaluator) side(p *Pod, ingress bool, other end, proto corev1.Protocol, port int32) Side {
	s := Side{Pod: p.Key(), Node: p.Node}
	podLabels := labels.Set(p.Labels)
	for _, pol := range e.byNS[p.Namespace] {
		if pol.ns != p.Namespace {
			continue
		}
		if ingress && !pol.ingress || !ingress && !pol.egress || !pol.sel.Matches(podLabels) {
			continue
		}
		s.Isolated = true
		s.Selecting = append(s.Selecting, pol.key)
		if s.Allowed {
			continue
		}
		rules := pol.out
		target := other.pod // egress: named ports resolve on the destination
		if ingress {
			rules = pol.in
			target = p // ingress: on the pod itself, the destination
		}
		for _, r := range rules {
			peerDesc, ok := e.ruleAdmits(pol, &r, other, target, proto, port)
			if ok {
				s.Allowed, s.Policy, s.Rule, s.Peer = true, pol.key, r.index+1, peerDesc
				break
			}
		}
	}
	if !s.Isolated {
		s.Allowed = true
	}
	return s
}

func (e *Evaluator) ruleAdmits(pol *policy, r *rule, other end, target *Pod, proto corev1.Protocol, port int32) (string, bool) {
	if !portsMatch(r.ports, target, proto, port) {
		return "", false
	}
	desc := ""
	if len(r.ports) > 0 {
		desc = "; ports " + describePorts(r.ports)
	}
	if r.all {
		return "any peer" + desc, true
	}
	for _, pe := range r.peers {
		if e.peerMatches(pol, &pe, other) {
			return pe.desc + desc, true
		}
	}
	return "", false
}

func (e *Evaluator) peerMatches(pol *policy, pe *peer, other end) bool {
	if pe.block != nil {
		return other.ip.IsValid() && pe.block.contains(other.ip)
	}
	if other.pod == nil {
		return false
	}
	if pe.nsSel == nil {
		if other.pod.Namespace != pol.ns {
			return false
		}
	} else if !pe.nsSel.Matches(e.namespaceLabels(other.pod.Namespace)) {
		return false
	}
	return pe.podSel == nil || pe.podSel.Matches(labels.Set(other.pod.Labels))
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, target *Pod, proto corev1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if *p.Protocol != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if target == nil {
				continue
			}
			for _, cp := range target.Ports {
				cpProto := cp.Protocol
				if cpProto == "" {
					cpProto = corev1.ProtocolTCP
				}
				if cp.Name == p.Port.StrVal && cpProto == proto && cp.Port == port {
					return true
				}
			}
		case p.EndPort != nil:
			if port >= p.Port.IntVal && port <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == port:
			return true
		}
	}
	return false
}

func labelsOf(p *Pod) labels.Set { return labels.Set(p.Labels) }
