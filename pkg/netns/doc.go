// Package netns creates, finds and enters the named network namespaces that
// make up a klab lab.
//
// Every node, pod, underlay and external host of a lab is a named network
// namespace, visible to `ip netns list` exactly like the ones iproute2
// creates: a bind mount of the namespace file under /run/netns. Names say who
// owns them, "klab.<lab>.<object>" (for example klab.demo.node1), so that the
// kernel itself tells which lab created what, even when klab's state directory
// is gone. Lab names may contain '-', object names are DNS labels, and '.'
// separates the three parts unambiguously.
//
// Entering a namespace is per OS thread (setns(2)), so the helpers here lock
// the goroutine to its thread, never start goroutines while switched, and if
// switching back fails they leave the thread locked so the Go runtime discards
// it instead of reusing a thread stuck in the wrong namespace. Where possible,
// prefer a netlink handle opened inside the namespace (Handle) over switching.
package netns
