package e2e

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type policies = []*networkingv1.NetworkPolicy

// Helpers in the spirit of upstream's policies.go / test_helper.go
// (GenNetworkPolicyWithNameAndPodSelector, SetSpecIngressRules, ...),
// written anew.

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

type opt func(*networkingv1.NetworkPolicy)

// gen builds a policy in ns selecting podSel.
func gen(name, ns string, podSel metav1.LabelSelector, opts ...opt) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: podSel},
	}
	for _, o := range opts {
		o(np)
	}
	return np
}

func match(l map[string]string) metav1.LabelSelector { return metav1.LabelSelector{MatchLabels: l} }
func podA() metav1.LabelSelector                     { return match(map[string]string{"pod": "a"}) }
func all() metav1.LabelSelector                      { return metav1.LabelSelector{} }
func sel(l map[string]string) *metav1.LabelSelector  { s := match(l); return &s }
func expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

// ingress adds Ingress to policyTypes and the rules (none: deny all).
func ingress(rules ...networkingv1.NetworkPolicyIngressRule) opt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		np.Spec.Ingress = append(np.Spec.Ingress, rules...)
	}
}

// egress adds Egress to policyTypes and the rules (none: deny all).
func egress(rules ...networkingv1.NetworkPolicyEgressRule) opt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		np.Spec.Egress = append(np.Spec.Egress, rules...)
	}
}

func from(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers}
}

func to(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers}
}

func inPorts(r networkingv1.NetworkPolicyIngressRule, ps ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	r.Ports = append(r.Ports, ps...)
	return r
}

func outPorts(r networkingv1.NetworkPolicyEgressRule, ps ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	r.Ports = append(r.Ports, ps...)
	return r
}

func port(n int32, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Port: &p, Protocol: proto}
}

func named(name string, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Port: &p, Protocol: proto}
}

func portRange(lo, hi int32, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	p := port(lo, proto)
	p.EndPort = &hi
	return p
}

func protoOnly(proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: proto}
}

func pods(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nss(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func both(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func block(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func host(p PodString) string { return IPOf(p).String() + "/32" }

// large is upstream's makeLargeCIDRForIP for IPv4: the address's /4.
func large(p PodString) string {
	return netip.PrefixFrom(IPOf(p), 4).Masked().String()
}

const nsLabel = corev1.LabelMetadataName

// same gives one matrix for all four probes (policies without ports).
func same(r *Reachability) []Probe {
	var out []Probe
	for _, port := range Ports {
		for _, proto := range Protocols {
			out = append(out, Probe{Port: port, Protocol: proto, Reachability: r})
		}
	}
	return out
}

// per gives each probe its own matrix: f is called with each port/protocol.
func per(f func(port int32, proto corev1.Protocol) *Reachability) []Probe {
	var out []Probe
	for _, port := range Ports {
		for _, proto := range Protocols {
			out = append(out, Probe{Port: port, Protocol: proto, Reachability: f(port, proto)})
		}
	}
	return out
}

// Cases returns every case, in a stable order.
func Cases() []Case {
	xa, xb, xc := PodString("x/a"), PodString("x/b"), PodString("x/c")
	ya, yb := PodString("y/a"), PodString("y/b")
	zb := PodString("z/b")
	X, Y, Z := &Peer{Namespace: "x"}, &Peer{Namespace: "y"}, &Peer{Namespace: "z"}
	any := &Peer{}
	pXA := &Peer{Namespace: "x", Pod: "a"}
	R := NewReachability

	cs := []Case{
		{
			Name: "default-deny-ingress", Upstream: "should support a 'default-deny-ingress' policy",
			Policies: policies{gen("deny-ingress", "x", all(), ingress())},
			Probes:   same(R(true).ExpectPeer(any, X, false)),
		},
		{
			Name: "default-deny-all", Upstream: "should support a 'default-deny-all' policy",
			Policies: policies{gen("deny-all", "x", all(), ingress(), egress())},
			Probes:   same(R(true).ExpectPeer(any, X, false).ExpectPeer(X, any, false)),
		},
		{
			Name: "allow-from-x-b-by-podSelector", Upstream: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
			Policies: policies{gen("x-a-allows-x-b", "x", podA(), ingress(from(pods(sel(map[string]string{"pod": "b"})))))},
			Probes:   same(R(true).ExpectAllIngress(xa, false).Expect(xb, xa, true)),
		},
		{
			Name: "deny-all-then-allow-all-to-a", Upstream: "should enforce policy to allow ingress traffic for a target",
			Policies: policies{
				gen("deny-all", "x", all(), ingress()),
				gen("allow-all-to-a", "x", podA(), ingress(from(both(&metav1.LabelSelector{}, &metav1.LabelSelector{})))),
			},
			Probes: same(R(true).ExpectAllIngress(xa, true).ExpectAllIngress(xb, false).ExpectAllIngress(xc, false)),
		},
		{
			Name: "allow-from-all-namespaces", Upstream: "should enforce policy to allow ingress traffic from pods in all namespaces",
			Policies: policies{gen("allow-from-another-ns", "x", podA(), ingress(from(nss(sel(map[string]string{})))))},
			Probes:   same(R(true)),
		},
		{
			Name: "allow-from-namespace-y", Upstream: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
			Policies: policies{gen("allow-client-a-via-ns-selector", "x", podA(), ingress(from(nss(sel(map[string]string{nsLabel: "y"})))))},
			Probes:   same(R(true).ExpectPeer(X, pXA, false).ExpectPeer(Z, pXA, false)),
		},
		{
			Name: "podSelector-matchExpressions", Upstream: "should enforce policy based on PodSelector with MatchExpressions",
			Policies: policies{gen("x-a-allows-x-b", "x", podA(), ingress(from(pods(expr("pod", metav1.LabelSelectorOpIn, "b")))))},
			Probes:   same(R(true).ExpectAllIngress(xa, false).Expect(xb, xa, true)),
		},
		{
			Name: "namespaceSelector-matchExpressions", Upstream: "should enforce policy based on NamespaceSelector with MatchExpressions",
			Policies: policies{gen("allow-ns-y-match-selector", "x", podA(), ingress(from(nss(expr(nsLabel, metav1.LabelSelectorOpIn, "y")))))},
			Probes:   same(R(true).ExpectPeer(X, pXA, false).ExpectPeer(Z, pXA, false)),
		},
		{
			Name: "podSelector-OR-namespaceSelector", Upstream: "should enforce policy based on PodSelector or NamespaceSelector",
			Policies: policies{gen("allow-ns-y-match-selector", "x", podA(), ingress(from(
				nss(expr(nsLabel, metav1.LabelSelectorOpNotIn, "x")), pods(sel(map[string]string{"pod": "b"})))))},
			Probes: same(R(true).Expect(xa, xa, false).Expect(xc, xa, false)),
		},
		{
			Name: "podSelector-AND-namespaceSelector", Upstream: "should enforce policy based on PodSelector and NamespaceSelector",
			Policies: policies{gen("allow-ns-y-podselector-and-nsselector", "x", podA(), ingress(from(
				both(expr(nsLabel, metav1.LabelSelectorOpNotIn, "x"), sel(map[string]string{"pod": "b"})))))},
			Probes: same(R(true).ExpectAllIngress(xa, false).Expect(yb, xa, true).Expect(zb, xa, true)),
		},
		{
			Name: "multiple-podSelectors-and-namespaceSelectors", Upstream: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
			Policies: policies{gen("allow-ns-y-z-pod-b-c", "x", podA(), ingress(from(
				both(expr(nsLabel, metav1.LabelSelectorOpNotIn, "x"), expr("pod", metav1.LabelSelectorOpIn, "b", "c")))))},
			Probes: same(R(true).ExpectPeer(X, pXA, false).Expect(ya, xa, false).Expect("z/a", xa, false)),
		},
		{
			Name: "any-podSelectors", Upstream: "should enforce policy based on any PodSelectors",
			Policies: policies{gen("allow-ns-x-pod-b-c", "x", podA(), ingress(from(
				pods(sel(map[string]string{"pod": "b"})), pods(sel(map[string]string{"pod": "c"})))))},
			Probes: same(R(true).ExpectAllIngress(xa, false).Expect(xb, xa, true).Expect(xc, xa, true)),
		},
		{
			Name: "only-y-a-by-namespace-and-pod", Upstream: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
			Policies: policies{gen("allow-ns-y-pod-a-via-namespace-pod-selector", "x", podA(), ingress(from(
				both(sel(map[string]string{nsLabel: "y"}), sel(map[string]string{"pod": "a"})))))},
			Probes: same(R(true).ExpectAllIngress(xa, false).Expect(ya, xa, true)),
		},
		{
			Name: "ports-81-from-y", Upstream: "should enforce policy based on Ports",
			Policies: policies{gen("allow-client-a-via-ns-selector", "x", podA(), ingress(inPorts(from(nss(sel(map[string]string{nsLabel: "y"}))), port(81, &tcp))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 81 && proto == tcp {
					return R(true).ExpectPeer(X, pXA, false).ExpectPeer(Y, pXA, true).ExpectPeer(Z, pXA, false)
				}
				return R(true).ExpectAllIngress(xa, false)
			}),
		},
		{
			Name: "stacked-80-and-81", Upstream: "should enforce multiple, stacked policies with overlapping podSelectors",
			Policies: policies{
				gen("allow-client-a-via-ns-selector", "x", podA(), ingress(inPorts(from(nss(sel(map[string]string{nsLabel: "y"}))), port(81, &tcp)))),
				gen("allow-client-a-via-ns-selector-80", "x", podA(), ingress(inPorts(from(nss(sel(map[string]string{nsLabel: "y"}))), port(80, &tcp)))),
			},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if proto == tcp {
					return R(true).ExpectPeer(X, pXA, false).ExpectPeer(Y, pXA, true).ExpectPeer(Z, pXA, false)
				}
				return R(true).ExpectAllIngress(xa, false)
			}),
		},
		{
			Name: "allow-all", Upstream: "should support allow-all policy",
			Policies: policies{gen("allow-all", "x", all(), ingress(networkingv1.NetworkPolicyIngressRule{}))},
			Probes:   same(R(true)),
		},
		{
			Name: "ingress-named-port-81", Upstream: "should allow ingress access on one named port",
			Policies: policies{gen("allow-all", "x", all(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, named("serve-81-tcp", nil))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 81 && proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(any, X, false)
			}),
		},
		{
			Name: "ingress-named-port-80-from-y", Upstream: "should allow ingress access from namespace on one named port",
			Policies: policies{gen("allow-client-a-via-ns-selector-80", "x", podA(), ingress(inPorts(from(nss(sel(map[string]string{nsLabel: "y"}))), named("serve-80-tcp", &tcp))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 80 && proto == tcp {
					return R(true).ExpectPeer(X, pXA, false).ExpectPeer(Z, pXA, false)
				}
				return R(true).ExpectAllIngress(xa, false)
			}),
		},
		{
			Name: "egress-named-port-80", Upstream: "should allow egress access on one named port",
			Policies: policies{gen("allow-egress", "x", all(), egress(outPorts(networkingv1.NetworkPolicyEgressRule{}, named("serve-80-tcp", nil))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 80 && proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(X, any, false)
			}),
		},
		{
			Name: "updated-policy-deny-all", Upstream: "should enforce updated policy (after the update to deny all)",
			Policies: policies{gen("allow-all-mutate-to-deny-all", "x", all(), ingress())},
			Probes:   same(R(true).ExpectPeer(any, X, false)),
		},
		{
			Name: "updated-namespace-before", Upstream: "should allow ingress access from updated namespace (before the label)",
			Policies: policies{gen("allow-client-a-via-ns-selector", "x", podA(), ingress(from(nss(sel(map[string]string{"ns2": "updated"})))))},
			Probes:   same(R(true).ExpectAllIngress(xa, false)),
		},
		{
			Name: "updated-namespace-after", Upstream: "should allow ingress access from updated namespace (after the label)",
			Policies:        policies{gen("allow-client-a-via-ns-selector", "x", podA(), ingress(from(nss(sel(map[string]string{"ns2": "updated"})))))},
			NamespaceLabels: map[string]map[string]string{"y": {"ns2": "updated"}},
			Probes:          same(R(true).ExpectAllIngress(xa, false).ExpectPeer(Y, any, true)),
		},
		{
			Name: "updated-pod-after", Upstream: "should allow ingress access from updated pod (after the label)",
			Policies:  policies{gen("allow-client-a-via-pod-selector", "x", podA(), ingress(from(pods(sel(map[string]string{"pod": "b", "pod2": "updated"})))))},
			PodLabels: map[PodString]map[string]string{xb: {"pod2": "updated"}},
			Probes:    same(R(true).ExpectAllIngress(xa, false).Expect(xb, xa, true)),
		},
		{
			Name: "deny-ingress-from-other-namespaces", Upstream: "should deny ingress from pods on other namespaces",
			Policies: policies{gen("deny-empty-policy", "x", all(), ingress(from(pods(sel(map[string]string{})))))},
			Probes:   same(R(true).ExpectPeer(Y, X, false).ExpectPeer(Z, X, false)),
		},
		{
			Name: "deny-ingress-updated-pod-after", Upstream: "should deny ingress access to updated pod (after the label)",
			Policies:  policies{gen("deny-ingress-via-label-selector", "x", match(map[string]string{"target": "isolated"}), ingress())},
			PodLabels: map[PodString]map[string]string{xa: {"target": "isolated"}},
			Probes:    same(R(true).ExpectAllIngress(xa, false)),
		},
		{
			Name: "deny-egress-x-a", Upstream: "should deny egress from pods based on PodSelector",
			Policies: policies{gen("deny-egress-pod-a", "x", podA(), egress())},
			Probes:   same(R(true).ExpectAllEgress(xa, false)),
		},
		{
			Name: "deny-egress-namespace-x", Upstream: "should deny egress from all pods in a namespace",
			Policies: policies{gen("deny-egress-ns-x", "x", all(), egress())},
			Probes:   same(R(true).ExpectPeer(X, any, false)),
		},
		{
			Name: "ingress-and-egress-together", Upstream: "should work with Ingress, Egress specified together",
			Policies: policies{gen("allow-client-a-via-pod-selector", "x", podA(),
				egress(outPorts(networkingv1.NetworkPolicyEgressRule{}, port(80, nil))),
				ingress(from(pods(sel(map[string]string{"pod": "b"})))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				r := R(true).ExpectAllIngress(xa, false)
				if !(p == 80 && proto == tcp) {
					r.ExpectAllEgress(xa, false)
				}
				return r.Expect(xb, xa, true)
			}),
		},
		{
			Name: "egress-denied-even-if-server-allows", Upstream: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
			Policies: policies{
				gen("allow-to-ns-y-pod-a", "x", podA(), egress(to(both(sel(map[string]string{nsLabel: "y"}), sel(map[string]string{"pod": "a"}))))),
				gen("allow-from-xa-on-ya-match-selector", "y", podA(), ingress(from(both(sel(map[string]string{nsLabel: "x"}), sel(map[string]string{"pod": "a"}))))),
				gen("allow-from-xa-on-yb-match-selector", "y", match(map[string]string{"pod": "b"}), ingress(from(both(sel(map[string]string{nsLabel: "x"}), sel(map[string]string{"pod": "a"}))))),
			},
			Probes: same(R(true).
				ExpectPeer(pXA, any, false).
				ExpectPeer(any, &Peer{Namespace: "y", Pod: "a"}, false).
				ExpectPeer(pXA, &Peer{Namespace: "y", Pod: "a"}, true).
				ExpectPeer(any, &Peer{Namespace: "y", Pod: "b"}, false)),
		},
		{
			Name: "egress-to-y-a", Upstream: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
			Policies: policies{gen("allow-to-ns-y-pod-a", "x", podA(), egress(to(both(sel(map[string]string{nsLabel: "y"}), sel(map[string]string{"pod": "a"})))))},
			Probes:   same(R(true).ExpectAllEgress(xa, false).Expect(xa, ya, true)),
		},
		{
			Name: "ingress-any-port-tcp-only", Upstream: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
			Policies: policies{gen("allow-ingress-by-proto", "x", podA(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, protoOnly(&tcp))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(any, pXA, false)
			}),
		},
		{
			Name: "ingress-port-80-only", Upstream: "should enforce multiple ingress policies with ingress allow-all policy taking precedence (before allow-all)",
			Policies: policies{gen("allow-ingress-port-80", "x", all(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, port(80, nil))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 80 && proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(any, X, false)
			}),
		},
		{
			Name: "ingress-allow-all-takes-precedence", Upstream: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
			Policies: policies{
				gen("allow-ingress-port-80", "x", all(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, port(80, nil)))),
				gen("allow-ingress", "x", all(), ingress(networkingv1.NetworkPolicyIngressRule{})),
			},
			Probes: same(R(true)),
		},
		{
			Name: "egress-port-80-only", Upstream: "should enforce multiple egress policies with egress allow-all policy taking precedence (before allow-all)",
			Policies: policies{gen("allow-egress-port-80", "x", all(), egress(outPorts(networkingv1.NetworkPolicyEgressRule{}, port(80, nil))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 80 && proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(X, any, false)
			}),
		},
		{
			Name: "egress-allow-all-takes-precedence", Upstream: "should enforce multiple egress policies with egress allow-all policy taking precedence",
			Policies: policies{
				gen("allow-egress-port-80", "x", all(), egress(outPorts(networkingv1.NetworkPolicyEgressRule{}, port(80, nil)))),
				gen("allow-egress", "x", all(), egress(networkingv1.NetworkPolicyEgressRule{})),
			},
			Probes: same(R(true)),
		},
		{
			Name: "egress-to-cidr", Upstream: "should allow egress access to server in CIDR block",
			Policies: policies{gen("allow-client-a-via-cidr-egress-rule", "x", podA(), egress(to(block(host(yb)))))},
			Probes:   same(R(true).ExpectAllEgress(xa, false).Expect(xa, yb, true)),
		},
		{
			Name: "egress-cidr-except", Upstream: "should enforce except clause while egress access to server in CIDR block",
			Policies: policies{gen("allow-client-a-via-cidr-egress-rule", "x", podA(), egress(to(block(large(xa), host(xb)))))},
			Probes:   same(R(true).Expect(xa, xb, false)),
		},
		{
			Name: "cidr-and-except-overlap-updated", Upstream: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (after the update)",
			Policies: policies{gen("allow-client-a-via-cidr-egress-rule", "x", podA(), egress(to(block(host(xb)))))},
			Probes:   same(R(true).ExpectAllEgress(xa, false).Expect(xa, xb, true)),
		},
		{
			Name: "cidr-and-except-two-policies",
			Policies: policies{
				gen("allow-large-except-x-b", "x", podA(), egress(to(block(large(xa), host(xb))))),
				gen("allow-x-b", "x", podA(), egress(to(block(host(xb))))),
			},
			Probes: same(R(true)),
		},
		{
			Name: "ingress-egress-independent", Upstream: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
			Policies: policies{
				gen("allow-egress-for-target", "x", podA(), egress(networkingv1.NetworkPolicyEgressRule{})),
				gen("deny-ingress-via-label-selector", "x", podA(), ingress()),
			},
			Probes: same(R(true).ExpectAllIngress(xa, false)),
		},
		{
			Name: "sctp-is-not-tcp", Upstream: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
			Policies: policies{
				gen("deny-ingress", "x", all(), ingress()),
				gen("allow-only-sctp-ingress-on-port-81", "x", podA(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, port(81, &sctp)))),
			},
			Probes: same(R(true).ExpectPeer(any, X, false)),
		},
		{
			Name: "sctp-rule-still-isolates", Upstream: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
			Policies: policies{gen("allow-only-sctp-ingress-on-port-80", "x", podA(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, port(80, &sctp))))},
			Probes:   same(R(true).ExpectAllIngress(xa, false)),
		},
		{
			Name: "udp-only-is-not-tcp", Upstream: "should not allow access by TCP when a policy specifies only UDP",
			Policies: policies{gen("allow-only-udp-ingress-on-port-81", "x", podA(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, port(81, &udp))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 81 && proto == udp {
					return R(true)
				}
				return R(true).ExpectAllIngress(xa, false)
			}),
		},
		{
			Name: "default-ns-label-matchLabels", Upstream: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
			Policies: policies{gen("allow-client-a-via-ns-selector-for-immutable-ns-label", "x", podA(), ingress(from(nss(sel(map[string]string{nsLabel: "y"})))))},
			Probes:   same(R(true).ExpectPeer(X, pXA, false).ExpectPeer(Z, pXA, false)),
		},
		{
			Name: "default-ns-label-egress-NotIn", Upstream: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
			Policies: policies{gen("allow-ns-y-match-selector-for-immutable-ns-label", "x", podA(), egress(to(nss(expr(nsLabel, metav1.LabelSelectorOpNotIn, "y")))))},
			Probes:   same(R(true).ExpectPeer(pXA, Y, false)),
		},
		// klab's own, in the same style.
		{
			Name: "ingress-port-range-81-82",
			Policies: policies{
				gen("deny-ingress", "x", all(), ingress()),
				gen("allow-81-82", "x", all(), ingress(inPorts(networkingv1.NetworkPolicyIngressRule{}, portRange(81, 82, &tcp)))),
			},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 81 && proto == tcp {
					return R(true)
				}
				return R(true).ExpectPeer(any, X, false)
			}),
		},
		{
			Name:     "egress-port-range-79-80-udp",
			Policies: policies{gen("allow-egress-79-80-udp", "x", all(), egress(outPorts(networkingv1.NetworkPolicyEgressRule{}, portRange(79, 80, &udp))))},
			Probes: per(func(p int32, proto corev1.Protocol) *Reachability {
				if p == 80 && proto == udp {
					return R(true)
				}
				return R(true).ExpectPeer(X, any, false)
			}),
		},
		{
			// Seed 001: egress-only policy that breaks lookups until DNS
			// (UDP and TCP 53) is allowed; here with egress to namespace y.
			Name: "egress-dns-and-namespace-y",
			Policies: policies{gen("egress-dns-and-y", "x", all(), egress(
				outPorts(networkingv1.NetworkPolicyEgressRule{}, port(53, &udp), port(53, &tcp)),
				to(nss(sel(map[string]string{"ns": "y"})))))},
			Probes: same(R(true).ExpectPeer(X, any, false).ExpectPeer(X, Y, true)),
		},
		{
			// Seed 001: ingress ipBlock with except; pods are matched by
			// address (klab's choice), node2's pod CIDR is the except.
			Name:     "ingress-ipblock-except-node2",
			Policies: policies{gen("allow-pod-cidr-but-node2", "x", podA(), ingress(from(block("10.244.0.0/16", "10.244.2.0/24"))))},
			Probes: same(func() *Reachability {
				r := R(true)
				for _, p := range AllPods() {
					if NodeOf(p) == "node2" {
						r.Expect(p, xa, false)
					}
				}
				return r
			}()),
		},
		{
			Name: "own-namespace-or-namespace-z",
			Policies: policies{gen("allow-x-or-z", "x", all(), ingress(from(
				pods(&metav1.LabelSelector{}), nss(expr("ns", metav1.LabelSelectorOpIn, "z")))))},
			Probes: same(R(true).ExpectPeer(Y, X, false)),
		},
		{
			Name: "namespace-exists-DoesNotExist",
			Policies: policies{gen("allow-unlabelled", "x", podA(), ingress(from(
				nss(expr("team", metav1.LabelSelectorOpDoesNotExist)), nss(expr("team", metav1.LabelSelectorOpExists)))))},
			NamespaceLabels: map[string]map[string]string{"z": {"team": "blue"}},
			Probes:          same(R(true)),
		},
		{
			Name: "policy-for-a-namespace-not-yet-created",
			Policies: policies{gen("allow-from-tomorrow", "x", podA(), ingress(from(
				nss(sel(map[string]string{nsLabel: "tomorrow"})))))},
			Probes: same(R(true).ExpectAllIngress(xa, false)),
		},
	}
	for i := range cs {
		if cs[i].Name == "" {
			panic(fmt.Sprintf("case %d has no name", i))
		}
	}
	return cs
}
