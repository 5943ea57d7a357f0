package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/spf13/cobra"
)

func newTracerouteCmd() *cobra.Command {
	var o probe.TracerouteOptions
	cmd := &cobra.Command{
		Use:   "traceroute FROM TARGET",
		Short: "List the routers between a pod or node and a target, with rising-TTL probes",
		Long: `Trace the route from inside a pod's or node's namespace with klab's own
traceroute (nothing needs to be installed): UDP datagrams to port 33434 and up
(ICMP echo requests with --icmp), three per hop, with TTL 1, 2, 3, ... Each
router that drops a probe whose TTL ran out answers with ICMP time exceeded
from its own address; the target answers port unreachable (or an echo reply).
Addresses of the lab are named: a pod, a node's cni0 or flannel.1, the
underlay's gateway. A VXLAN tunnel is one hop: the outer packet's TTL is not
the inner one's. Exits 0 when the target answered, 1 when it did not.`,
		Example: `  klab traceroute pod-a pod-b       # same node: one hop
  klab traceroute pod-a 10.244.2.2  # across flannel.1: cni0, the peer's flannel.1, the pod
  klab traceroute pod-a external --icmp`,
		Args:              exactArgs(2, "FROM and TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.MaxHops < 1 || o.MaxHops > 255 {
				return fmt.Errorf("--max-hops %d is out of range: use 1-255", o.MaxHops)
			}
			var names map[netip.Addr]string
			ns, dst, err := sourceAndTarget(args[0], args[1], func(c *cluster.Cluster) { names = hopNames(c) })
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			kind := "udp"
			if o.ICMP {
				kind = "icmp"
			}
			fmt.Printf("traceroute to %s (%s) from %s, %d hops max, %s probes\n", args[1], dst, args[0], o.MaxHops, kind)
			o.OnHop = func(h probe.Hop) { fmt.Println(formatHop(h, names)) }
			hops, err := probe.Traceroute(ctx, ns, dst, o)
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			if len(hops) == 0 || !hops[len(hops)-1].Final() || !reached(hops[len(hops)-1]) {
				return exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.ICMP, "icmp", "I", false, "probe with ICMP echo requests instead of UDP")
	f.IntVarP(&o.MaxHops, "max-hops", "m", 30, "highest TTL to try")
	f.IntVarP(&o.Probes, "queries", "q", 3, "probes per hop")
	f.DurationVarP(&o.Timeout, "wait", "w", time.Second, "time to wait for each probe's answer")
	f.IntVarP(&o.Port, "port", "p", 33434, "first UDP destination port")
	return cmd
}

func reached(h probe.Hop) bool {
	for _, p := range h.Probes {
		if p.Reached {
			return true
		}
	}
	return false
}

// formatHop prints a hop like traceroute(8) -n does, each address followed
// by its name in the lab: " 2  10.244.2.0 (node2 flannel.1)  0.321 ms ...".
func formatHop(h probe.Hop, names map[netip.Addr]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%2d ", h.TTL)
	var last netip.Addr
	for _, p := range h.Probes {
		if !p.From.IsValid() {
			if p.Flag != "" {
				b.WriteString(" " + p.Flag)
			} else {
				b.WriteString(" *")
			}
			continue
		}
		if p.From != last {
			b.WriteString(" " + p.From.String())
			if n := names[p.From]; n != "" {
				b.WriteString(" (" + n + ")")
			}
			last = p.From
		}
		fmt.Fprintf(&b, "  %.3f ms", ms(p.RTT))
		if p.Flag != "" {
			b.WriteString(" " + p.Flag)
		}
	}
	return b.String()
}

// hopNames names the lab's addresses a hop can answer from.
func hopNames(c *cluster.Cluster) map[netip.Addr]string {
	m := map[netip.Addr]string{}
	l := c.Lab
	for _, n := range l.Nodes {
		m[n.IP] = n.Name + " eth0"
		if n.PodCIDR.IsValid() {
			base := n.PodCIDR.Addr()
			m[base.Next()] = n.Name + " cni0"
			if l.Backend != "host-gw" {
				m[base] = n.Name + " flannel.1"
			}
		}
	}
	for _, p := range l.Pods {
		m[p.IP] = p.Name
	}
	if l.UnderlayGateway.IsValid() {
		m[l.UnderlayGateway] = "underlay gateway"
	}
	m[cluster.ExternalIP] = cluster.ExternalName
	return m
}
