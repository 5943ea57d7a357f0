package main

import (
	"fmt"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

func newProxyModeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy-mode",
		Short: "Show or switch kube-proxy's mode (iptables or nftables) on every node of the lab",
	}
	cmd.AddCommand(newProxyModeSetCmd(), newProxyModeShowCmd())
	return cmd
}

func newProxyModeSetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "set iptables|nftables",
		Short: "Rewrite every node for another proxy mode, as kube-proxy does when its mode changes",
		Long: `Switch the lab's kube-proxy (and flannel) to another mode on every node.

To nftables: each node loses its iptables KUBE-* and FLANNEL-* chains and the
jumps into them (kube-proxy's CleanupLeftovers), then gets 'table ip
kube-proxy' and flannel's 'table ip flannel-ipv4' in one nf_tables
transaction sent over netlink. To iptables: the reverse. NetworkPolicy rules
stay in iptables in both modes. The pods, their connections' conntrack
entries and the services are untouched; --dry-run prints the plan.

ipvs is refused: this kernel has no IP_VS (see 'klab doctor'). A lab whose
rules differ from its state (an interrupted service change or switch) is
refused until 'klab repair' has put them back.`,
		Example:           "  klab proxy-mode set nftables\n  klab proxy-mode set iptables --dry-run",
		Args:              exactArgs(1, "the mode: iptables or nftables"),
		ValidArgsFunction: fixedCompletion(cluster.ProxyModes()...),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cluster.ValidateProxyMode(args[0]); err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			was := c.Lab.Mode()
			if err := c.SetProxyMode(args[0]); err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil {
				return err
			}
			if was == args[0] {
				fmt.Fprintf(out(), "lab %s already runs kube-proxy in %s mode: nothing to do\n", c.Lab.Name, was)
				return nil
			}
			fmt.Fprintf(out(), "lab %s: kube-proxy and flannel switched from %s to %s mode on %d node(s)\n", c.Lab.Name, was, args[0], len(c.Lab.Nodes))
			return nil
		},
	}
}

func newProxyModeShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "show",
		Short:   "Print the lab's proxy mode",
		Example: "  klab proxy-mode show",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if jsonOutput() {
				return printJSON(map[string]string{"lab": c.Lab.Name, "proxyMode": c.Lab.Mode()})
			}
			fmt.Println(c.Lab.Mode())
			return nil
		},
	}
}
