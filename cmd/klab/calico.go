package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/klab-dev/klab/pkg/calico"
	"github.com/spf13/cobra"
)

func newCalicoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "calico",
		Short: "The calico backend's BGP: calicoctl node status, stopping and starting a node's BIRD",
		Long: `Commands for a lab built with 'klab node add NODE --backend calico'.

Every node of such a lab runs a real BIRD (Debian's bird2) in its namespace,
configured as calico-node's confd configures it: a full iBGP mesh in AS 64512
announcing each node's IPAM blocks. Its control socket is printed by
'klab calico status', for 'klab exec NODE -- birdc -s SOCKET show protocols'.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCalicoStatusCmd(), newCalicoBGPCmd(), newCalicoPeerCmd(), newCalicoBirdcCmd(), newCalicoGatewayCmd())
	return cmd
}

func newCalicoStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status [NODE]",
		Short: "calicoctl node status: the node's BGP peers as its BIRD sees them",
		Long: `Print what 'calicoctl node status' prints on a node: whether its BIRD runs,
and a table of its BGP sessions (peer address, peer type, BIRD's protocol
state, since when, and the BGP state: Established when routes flow), read
from 'birdc show protocols'. Without NODE, every node in turn.`,
		Example: `  klab calico status node1
  klab exec node1 -- birdc -s "$(klab calico status node1 -o json | jq -r .socket)" show protocols`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			nodes := args
			if len(nodes) == 0 {
				for _, n := range c.Lab.Nodes {
					nodes = append(nodes, n.Name)
				}
			}
			type status struct {
				Node    string              `json:"node"`
				Running bool                `json:"running"`
				Socket  string              `json:"socket"`
				Peers   []calico.PeerStatus `json:"peers"`
			}
			var all []status
			for _, n := range nodes {
				running, peers, err := c.CalicoStatus(n)
				if err != nil {
					return err
				}
				all = append(all, status{n, running, c.BirdSocket(n), peers})
			}
			if globals.output == "json" {
				e := json.NewEncoder(os.Stdout)
				e.SetIndent("", "  ")
				if len(args) == 1 {
					return e.Encode(all[0])
				}
				return e.Encode(all)
			}
			for i, s := range all {
				if len(all) > 1 {
					if i > 0 {
						fmt.Println()
					}
					fmt.Printf("== %s (birdc -s %s)\n", s.Node, s.Socket)
				}
				fmt.Print(calico.RenderStatus(s.Running, s.Peers))
			}
			return nil
		},
	}
}

func newCalicoBGPCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bgp",
		Short: "Stop or start a node's BIRD",
		Args:  cobra.NoArgs,
	}
	for _, on := range []bool{false, true} {
		verb, short := "stop", "Stop a node's BIRD as a crashed calico-node would (SIGKILL): peers keep its routes for the graceful-restart time, then withdraw them"
		if on {
			verb, short = "start", "Start a node's BIRD again: it reconnects to its peers and announces its blocks"
		}
		cmd.AddCommand(&cobra.Command{
			Use:   verb + " NODE",
			Short: short,
			Args:  exactArgs(1, "NODE"),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := openLab(nil)
				if err != nil {
					return err
				}
				defer c.Close()
				if err := c.SetBGP(args[0], on); err != nil {
					failed(c.A)
					return err
				}
				if err := finish(c.A); err != nil {
					return err
				}
				state := "stopped: the other nodes keep its routes for the graceful-restart time"
				if on {
					state = "running"
				}
				fmt.Fprintf(out(), "BIRD on %s %s\n", args[0], state)
				return nil
			},
		})
	}
	return cmd
}

func newCalicoPeerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "BGP peers outside the cluster (Calico's global BGPPeer)",
		Args:  cobra.NoArgs,
	}
	var as int
	add := &cobra.Command{
		Use:   "add IP",
		Short: "Make every node's BIRD peer with a BGP speaker on the underlay",
		Long: `Add a global BGP peer, as a Calico BGPPeer without a node selector: every
node's BIRD gets a Global_<ip> session to IP (on the underlay network) and
announces the pool's blocks to it. With an AS other than the cluster's 64512
the session is eBGP and the nodes are the next hops of their blocks.`,
		Example: `  klab calico peer add 192.168.1.1 --as 64513`,
		Args:    exactArgs(1, "IP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ip, err := netip.ParseAddr(args[0])
			if err != nil {
				return fmt.Errorf("BGP peer %q is not an IPv4 address: write it like 192.168.1.1", args[0])
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.AddBGPPeer(ip, as); err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil {
				return err
			}
			fmt.Fprintf(out(), "BGP peer %s (AS %d) added to every node\n", ip, as)
			return nil
		},
	}
	add.Flags().IntVar(&as, "as", 64512, "the peer's AS number")
	del := &cobra.Command{
		Use:   "del IP",
		Short: "Remove a global BGP peer",
		Args:  exactArgs(1, "IP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ip, err := netip.ParseAddr(args[0])
			if err != nil {
				return fmt.Errorf("BGP peer %q is not an IPv4 address: write it like 192.168.1.1", args[0])
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.DelBGPPeer(ip); err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil {
				return err
			}
			fmt.Fprintf(out(), "BGP peer %s removed\n", ip)
			return nil
		},
	}
	cmd.AddCommand(add, del)
	return cmd
}

func newCalicoBirdcCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "birdc NODE [BIRDC-COMMAND...]",
		Short: "Run birdc against a node's BIRD (default: show protocols)",
		Long: `Run BIRD's own client against the control socket of a node's BIRD: the same
as 'klab exec NODE -- birdc -s SOCKET ...', with the socket found for you
(it is printed first). Without a command, 'show protocols'.`,
		Example: `  klab calico birdc node1
  klab calico birdc node1 show route
  klab calico birdc node1 show protocols all Mesh_192_168_1_102`,
		Args: minArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			bc := args[1:]
			if len(bc) == 0 {
				bc = []string{"show", "protocols"}
			}
			fmt.Fprintf(os.Stderr, "# birdc -s %s %s\n", c.BirdSocket(args[0]), strings.Join(bc, " "))
			out, err := c.Birdc(args[0], bc...)
			fmt.Print(out)
			return err
		},
	}
}

func newCalicoGatewayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Make the underlay's router a BGP peer of every node, so the external host reaches pod IPs",
		Args:  cobra.NoArgs,
	}
	for _, on := range []bool{true, false} {
		verb, short := "on", "Run BIRD on the underlay's router (AS 64513) peering with every node: it learns the pod blocks, and the external host reaches pods without NAT"
		if !on {
			verb, short = "off", "Stop the underlay router's BIRD and remove the BGP peer from the nodes"
		}
		cmd.AddCommand(&cobra.Command{
			Use:   verb,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := openLab(nil)
				if err != nil {
					return err
				}
				defer c.Close()
				if err := c.SetGatewayBGP(on); err != nil {
					failed(c.A)
					return err
				}
				if err := finish(c.A); err != nil {
					return err
				}
				fmt.Fprintf(out(), "the underlay's router %s BGP with every node\n", map[bool]string{true: "now peers by", false: "no longer runs"}[on])
				return nil
			},
		})
	}
	return cmd
}
