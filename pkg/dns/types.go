package dns

import (
	"fmt"
	"net/netip"
	"strings"

	miekg "github.com/miekg/dns"
)

// ServiceType is how a Service is published in DNS.
type ServiceType int

const (
	// ClusterIP: one virtual IP; A/AAAA, SRV and PTR records point at it
	// (specification §2.3).
	ClusterIP ServiceType = iota
	// Headless: no virtual IP (clusterIP: None); the records list the
	// ready endpoints themselves (§2.4).
	Headless
	// ExternalName: an alias; the service name is a CNAME (§2.5).
	ExternalName
)

func (t ServiceType) String() string {
	switch t {
	case ClusterIP:
		return "ClusterIP"
	case Headless:
		return "Headless"
	case ExternalName:
		return "ExternalName"
	}
	return fmt.Sprintf("ServiceType(%d)", int(t))
}

// Port is one port of a Service.
type Port struct {
	// Name is the port's name; only named ports get SRV records
	// (§2.3.2, §2.4.2). Empty for an unnamed port.
	Name string
	// Protocol is TCP (the default when empty), UDP or SCTP.
	Protocol string
	// Port is the service port: the SRV port of a ClusterIP service.
	Port uint16
	// TargetPort is the port on the endpoints. A headless service's SRV
	// records carry it (the endpoints' port, as CoreDNS does, since a
	// client connects to the endpoint directly); 0 means the same as Port.
	TargetPort uint16
}

// Service is a Kubernetes Service as DNS sees it.
type Service struct {
	Namespace string
	Name      string
	Type      ServiceType
	// ClusterIP is the virtual IP of a ClusterIP service (IPv4 or IPv6);
	// unset for Headless and ExternalName services.
	ClusterIP netip.Addr
	// ExternalName is the target of an ExternalName service, a domain name.
	ExternalName string
	Ports        []Port
}

// Endpoint is one address backing a Service (an EndpointSlice endpoint).
type Endpoint struct {
	IP netip.Addr
	// Hostname is the endpoint's hostname field. When empty, the hostname
	// of the pod (PodName in the service's namespace, or else the pod with
	// this IP) is used if that pod's Subdomain is the service's name, as
	// the EndpointSlice controller does; otherwise the IP with dashes
	// (10-244-1-5), as CoreDNS does (the specification's "system-assigned
	// identifier", §2.1).
	Hostname string
	// Ready: only ready endpoints are published (§2.1, "ready").
	Ready    bool
	PodName  string
	NodeName string
}

// Pod is a pod as DNS sees it.
type Pod struct {
	Namespace string
	Name      string
	IP        netip.Addr
	// Hostname and Subdomain are spec.hostname and spec.subdomain: a pod
	// with both, backing the headless service named Subdomain in its
	// namespace, is <hostname>.<subdomain>.<ns>.svc.<zone>.
	Hostname  string
	Subdomain string
}

// Snapshot is the lab's objects at one moment, as the server reads them in
// Update. Implementations must return the same data for the duration of one
// Update call; the server keeps none of the returned slices.
type Snapshot interface {
	// Services returns every service.
	Services() []Service
	// Endpoints returns the endpoints of one service (any order).
	Endpoints(namespace, service string) []Endpoint
	// Pods returns every pod that has an IP.
	Pods() []Pod
}

// Objects is a Snapshot held in plain values, for tests and simple callers.
type Objects struct {
	ServiceList []Service
	// EndpointsOf maps "<namespace>/<service>" to the service's endpoints.
	EndpointsOf map[string][]Endpoint
	PodList     []Pod
}

// Services implements Snapshot.
func (o *Objects) Services() []Service { return o.ServiceList }

// Endpoints implements Snapshot.
func (o *Objects) Endpoints(namespace, service string) []Endpoint {
	return o.EndpointsOf[namespace+"/"+service]
}

// Pods implements Snapshot.
func (o *Objects) Pods() []Pod { return o.PodList }

// label reports whether s is an RFC 1123 label as Kubernetes names are:
// 1-63 lowercase letters, digits and '-', not starting or ending with '-'.
func label(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func checkLabel(what, s string) error {
	if !label(s) {
		return fmt.Errorf("%s %q is not a DNS label (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)", what, s)
	}
	return nil
}

func protoLabel(p string) (string, error) {
	switch strings.ToUpper(p) {
	case "", "TCP":
		return "_tcp", nil
	case "UDP":
		return "_udp", nil
	case "SCTP":
		return "_sctp", nil
	}
	return "", fmt.Errorf("protocol %q is not TCP, UDP or SCTP", p)
}

func (s *Service) validate() error {
	if err := checkLabel("namespace", s.Namespace); err != nil {
		return err
	}
	if err := checkLabel("service name", s.Name); err != nil {
		return fmt.Errorf("service %s: %w", s.Namespace, err)
	}
	id := s.Namespace + "/" + s.Name
	switch s.Type {
	case ClusterIP:
		if !s.ClusterIP.IsValid() {
			return fmt.Errorf("service %s is of type ClusterIP but has no cluster IP", id)
		}
	case Headless:
		if s.ClusterIP.IsValid() {
			return fmt.Errorf("service %s is headless but has cluster IP %s", id, s.ClusterIP)
		}
	case ExternalName:
		if s.ExternalName == "" {
			return fmt.Errorf("service %s is of type ExternalName but has no external name", id)
		}
		if _, ok := miekg.IsDomainName(s.ExternalName); !ok {
			return fmt.Errorf("service %s: external name %q is not a domain name", id, s.ExternalName)
		}
	default:
		return fmt.Errorf("service %s has unknown type %v", id, s.Type)
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		if _, err := protoLabel(p.Protocol); err != nil {
			return fmt.Errorf("service %s port %d: %w", id, p.Port, err)
		}
		if p.Name == "" {
			continue
		}
		if err := checkLabel("port name", p.Name); err != nil {
			return fmt.Errorf("service %s: %w", id, err)
		}
		k := strings.ToUpper(p.Protocol) + "/" + p.Name
		if seen[k] {
			return fmt.Errorf("service %s has two ports named %q", id, p.Name)
		}
		seen[k] = true
	}
	return nil
}

func (p *Pod) validate() error {
	if err := checkLabel("namespace", p.Namespace); err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	id := p.Namespace + "/" + p.Name
	if !p.IP.IsValid() {
		return fmt.Errorf("pod %s has no IP", id)
	}
	if p.Hostname != "" {
		if err := checkLabel("hostname", p.Hostname); err != nil {
			return fmt.Errorf("pod %s: %w", id, err)
		}
	}
	if p.Subdomain != "" {
		if err := checkLabel("subdomain", p.Subdomain); err != nil {
			return fmt.Errorf("pod %s: %w", id, err)
		}
	}
	return nil
}
