package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/journey"
	"github.com/klab-dev/klab/trace"
	"github.com/spf13/cobra"
)

// resolvePoints turns capture point specs ("node1:eth0", "pod-a",
// "pod-a:host", "node1:*", "underlay:*") of a lab into trace points, using
// the lab's state (see journey.Resolve). It is a variable so tests and
// other layers can replace it.
var resolvePoints = labResolvePoints

func labResolvePoints(lab string, specs []string) ([]trace.Point, error) {
	l, err := cluster.Load(globals.stateDir, lab)
	if err != nil {
		if errors.Is(err, cluster.ErrNoLab) {
			return nil, fmt.Errorf("lab %s is not up, so it has no capture points: build it first (klab node add node1) or pick another with --lab", lab)
		}
		return nil, err
	}
	return journey.Resolve(l, specs, journey.NetlinkLinks)
}

func newTraceCmd() *cobra.Command {
	var (
		filter   string
		count    int
		duration time.Duration
		pcapPath string
		promisc  bool
		follow   bool
	)
	cmd := &cobra.Command{
		Use:   "trace POINT... [--filter EXPR]",
		Short: "Capture packets at nodes' and pods' interfaces, VXLAN decoded",
		Long: `trace captures packets at one or more capture points at once — an interface
inside a node's or pod's namespace, written OBJECT:INTERFACE (node1:eth0,
pod-a:eth0, node1:flannel.1, or node1:* for all of node1's interfaces) — and
prints one line per packet: time, point, direction, outer headers, the VXLAN
VNI and the inner (pod-to-pod) headers. UDP 8472 (flannel) and 4789 are
decoded as VXLAN.

--filter takes tcpdump-like expressions that know about VXLAN (see
trace/FILTERS.md): host, net, port, proto, icmp/tcp/udp/arp, vni, vxlan,
inner/outer, and/or/not. --pcap writes a pcapng file with one interface per
capture point, for Wireshark (decode 8472 with -d udp.port==8472,vxlan).
--journey follows the first matching packet across the points, in the order
given, and shows what changed at each hop (+VXLAN/-VXLAN, DNAT, SNAT, TTL,
MACs), and its reply. Stop with Ctrl-C, --count or --duration; with both
--count and --duration, capturing fewer than --count packets in time exits 1
(a lab step can assert that a packet crossed a point).

POINT may also be a pod alone (its eth0), POD:host (the pod's veth in its
node), NODE:underlay (the node's port on the underlay bridge) or underlay:*.
Bridges (cni0, underlay0) are captured in promiscuous mode.

'klab trace journey FROM TARGET' computes the path itself, sends one probe
and shows its journey (see 'klab trace journey --help').`,
		Example: `  sudo klab trace node1:eth0 node2:eth0 --filter 'inner icmp'
  sudo klab trace pod-a:eth0 node1:eth0 node2:eth0 pod-b:eth0 --count 8 --journey
  sudo klab trace node1:* --filter 'vni 1' --pcap /tmp/vxlan.pcapng -o json
  sudo klab trace underlay:* --count 1 --duration 10s --filter 'vni 1 and inner icmp' &
  sudo klab trace journey pod-a pod-c`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lab, err := labName()
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			if err := needRoot(); err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			flt, err := trace.ParseFilter(filter)
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			points, err := resolvePoints(lab, args)
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			var pcap io.Writer
			if pcapPath != "" {
				pf, err := os.Create(pcapPath)
				if err != nil {
					return exitError{code: 1, msg: fmt.Sprintf("cannot write the pcap file %s: %v", pcapPath, err)}
				}
				defer pf.Close()
				pcap = pf
			}
			rec, err := journey.Record(points, trace.Options{Filter: flt, Promisc: promisc, Count: count, Duration: duration}, pcap, follow)
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			defer rec.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			out := bufio.NewWriter(cmd.OutOrStdout())
			json := globals.output == "json"
			var line []byte
			n := 0
			fmt.Fprintf(cmd.ErrOrStderr(), "capturing on %s%s (Ctrl-C to stop)\n", pointList(points), filterNote(flt))
			err = rec.Run(ctx, func(p *trace.Packet) error {
				n++
				if json && !follow {
					b, err := p.MarshalJSON()
					if err != nil {
						return err
					}
					out.Write(b)
					out.WriteByte('\n')
				} else if !json {
					line = p.AppendText(line[:0])
					line = append(line, '\n')
					out.Write(line)
				}
				return out.Flush()
			})
			if err != nil {
				return err
			}
			var drops uint64
			for _, st := range rec.Stats() {
				drops += st.Drops
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d packets captured, %d dropped by the kernel\n", n, drops)
			if count > 0 && duration > 0 && n < count && ctx.Err() == nil {
				return exitError{code: 1, msg: fmt.Sprintf("captured %d of the %d packets asked for%s within %s", n, count, filterNote(flt), duration)}
			}
			if follow {
				return printJourney(out, rec, json)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&filter, "filter", "f", "", "filter expression, e.g. 'inner host 10.244.2.3 and icmp' (see trace/FILTERS.md)")
	f.IntVarP(&count, "count", "c", 0, "stop after this many packets (0: no limit)")
	f.DurationVarP(&duration, "duration", "d", 0, "stop after this long, e.g. 10s (0: no limit)")
	f.StringVar(&pcapPath, "pcap", "", "also write the packets to this pcapng file")
	f.BoolVar(&promisc, "promisc", false, "promiscuous mode (to see bridged pod-to-pod traffic on cni0)")
	cmd.AddCommand(newTraceJourneyCmd())
	f.BoolVar(&follow, "journey", false, "after capturing, follow the first matching packet across the points (given in path order)")
	return cmd
}

func pointList(ps []trace.Point) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}

func filterNote(f *trace.Filter) string {
	if f == nil {
		return ""
	}
	return " matching " + f.String()
}

func printJourney(out *bufio.Writer, rec *journey.Recorder, asJSON bool) error {
	j, err := rec.Follow()
	if err != nil {
		return exitError{code: 1, msg: err.Error()}
	}
	if asJSON {
		b, err := json.Marshal(j)
		if err != nil {
			return err
		}
		out.Write(b)
		out.WriteByte('\n')
	} else {
		out.WriteString(j.String())
	}
	return out.Flush()
}
