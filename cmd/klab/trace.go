package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/trace"
	"github.com/spf13/cobra"
)

func init() { register(newTraceCmd) }

// resolvePoints turns capture point specs ("node1:eth0", "pod-a:eth0",
// "node1:*") of a lab into trace points. The default looks the object's
// namespace up directly; the lab layer may replace it with one that knows
// the lab's objects (and their aliases).
var resolvePoints = defaultResolvePoints

func defaultResolvePoints(lab string, specs []string) ([]trace.Point, error) {
	var out []trace.Point
	for _, spec := range specs {
		obj, iface, ok := strings.Cut(spec, ":")
		if !ok || obj == "" || iface == "" {
			return nil, fmt.Errorf("capture point %q is not OBJECT:INTERFACE; write it like node1:eth0, pod-a:eth0 or node1:*", spec)
		}
		if err := netns.ValidateObject("object", obj); err != nil {
			return nil, fmt.Errorf("unknown capture point %q: %w", spec, err)
		}
		ns := netns.Name(lab, obj)
		if !netns.Exists(ns) {
			return nil, fmt.Errorf("unknown capture point %q: lab %s has no node or pod named %s", spec, lab, obj)
		}
		if iface != "*" {
			h, err := netns.Handle(ns)
			if err != nil {
				return nil, err
			}
			_, lerr := h.LinkByName(iface)
			h.Close()
			if lerr != nil {
				return nil, fmt.Errorf("unknown capture point %q: %s has no interface %s (use %s:* for all of them)", spec, obj, iface, obj)
			}
			out = append(out, trace.Point{Label: obj + "/" + iface, NS: ns, Iface: iface})
			continue
		}
		h, err := netns.Handle(ns)
		if err != nil {
			return nil, err
		}
		links, err := h.LinkList()
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("list interfaces of %s: %w", obj, err)
		}
		for _, l := range links {
			name := l.Attrs().Name
			if name == "lo" {
				continue
			}
			out = append(out, trace.Point{Label: obj + "/" + name, NS: ns, Iface: name})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no interfaces to capture on in %s", strings.Join(specs, " "))
	}
	return out, nil
}

func newTraceCmd() *cobra.Command {
	var (
		filter   string
		count    int
		duration time.Duration
		pcapPath string
		promisc  bool
		journey  bool
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
MACs), and its reply. Stop with Ctrl-C, --count or --duration.`,
		Example: `  sudo klab trace node1:eth0 node2:eth0 --filter 'inner icmp'
  sudo klab trace pod-a:eth0 node1:eth0 node2:eth0 pod-b:eth0 --count 8 --journey
  sudo klab trace node1:* --filter 'vni 1' --pcap /tmp/vxlan.pcapng -o json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lab := globals.lab
			if lab == "" {
				lab = "default"
			}
			flt, err := trace.ParseFilter(filter)
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			points, err := resolvePoints(lab, args)
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			var pw *trace.PcapngWriter
			var pf *os.File
			if pcapPath != "" {
				if pf, err = os.Create(pcapPath); err != nil {
					return exitError{code: 1, msg: fmt.Sprintf("cannot write the pcap file %s: %v", pcapPath, err)}
				}
				defer pf.Close()
				if pw, err = trace.NewPcapngWriter(pf, points, trace.DefaultSnapLen, true); err != nil {
					return err
				}
			}
			c, err := trace.Open(points, trace.Options{Filter: flt, Promisc: promisc, Count: count, Duration: duration})
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			defer c.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			out := bufio.NewWriter(cmd.OutOrStdout())
			json := globals.output == "json"
			var kept []trace.Packet
			var line []byte
			n := 0
			fmt.Fprintf(cmd.ErrOrStderr(), "capturing on %s%s (Ctrl-C to stop)\n", pointList(points), filterNote(flt))
			err = c.Run(ctx, func(p *trace.Packet) error {
				n++
				if journey {
					kept = append(kept, p.Clone())
				}
				if pw != nil {
					if err := pw.Write(p); err != nil {
						return err
					}
				}
				if json && !journey {
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
			if pw != nil {
				if ferr := pw.Flush(); ferr != nil && err == nil {
					err = ferr
				}
			}
			if err != nil {
				return err
			}
			var drops uint64
			for _, st := range c.Stats() {
				drops += st.Drops
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d packets captured, %d dropped by the kernel\n", n, drops)
			if journey {
				return printJourney(cmd, out, kept, points, json)
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
	f.BoolVar(&journey, "journey", false, "after capturing, follow the first matching packet across the points (given in path order)")
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

func printJourney(cmd *cobra.Command, out *bufio.Writer, pkts []trace.Packet, points []trace.Point, asJSON bool) error {
	probe := trace.FindProbe(pkts, nil)
	if probe < 0 {
		return exitError{code: 1, msg: "no IP packet was captured, so there is no journey to show; send traffic while trace runs"}
	}
	var path []string
	for _, p := range points {
		path = append(path, p.String())
	}
	j, err := trace.Follow(pkts, probe, path)
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
