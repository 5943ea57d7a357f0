package k8s

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Set is a validated apply: every object defaulted (namespace "default"
// where none was given, Namespace labels, Service type ClusterIP, protocol
// TCP, policyTypes, Deployment replicas), Deployments expanded into Pods and
// every Pod scheduled. Slices keep manifest order; Pods lists manifest pods
// and Deployment pods in the order their documents appeared.
type Set struct {
	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	Deployments     []*appsv1.Deployment
	Services        []*corev1.Service
	NetworkPolicies []*networkingv1.NetworkPolicy
	// Origins says where each object came from; Deployment pods carry their
	// Deployment's origin.
	Origins map[Ref]Origin
}

// Refs returns the refs of every object in the set (Deployment pods
// included), in kind order then manifest order.
func (s *Set) Refs() []Ref {
	var out []Ref
	for _, o := range s.Namespaces {
		out = append(out, Ref{"Namespace", "", o.Name})
	}
	for _, o := range s.Deployments {
		out = append(out, Ref{"Deployment", o.Namespace, o.Name})
	}
	for _, o := range s.Pods {
		out = append(out, Ref{"Pod", o.Namespace, o.Name})
	}
	for _, o := range s.Services {
		out = append(out, Ref{"Service", o.Namespace, o.Name})
	}
	for _, o := range s.NetworkPolicies {
		out = append(out, Ref{"NetworkPolicy", o.Namespace, o.Name})
	}
	return out
}

// Namespace returns the namespace called name, or nil.
func (s *Set) Namespace(name string) *corev1.Namespace {
	for _, n := range s.Namespaces {
		if n.Name == name {
			return n
		}
	}
	return nil
}
