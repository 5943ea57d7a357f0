package cluster

// The lab's objects as the official Kubernetes API types, status filled,
// for 'klab get -o json|yaml': a List of real kinds, so jq- and
// kubectl-style scripts work on it.

import (
	"maps"
	"sort"

	"github.com/klab-dev/klab/pkg/nat"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func typeMeta(kind string) metav1.TypeMeta { return metav1.TypeMeta{APIVersion: "v1", Kind: kind} }

// PodObject is a pod as the API server would return it.
func (l *Lab) PodObject(p *Pod) corev1.Pod {
	o := corev1.Pod{TypeMeta: typeMeta("Pod"), ObjectMeta: metav1.ObjectMeta{Name: p.ShortName(), Namespace: p.Namespace(), Labels: maps.Clone(p.Labels)},
		Spec: corev1.PodSpec{NodeName: p.Node}}
	c := corev1.Container{Name: "echo", Image: "klab-echo"}
	for _, cp := range p.Ports {
		proto := corev1.ProtocolTCP
		if cp.Protocol == nat.UDP {
			proto = corev1.ProtocolUDP
		}
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: int32(cp.Port), Protocol: proto})
	}
	o.Spec.Containers = []corev1.Container{c}
	o.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}}}
	if n := l.Node(p.Node); n != nil {
		o.Status.HostIP = n.IP.String()
	}
	ready := corev1.ConditionTrue
	if p.Unready {
		ready = corev1.ConditionFalse
	}
	o.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}
	o.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "echo", Ready: !p.Unready, Image: "klab-echo"}}
	return o
}

// ServiceObject is a service as the API server would return it.
func (l *Lab) ServiceObject(s *Service) corev1.Service {
	o := corev1.Service{TypeMeta: typeMeta("Service"), ObjectMeta: metav1.ObjectMeta{Name: s.ShortName(), Namespace: s.Namespace()},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: maps.Clone(s.Selector), SessionAffinity: corev1.ServiceAffinityNone}}
	switch {
	case s.Type == ServiceExternalName:
		o.Spec.Type, o.Spec.ExternalName = corev1.ServiceTypeExternalName, s.ExternalName
	case s.Type == ServiceHeadless:
		o.Spec.ClusterIP, o.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	default:
		o.Spec.ClusterIP, o.Spec.ClusterIPs = s.ClusterIP.String(), []string{s.ClusterIP.String()}
	}
	if s.Affinity == nat.AffinityClientIP {
		o.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}
	if s.ExternalTrafficPolicy == nat.PolicyLocal {
		o.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	for _, p := range s.Ports {
		proto := corev1.ProtocolTCP
		if p.Protocol == nat.UDP {
			proto = corev1.ProtocolUDP
		}
		tp := p.TargetPort
		if tp == 0 {
			tp = p.Port
		}
		sp := corev1.ServicePort{Name: p.Name, Protocol: proto, Port: int32(p.Port), TargetPort: intstr.FromInt32(int32(tp))}
		if p.NodePort > 0 {
			sp.NodePort = int32(p.NodePort)
			o.Spec.Type = corev1.ServiceTypeNodePort
		}
		o.Spec.Ports = append(o.Spec.Ports, sp)
	}
	return o
}

// EndpointsObject is a service's Endpoints: its ready endpoint pods.
func (l *Lab) EndpointsObject(s *Service) corev1.Endpoints {
	o := corev1.Endpoints{TypeMeta: typeMeta("Endpoints"), ObjectMeta: metav1.ObjectMeta{Name: s.ShortName(), Namespace: s.Namespace()}}
	pods := l.SelectedPods(s)
	if len(pods) == 0 || s.Type == ServiceExternalName {
		return o
	}
	var sub corev1.EndpointSubset
	for _, p := range pods {
		ns, name := p.Namespace(), p.ShortName()
		node := p.Node
		a := corev1.EndpointAddress{IP: p.IP.String(), NodeName: &node, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}}
		if p.Unready {
			sub.NotReadyAddresses = append(sub.NotReadyAddresses, a)
		} else {
			sub.Addresses = append(sub.Addresses, a)
		}
	}
	sort.Slice(sub.Addresses, func(i, j int) bool { return sub.Addresses[i].IP < sub.Addresses[j].IP })
	for _, p := range s.Ports {
		proto := corev1.ProtocolTCP
		if p.Protocol == nat.UDP {
			proto = corev1.ProtocolUDP
		}
		tp := p.TargetPort
		if tp == 0 {
			tp = p.Port
		}
		sub.Ports = append(sub.Ports, corev1.EndpointPort{Name: p.Name, Port: int32(tp), Protocol: proto})
	}
	o.Subsets = []corev1.EndpointSubset{sub}
	return o
}

// NamespaceObject is a namespace as the API server would return it.
func NamespaceObject(n *Namespace) corev1.Namespace {
	return corev1.Namespace{TypeMeta: typeMeta("Namespace"), ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: maps.Clone(n.Labels)},
		Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
}

// NodeObject is a node as the API server would return it.
func (l *Lab) NodeObject(n *Node) corev1.Node {
	return corev1.Node{TypeMeta: typeMeta("Node"), ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}, {Type: corev1.NodeHostName, Address: n.Name}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
}
