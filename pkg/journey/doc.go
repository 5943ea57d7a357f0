// Package journey ties packet capture (package trace) to a lab's model
// (package cluster): it turns capture point names a student types —
// node1:eth0, pod-a, pod-a:host, node1:*, underlay:* — into interfaces
// inside the right namespaces, and it computes the path one packet is
// expected to take between two objects of a lab: pod eth0, host veth, cni0,
// flannel.1 and eth0 on the way out, the underlay bridge's ports, and the
// same in reverse on the far node; cni0 alone between pods of one node; no
// flannel.1 with the host-gw backend.
//
// Run arms capture points along that path, sends ONE probe (an ICMP echo
// request, or one TCP connection whose SYN is followed), stops, and follows
// the probe and its reply hop by hop (Follow). It enriches the
// result with what explains a rewrite: the conntrack entries of the probe's
// connection in each node (original and reply tuples, read over netlink in
// the node's namespace) and the iptables rules whose packet counters the
// probe raised (iptables-save -c inside each node, before and after), which
// name the KUBE-SVC / KUBE-SEP chains a Service's DNAT went through. Where
// iptables is iptables-nft, the rules are instead those klab's nftrace saw
// the probe match (iptnft.go), and in nftables mode every nftables rule it
// met (nftrace.go). Follow
// itself works on any captured packets (correlated by fields that survive NAT
// and encapsulation); 'klab trace --journey' records with a Recorder, the
// capture half Run uses too, and follows the first packet it kept.
package journey
