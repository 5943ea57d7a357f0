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
// (in/out) and kernel timestamp. Following one packet across the capture
// points (a journey) is package journey's, on top of these packets.
package trace
