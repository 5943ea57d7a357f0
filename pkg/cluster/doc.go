// Package cluster is a lab's desired state — an underlay, nodes, pods — and
// the code that applies it to the kernel incrementally and destroys it
// completely.
//
// A lab is what a Kubernetes cluster with flannel looks like from the
// network's point of view: an underlay (a bridge, underlay0, inside a
// lab-owned namespace, which also routes to the outside world), nodes
// (namespaces plugged into the underlay through eth0, each leasing a /24 of
// the cluster network and running cni0 and flannel.1 — or host-gw routes),
// and pods (namespaces plugged into their node's cni0 with an address
// allocated host-local style). The state is persisted under
// /run/klab/<lab>/ (state.json, ipam/, nodes/<node>/subnet.env), so every
// klab command picks up where the previous one left off: adding node3 later
// peers it with every existing node, exactly as a new flannel lease does.
//
// Services are part of the state too. Every node runs what kube-proxy and
// flanneld would write into its iptables: kube-proxy's chains for every
// Service, and flannel's masquerade for pod egress. A new node gets them
// with one iptables-restore into its fresh namespace; a change of services
// or of the pods behind them re-renders every node and rewrites only the
// chains that changed. An "external" host (203.0.113.10, beyond the
// underlay's gateway) stands for the world outside the cluster.
//
// With the calico backend (calico*.go) nodes have no cni0 and claim IPAM
// blocks instead of a /24: pods are routed on their own cali* veths (a /32
// each, 169.254.1.1 as gateway), and one real BIRD per node, supervised
// like klab's servers, spreads the blocks by BGP (or, in Calico's VXLAN
// mode, Felix's vxlan.calico entries are programmed per peer).
//
// Every change validates the whole request before touching the kernel, and
// rolls back what it created if the kernel fails half-way. Commands on one
// lab are serialised by a lock file; different labs never share a name,
// because every namespace is named klab.<lab>.<object>.
package cluster
