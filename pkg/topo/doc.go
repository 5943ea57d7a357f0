// Package topo is a lab's topology as the kernel holds it: the underlay
// bridge and the external host, every node with its eth0, cni0 and
// flannel.1 (VNI, port, VTEP MAC) or its host-gw routes, the pods with their
// addresses and host-side veths, the tunnels between nodes, and the
// Services with their ClusterIP and endpoints.
//
// It is what `klab graph` draws and what `klab ui` shows. The lab's state
// file only says which namespace is a node and which a pod; everything
// drawn is read back through netlink (pkg/inspect), one read per
// namespace, the namespaces read in parallel. A tunnel is drawn because a
// node's flannel.1 has an FDB entry towards the peer's eth0 address, a
// host-gw (or BGP) hop because a route goes via the peer; an object the
// state names but the kernel lacks is drawn damaged, with the sentence
// `klab list` would print. Services come from the lab's desired state:
// the proxy mode (iptables or nftables) decides how they are programmed,
// not what they are.
package topo
