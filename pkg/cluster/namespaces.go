package cluster

// Kubernetes namespaces in the lab model.
//
// Every pod and service belongs to one Kubernetes namespace, "default"
// unless given. klab keys them as the API does ("<namespace>/<name>",
// cache.MetaNamespaceKeyFunc's form), except in default, whose objects keep
// their plain name so that labs, state files and scripts written before
// namespaces existed work unchanged. The key is what Pod.Name and
// Service.Name hold and what every per-object name derives from: the
// network namespace (klab.<lab>.<namespace>.<pod>, see netns.Name), the
// host-side veth, the IPAM owner, the servers' target. Namespaces carry
// labels, with kubernetes.io/metadata.name set as the API server sets it;
// the namespaces a fresh cluster has (default, kube-system, kube-public,
// kube-node-lease) always exist.

import (
	"fmt"
	networkingv1 "k8s.io/api/networking/v1"
	"slices"
	"sort"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
)

// DefaultNamespace is the namespace of objects named without one.
const DefaultNamespace = "default"

// MetadataNameLabel is the label the API server puts on every namespace.
const MetadataNameLabel = "kubernetes.io/metadata.name"

// builtinNamespaces exist in every lab, as in a fresh cluster.
var builtinNamespaces = []string{DefaultNamespace, "kube-node-lease", "kube-public", "kube-system"}

// Namespace is a Kubernetes namespace of the lab.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Key is the key of object name in namespace ns: "name" in default,
// "ns/name" elsewhere.
func Key(ns, name string) string {
	if ns == "" || ns == DefaultNamespace {
		return name
	}
	return ns + "/" + name
}

// SplitKey splits a key (or a "namespace/name" reference) into its
// namespace and name; a plain name is in default.
func SplitKey(key string) (ns, name string) {
	if ns, name, ok := strings.Cut(key, "/"); ok {
		return ns, name
	}
	return DefaultNamespace, key
}

// NormalizeKey turns a reference ("name", "default/name", "ns/name") into
// the key klab stores.
func NormalizeKey(ref string) string { return Key(SplitKey(ref)) }

// Namespace returns the namespace of a pod.
func (p *Pod) Namespace() string { ns, _ := SplitKey(p.Name); return ns }

// ShortName is the pod's name within its namespace.
func (p *Pod) ShortName() string { _, n := SplitKey(p.Name); return n }

// Namespace returns the namespace of a service.
func (s *Service) Namespace() string { ns, _ := SplitKey(s.Name); return ns }

// ShortName is the service's name within its namespace.
func (s *Service) ShortName() string { _, n := SplitKey(s.Name); return n }

// Namespace returns the namespace with that name (built-in ones included,
// with their labels), or nil.
func (l *Lab) Namespace(name string) *Namespace {
	for _, n := range l.Namespaces {
		if n.Name == name {
			return n
		}
	}
	if slices.Contains(builtinNamespaces, name) {
		return &Namespace{Name: name, Labels: map[string]string{MetadataNameLabel: name}}
	}
	return nil
}

// AllNamespaces lists every namespace of the lab, built-in ones first.
func (l *Lab) AllNamespaces() []*Namespace {
	var out []*Namespace
	for _, n := range builtinNamespaces {
		if l.namespace(n) == nil {
			out = append(out, l.Namespace(n))
		}
	}
	out = append(out, l.Namespaces...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (l *Lab) namespace(name string) *Namespace {
	for _, n := range l.Namespaces {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// validateKey checks an object key ("name" or "ns/name"): both parts DNS
// labels, the namespace existing.
func (l *Lab) validateKey(kind, key string) error {
	ns, name := SplitKey(key)
	if strings.Count(key, "/") > 1 {
		return fmt.Errorf("%s name %q is not valid: write NAME or NAMESPACE/NAME", kind, key)
	}
	if err := netns.ValidateObject("namespace", ns); err != nil {
		return err
	}
	if err := netns.ValidateObject(kind, name); err != nil {
		return err
	}
	if l.Namespace(ns) == nil {
		return fmt.Errorf("namespace %q does not exist in lab %s: create it first (klab namespace add %s)", ns, l.Name, ns)
	}
	return nil
}

// AddNamespace records a namespace (no kernel object: a Kubernetes
// namespace is API state; its pods get network namespaces of their own).
func (c *Cluster) AddNamespace(name string, labels map[string]string) (*Namespace, error) {
	if err := netns.ValidateObject("namespace", name); err != nil {
		return nil, err
	}
	if c.Lab.Namespace(name) != nil {
		return nil, fmt.Errorf("namespace %q already exists in lab %s", name, c.Lab.Name)
	}
	n := &Namespace{Name: name, Labels: map[string]string{}}
	for k, v := range labels {
		n.Labels[k] = v
	}
	n.Labels[MetadataNameLabel] = name
	c.Lab.Namespaces = append(c.Lab.Namespaces, n)
	if err := c.Save(); err != nil {
		c.Lab.Namespaces = c.Lab.Namespaces[:len(c.Lab.Namespaces)-1]
		return nil, err
	}
	return n, policyCheck("namespace "+name+" exists", c.syncPolicies())
}

// DelNamespace deletes a namespace with its pods and services, as the
// namespace controller does. Built-in namespaces cannot be deleted.
func (c *Cluster) DelNamespace(name string) error {
	if slices.Contains(builtinNamespaces, name) {
		return fmt.Errorf("namespace %q is built in and cannot be deleted", name)
	}
	if c.Lab.namespace(name) == nil {
		return fmt.Errorf("namespace %q does not exist in lab %s: see 'klab namespace list'", name, c.Lab.Name)
	}
	for _, s := range slices.Clone(c.Lab.Services) {
		if s.Namespace() == name {
			if err := c.DelService(s.Name); err != nil {
				return err
			}
		}
	}
	for _, p := range slices.Clone(c.Lab.Pods) {
		if p.Namespace() == name {
			if err := c.DelPod(p.Name); err != nil {
				return err
			}
		}
	}
	keep := c.Lab.Namespaces
	c.Lab.Namespaces = slices.DeleteFunc(slices.Clone(keep), func(n *Namespace) bool { return n.Name == name })
	c.Lab.Policies = slices.DeleteFunc(slices.Clone(c.Lab.Policies), func(np *networkingv1.NetworkPolicy) bool { return np.Namespace == name })
	if err := c.Save(); err != nil {
		c.Lab.Namespaces = keep
		return err
	}
	return policyCheck("namespace "+name+" is deleted", c.syncPolicies())
}
