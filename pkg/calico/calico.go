package calico

import (
	"crypto/sha1"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
)

// Calico's fixed values.
const (
	// VethPrefix starts the host-side name of every pod veth.
	VethPrefix = "cali"
	// AS is the private AS number Calico's default BGPConfiguration uses
	// for every node.
	AS = 64512
	// DefaultBlockSize is the prefix length of an IPv4 IPAM block.
	DefaultBlockSize = 26
)

var (
	// Gateway is the pods' default gateway: a link-local address that no
	// interface holds. The host veth answers ARP for it by proxy ARP.
	Gateway = netip.MustParseAddr("169.254.1.1")
	// HostVethMAC is the MAC Calico's CNI plugin gives every host-side
	// veth: pods see the same gateway MAC on every node.
	HostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
	// DefaultPool is Calico's own default IPv4 pool; klab labs use
	// 10.244.0.0/16 (the lab's cluster CIDR) so that they compare with
	// the flannel labs.
	DefaultPool = netip.MustParsePrefix("192.168.0.0/16")
)

// VethName is the host-side veth name of a pod, as Calico's
// VethNameForWorkload computes it: "cali" + the first 11 hex characters of
// sha1("<namespace>.<pod>").
func VethName(namespace, pod string) string {
	sum := sha1.Sum([]byte(namespace + "." + pod))
	return VethPrefix + hex.EncodeToString(sum[:])[:11]
}

// HostSysctls are the sysctls Calico's CNI plugin sets on a host veth
// (configureSysctls): proxy ARP so the node answers for 169.254.1.1 (with
// no delay: the kernel would otherwise hold proxied replies up to 0.8 s),
// forwarding, and route_localnet so a pod can reach 127.0.0.1 DNAT
// targets on the node.
func HostSysctls(iface string) [][2]string {
	return [][2]string{
		{"net/ipv4/conf/" + iface + "/proxy_arp", "1"},
		{"net/ipv4/conf/" + iface + "/forwarding", "1"},
		{"net/ipv4/conf/" + iface + "/route_localnet", "1"},
		{"net/ipv4/neigh/" + iface + "/proxy_delay", "0"},
	}
}

// ProtocolName is BIRD's Mesh_<ip> protocol name for a peer
// (bird.cfg.template: the IP's dots become underscores).
func ProtocolName(peer netip.Addr) string {
	return "Mesh_" + strings.ReplaceAll(peer.String(), ".", "_")
}

// Passive reports whether a node's session to peer is passive: calico-node
// makes the mesh unidirectional, the node whose address string is smaller
// waits for the other to connect (bird.cfg.template compares the address
// strings with gt, lexically, not numerically).
func Passive(self, peer netip.Addr) bool { return peer.String() > self.String() }
