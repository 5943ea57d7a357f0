package dns

import (
	"fmt"
	"net/netip"
	"strings"

	miekg "github.com/miekg/dns"
)

// SchemaVersion is the version of the Kubernetes DNS schema served in the
// dns-version TXT record (specification §1 and §2.2, schema 1.1.0: the
// IPv4/IPv6 records of §2.3-§2.5).
const SchemaVersion = "1.1.0"

// PodMode says which <a-b-c-d>.<ns>.pod.<zone> names exist. These are the
// pod A records that schema 1.0.x required and deprecated (its §2.6) and
// 1.1.0 dropped; like CoreDNS (its "pods" option) klab keeps them as a
// schema extension (§3).
type PodMode int

const (
	// PodsVerified (the default): the name exists when a pod in that
	// namespace has that IP (CoreDNS "pods verified").
	PodsVerified PodMode = iota
	// PodsInsecure: any well-formed address in a namespace that has a
	// service or pod answers with itself, as kube-dns did (CoreDNS "pods
	// insecure", kubeadm's default).
	PodsInsecure
	// PodsDisabled: no pod names (CoreDNS's default).
	PodsDisabled
)

// build computes the index of the cluster zone from a snapshot, or says
// what in the snapshot is invalid.
func build(zone string, ttl uint32, pods PodMode, serial uint32, snap Snapshot) (*index, error) {
	svcs := snap.Services()
	podList := snap.Pods()
	// Names: about four per service (name, SRV, its _proto parent, PTR),
	// two per pod.
	ix := newIndex(zone, 4*len(svcs)+2*len(podList)+16)
	z := ix.apex
	soa := makeSOA(z, serial, ttl)
	ix.soa = []miekg.RR{soa}
	ix.add(soa)
	ix.add(&miekg.NS{Hdr: hdr(z, miekg.TypeNS, ttl), Ns: "ns.dns." + z})
	// §2.2: dns-version.<zone>. TXT <schema-version>.
	ix.add(&miekg.TXT{Hdr: hdr("dns-version."+z, miekg.TypeTXT, ttl), Txt: []string{SchemaVersion}})
	ix.node("svc." + z)
	ix.node("pod." + z)

	byName := make(map[string]*Pod, len(podList))
	byIP := make(map[string]*Pod, len(podList))
	for i := range podList {
		p := &podList[i]
		if err := p.validate(); err != nil {
			return nil, err
		}
		byName[p.Namespace+"/"+p.Name] = p
		byIP[p.Namespace+"/"+p.IP.String()] = p
		if !ix.namespaces[p.Namespace] {
			ix.namespaces[p.Namespace] = true
			ix.node(p.Namespace + ".svc." + z)
			ix.node(p.Namespace + ".pod." + z)
		}
		if pods == PodsVerified {
			// The name spells the address: two pods with one IP (a pod
			// and its replacement) make one record, not two.
			name := dashed(p.IP) + "." + p.Namespace + ".pod." + z
			if ix.names[name] == nil {
				ix.add(addrRR(name, p.IP, ttl))
			}
		}
	}

	seen := make(map[string]bool, len(svcs))
	// Each PTR is unique: service names are, and a headless service's
	// endpoints are one per IP.
	addPTR := func(ip netip.Addr, target string) {
		ip = ip.Unmap()
		rev, _ := miekg.ReverseAddr(ip.String())
		ix.add(&miekg.PTR{Hdr: hdr(rev, miekg.TypePTR, ttl), Ptr: target})
		zone := "in-addr.arpa."
		if ip.Is6() {
			zone = "ip6.arpa."
		}
		if ix.reverse == nil {
			ix.reverse = map[string][]miekg.RR{}
		}
		if ix.reverse[zone] == nil {
			ix.reverse[zone] = []miekg.RR{makeSOA(zone, serial, ttl)}
		}
	}
	for i := range svcs {
		s := &svcs[i]
		if err := s.validate(); err != nil {
			return nil, err
		}
		id := s.Namespace + "/" + s.Name
		if seen[id] {
			return nil, fmt.Errorf("service %s is listed twice", id)
		}
		seen[id] = true
		if !ix.namespaces[s.Namespace] {
			ix.namespaces[s.Namespace] = true
			ix.node(s.Namespace + ".pod." + z)
		}
		base := s.Name + "." + s.Namespace + ".svc." + z
		switch s.Type {
		case ClusterIP:
			// §2.3.1 A/AAAA, §2.3.2 SRV per named port with the service
			// name as target (its address as glue), §2.3.3 PTR.
			a := addrRR(base, s.ClusterIP, ttl)
			ix.add(a)
			for _, p := range s.Ports {
				if p.Name == "" {
					continue
				}
				proto, _ := protoLabel(p.Protocol)
				ix.add(&miekg.SRV{Hdr: hdr("_"+p.Name+"."+proto+"."+base, miekg.TypeSRV, ttl),
					Priority: 0, Weight: 100, Port: p.Port, Target: base}, a)
			}
			addPTR(s.ClusterIP, base)
		case Headless:
			eps, err := readyEndpoints(s, snap.Endpoints(s.Namespace, s.Name), byName, byIP)
			if err != nil {
				return nil, err
			}
			// §2.4.1: no ready endpoints, no name (NXDOMAIN).
			if len(eps) == 0 {
				ix.node(s.Namespace + ".svc." + z)
				continue
			}
			weight := uint16(max(1, 100/len(eps)))
			glue := make([]miekg.RR, len(eps))
			for j, ep := range eps {
				// §2.4.1: one A/AAAA per ready endpoint at the service
				// name, and at <hostname>.<service>...; §2.4.3 PTR to the
				// latter.
				host := ep.Hostname + "." + base
				ix.add(addrRR(base, ep.IP, ttl))
				glue[j] = addrRR(host, ep.IP, ttl)
				ix.add(glue[j])
				addPTR(ep.IP, host)
			}
			// §2.4.2: an SRV per ready endpoint and named port, target
			// <hostname>.<service>...
			for _, p := range s.Ports {
				if p.Name == "" {
					continue
				}
				proto, _ := protoLabel(p.Protocol)
				port := p.TargetPort
				if port == 0 {
					port = p.Port
				}
				name := "_" + p.Name + "." + proto + "." + base
				for j, ep := range eps {
					ix.add(&miekg.SRV{Hdr: hdr(name, miekg.TypeSRV, ttl),
						Priority: 0, Weight: weight, Port: port, Target: ep.Hostname + "." + base}, glue[j])
				}
			}
		case ExternalName:
			// §2.5: the service name is a CNAME to the external name.
			ix.node(base).cname = &miekg.CNAME{Hdr: hdr(base, miekg.TypeCNAME, ttl),
				Target: strings.ToLower(miekg.Fqdn(s.ExternalName))}
		}
	}
	// ns.dns.<zone>, the SOA's and NS record's name server, is the
	// cluster DNS service itself (kube-system/kube-dns), as in CoreDNS.
	if n := ix.names["kube-dns.kube-system.svc."+z]; n != nil && n.sets != nil {
		for _, t := range []uint16{miekg.TypeA, miekg.TypeAAAA} {
			if s := n.set(t); s != nil {
				for _, rr := range s.answer {
					c := miekg.Copy(rr)
					c.Header().Name = "ns.dns." + z
					ix.add(c)
				}
			}
		}
	}
	return ix, nil
}

// endpoint is a ready endpoint with its published hostname.
type endpoint struct {
	IP       netip.Addr
	Hostname string
}

// readyEndpoints returns a headless service's ready endpoints, one per IP,
// each with the hostname it is published under.
func readyEndpoints(s *Service, eps []Endpoint, byName, byIP map[string]*Pod) ([]endpoint, error) {
	out := make([]endpoint, 0, len(eps))
	seen := make(map[netip.Addr]bool, len(eps))
	for _, ep := range eps {
		if !ep.IP.IsValid() {
			return nil, fmt.Errorf("service %s/%s has an endpoint without an IP", s.Namespace, s.Name)
		}
		if ep.Hostname != "" {
			if err := checkLabel("endpoint hostname", ep.Hostname); err != nil {
				return nil, fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
			}
		}
		if !ep.Ready || seen[ep.IP] {
			continue
		}
		seen[ep.IP] = true
		out = append(out, endpoint{IP: ep.IP, Hostname: hostname(s, ep, byName, byIP)})
	}
	return out, nil
}

// hostname is the specification's _hostname_ of an endpoint (§2.1): its
// hostname field; else the hostname of its pod when the pod's subdomain is
// this service (what the EndpointSlice controller copies into the field);
// else the IP with dashes, CoreDNS's system-assigned identifier.
func hostname(s *Service, ep Endpoint, byName, byIP map[string]*Pod) string {
	if ep.Hostname != "" {
		return ep.Hostname
	}
	p := byName[s.Namespace+"/"+ep.PodName]
	if p == nil {
		p = byIP[s.Namespace+"/"+ep.IP.String()]
	}
	if p != nil && p.Hostname != "" && p.Subdomain == s.Name {
		return p.Hostname
	}
	return dashed(ep.IP)
}

// dashed is an address written as one DNS label: 10-244-1-5, or for IPv6
// the colons as dashes (2001-db8--1), with a trailing dash completed by a
// 0, as CoreDNS writes it.
func dashed(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		return strings.ReplaceAll(ip.String(), ".", "-")
	}
	s := strings.ReplaceAll(ip.String(), ":", "-")
	if strings.HasSuffix(s, "-") {
		s += "0"
	}
	return s
}

// undashed parses a dashed address (the pod-name label), or returns false.
func undashed(s string) (netip.Addr, bool) {
	var t string
	if strings.Count(s, "-") == 3 && !strings.Contains(s, "--") {
		t = strings.ReplaceAll(s, "-", ".")
	} else {
		t = strings.ReplaceAll(s, "-", ":")
	}
	ip, err := netip.ParseAddr(t)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip, true
}

// addrRR is an A record for IPv4 (and IPv4-mapped) addresses, AAAA for IPv6.
func addrRR(name string, ip netip.Addr, ttl uint32) miekg.RR {
	if ip.Is4() || ip.Is4In6() {
		b := ip.Unmap().As4()
		return &miekg.A{Hdr: hdr(name, miekg.TypeA, ttl), A: b[:]}
	}
	b := ip.As16()
	return &miekg.AAAA{Hdr: hdr(name, miekg.TypeAAAA, ttl), AAAA: b[:]}
}
