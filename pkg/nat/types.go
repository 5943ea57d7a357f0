package nat

import (
	"fmt"
	"net/netip"
)

// Protocol is a service port's transport protocol, lowercase as iptables
// and kube-proxy's chain-name hash spell it.
type Protocol string

// Protocols klab's kube-proxy rendering supports.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Affinity is a service's session affinity.
type Affinity string

// Session affinity modes, spelled as in the Kubernetes API.
const (
	AffinityNone     Affinity = "None"
	AffinityClientIP Affinity = "ClientIP"
)

// Defaults, as in Kubernetes.
const (
	DefaultNamespace       = "default"
	DefaultAffinityTimeout = 10800 // seconds (3 h), Kubernetes' ClientIP default
	DefaultMasqueradeBit   = 14    // kube-proxy --iptables-masquerade-bit
	NodePortMin            = 30000 // kube-apiserver --service-node-port-range
	NodePortMax            = 32767
)

// Default address ranges (kubeadm's service CIDR, flannel's pod network).
var (
	DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	DefaultClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
)

// ServicePort is one port of a Service. Each port becomes its own KUBE-SVC
// chain, exactly as in kube-proxy.
type ServicePort struct {
	// Name is required when a service has more than one port; it is part of
	// the chain-name hash ("<ns>/<svc>:<name>").
	Name string `json:"name,omitempty"`
	// Protocol is tcp (default when empty) or udp.
	Protocol Protocol `json:"protocol,omitempty"`
	// Port is the port on the ClusterIP.
	Port int `json:"port"`
	// TargetPort is the port on the endpoints; 0 means the same as Port.
	TargetPort int `json:"targetPort,omitempty"`
	// NodePort exposes the port on every node address; 0 means none.
	NodePort int `json:"nodePort,omitempty"`
}

// Endpoint is one backend of a service: a pod IP (the port comes from the
// ServicePort's TargetPort). PodName is informational (labs print it).
// NodeName is the node hosting the pod: the rules depend on it only for a
// service with the Local external traffic policy, whose KUBE-SVL chain
// holds the endpoints of the node being rendered (Config.NodeName).
type Endpoint struct {
	IP       netip.Addr `json:"ip"`
	PodName  string     `json:"podName,omitempty"`
	NodeName string     `json:"nodeName,omitempty"`
}

// Service is a Kubernetes Service together with its (ready) endpoints, the
// input of kube-proxy's iptables proxier.
type Service struct {
	Namespace string        `json:"namespace,omitempty"` // "default" when empty
	Name      string        `json:"name"`
	ClusterIP netip.Addr    `json:"clusterIP"`
	Ports     []ServicePort `json:"ports"`
	Affinity  Affinity      `json:"affinity,omitempty"` // None when empty
	// AffinityTimeout is ClientIP affinity's timeout in seconds; 0 means
	// DefaultAffinityTimeout.
	AffinityTimeout int        `json:"affinityTimeout,omitempty"`
	Endpoints       []Endpoint `json:"endpoints,omitempty"`
	// ExternalTrafficPolicy is the service's spec.externalTrafficPolicy
	// (Cluster when empty). Local keeps external clients' source
	// addresses: NodePort traffic goes only to endpoints on the receiving
	// node, unmasqueraded, and is dropped on a node without one.
	ExternalTrafficPolicy TrafficPolicy `json:"externalTrafficPolicy,omitempty"`
}

// TrafficPolicy is a service's external traffic policy, spelled as in the
// Kubernetes API.
type TrafficPolicy string

// The two traffic policies.
const (
	PolicyCluster TrafficPolicy = "Cluster"
	PolicyLocal   TrafficPolicy = "Local"
)

// ExternalLocal reports whether the service's external traffic policy is
// Local.
func (s Service) ExternalLocal() bool { return s.ExternalTrafficPolicy == PolicyLocal }

// FlannelMasq configures flannel's masquerade chains (FLANNEL-POSTRTG in nat,
// FLANNEL-FWD in filter) on one node.
type FlannelMasq struct {
	// PodCIDR is this node's subnet lease, e.g. 10.244.1.0/24.
	PodCIDR netip.Prefix `json:"podCIDR"`
	// TCPOnly limits the MASQUERADE rules to -p tcp, reproducing seed 003's
	// host where "curl to the internet works, ping does not".
	TCPOnly bool `json:"tcpOnly,omitempty"`
}

// Config holds the per-node settings of a rendering.
type Config struct {
	// Lab names the lab; every rule's comment starts with "klab:<lab> ".
	Lab string `json:"lab"`
	// ClusterCIDR is the pod network (kube-proxy --cluster-cidr, flannel's
	// Network): traffic to a ClusterIP from outside it gets masqueraded.
	// Zero means DefaultClusterCIDR.
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	// ServiceCIDR is the range ClusterIPs come from. Zero means
	// DefaultServiceCIDR.
	ServiceCIDR netip.Prefix `json:"serviceCIDR"`
	// MasqueradeBit is the fwmark bit kube-proxy uses to flag traffic that
	// needs SNAT; 0 means DefaultMasqueradeBit (14, mark 0x4000).
	MasqueradeBit int `json:"masqueradeBit,omitempty"`
	// Flannel, when set, adds flannel's masquerade chains to the rendering.
	Flannel *FlannelMasq `json:"flannel,omitempty"`
	// NodeName is the node being rendered (kube-proxy's --hostname-override):
	// endpoints whose NodeName equals it are the node's local endpoints,
	// used by services with the Local external traffic policy.
	NodeName string `json:"nodeName,omitempty"`
}

func (c Config) withDefaults() Config {
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = DefaultClusterCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	c.ClusterCIDR = c.ClusterCIDR.Masked()
	c.ServiceCIDR = c.ServiceCIDR.Masked()
	if c.MasqueradeBit == 0 {
		c.MasqueradeBit = DefaultMasqueradeBit
	}
	return c
}

// Mark is the masquerade mark as kube-proxy prints it, e.g. "0x4000".
func (c Config) Mark() string {
	return fmt.Sprintf("%#x", uint32(1)<<uint(c.withDefaults().MasqueradeBit))
}

func (s Service) namespace() string {
	if s.Namespace == "" {
		return DefaultNamespace
	}
	return s.Namespace
}

func (s Service) affinityTimeout() int {
	if s.AffinityTimeout == 0 {
		return DefaultAffinityTimeout
	}
	return s.AffinityTimeout
}

func (p ServicePort) protocol() Protocol {
	if p.Protocol == "" {
		return TCP
	}
	return p.Protocol
}

func (p ServicePort) targetPort() int {
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

// PortName is kube-proxy's ServicePortName string: "<ns>/<svc>:<port name>",
// or "<ns>/<svc>" for an unnamed port. It appears in rule comments and is the
// input of the chain-name hashes.
func (s Service) PortName(p ServicePort) string {
	if p.Name == "" {
		return s.namespace() + "/" + s.Name
	}
	return s.namespace() + "/" + s.Name + ":" + p.Name
}
