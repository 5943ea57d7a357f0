// Package bridge manages a node's cni0: the Linux bridge that the CNI bridge
// plugin creates to join a node's pods into one L2 segment.
//
// Pods on the same node talk to each other through cni0 as through a switch
// (pure L2, the bridge learns MACs); everything else leaves through cni0's
// own address, the pods' default gateway (10.244.N.1), and is routed by the
// node. Plan computes what makes the bridge exist with the right address, MTU and a
// pinned MAC (without one, a bridge takes the lowest MAC of its ports and
// changes it as pods come and go, which breaks the neighbour caches of every
// pod), and refuses to touch a link of another type that holds the name.
package bridge
