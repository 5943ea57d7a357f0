package nat

import (
	"crypto/sha256"
	"encoding/base32"
)

// Chain-name prefixes, as in kube-proxy's pkg/proxy/iptables/proxier.go.
const (
	svcChainPrefix = "KUBE-SVC-" // per service port: load-balance to endpoints
	extChainPrefix = "KUBE-EXT-" // per service port: traffic from outside (NodePort)
	sepChainPrefix = "KUBE-SEP-" // per endpoint: DNAT
)

// portProtoHash is kube-proxy's portProtoHash: the first 16 characters of
// base32(sha256(servicePortName + protocol)). 16 characters keep
// "KUBE-SVC-" + hash within iptables' 28-character chain-name limit.
func portProtoHash(portName string, proto Protocol) string {
	h := sha256.Sum256([]byte(portName + string(proto)))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
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

// SEPChain is the KUBE-SEP chain of one endpoint ("ip:port") of a service
// port: kube-proxy's servicePortEndpointChainName.
func SEPChain(portName string, proto Protocol, endpoint string) string {
	h := sha256.Sum256([]byte(portName + string(proto) + endpoint))
	return sepChainPrefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}
