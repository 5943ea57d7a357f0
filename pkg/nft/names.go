package nft

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strconv"
	"strings"

	"github.com/klab-dev/klab/pkg/nat"
)

// Chain and set name prefixes, as in kube-proxy's pkg/proxy/nftables/proxier.go
// (servicePort*NamePrefix constants).
const (
	ServicePrefix  = "service-"  // per service port, Cluster traffic policy
	LocalPrefix    = "local-"    // per service port, Local traffic policy: the node's own endpoints
	ExternalPrefix = "external-" // per service port with external destinations (NodePort)
	EndpointPrefix = "endpoint-" // per endpoint of a service port
	AffinityPrefix = "affinity-" // per endpoint, ClientIP affinity set
	FirewallPrefix = "firewall-" // LoadBalancerSourceRanges (not rendered by klab)
)

// nameLengthMax is knftables.NameLengthMax (the kernel's NFT_NAME_MAXLEN - 1)
// and chainNamePrefixMax kube-proxy's chainNamePrefixLengthMax: a base name
// is at most 256-16 = 240 bytes.
const (
	nameLengthMax      = 256
	chainNamePrefixMax = 16
	chainNameBaseMax   = nameLengthMax - chainNamePrefixMax
)

// HashAndTruncate is kube-proxy's hashAndTruncate: the first 8 characters of
// base32(sha256(name)), a dash, then name, cut to 240 bytes with "..." when
// longer (which never happens for IPv4 names).
func HashAndTruncate(name string) string {
	h := sha256.Sum256([]byte(name))
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], h[:])
	out := string(enc[:8]) + "-" + name
	if len(out) > chainNameBaseMax {
		out = out[:chainNameBaseMax-3] + "..."
	}
	return out
}

// PortChainBase is kube-proxy's servicePortChainNameBase:
// HashAndTruncate("<ns>/<svc>/<proto>/<port name>"), e.g.
// PortChainBase("ns1", "svc1", "tcp", "p80") = "ULMVA6XW-ns1/svc1/tcp/p80".
// An unnamed port leaves the last part empty ("ns/svc/tcp/").
func PortChainBase(namespace, service string, proto nat.Protocol, portName string) string {
	return HashAndTruncate(namespace + "/" + service + "/" + string(proto) + "/" + portName)
}

// EndpointChainBase is kube-proxy's servicePortEndpointChainNameBase:
// HashAndTruncate("<ns>/<svc>/<proto>/<port name>__<ip>/<port>"), e.g.
// "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80". An IPv6 address has its
// colons replaced by dots (colons are not allowed in names).
func EndpointChainBase(namespace, service string, proto nat.Protocol, portName string, ep netip.AddrPort) string {
	ip := ep.Addr().String()
	if ep.Addr().Is6() {
		ip = strings.ReplaceAll(ip, ":", ".")
	}
	return HashAndTruncate(namespace + "/" + service + "/" + string(proto) + "/" + portName + "__" + ip + "/" + strconv.Itoa(int(ep.Port())))
}

// isServiceChain is kube-proxy's isServiceChainName: only per-service and
// per-endpoint chains have a "/" in their name.
func isServiceChain(name string) bool { return strings.Contains(name, "/") }
