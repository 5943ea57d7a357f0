// Package probe holds klab's built-in traffic tools: an ICMP pinger, a
// traceroute (UDP or ICMP probes with rising TTL), an
// HTTP and UDP echo server, and their clients, each working from inside a
// lab namespace.
//
// Labs must not depend on ping, curl or nginx being installed inside pods
// (a pod here is only a network namespace, with the host's filesystem), so
// klab carries its own. Every socket is opened on a thread switched into the
// namespace (netns.Do); a socket stays in the namespace it was created in,
// so the rest of the work happens on ordinary goroutines. The echo servers
// answer with the name of the pod that served the request and the client
// address they saw, which is exactly what a student needs to see load
// balancing (which endpoint answered) and NAT (which source arrived).
package probe
