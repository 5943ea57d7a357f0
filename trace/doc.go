// Package trace captures packets at several points of a klab network at once
// (each point is an interface inside a network namespace), decodes them —
// including flannel's VXLAN on UDP 8472, whose inner Ethernet/IP/ICMP/TCP/UDP
// headers are decoded too — filters them with a small tcpdump-like language,
// and prints them one line per packet, as JSON Lines, or into a pcapng file
// with one interface per capture point that Wireshark and tshark open.
//
// Capture is pure Go: an AF_PACKET socket is opened inside the point's
// namespace (so it stays there), optionally with a classic BPF pre-filter
// compiled from the filter expression, and every packet carries its direction
// (in/out) and kernel timestamp. On top of the captured packets, Follow builds
// a journey: one probe packet followed across the capture points, in path
// order, with what changed at each hop (+VXLAN/-VXLAN, DNAT, SNAT, TTL, MACs)
// and the same for its reply.
package trace
