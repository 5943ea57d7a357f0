// Package graph draws a lab's topology (pkg/topo) and a packet's journey
// over it (pkg/journey): Mermaid and Graphviz DOT as text for Markdown and
// other tools, ASCII for the terminal, and SVG laid out and written by
// klab itself.
//
// The SVG layout is klab's own, deterministic and layered the way the
// seed posts draw a cluster: the underlay switch across the top, one
// column per node (eth0, flannel.1, cni0, then its pods with their
// veths), the tunnels between nodes as arcs above them, the Services in a
// row below with a line to each endpoint. A general graph layout engine
// (Graphviz, even compiled to WebAssembly) would cost megabytes of binary
// and place the same objects differently on every change; this one is a
// few hundred lines, needs no dependency, and keeps a node where it was
// when a pod is added, which is what a live picture needs. Every drawn
// object carries its kind and name (id, class, data-name) and every
// interface its capture point label (data-point, e.g. "node1/eth0"), so
// tests and the web view (klab ui) find objects by name and a journey's
// hops by capture point.
package graph
