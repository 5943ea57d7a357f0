// Package ipam hands out addresses the way the CNI host-local plugin and
// flannel's subnet manager do: a /24 per node from the cluster network, and
// pod addresses from a node's subnet.
//
// Pod allocations are kept on disk exactly in host-local's shape: one file
// per allocated address, named after the address and holding the owner's id
// and interface name, plus last_reserved_ip.0 so allocation goes round-robin
// instead of reusing the most recently freed address. The pure helpers
// (NextSubnet, NextIP) are separated from the file store so they can be
// tested without root.
package ipam
