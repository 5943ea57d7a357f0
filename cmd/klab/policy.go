package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/policy"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Ask why the NetworkPolicies drop or let through a connection",
	}
	var proto string
	explain := &cobra.Command{
		Use:   "explain FROM TO[:PORT]",
		Short: "Name the verdict for a connection, computed from the policies and confirmed by the kernel",
		Long: `Evaluate the lab's NetworkPolicies for one connection from pod FROM to pod (or
address) TO on PORT (default 80): which direction isolates it, which policy and
rule admit it, or which side drops it and why. Then klab makes the connection
for real and reads the packet counter of the deciding drop rule in the node's
namespace before and after, so the answer is the kernel's, not only the
policy text's.`,
		Example: `  klab policy explain other/client db:6379
  klab policy explain x/a y/b:81 --protocol udp`,
		Args: exactArgs(2, "FROM and TO[:PORT]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := corev1.ProtocolTCP
			switch strings.ToLower(proto) {
			case "tcp":
			case "udp":
				p = corev1.ProtocolUDP
			default:
				return fmt.Errorf("--protocol %q is not known: use tcp or udp", proto)
			}
			to, port := args[1], 80
			if h, ps, ok := strings.Cut(args[1], ":"); ok {
				n, err := strconv.Atoi(ps)
				if err != nil || n < 1 || n > 65535 {
					return fmt.Errorf("port %q is not a number from 1 to 65535: write TO:PORT, like db:6379", ps)
				}
				to, port = h, n
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if c.Lab.Pod(args[0]) == nil {
				return fmt.Errorf("%q is not a pod of lab %s: the source of a connection to explain is a pod (NAME or NAMESPACE/NAME)", args[0], c.Lab.Name)
			}
			conn := policy.Connection{Src: policy.PodEndpoint(cluster.NormalizeKey(args[0])), Protocol: p, Port: int32(port)}
			if ip, err := netip.ParseAddr(to); err == nil {
				conn.Dst = policy.IPEndpoint(ip)
			} else if to == cluster.ExternalName {
				conn.Dst = policy.IPEndpoint(cluster.ExternalIP)
			} else if c.Lab.Pod(to) != nil {
				ns, name := cluster.SplitKey(to)
				conn.Dst = policy.PodEndpoint(ns + "/" + name)
			} else {
				return fmt.Errorf("%q is neither a pod of lab %s nor an address", to, c.Lab.Name)
			}
			x, err := c.ExplainPolicy(c.Lab.PolicyState(), conn, time.Second)
			if err != nil {
				return err
			}
			if jsonOutput() {
				return printJSON(x)
			}
			fmt.Println(x.Text)
			if !x.Confirmed {
				return exitError{code: 1}
			}
			return nil
		},
	}
	explain.Flags().StringVar(&proto, "protocol", "tcp", "tcp or udp")
	cmd.AddCommand(explain)
	return cmd
}
