package k8s

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// DefaultNamespace is where an object without metadata.namespace goes.
const DefaultNamespace = "default"

// NodePortRange is the API server's default --service-node-port-range.
var NodePortRange = [2]int32{30000, 32767}

// Options tell Validate what the lab already holds.
type Options struct {
	// Existing is what the lab holds before this apply. Its namespaces are
	// the ones objects may live in besides those the apply creates; its
	// pods count toward scheduling. Nil means a fresh lab holding the
	// namespaces of DefaultNamespaces.
	Existing *Set
	// Create makes an object whose kind, namespace and name already exist
	// in Existing an error (kubectl create); otherwise such an object
	// replaces the existing one (kubectl apply) and a pod keeps the node it
	// runs on.
	Create bool
	// Nodes are the lab's node names. A pod's spec.nodeName must be one of
	// them; pods without one are scheduled on them (see Schedule). Empty
	// means no node is known: spec.nodeName is not checked and pods without
	// one are an error.
	Nodes []string
}

// DefaultNamespaces returns the namespaces every cluster starts with,
// labelled as the API server labels them.
func DefaultNamespaces() []*corev1.Namespace {
	var out []*corev1.Namespace
	for _, n := range []string{"default", "kube-node-lease", "kube-public", "kube-system"} {
		ns := &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: n}}
		LabelNamespace(ns)
		out = append(out, ns)
	}
	return out
}

// LabelNamespace sets the kubernetes.io/metadata.name label to the
// namespace's name, as the API server does on every create and update
// (the NamespaceDefaultLabelName feature, GA in 1.22), overriding any value
// the manifest gave.
func LabelNamespace(ns *corev1.Namespace) {
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[corev1.LabelMetadataName] = ns.Name
}

// Parse is Read followed by Validate.
func Parse(path string, opts Options) (*Set, error) {
	objs, err := Read(path, nil)
	if err != nil {
		return nil, err
	}
	return Validate(objs, opts)
}

// problems collects field problems for one object.
type problems []*FieldError

func (p *problems) add(path *field.Path, format string, args ...any) {
	f := ""
	if path != nil {
		f = path.String()
	}
	*p = append(*p, &FieldError{Field: f, Detail: fmt.Sprintf(format, args...)})
}

func (p *problems) addList(el field.ErrorList) {
	for _, e := range el {
		*p = append(*p, &FieldError{Field: e.Field, Detail: e.ErrorBody()})
	}
}

func (p *problems) msgs(path *field.Path, value string, msgs []string) {
	for _, m := range msgs {
		p.add(path, "%q: %s", value, m)
	}
}

// Validate checks every object of one apply and returns the defaulted,
// expanded, scheduled Set, or Errors listing every problem (and then
// nothing of the apply is to be changed). Checked: names (RFC 1123 / 1035
// as the API requires per kind), labels, selectors (operators and values),
// ports and port names, the Service and NetworkPolicy rules of the API,
// namespaces (an object's namespace must exist or be created by the same
// apply), duplicates within the apply and, with Options.Create, against
// Existing. Not errors, as in Kubernetes: a Service targetPort naming a port
// no pod declares, a NetworkPolicy selecting namespaces or pods that do not
// exist (yet).
func Validate(objs []Object, opts Options) (*Set, error) {
	existing := opts.Existing
	if existing == nil {
		existing = &Set{Namespaces: DefaultNamespaces()}
	}
	var errs Errors
	seen := map[Ref]Origin{}
	created := map[string]bool{}
	for _, o := range objs {
		if ns, ok := o.Obj.(*corev1.Namespace); ok {
			created[ns.Name] = true
		}
	}
	nodes := map[string]bool{}
	for _, n := range opts.Nodes {
		nodes[n] = true
	}
	var work []Object
	for _, o := range objs {
		obj := deepCopy(o.Obj)
		kind := kindOf(obj)
		if kind != "Namespace" && obj.GetNamespace() == "" {
			obj.SetNamespace(DefaultNamespace)
		}
		if kind == "Namespace" {
			obj.SetNamespace("")
		}
		ref := Ref{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
		var ps problems
		validateMeta(&ps, obj, kind)
		switch t := obj.(type) {
		case *corev1.Pod:
			validatePodSpec(&ps, &t.Spec, field.NewPath("spec"), nodes, len(opts.Nodes) > 0)
		case *appsv1.Deployment:
			validateDeployment(&ps, t, nodes, len(opts.Nodes) > 0)
		case *corev1.Service:
			validateService(&ps, t)
		case *networkingv1.NetworkPolicy:
			validateNetworkPolicy(&ps, t)
		}
		if ns := ref.Namespace; ns != "" && !created[ns] && existing.Namespace(ns) == nil {
			ps.add(field.NewPath("metadata", "namespace"), "namespace %q does not exist and this apply does not create it", ns)
		}
		if first, dup := seen[ref]; dup && ref.Name != "" {
			ps.add(field.NewPath("metadata", "name"), "%s is already defined by %s", ref, first)
		} else {
			seen[ref] = o.Origin
		}
		if opts.Create && existsIn(existing, ref) {
			ps.add(field.NewPath("metadata", "name"), "%s already exists", ref)
		}
		for _, p := range ps {
			p.Origin, p.Ref = o.Origin, ref
		}
		errs = append(errs, ps...)
		work = append(work, Object{Origin: o.Origin, Obj: obj})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	set := &Set{Origins: map[Ref]Origin{}}
	for _, o := range work {
		ref := Object{Obj: o.Obj}.Ref()
		set.Origins[ref] = o.Origin
		switch t := o.Obj.(type) {
		case *corev1.Namespace:
			LabelNamespace(t)
			set.Namespaces = append(set.Namespaces, t)
		case *corev1.Pod:
			defaultPodSpec(&t.Spec)
			set.Pods = append(set.Pods, t)
		case *appsv1.Deployment:
			if t.Spec.Replicas == nil {
				one := int32(1)
				t.Spec.Replicas = &one
			}
			defaultPodSpec(&t.Spec.Template.Spec)
			set.Deployments = append(set.Deployments, t)
		case *corev1.Service:
			defaultService(t)
			set.Services = append(set.Services, t)
		case *networkingv1.NetworkPolicy:
			defaultNetworkPolicy(t)
			set.NetworkPolicies = append(set.NetworkPolicies, t)
		}
	}
	// Deployment pods, after manifest pods so a clash is reported against
	// the Deployment.
	taken := map[string]bool{}
	for _, p := range set.Pods {
		taken[p.Namespace+"/"+p.Name] = true
	}
	for _, d := range set.Deployments {
		pods := ExpandDeployment(d, taken)
		for _, p := range pods {
			set.Origins[Ref{"Pod", p.Namespace, p.Name}] = set.Origins[Ref{"Deployment", d.Namespace, d.Name}]
		}
		set.Pods = append(set.Pods, pods...)
	}
	// A re-applied pod keeps its node.
	if !opts.Create {
		for _, p := range set.Pods {
			if p.Spec.NodeName != "" {
				continue
			}
			for _, e := range existing.Pods {
				if e.Namespace == p.Namespace && e.Name == p.Name {
					p.Spec.NodeName = e.Spec.NodeName
				}
			}
		}
	}
	if err := Schedule(set.Pods, opts.Nodes, podsPerNode(existing, set)); err != nil {
		return nil, err
	}
	return set, nil
}

func existsIn(s *Set, r Ref) bool {
	for _, x := range s.Refs() {
		if x == r {
			return true
		}
	}
	return false
}

// podsPerNode counts existing pods that this apply does not replace.
func podsPerNode(existing, set *Set) map[string]int {
	replaced := map[string]bool{}
	for _, p := range set.Pods {
		replaced[p.Namespace+"/"+p.Name] = true
	}
	n := map[string]int{}
	for _, p := range existing.Pods {
		if !replaced[p.Namespace+"/"+p.Name] && p.Spec.NodeName != "" {
			n[p.Spec.NodeName]++
		}
	}
	return n
}

func deepCopy(o metav1.Object) metav1.Object {
	switch t := o.(type) {
	case *corev1.Namespace:
		return t.DeepCopy()
	case *corev1.Pod:
		return t.DeepCopy()
	case *appsv1.Deployment:
		return t.DeepCopy()
	case *corev1.Service:
		return t.DeepCopy()
	case *networkingv1.NetworkPolicy:
		return t.DeepCopy()
	}
	panic(fmt.Sprintf("k8s: unsupported object %T", o))
}

func validateMeta(ps *problems, o metav1.Object, kind string) {
	name := field.NewPath("metadata", "name")
	switch {
	case o.GetName() == "":
		ps.add(name, "required")
	case kind == "Namespace":
		ps.msgs(name, o.GetName(), validation.IsDNS1123Label(o.GetName()))
	case kind == "Service":
		ps.msgs(name, o.GetName(), validation.IsDNS1035Label(o.GetName()))
	default:
		ps.msgs(name, o.GetName(), validation.IsDNS1123Subdomain(o.GetName()))
	}
	if ns := o.GetNamespace(); ns != "" {
		ps.msgs(field.NewPath("metadata", "namespace"), ns, validation.IsDNS1123Label(ns))
	}
	ps.addList(metav1validation.ValidateLabels(o.GetLabels(), field.NewPath("metadata", "labels")))
}

func validateSelector(ps *problems, sel *metav1.LabelSelector, path *field.Path) {
	if sel == nil {
		return
	}
	ps.addList(metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, path))
}

var protocols = map[corev1.Protocol]bool{corev1.ProtocolTCP: true, corev1.ProtocolUDP: true, corev1.ProtocolSCTP: true}

func validateProtocol(ps *problems, p corev1.Protocol, path *field.Path) {
	if p != "" && !protocols[p] {
		ps.add(path, "%q is not a protocol (TCP, UDP or SCTP)", p)
	}
}

func validatePort(ps *problems, port int32, path *field.Path) {
	if port < 1 || port > 65535 {
		ps.add(path, "%d is out of range 1-65535", port)
	}
}

// validateIntOrName checks a port given as a number (1-65535) or an
// IANA_SVC_NAME (a container port name).
func validateIntOrName(ps *problems, v intstr.IntOrString, path *field.Path) {
	if v.Type == intstr.String {
		ps.msgs(path, v.StrVal, validation.IsValidPortName(v.StrVal))
		return
	}
	validatePort(ps, v.IntVal, path)
}

func validatePodSpec(ps *problems, spec *corev1.PodSpec, path *field.Path, nodes map[string]bool, checkNode bool) {
	if spec.NodeName != "" && checkNode && !nodes[spec.NodeName] {
		known := make([]string, 0, len(nodes))
		for n := range nodes {
			known = append(known, n)
		}
		sort.Strings(known)
		ps.add(path.Child("nodeName"), "no node %q in this lab (nodes: %s)", spec.NodeName, strings.Join(known, ", "))
	}
	if spec.Hostname != "" {
		ps.msgs(path.Child("hostname"), spec.Hostname, validation.IsDNS1123Label(spec.Hostname))
	}
	if spec.Subdomain != "" {
		ps.msgs(path.Child("subdomain"), spec.Subdomain, validation.IsDNS1123Label(spec.Subdomain))
	}
	if len(spec.Containers) == 0 {
		ps.add(path.Child("containers"), "at least one container is required")
	}
	names := map[string]bool{}
	portNames := map[string]string{}
	portNums := map[string]string{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		cp := path.Child("containers").Index(i)
		if c.Name == "" {
			ps.add(cp.Child("name"), "required")
		} else {
			ps.msgs(cp.Child("name"), c.Name, validation.IsDNS1123Label(c.Name))
			if names[c.Name] {
				ps.add(cp.Child("name"), "duplicate container name %q", c.Name)
			}
			names[c.Name] = true
		}
		for j, p := range c.Ports {
			pp := cp.Child("ports").Index(j)
			validatePort(ps, p.ContainerPort, pp.Child("containerPort"))
			validateProtocol(ps, p.Protocol, pp.Child("protocol"))
			if p.Name != "" {
				ps.msgs(pp.Child("name"), p.Name, validation.IsValidPortName(p.Name))
				if prev, dup := portNames[p.Name]; dup {
					ps.add(pp.Child("name"), "duplicate port name %q (also %s)", p.Name, prev)
				}
				portNames[p.Name] = pp.String()
			}
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			k := fmt.Sprintf("%d/%s", p.ContainerPort, proto)
			if prev, dup := portNums[k]; dup {
				ps.add(pp, "port %s is declared twice (also %s)", k, prev)
			}
			portNums[k] = pp.String()
		}
		validateProbe(ps, c.ReadinessProbe, cp.Child("readinessProbe"))
	}
}

func validateProbe(ps *problems, p *corev1.Probe, path *field.Path) {
	if p == nil {
		return
	}
	n := 0
	if p.HTTPGet != nil {
		n++
		validateIntOrName(ps, p.HTTPGet.Port, path.Child("httpGet", "port"))
		if p.HTTPGet.Path != "" && !strings.HasPrefix(p.HTTPGet.Path, "/") {
			ps.add(path.Child("httpGet", "path"), "%q must start with /", p.HTTPGet.Path)
		}
	}
	if p.TCPSocket != nil {
		n++
		validateIntOrName(ps, p.TCPSocket.Port, path.Child("tcpSocket", "port"))
	}
	if p.Exec != nil {
		n++
		ps.add(path.Child("exec"), "exec probes are not supported by klab (its pods run only the echo server); use httpGet or tcpSocket")
	}
	if p.GRPC != nil {
		n++
		ps.add(path.Child("grpc"), "grpc probes are not supported by klab; use httpGet or tcpSocket")
	}
	switch {
	case n == 0:
		ps.add(path, "must specify a handler (httpGet or tcpSocket)")
	case n > 1:
		ps.add(path, "may not specify more than 1 handler type")
	}
	for _, f := range []struct {
		name string
		v    int32
		min  int32
	}{{"periodSeconds", p.PeriodSeconds, 0}, {"timeoutSeconds", p.TimeoutSeconds, 0}, {"successThreshold", p.SuccessThreshold, 0}, {"failureThreshold", p.FailureThreshold, 0}, {"initialDelaySeconds", p.InitialDelaySeconds, 0}} {
		if f.v < f.min {
			ps.add(path.Child(f.name), "%d must be greater than or equal to 0", f.v)
		}
	}
}

func validateDeployment(ps *problems, d *appsv1.Deployment, nodes map[string]bool, checkNode bool) {
	spec := field.NewPath("spec")
	if d.Spec.Replicas != nil && *d.Spec.Replicas < 0 {
		ps.add(spec.Child("replicas"), "%d must be greater than or equal to 0", *d.Spec.Replicas)
	}
	if d.Spec.Selector == nil {
		ps.add(spec.Child("selector"), "required")
	} else {
		validateSelector(ps, d.Spec.Selector, spec.Child("selector"))
		if len(d.Spec.Selector.MatchLabels)+len(d.Spec.Selector.MatchExpressions) == 0 {
			ps.add(spec.Child("selector"), "empty selector is invalid for deployment")
		} else if sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err == nil {
			if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				ps.add(spec.Child("template", "metadata", "labels"), "%v: `selector` does not match template `labels`", labels.Set(d.Spec.Template.Labels))
			}
		}
	}
	ps.addList(metav1validation.ValidateLabels(d.Spec.Template.Labels, spec.Child("template", "metadata", "labels")))
	validatePodSpec(ps, &d.Spec.Template.Spec, spec.Child("template", "spec"), nodes, checkNode)
}

func validateService(ps *problems, s *corev1.Service) {
	spec := field.NewPath("spec")
	typ := s.Spec.Type
	if typ == "" {
		typ = corev1.ServiceTypeClusterIP
	}
	switch typ {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeExternalName:
	case corev1.ServiceTypeLoadBalancer:
		ps.add(spec.Child("type"), "LoadBalancer is not supported by klab (there is no cloud load balancer); use NodePort")
	default:
		ps.add(spec.Child("type"), "%q is not a service type (ClusterIP, NodePort, ExternalName)", s.Spec.Type)
	}
	headless := s.Spec.ClusterIP == corev1.ClusterIPNone
	if s.Spec.ClusterIP != "" && !headless {
		if _, err := netip.ParseAddr(s.Spec.ClusterIP); err != nil {
			ps.add(spec.Child("clusterIP"), "%q must be a valid IP address or None", s.Spec.ClusterIP)
		}
	}
	if headless && typ != corev1.ServiceTypeClusterIP {
		ps.add(spec.Child("clusterIP"), "None (headless) requires type ClusterIP")
	}
	for i, ip := range s.Spec.ClusterIPs {
		if ip != corev1.ClusterIPNone {
			if _, err := netip.ParseAddr(ip); err != nil {
				ps.add(spec.Child("clusterIPs").Index(i), "%q must be a valid IP address or None", ip)
			}
		}
	}
	if typ == corev1.ServiceTypeExternalName {
		if s.Spec.ExternalName == "" {
			ps.add(spec.Child("externalName"), "required for type ExternalName")
		} else {
			ps.msgs(spec.Child("externalName"), s.Spec.ExternalName, validation.IsDNS1123Subdomain(strings.TrimSuffix(s.Spec.ExternalName, ".")))
		}
		if s.Spec.ClusterIP != "" && !headless {
			ps.add(spec.Child("clusterIP"), "must be empty for type ExternalName")
		}
	}
	if len(s.Spec.Ports) == 0 && !headless && typ != corev1.ServiceTypeExternalName {
		ps.add(spec.Child("ports"), "required")
	}
	names := map[string]bool{}
	pairs := map[string]bool{}
	for i, p := range s.Spec.Ports {
		pp := spec.Child("ports").Index(i)
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			ps.add(pp.Child("name"), "required when a service has more than one port")
		}
		if p.Name != "" {
			ps.msgs(pp.Child("name"), p.Name, validation.IsDNS1123Label(p.Name))
			if names[p.Name] {
				ps.add(pp.Child("name"), "duplicate port name %q", p.Name)
			}
			names[p.Name] = true
		}
		validatePort(ps, p.Port, pp.Child("port"))
		validateProtocol(ps, p.Protocol, pp.Child("protocol"))
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		k := fmt.Sprintf("%d/%s", p.Port, proto)
		if pairs[k] {
			ps.add(pp, "duplicate port %s", k)
		}
		pairs[k] = true
		// targetPort: a number or a container port name. A name no pod
		// declares is fine, as in Kubernetes: those pods are simply not
		// endpoints for this port.
		if p.TargetPort.Type == intstr.String || p.TargetPort.IntVal != 0 {
			validateIntOrName(ps, p.TargetPort, pp.Child("targetPort"))
		}
		if p.NodePort != 0 {
			if typ != corev1.ServiceTypeNodePort {
				ps.add(pp.Child("nodePort"), "may not be used when `type` is '%s'", typ)
			} else if p.NodePort < NodePortRange[0] || p.NodePort > NodePortRange[1] {
				ps.add(pp.Child("nodePort"), "%d is out of the node port range %d-%d", p.NodePort, NodePortRange[0], NodePortRange[1])
			}
		}
	}
	if typ != corev1.ServiceTypeExternalName {
		validateSelectorMap(ps, s.Spec.Selector, spec.Child("selector"))
	}
	switch s.Spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP:
	default:
		ps.add(spec.Child("sessionAffinity"), "%q is not supported (None, ClientIP)", s.Spec.SessionAffinity)
	}
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		if t := *c.ClientIP.TimeoutSeconds; t <= 0 || t > 86400 {
			ps.add(spec.Child("sessionAffinityConfig", "clientIP", "timeoutSeconds"), "%d is out of range 1-86400", t)
		}
	}
	switch s.Spec.ExternalTrafficPolicy {
	case "":
	case corev1.ServiceExternalTrafficPolicyCluster, corev1.ServiceExternalTrafficPolicyLocal:
		if typ != corev1.ServiceTypeNodePort {
			ps.add(spec.Child("externalTrafficPolicy"), "may only be set when `type` is 'NodePort' or 'LoadBalancer'")
		}
	default:
		ps.add(spec.Child("externalTrafficPolicy"), "%q is not supported (Cluster, Local)", s.Spec.ExternalTrafficPolicy)
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil && *p != corev1.ServiceInternalTrafficPolicyCluster && *p != corev1.ServiceInternalTrafficPolicyLocal {
		ps.add(spec.Child("internalTrafficPolicy"), "%q is not supported (Cluster, Local)", *p)
	}
}

func validateSelectorMap(ps *problems, sel map[string]string, path *field.Path) {
	ps.addList(metav1validation.ValidateLabels(sel, path))
}

// validateNetworkPolicy mirrors ValidateNetworkPolicySpec of
// kubernetes/kubernetes pkg/apis/networking/validation/validation.go.
func validateNetworkPolicy(ps *problems, np *networkingv1.NetworkPolicy) {
	spec := field.NewPath("spec")
	validateSelector(ps, &np.Spec.PodSelector, spec.Child("podSelector"))
	for i, r := range np.Spec.Ingress {
		rp := spec.Child("ingress").Index(i)
		validatePolicyPorts(ps, r.Ports, rp.Child("ports"))
		validatePeers(ps, r.From, rp.Child("from"))
	}
	for i, r := range np.Spec.Egress {
		rp := spec.Child("egress").Index(i)
		validatePolicyPorts(ps, r.Ports, rp.Child("ports"))
		validatePeers(ps, r.To, rp.Child("to"))
	}
	if len(np.Spec.PolicyTypes) > 2 {
		ps.add(spec.Child("policyTypes"), "may not specify more than two policyTypes")
	}
	seen := map[networkingv1.PolicyType]bool{}
	for i, t := range np.Spec.PolicyTypes {
		p := spec.Child("policyTypes").Index(i)
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			ps.add(p, "%q is not a policy type (Ingress, Egress)", t)
		}
		if seen[t] {
			ps.add(p, "duplicate policy type %q", t)
		}
		seen[t] = true
	}
}

func validatePolicyPorts(ps *problems, ports []networkingv1.NetworkPolicyPort, path *field.Path) {
	for i, p := range ports {
		pp := path.Index(i)
		if p.Protocol != nil {
			validateProtocol(ps, *p.Protocol, pp.Child("protocol"))
		}
		if p.Port != nil {
			validateIntOrName(ps, *p.Port, pp.Child("port"))
		}
		if p.EndPort != nil {
			switch {
			case p.Port == nil:
				ps.add(pp.Child("endPort"), "may not be specified when `port` is not specified")
			case p.Port.Type == intstr.String:
				ps.add(pp.Child("endPort"), "may not be specified when `port` is non-numeric")
			case *p.EndPort < p.Port.IntVal:
				ps.add(pp.Child("endPort"), "%d must be greater than or equal to `port` (%d)", *p.EndPort, p.Port.IntVal)
			case *p.EndPort > 65535:
				ps.add(pp.Child("endPort"), "%d is out of range 1-65535", *p.EndPort)
			}
		}
	}
}

func validatePeers(ps *problems, peers []networkingv1.NetworkPolicyPeer, path *field.Path) {
	for i, peer := range peers {
		pp := path.Index(i)
		n := 0
		if peer.PodSelector != nil {
			n++
			validateSelector(ps, peer.PodSelector, pp.Child("podSelector"))
		}
		if peer.NamespaceSelector != nil {
			n++
			validateSelector(ps, peer.NamespaceSelector, pp.Child("namespaceSelector"))
		}
		if peer.IPBlock != nil {
			n++
			validateIPBlock(ps, peer.IPBlock, pp.Child("ipBlock"))
		}
		switch {
		case n == 0:
			ps.add(pp, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
		case peer.IPBlock != nil && n > 1:
			ps.add(pp, "may not specify both ipBlock and another peer")
		}
	}
}

func validateIPBlock(ps *problems, b *networkingv1.IPBlock, path *field.Path) {
	if b.CIDR == "" {
		ps.add(path.Child("cidr"), "required")
		return
	}
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		ps.add(path.Child("cidr"), "%q is not a valid CIDR", b.CIDR)
		return
	}
	for i, e := range b.Except {
		ep := path.Child("except").Index(i)
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			ps.add(ep, "%q is not a valid CIDR", e)
			continue
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			ps.add(ep, "%q must be a strict subset of `cidr` %s", e, b.CIDR)
		}
	}
}

func defaultPodSpec(spec *corev1.PodSpec) {
	for i := range spec.Containers {
		for j := range spec.Containers[i].Ports {
			if spec.Containers[i].Ports[j].Protocol == "" {
				spec.Containers[i].Ports[j].Protocol = corev1.ProtocolTCP
			}
		}
	}
}

func defaultService(s *corev1.Service) {
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	if s.Spec.SessionAffinity == "" {
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		if s.Spec.SessionAffinityConfig == nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{}
		}
		if s.Spec.SessionAffinityConfig.ClientIP == nil {
			s.Spec.SessionAffinityConfig.ClientIP = &corev1.ClientIPConfig{}
		}
		if s.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil {
			t := corev1.DefaultClientIPServiceAffinitySeconds
			s.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds = &t
		}
	}
	if s.Spec.Type == corev1.ServiceTypeNodePort && s.Spec.ExternalTrafficPolicy == "" {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		// As the API server: an unset targetPort is the port itself.
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
}

// defaultNetworkPolicy applies the API server's defaults: protocol TCP on
// every port and policyTypes [Ingress] plus Egress when spec.egress is
// given (networking/v1 types.go, NetworkPolicySpec.PolicyTypes).
func defaultNetworkPolicy(np *networkingv1.NetworkPolicy) {
	tcp := corev1.ProtocolTCP
	for i := range np.Spec.Ingress {
		for j := range np.Spec.Ingress[i].Ports {
			if np.Spec.Ingress[i].Ports[j].Protocol == nil {
				np.Spec.Ingress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Egress {
		for j := range np.Spec.Egress[i].Ports {
			if np.Spec.Egress[i].Ports[j].Protocol == nil {
				np.Spec.Egress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
}
