package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/graph"
	"github.com/klab-dev/klab/pkg/journey"
	"github.com/klab-dev/klab/pkg/topo"
	"github.com/spf13/cobra"
)

// graphFormats are the -o values of 'klab graph' ("text" is ascii).
var graphFormats = map[string]func(io.Writer, *topo.Topology) error{
	"text": graph.ASCII, "ascii": graph.ASCII, "mermaid": graph.Mermaid, "dot": graph.DOT, "svg": graph.SVG,
	"json": func(w io.Writer, t *topo.Topology) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(t)
	},
}

func newGraphCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Draw the lab as the kernel has it: Mermaid, DOT, SVG or ASCII",
		Long: `graph reads the lab back from the kernel — one netlink read per namespace,
in parallel — and draws it: the underlay switch and the external host, each node
with eth0, flannel.1 (VNI, port, VTEP MAC) and cni0, its pods with their
addresses and host-side veths, the tunnels between nodes (an FDB entry of
flannel.1 towards the peer, or a host-gw route via the peer's eth0) and the
Services with their ClusterIP and endpoints. What 'klab list' would flag as
damaged is drawn dashed red.

-o ascii (the default) prints for the terminal; -o mermaid and -o dot print
text for Markdown and Graphviz; -o svg is a picture drawn by klab itself (no
Graphviz needed); -o json is the topology read back.`,
		Example: `  sudo klab graph
  sudo klab graph -o svg > lab.svg
  sudo klab graph -o mermaid >> notes.md
  sudo klab graph journey pod-a pod-c -o svg > journey.svg`,
		Args: unknownSubcommand, // 'klab graph journy' is a typo, not an argument
		RunE: func(cmd *cobra.Command, args []string) error {
			render, ok := graphFormats[globals.output]
			if !ok {
				return exitError{code: 2, msg: fmt.Sprintf("output format %q is not known to klab graph: use -o ascii, mermaid, dot, svg or json", globals.output)}
			}
			t, err := readTopology()
			if err != nil {
				return err
			}
			var b bytes.Buffer
			if err := render(&b, t); err != nil {
				return err
			}
			_, err = os.Stdout.Write(b.Bytes())
			return err
		},
	}
	cmd.AddCommand(newGraphJourneyCmd())
	return cmd
}

// readTopology reads the current lab's topology without locking the lab:
// a picture changes nothing, and must not wait for a long build.
func readTopology() (*topo.Topology, error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	name, err := labName()
	if err != nil {
		return nil, err
	}
	l, err := cluster.Load(globals.stateDir, name)
	if errors.Is(err, cluster.ErrNoLab) {
		return nil, exitError{code: 1, msg: fmt.Sprintf("lab %s does not exist: 'klab list' shows the labs that do (choose one with --lab), or build one with 'klab run flannel-crossnode'", name)}
	}
	if err != nil {
		return nil, err
	}
	return topo.Read(l), nil
}

func newGraphJourneyCmd() *cobra.Command {
	var (
		proto   string
		port    int
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "journey FROM TARGET",
		Short: "Send one probe (as 'klab trace journey') and draw its path over the lab",
		Long: `graph journey runs the probe of 'klab trace journey FROM TARGET' and draws
the path it took: each capture point in order with what changed there (+vxlan
and -vxlan with the outer header, dnat and snat before -> after, ttl), then the
reply, then the rules and the NetworkPolicy verdict the probe met. -o svg draws
it over the lab's picture, -o mermaid as a flowchart, -o ascii (default) for
the terminal.`,
		Example: `  sudo klab graph journey pod-a pod-c -o svg > docs/img/journey.svg
  sudo klab graph journey pod-a web:80 -o mermaid`,
		Args:              exactArgs(2, "FROM and TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch globals.output {
			case "text", "ascii", "mermaid", "svg", "json":
			default:
				return exitError{code: 2, msg: fmt.Sprintf("output format %q is not known to klab graph journey: use -o ascii, mermaid, svg or json", globals.output)}
			}
			rep, lab, err := probeJourney(args[0], args[1], proto, port, timeout)
			if err != nil {
				return err
			}
			j := graph.FromReport(rep)
			var b bytes.Buffer
			switch globals.output {
			case "mermaid":
				err = graph.JourneyMermaid(&b, j)
			case "svg":
				err = graph.JourneySVG(&b, topo.Read(lab), j)
			case "json":
				err = json.NewEncoder(&b).Encode(j)
			default:
				err = graph.JourneyASCII(&b, j)
			}
			if err != nil {
				return err
			}
			os.Stdout.Write(b.Bytes())
			if rep.Journey == nil || !answered(rep.Probe) {
				return exitError{code: 1, msg: fmt.Sprintf("the probe got no answer (%s)", rep.Probe)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&proto, "proto", "", "probe: icmp or tcp; default icmp, tcp when a port is given")
	f.IntVarP(&port, "port", "p", 0, "TCP destination port (or write TARGET as HOST:PORT)")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for the probe's answer")
	return cmd
}

// probeJourney plans and runs one journey probe of the current lab, as
// 'klab trace journey' does; bad input is an exitError with code 2.
func probeJourney(from, target, proto string, port int, timeout time.Duration) (*journey.Report, *cluster.Lab, error) {
	host, tport, err := journey.SplitTarget(target)
	if err != nil {
		return nil, nil, exitError{code: 2, msg: err.Error()}
	}
	if tport != 0 && port != 0 && tport != port {
		return nil, nil, exitError{code: 2, msg: fmt.Sprintf("target %s names port %d but --port says %d: give the port once", target, tport, port)}
	}
	if port == 0 {
		port = tport
	}
	if proto == "" {
		proto = journey.ICMP
		if port != 0 {
			proto = journey.TCP
		}
	}
	c, err := openLab(nil)
	if err != nil {
		return nil, nil, err
	}
	dst, err := resolveHost(c, host)
	lab := c.Lab
	c.Close() // do not hold the lab lock while capturing
	if err != nil {
		return nil, nil, exitError{code: 2, msg: err.Error()}
	}
	plan, err := journey.PlanPath(lab, from, target, dst, proto, port)
	if err != nil {
		return nil, nil, exitError{code: 2, msg: err.Error()}
	}
	ctx, cancel := signalContext()
	defer cancel()
	rep, err := journey.Run(ctx, lab, plan, journey.Options{Timeout: timeout})
	if err != nil {
		return nil, nil, exitError{code: 1, msg: err.Error()}
	}
	return rep, lab, nil
}

// writeJourneyGraph draws a journey report into path, in the format its
// extension names: .svg, .mmd or .mermaid, anything else ASCII.
func writeJourneyGraph(path string, lab *cluster.Lab, rep *journey.Report) error {
	j := graph.FromReport(rep)
	var b bytes.Buffer
	var err error
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		err = graph.JourneySVG(&b, topo.Read(lab), j)
	case ".mmd", ".mermaid":
		err = graph.JourneyMermaid(&b, j)
	default:
		err = graph.JourneyASCII(&b, j)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return exitError{code: 1, msg: fmt.Sprintf("cannot write the journey graph %s: %v", path, err)}
	}
	return nil
}
