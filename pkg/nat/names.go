package nat

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
)

// Chain-name prefixes, as in kube-proxy's pkg/proxy/iptables/proxier.go.
const (
	svcChainPrefix = "KUBE-SVC-" // per service port: load-balance to endpoints
	extChainPrefix = "KUBE-EXT-" // per service port: traffic from outside (NodePort)
	svlChainPrefix = "KUBE-SVL-" // per service port, Local traffic policy: the node's own endpoints
	sepChainPrefix = "KUBE-SEP-" // per endpoint: DNAT
)

// portProtoHash is kube-proxy's portProtoHash: the first 16 characters of
// base32(sha256(servicePortName + protocol)). 16 characters keep
// "KUBE-SVC-" + hash within iptables' 28-character chain-name limit.
func portProtoHash(portName string, proto Protocol) string {
	return hash16(portName, string(proto), "")
}

// hash16 is base32(sha256(a+b+c))[:16], without heap allocations for the
// hash input (this runs 40,000 times when rendering 10,000 services).
func hash16(a, b, c string) string {
	var in [256]byte
	buf := append(append(append(in[:0], a...), b...), c...)
	h := sha256.Sum256(buf)
	var out [56]byte
	base32.StdEncoding.Encode(out[:], h[:])
	return string(out[:16])
}

// SVCChain is the KUBE-SVC chain of a service port, e.g.
// SVCChain("default/kubernetes:https", TCP) = "KUBE-SVC-NPX46M4PTMTKRN6Y".
func SVCChain(portName string, proto Protocol) string {
	return svcChainPrefix + portProtoHash(portName, proto)
}

// EXTChain is the KUBE-EXT chain of a service port (same hash as SVCChain).
func EXTChain(portName string, proto Protocol) string {
	return extChainPrefix + portProtoHash(portName, proto)
}

// SVLChain is the KUBE-SVL chain of a service port with the Local external
// traffic policy: load-balancing over the rendered node's endpoints only
// (same hash as SVCChain).
func SVLChain(portName string, proto Protocol) string {
	return svlChainPrefix + portProtoHash(portName, proto)
}

// SEPChain is the KUBE-SEP chain of one endpoint ("ip:port") of a service
// port: kube-proxy's servicePortEndpointChainName.
func SEPChain(portName string, proto Protocol, endpoint string) string {
	return sepChainPrefix + hash16(portName, string(proto), endpoint)
}

// ServiceChains lists the chains a service owns on a node, per port: its
// KUBE-SVC chain, its KUBE-EXT chain when the port has a NodePort, its
// KUBE-SVL chain when the service has the Local external traffic policy, and
// one KUBE-SEP chain per endpoint. (The KUBE-SVL chain exists only on nodes
// that host an endpoint; it is listed on every node.)
func ServiceChains(s Service) []string {
	var out []string
	for _, p := range s.Ports {
		name, proto := s.PortName(p), p.protocol()
		out = append(out, SVCChain(name, proto))
		if p.NodePort != 0 {
			out = append(out, EXTChain(name, proto))
			if s.ExternalLocal() {
				out = append(out, SVLChain(name, proto))
			}
		}
		for _, e := range s.Endpoints {
			out = append(out, SEPChain(name, proto, netip.AddrPortFrom(e.IP, uint16(p.targetPort())).String()))
		}
	}
	return out
}
