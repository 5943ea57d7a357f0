package graph

import (
	"fmt"
	"io"
	"strings"

	"github.com/klab-dev/klab/pkg/topo"
)

// Mermaid writes the topology as a Mermaid flowchart (for Markdown).
func Mermaid(w io.Writer, t *topo.Topology) error {
	id := newIDs(t)
	var b strings.Builder
	fmt.Fprintf(&b, "flowchart TB\n")
	fmt.Fprintf(&b, "  %%%% lab %s, backend %s: read back from the kernel by klab graph\n", t.Lab, t.Backend)
	fmt.Fprintf(&b, "  underlay[[\"%s %s\"]]\n", label(t.Underlay.Bridge), label(t.Underlay.CIDR))
	var bad []string
	if !t.Underlay.Exists || len(t.Problems) > 0 {
		bad = append(bad, "underlay")
	}
	if t.External != nil {
		fmt.Fprintf(&b, "  external([\"external %s\"])\n  external --- underlay\n", label(strings.Join(t.External.Addrs, " ")))
	}
	for _, n := range t.Nodes {
		nid := id.node[n.Name]
		fmt.Fprintf(&b, "  subgraph %s[\"%s\"]\n", nid, label(nodeText(n)))
		fmt.Fprintf(&b, "    %s_eth0[\"eth0 %s\"]\n", nid, label(n.IP))
		if n.VTEP != nil {
			fmt.Fprintf(&b, "    %s_vtep[\"%s<br/>%s\"]\n", nid, label(vtepText(n.VTEP)), label(n.VTEP.MAC))
		}
		if n.Bridge != "" {
			fmt.Fprintf(&b, "    %s_br[\"%s %s\"]\n", nid, label(n.Bridge), label(n.BridgeAddr))
		}
		for _, p := range n.Pods {
			fmt.Fprintf(&b, "    %s([\"%s<br/>%s\"])\n", id.pod[p.Name], label(podText(p)), label(p.HostVeth))
			if damaged(p.Damage) {
				bad = append(bad, id.pod[p.Name])
			}
		}
		fmt.Fprintf(&b, "  end\n")
		fmt.Fprintf(&b, "  %s_eth0 --- underlay\n", nid)
		for _, p := range n.Pods {
			if n.Bridge != "" {
				fmt.Fprintf(&b, "  %s_br --- %s\n", nid, id.pod[p.Name])
			} else {
				fmt.Fprintf(&b, "  %s_eth0 -. %s .- %s\n", nid, label(p.HostVeth), id.pod[p.Name])
			}
		}
		if damaged(n.Damage) {
			bad = append(bad, nid)
		}
	}
	for _, tn := range t.Tunnels {
		from, to := id.node[tn.From], id.node[tn.To]
		if tn.Kind == topo.TunnelVXLAN {
			fmt.Fprintf(&b, "  %s_vtep -. \"%s\" .-> %s_vtep\n", from, label(tunnelText(tn)), to)
		} else {
			fmt.Fprintf(&b, "  %s_eth0 -- \"%s\" --> %s_eth0\n", from, label(tunnelText(tn)), to)
		}
	}
	for i, s := range t.Services {
		fmt.Fprintf(&b, "  svc%d{{\"%s\"}}\n", i, label(serviceText(s)))
		for _, e := range s.Endpoints {
			if pid, ok := id.pod[e]; ok {
				fmt.Fprintf(&b, "  svc%d --> %s\n", i, pid)
			}
		}
	}
	if len(bad) > 0 {
		b.WriteString("  classDef damaged stroke:#d00,stroke-width:3px,stroke-dasharray:5 3\n")
		fmt.Fprintf(&b, "  class %s damaged\n", strings.Join(bad, ","))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// DOT writes the topology as a Graphviz graph, one cluster per node.
func DOT(w io.Writer, t *topo.Topology) error {
	id := newIDs(t)
	var b strings.Builder
	fmt.Fprintf(&b, "// lab %s, backend %s: read back from the kernel by klab graph\n", t.Lab, t.Backend)
	fmt.Fprintf(&b, "digraph %q {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n", t.Lab)
	red := func(d bool) string {
		if d {
			return ", color=red, style=dashed"
		}
		return ""
	}
	fmt.Fprintf(&b, "  underlay [label=\"%s %s\", shape=box3d%s];\n", label(t.Underlay.Bridge), label(t.Underlay.CIDR), red(!t.Underlay.Exists || len(t.Problems) > 0))
	if t.External != nil {
		fmt.Fprintf(&b, "  external [label=\"external %s\", shape=ellipse];\n  external -> underlay [dir=none];\n", label(strings.Join(t.External.Addrs, " ")))
	}
	for _, n := range t.Nodes {
		nid := id.node[n.Name]
		fmt.Fprintf(&b, "  subgraph cluster_%s {\n    label=\"%s\";%s\n", nid, label(nodeText(n)), strings.ReplaceAll(red(damaged(n.Damage)), ",", ""))
		fmt.Fprintf(&b, "    %s_eth0 [label=\"eth0 %s\"];\n", nid, label(n.IP))
		if n.VTEP != nil {
			fmt.Fprintf(&b, "    %s_vtep [label=\"%s\\n%s\"];\n", nid, label(vtepText(n.VTEP)), label(n.VTEP.MAC))
		}
		if n.Bridge != "" {
			fmt.Fprintf(&b, "    %s_br [label=\"%s %s\"];\n", nid, label(n.Bridge), label(n.BridgeAddr))
		}
		for _, p := range n.Pods {
			fmt.Fprintf(&b, "    %s [label=\"%s\\n%s\", shape=component%s];\n", id.pod[p.Name], label(podText(p)), label(p.HostVeth), red(damaged(p.Damage)))
		}
		b.WriteString("  }\n")
		fmt.Fprintf(&b, "  %s_eth0 -> underlay [dir=none];\n", nid)
		for _, p := range n.Pods {
			up := nid + "_br"
			if n.Bridge == "" {
				up = nid + "_eth0"
			}
			fmt.Fprintf(&b, "  %s -> %s [dir=none, label=\"%s\"];\n", up, id.pod[p.Name], label(p.HostVeth))
		}
	}
	for _, tn := range t.Tunnels {
		from, to := id.node[tn.From]+"_eth0", id.node[tn.To]+"_eth0"
		style := "solid"
		if tn.Kind == topo.TunnelVXLAN {
			from, to, style = id.node[tn.From]+"_vtep", id.node[tn.To]+"_vtep", "dashed"
		}
		fmt.Fprintf(&b, "  %s -> %s [style=%s, label=\"%s\", constraint=false];\n", from, to, style, label(tunnelText(tn)))
	}
	for i, s := range t.Services {
		fmt.Fprintf(&b, "  svc%d [label=\"%s\", shape=hexagon];\n", i, label(serviceText(s)))
		for _, e := range s.Endpoints {
			if pid, ok := id.pod[e]; ok {
				fmt.Fprintf(&b, "  svc%d -> %s;\n", i, pid)
			}
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// ASCII writes the topology for a terminal: the underlay, each node with
// its devices and pods, the tunnels, the services, and what is damaged.
func ASCII(w io.Writer, t *topo.Topology) error {
	var b strings.Builder
	fmt.Fprintf(&b, "lab %s (%s)\n", t.Lab, t.Backend)
	ul := fmt.Sprintf("%s %s", t.Underlay.Bridge, t.Underlay.CIDR)
	if !t.Underlay.Exists {
		ul += "  !! missing"
	}
	fmt.Fprintf(&b, "[%s] ports: %s\n", ul, strings.Join(t.Underlay.Ports, " "))
	if t.External != nil {
		fmt.Fprintf(&b, "  +-- external %s\n", strings.Join(t.External.Addrs, " "))
	}
	for _, n := range t.Nodes {
		fmt.Fprintf(&b, "  +-- %s", nodeText(n))
		if damaged(n.Damage) {
			b.WriteString("  !! damaged")
		}
		b.WriteByte('\n')
		fmt.Fprintf(&b, "  |     eth0 %s\n", n.IP)
		if n.VTEP != nil {
			fmt.Fprintf(&b, "  |     %s mac %s\n", vtepText(n.VTEP), n.VTEP.MAC)
		}
		if n.Bridge != "" {
			fmt.Fprintf(&b, "  |     %s %s\n", n.Bridge, n.BridgeAddr)
		}
		for _, p := range n.Pods {
			fmt.Fprintf(&b, "  |       +-- %-14s %s", p.HostVeth, podText(p))
			if damaged(p.Damage) {
				b.WriteString("  !! damaged")
			}
			b.WriteByte('\n')
		}
	}
	if len(t.Tunnels) > 0 {
		b.WriteString("tunnels:\n")
		for _, tn := range t.Tunnels {
			arrow := "==>"
			if tn.Kind == topo.TunnelRoute {
				arrow = "-->"
			}
			fmt.Fprintf(&b, "  %s %s %s  %s\n", tn.From, arrow, tn.To, tunnelText(tn))
		}
	}
	if len(t.Services) > 0 {
		b.WriteString("services:\n")
		for _, s := range t.Services {
			fmt.Fprintf(&b, "  %s -> %s\n", serviceText(s), strings.Join(s.Endpoints, " "))
		}
	}
	var probs []string
	probs = append(probs, t.Problems...)
	for _, n := range t.Nodes {
		probs = append(probs, n.Damage...)
		for _, p := range n.Pods {
			probs = append(probs, p.Damage...)
		}
	}
	if len(probs) > 0 {
		b.WriteString("damaged (as klab list reports it):\n")
		for _, p := range probs {
			fmt.Fprintf(&b, "  %s\n", p)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
