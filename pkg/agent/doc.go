// Package agent is a lab node's control plane: the process klab runs in
// every node's namespace when a lab has a control plane (klab node add
// --control-plane etcd), in flanneld's role. It reads the network's
// config from etcd, acquires the node's subnet lease exactly as flannel's
// etcd subnet manager does (registry.go), writes subnet.env, ensures
// flannel.1 (or nothing, with host-gw), and then watches the other
// leases, adding and removing each peer's entries as leases appear,
// change and expire. Every change it makes to its node is a plan
// (pkg/plan) computed from the node's kernel state by pkg/vxlan and run by
// plan.Applier, so an agent that restarts reprograms nothing that is
// already right.
//
// In miss mode (old flannel, <= 0.9) the agent programs only a route per
// lease and answers the kernel's L3MISS and L2MISS notifications from the
// leases instead (miss.go). Etcd outages are ridden out: the data plane
// stays as it is, the agent retries with backoff and reconciles against a
// fresh list of the leases when etcd answers again.
//
// Which etcd, and from where (etcd.go): an EtcdConfig is flanneld's
// --etcd-endpoints, --etcd-prefix and TLS files, and a Via the network
// namespace the client's sockets are opened in - a named one (the CLI
// reaching a lab's embedded etcd on its underlay), an open namespace file
// (an agent in its node reaching an external etcd through the machine's
// namespace, inherited as a file descriptor), or the caller's own.
package agent
