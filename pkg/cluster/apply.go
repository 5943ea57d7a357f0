package cluster

// Kubernetes manifests applied to a lab (klab apply -f / delete -f): the
// objects pkg/k8s read and validated, as the lab's namespaces, pods and
// services.

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/k8s"
	"github.com/klab-dev/klab/pkg/nat"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ContainerPort is a port a pod's containers declare; klab's echo server
// answers on each (TCP: HTTP whose first body line is the pod's name;
// UDP: a datagram echo answering with the pod's name).
type ContainerPort struct {
	Name     string       `json:"name,omitempty"`
	Port     int          `json:"port"`
	Protocol nat.Protocol `json:"protocol"`
}

// Existing returns the lab's objects as pkg/k8s sees them, for validating
// an apply against them.
func (l *Lab) Existing() *k8s.Set {
	s := &k8s.Set{}
	for _, n := range l.AllNamespaces() {
		s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: maps.Clone(n.Labels)}})
	}
	for _, p := range l.Pods {
		s.Pods = append(s.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.ShortName(), Namespace: p.Namespace(), Labels: maps.Clone(p.Labels)}, Spec: corev1.PodSpec{NodeName: p.Node}})
	}
	for _, sv := range l.Services {
		s.Services = append(s.Services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: sv.ShortName(), Namespace: sv.Namespace()}})
	}
	return s
}

// NodeNames lists the lab's nodes.
func (l *Lab) NodeNames() []string {
	var out []string
	for _, n := range l.Nodes {
		out = append(out, n.Name)
	}
	return out
}

// ApplyResult says what an apply did, object by object, as kubectl does
// ("pod/web-1 created", "namespace/x unchanged").
type ApplyResult struct {
	Lines []string
}

func (r *ApplyResult) add(kind, ns, name, what string) {
	ref := strings.ToLower(kind) + "/" + name
	if ns != "" && ns != DefaultNamespace {
		ref = strings.ToLower(kind) + "/" + ns + "/" + name
	}
	r.Lines = append(r.Lines, ref+" "+what)
}

// ServerArgv returns the command line of klab's echo server for a pod's
// port (the CLI passes its own binary).
type ServerArgv func(target, proto string, port int) []string

// Apply makes the lab hold a validated set of objects: namespaces first,
// then every new pod in one build (as Build: one plan per node, applied on
// workers), its echo servers on each declared containerPort, then the
// services. An object that exists already is kept when it is the same and
// replaced when it changed (a pod whose node changed is rebuilt). If the
// kernel fails half-way, what this apply created is removed again.
func (c *Cluster) Apply(set *k8s.Set, serve ServerArgv) (*ApplyResult, error) {
	res := &ApplyResult{}
	var undo []func()
	fail := func(err error) (*ApplyResult, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	for _, n := range set.Namespaces {
		if old := c.Lab.namespace(n.Name); old != nil {
			if maps.Equal(old.Labels, n.Labels) {
				res.add("Namespace", "", n.Name, "unchanged")
				continue
			}
			prev := old.Labels
			old.Labels = maps.Clone(n.Labels)
			undo = append(undo, func() { old.Labels = prev })
			res.add("Namespace", "", n.Name, "configured")
			continue
		}
		if c.Lab.Namespace(n.Name) != nil { // built in
			res.add("Namespace", "", n.Name, "unchanged")
			continue
		}
		ns := &Namespace{Name: n.Name, Labels: maps.Clone(n.Labels)}
		c.Lab.Namespaces = append(c.Lab.Namespaces, ns)
		undo = append(undo, func() {
			c.Lab.Namespaces = slices.DeleteFunc(c.Lab.Namespaces, func(o *Namespace) bool { return o == ns })
		})
		res.add("Namespace", "", n.Name, "created")
	}
	var specs []PodSpec
	ports := map[string][]ContainerPort{}
	probes := map[string]*ReadinessProbe{}
	hosts := map[string][2]string{}
	for _, p := range set.Pods {
		key := Key(p.Namespace, p.Name)
		cps := containerPorts(p)
		rp, err := readinessOf(p, cps)
		if err != nil {
			return fail(fmt.Errorf("%s: pod %s/%s: %w", set.Origins[k8s.Ref{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}], p.Namespace, p.Name, err))
		}
		if old := c.Lab.Pod(key); old != nil {
			if old.Node != p.Spec.NodeName {
				return fail(fmt.Errorf("%s: pod %s/%s runs on node %s, and moving a pod is not an update: delete it first (klab delete -f, or klab pod del %s)", set.Origins[k8s.Ref{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}], p.Namespace, p.Name, old.Node, key))
			}
			if maps.Equal(old.Labels, p.Labels) && slices.Equal(old.Ports, cps) {
				res.add("Pod", p.Namespace, p.Name, "unchanged")
				continue
			}
			prevL, prevP := old.Labels, old.Ports
			old.Labels, old.Ports = maps.Clone(p.Labels), cps
			undo = append(undo, func() { old.Labels, old.Ports = prevL, prevP })
			res.add("Pod", p.Namespace, p.Name, "configured")
			continue
		}
		specs = append(specs, PodSpec{Name: key, Node: p.Spec.NodeName, Labels: maps.Clone(p.Labels)})
		ports[key], probes[key] = cps, rp
		hosts[key] = [2]string{p.Spec.Hostname, p.Spec.Subdomain}
		res.add("Pod", p.Namespace, p.Name, "created")
	}
	if len(specs) > 0 {
		_, pods, err := c.Build(Spec{Pods: specs})
		if err != nil {
			return fail(err)
		}
		undo = append(undo, func() {
			for _, p := range pods {
				c.DelPod(p.Name)
			}
		})
		for _, p := range pods {
			// A pod with a readiness probe starts unready, as in a
			// cluster; the prober makes it ready.
			p.Ports, p.Readiness, p.Unready = ports[p.Name], probes[p.Name], probes[p.Name] != nil
			p.Hostname, p.Subdomain = hosts[p.Name][0], hosts[p.Name][1]
		}
		if serve != nil {
			for _, p := range pods {
				for _, cp := range p.Ports {
					if _, err := c.StartServer(p.Name, string(cp.Protocol), cp.Port, serve(p.Name, string(cp.Protocol), cp.Port)); err != nil {
						return fail(fmt.Errorf("pod %s: echo server on %s/%d: %w", p.Name, cp.Protocol, cp.Port, err))
					}
				}
			}
		}
	}
	if serve != nil && c.needsProber() {
		if _, err := c.StartServer(UnderlayName, "readiness", 0, serve(UnderlayName, "readiness", 0)); err != nil {
			return fail(fmt.Errorf("readiness prober: %w", err))
		}
		undo = append(undo, func() { c.StopServer(UnderlayName, "readiness", 0) })
	}
	for _, s := range set.Services {
		spec, err := c.serviceSpec(s)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", set.Origins[k8s.Ref{Kind: "Service", Namespace: s.Namespace, Name: s.Name}], err))
		}
		if old := c.Lab.Service(spec.Name); old != nil {
			if serviceSame(old, spec) {
				res.add("Service", s.Namespace, s.Name, "unchanged")
				continue
			}
			if !spec.ClusterIP.IsValid() && spec.Type != ServiceHeadless && spec.Type != ServiceExternalName {
				spec.ClusterIP = old.ClusterIP // an update keeps the address
			}
			keep := *old
			if err := c.DelService(old.Name); err != nil {
				return fail(err)
			}
			undo = append(undo, func() { c.restoreService(&keep) })
			if _, err := c.AddService(spec); err != nil {
				return fail(err)
			}
			res.add("Service", s.Namespace, s.Name, "configured")
			continue
		}
		svc, err := c.AddService(spec)
		if err != nil {
			return fail(err)
		}
		undo = append(undo, func() { c.DelService(svc.Name) })
		res.add("Service", s.Namespace, s.Name, "created")
	}
	// NetworkPolicies last, once every pod they select exists; the nodes'
	// chains and sets follow the pods' and namespaces' changes too.
	for _, np := range set.NetworkPolicies {
		switch old := c.Lab.Policy(np.Namespace, np.Name); {
		case old == nil:
			res.add("NetworkPolicy", np.Namespace, np.Name, "created")
		case equality.Semantic.DeepEqual(old.Spec, np.Spec) && maps.Equal(old.Labels, np.Labels):
			res.add("NetworkPolicy", np.Namespace, np.Name, "unchanged")
		default:
			res.add("NetworkPolicy", np.Namespace, np.Name, "configured")
		}
	}
	if err := c.setPolicyObjects(set.NetworkPolicies, nil); err != nil {
		return fail(err)
	}
	if err := c.Save(); err != nil {
		return fail(err)
	}
	return res, c.takePolicyLag()
}

// needsProber reports whether a pod has a readiness probe and the lab's
// prober does not run yet.
func (c *Cluster) needsProber() bool {
	for _, s := range c.Lab.Servers {
		if s.Proto == "readiness" && alive(s.PID) {
			return false
		}
	}
	for _, p := range c.Lab.Pods {
		if p.Readiness != nil {
			return true
		}
	}
	return false
}

// restoreService puts back a service an apply replaced, when the apply
// fails later.
func (c *Cluster) restoreService(s *Service) {
	if c.Lab.Service(s.Name) != nil {
		c.DelService(s.Name)
	}
	c.AddService(ServiceSpec{Name: s.Name, Type: s.Type, ClusterIP: s.ClusterIP, ExternalName: s.ExternalName, Ports: s.Ports, Affinity: s.Affinity, Endpoints: s.Endpoints, Selector: s.Selector, ExternalTrafficPolicy: s.ExternalTrafficPolicy})
}

func containerPorts(p *corev1.Pod) []ContainerPort {
	var out []ContainerPort
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			proto := nat.TCP
			if cp.Protocol == corev1.ProtocolUDP {
				proto = nat.UDP
			}
			out = append(out, ContainerPort{Name: cp.Name, Port: int(cp.ContainerPort), Protocol: proto})
		}
	}
	return out
}

// serviceSpec converts a Service manifest. A named targetPort is resolved
// against the containerPorts of the pods the service selects; kube-proxy
// resolves it per endpoint, so klab needs every selected pod to agree.
func (c *Cluster) serviceSpec(s *corev1.Service) (ServiceSpec, error) {
	spec := ServiceSpec{Name: Key(s.Namespace, s.Name), Selector: maps.Clone(s.Spec.Selector)}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		spec.Affinity = nat.AffinityClientIP
	}
	switch {
	case s.Spec.Type == corev1.ServiceTypeExternalName:
		spec.Type, spec.ExternalName = ServiceExternalName, s.Spec.ExternalName
	case s.Spec.ClusterIP == corev1.ClusterIPNone:
		spec.Type = ServiceHeadless
	case s.Spec.ClusterIP != "":
		ip, err := netip.ParseAddr(s.Spec.ClusterIP)
		if err != nil {
			return spec, fmt.Errorf("spec.clusterIP %q is not an address", s.Spec.ClusterIP)
		}
		spec.ClusterIP = ip
	}
	if s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		spec.ExternalTrafficPolicy = nat.PolicyLocal
	}
	for i, p := range s.Spec.Ports {
		sp := nat.ServicePort{Name: p.Name, Protocol: nat.TCP, Port: int(p.Port)}
		if p.Protocol == corev1.ProtocolUDP {
			sp.Protocol = nat.UDP
		}
		switch {
		case p.TargetPort.IntValue() > 0:
			sp.TargetPort = p.TargetPort.IntValue()
		case p.TargetPort.StrVal != "":
			port, err := c.namedPort(spec, p.TargetPort.StrVal, sp.Protocol)
			if err != nil {
				return spec, fmt.Errorf("spec.ports[%d].targetPort: %w", i, err)
			}
			sp.TargetPort = port
		}
		if s.Spec.Type == corev1.ServiceTypeNodePort {
			sp.NodePort = AutoNodePort
			if p.NodePort != 0 {
				sp.NodePort = int(p.NodePort)
			}
		}
		spec.Ports = append(spec.Ports, sp)
	}
	return spec, nil
}

// namedPort resolves a named targetPort against the selected pods.
func (c *Cluster) namedPort(spec ServiceSpec, name string, proto nat.Protocol) (int, error) {
	port := 0
	for _, p := range c.Lab.SelectedPods(&Service{Name: spec.Name, Selector: spec.Selector}) {
		for _, cp := range p.Ports {
			if cp.Name != name || cp.Protocol != proto {
				continue
			}
			if port != 0 && port != cp.Port {
				return 0, fmt.Errorf("%q is port %d on one selected pod and %d on pod %s: klab needs the selected pods to agree", name, port, cp.Port, p.Name)
			}
			port = cp.Port
		}
	}
	if port == 0 {
		return 0, fmt.Errorf("no pod the service selects declares a %s port named %q: apply the pods first, or give the number", proto, name)
	}
	return port, nil
}

func serviceSame(s *Service, spec ServiceSpec) bool {
	return s.Type == spec.Type && (!spec.ClusterIP.IsValid() || s.ClusterIP == spec.ClusterIP) && s.ExternalName == spec.ExternalName &&
		s.Affinity == spec.Affinity && s.ExternalTrafficPolicy == spec.ExternalTrafficPolicy && maps.Equal(s.Selector, spec.Selector) && slices.EqualFunc(s.Ports, spec.Ports, func(a, b nat.ServicePort) bool {
		return a.Name == b.Name && a.Protocol == b.Protocol && a.Port == b.Port && a.TargetPort == b.TargetPort && (b.NodePort == AutoNodePort && a.NodePort > 0 || a.NodePort == b.NodePort)
	})
}

// DeleteObjects removes what a manifest names (kubectl delete -f):
// services, then pods, then namespaces (with what is left in them).
// Objects that do not exist are reported, not errors.
func (c *Cluster) DeleteObjects(set *k8s.Set) (*ApplyResult, error) {
	res := &ApplyResult{}
	var gone []*networkingv1.NetworkPolicy
	for _, np := range set.NetworkPolicies {
		if c.Lab.Policy(np.Namespace, np.Name) == nil {
			res.add("NetworkPolicy", np.Namespace, np.Name, "not found")
			continue
		}
		gone = append(gone, np)
		res.add("NetworkPolicy", np.Namespace, np.Name, "deleted")
	}
	if len(gone) > 0 {
		if err := c.setPolicyObjects(nil, gone); err != nil {
			return res, err
		}
		if err := c.Save(); err != nil {
			return res, err
		}
		if err := c.takePolicyLag(); err != nil {
			return res, err
		}
	}
	for _, s := range set.Services {
		if c.Lab.Service(Key(s.Namespace, s.Name)) == nil {
			res.add("Service", s.Namespace, s.Name, "not found")
			continue
		}
		if err := c.DelService(Key(s.Namespace, s.Name)); err != nil {
			return res, err
		}
		res.add("Service", s.Namespace, s.Name, "deleted")
	}
	for _, p := range set.Pods {
		if c.Lab.Pod(Key(p.Namespace, p.Name)) == nil {
			res.add("Pod", p.Namespace, p.Name, "not found")
			continue
		}
		if err := c.DelPod(Key(p.Namespace, p.Name)); err != nil {
			return res, err
		}
		res.add("Pod", p.Namespace, p.Name, "deleted")
	}
	for _, n := range set.Namespaces {
		if c.Lab.namespace(n.Name) == nil {
			res.add("Namespace", "", n.Name, "not found")
			continue
		}
		if err := c.DelNamespace(n.Name); err != nil {
			return res, err
		}
		res.add("Namespace", "", n.Name, "deleted")
	}
	return res, nil
}
