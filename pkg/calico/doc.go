// Package calico is Calico's data plane reduced to its pure parts: the
// names Calico's CNI plugin gives a pod's host-side veth, the IPAM blocks
// a node claims from the pool, and the BIRD configuration calico-node's
// confd renders for a node, translated to BIRD 2 syntax. Nothing here
// touches the kernel; pkg/cluster turns these values into plans.
//
// Calico routes pods instead of bridging them: every pod has a /32 on its
// eth0 and a default route via 169.254.1.1, an address nobody holds, which
// the node answers by proxy ARP on the pod's cali* veth. The node has one
// "<pod ip> dev caliXXX scope link" route per pod and blackholes each of
// its blocks; BIRD announces the blocks to the other nodes over iBGP (a
// full node-to-node mesh in AS 64512), and their kernels get
// "<block> via <node ip> dev eth0 proto bird". Mirrored from
// projectcalico/calico: cni-plugin/pkg/dataplane/linux/dataplane_linux.go
// (veth name and MAC, sysctls, the 169.254.1.1 gateway),
// felix/dataplane/linux/route_table.go (routes and static ARP entries),
// libcalico-go/lib/ipam (blocks with node affinity) and
// confd/etc/calico/confd/templates/bird.cfg.template, bird_ipam.cfg.template
// and bird_aggr.cfg.template (commits 01850b9a and 0ce1deb7).
package calico
