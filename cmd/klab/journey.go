package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/journey"
	"github.com/spf13/cobra"
)

func newTraceJourneyCmd() *cobra.Command {
	var (
		proto    string
		port     int
		pcapPath string
		graphOut string
		timeout  time.Duration
		noEnrich bool
	)
	cmd := &cobra.Command{
		Use:   "journey FROM TARGET",
		Short: "Send one probe from a pod or node and show its path hop by hop, with every rewrite",
		Long: `journey computes the path a packet from FROM (a pod or node) to TARGET takes
in the lab — pod eth0, its veth in the node, cni0, flannel.1, the node's eth0,
the underlay bridge, and the same in reverse on the far node; cni0 alone
between pods of one node; no flannel.1 with host-gw — arms a capture point at
each (bridges in promiscuous mode), sends ONE probe, and prints where the
probe and its reply were seen and what changed at each hop: +vxlan/-vxlan
with the outer addresses and VNI, dnat, snat (MASQUERADE), ttl, mac.

TARGET is a pod, a node, an address, a Service name (once services exist) or
HOST:PORT. The probe is an ICMP echo request, or with --proto tcp (the
default when a port is given) one TCP connection, whose SYN is followed, or
with --proto udp one datagram and its answer (to port 53 a DNS query, so
'klab trace journey pod-a 10.96.0.10:53 --proto udp' follows a lookup to a
DNS pod and back).
When the target is not a pod or node (a ClusterIP), every point of the lab
is armed, since the DNAT decides where the packet goes. The journey also
shows the conntrack entry of the connection in each node (original and reply
tuples: the rewrite) and the iptables rules whose counters the probe raised
(which KUBE-SVC / KUBE-SEP chain it took). Exits 1 when the probe got no
answer.`,
		Example: `  sudo klab trace journey pod-a pod-c              # cross-node: +vxlan / -vxlan
  sudo klab trace journey pod-a pod-b              # same node: cni0 only
  sudo klab trace journey pod-a pod-c:8080         # one TCP SYN
  sudo klab trace journey pod-a 10.96.0.10:80      # a ClusterIP: the DNAT hop
  sudo klab trace journey node1 pod-c -o json --pcap /tmp/j.pcapng`,
		Args:              exactArgs(2, "FROM and TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			host, tport, err := journey.SplitTarget(args[1])
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			if tport != 0 && port != 0 && tport != port {
				return exitError{code: 2, msg: fmt.Sprintf("target %s names port %d but --port says %d: give the port once", args[1], tport, port)}
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
				return err
			}
			dst, err := resolveHost(c, host)
			lab := c.Lab
			c.Close() // do not hold the lab lock while capturing
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			plan, err := journey.PlanPath(lab, args[0], args[1], dst, proto, port)
			if err != nil {
				return exitError{code: 2, msg: err.Error()}
			}
			var pcap io.Writer
			if pcapPath != "" {
				f, err := os.Create(pcapPath)
				if err != nil {
					return exitError{code: 1, msg: fmt.Sprintf("cannot write the pcap file %s: %v", pcapPath, err)}
				}
				defer f.Close()
				pcap = f
			}
			ctx, cancel := signalContext()
			defer cancel()
			rep, err := journey.Run(ctx, lab, plan, journey.Options{Timeout: timeout, Pcap: pcap, NoEnrich: noEnrich})
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			if graphOut != "" {
				if err := writeJourneyGraph(graphOut, lab, rep); err != nil {
					return err
				}
			}
			if jsonOutput() {
				b, err := json.Marshal(rep)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
			} else {
				fmt.Fprint(cmd.OutOrStdout(), rep.String())
			}
			switch {
			case rep.Journey == nil:
				return exitError{code: 1, msg: "the probe was not captured anywhere"}
			case len(rep.Journey.Reply) == 0 || !answered(rep.Probe):
				// A reply seen on the way is not enough: it must reach
				// the source (egress without masquerade: the external
				// host answers, and the answer is lost in the underlay).
				return exitError{code: 1, msg: fmt.Sprintf("the probe got no answer (%s)", rep.Probe)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&proto, "proto", "", "probe: icmp (an echo request), tcp (one connection's SYN) or udp (one datagram: a DNS query to port 53); default icmp, tcp when a port is given")
	f.IntVarP(&port, "port", "p", 0, "TCP destination port (or write TARGET as HOST:PORT)")
	f.StringVar(&pcapPath, "pcap", "", "also write every captured packet to this pcapng file")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for the probe's answer")
	f.StringVar(&graphOut, "graph", "", "also draw the journey into `FILE` (.svg over the lab's picture, .mmd Mermaid, else ASCII; see klab graph journey)")
	f.BoolVar(&noEnrich, "no-enrich", false, "skip the conntrack and iptables counter look-ups")
	return cmd
}

// answered tells from a journey's probe outcome whether the source got an
// answer: an echo reply, a connection, or a TCP reset.
func answered(probe string) bool {
	return probe == "reply" || probe == "connected" || strings.HasPrefix(probe, "refused") || strings.HasPrefix(probe, "answered")
}
