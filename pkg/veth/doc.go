// Package veth wires a network namespace to a bridge with a veth pair: what
// the CNI bridge plugin's ADD does for a pod, and what klab also uses to
// plug a node into the lab's underlay.
//
// The pair is created in one netlink request with its inner end placed
// directly into the target namespace under its final name (eth0), so no
// half-configured interface ever appears in the outer namespace. The outer
// end (veth<8 hex> for pods, like the CNI plugin's names) is enslaved to the
// bridge and put in hairpin mode, so a pod can reach itself through a
// Service whose DNAT picks that same pod. Inside, lo and eth0 are brought
// up with the address and routes. Plan computes only what is missing or
// wrong, from the kernel's State of both namespaces; PlanDelete removes the
// outer end, which takes its peer with it.
package veth
