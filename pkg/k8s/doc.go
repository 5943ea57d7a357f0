// Package k8s holds the Kubernetes objects of a lab: namespaces, pods,
// deployments, services and network policies, read from real manifests
// (multi-document YAML or JSON: a file, a directory or standard input) into
// the official API types of k8s.io/api and k8s.io/apimachinery. Read turns
// bytes into Objects, each remembering the file and document it came from;
// Validate checks a whole apply at once and returns either the complete,
// defaulted Set (Deployments expanded into pods named the way the
// ReplicaSet controller names them, pods without spec.nodeName scheduled on
// the lab's nodes, namespaces labelled kubernetes.io/metadata.name as the
// API server labels them) or every problem found, each naming the file, the
// document number, the object and the field path, so that an apply is
// all-or-nothing.
//
// The package is pure logic: it never touches the kernel and knows nothing
// of netns, veths or rules. What it mirrors from upstream is cited where it
// is done: name and selector checks come from
// k8s.io/apimachinery/pkg/util/validation and
// k8s.io/apimachinery/pkg/apis/meta/v1/validation; the NetworkPolicy and
// Service checks follow kubernetes/kubernetes
// pkg/apis/networking/validation/validation.go and
// pkg/apis/core/validation/validation.go (the subset a lab needs); the
// pod-template hash is ComputeHash of
// kubernetes/kubernetes pkg/controller/controller_utils.go. Where klab
// cannot do what a cluster does (LoadBalancer services, exec or gRPC
// probes) it says so as a validation error rather than silently ignoring
// the field.
package k8s
