package main

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

// newTokenCmd is 'klab token', kubeadm's: tokens that let another machine
// join the lab.
func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create tokens that let another machine join the lab (kubeadm token)",
	}
	cmd.AddCommand(newTokenCreateCmd())
	return cmd
}

func newTokenCreateCmd() *cobra.Command {
	var o cluster.TokenOptions
	var advertise string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Print the 'klab join' command that adds another machine to this lab",
		Long: `Makes this machine the first of a lab that spans machines, and prints the
whole 'klab join' command to run on another machine (as 'kubeadm token create
--print-join-command' does). The lab needs --control-plane etcd. This
machine's underlay gets a port "stitch", a VXLAN device whose UDP socket
(port 4789) is in this machine's namespace, carrying the underlay's frames to
the other machines; etcd answers them over TLS on :2378 and the join
endpoint on :6443 (the lab's own CA). A token admits one machine: it
reserves that machine's address on the underlay and expires after --ttl.`,
		Example: "  klab token create --lab demo\n  klab token create --lab demo --advertise-address 10.0.0.5 --ttl 1h",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if advertise != "" {
				ip, err := netip.ParseAddr(advertise)
				if err != nil || !ip.Is4() {
					return fmt.Errorf("--advertise-address %q is not an IPv4 address: give one of this machine's ('ip -4 addr')", advertise)
				}
				o.AdvertiseAddress = ip
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			j, err := c.CreateToken(o)
			if err != nil {
				failed(c.A)
				return err
			}
			fmt.Println(j.String())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "", "this machine's name in the lab (default: its hostname)")
	f.StringVar(&advertise, "advertise-address", "", "this machine's address the others reach (default: the default route's source)")
	f.DurationVar(&o.TTL, "ttl", cluster.DefaultTokenTTL, "how long the token is valid")
	return cmd
}

// newJoinCmd is 'klab join', kubeadm's.
func newJoinCmd() *cobra.Command {
	var o cluster.JoinOptions
	var underlay string
	cmd := &cobra.Command{
		Use:   "join ADDRESS",
		Short: "Make this machine part of a lab another machine runs (the line 'klab token create' prints)",
		Long: `Joins this machine to the lab whose first machine is at ADDRESS: builds the
lab's underlay here, stitched to the first machine's by VXLAN over the
machines' own network, asks the first machine's join endpoint to admit this
machine with the token (trusting it only if its CA has the pinned hash), and
starts this machine's agent. Then 'klab node add NAME' here adds nodes to the
same cluster: they lease their pod subnets in the first machine's etcd and
reach every other node across the stitch. A failed join leaves nothing here.`,
		Example: "  klab join 10.0.0.5 --lab demo --token abcdef.0123456789abcdef \\\n    --discovery-token-ca-cert-hash sha256:... --underlay-address 192.168.1.254/24 --underlay-mtu 1450",
		Args:    exactArgs(1, "ADDRESS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.First, err = netip.ParseAddr(args[0]); err != nil {
				return fmt.Errorf("the first machine's address %q is not an IPv4 address: copy the 'klab join' line 'klab token create' printed", args[0])
			}
			if o.UnderlayIP, err = netip.ParsePrefix(underlay); err != nil && underlay != "" {
				return fmt.Errorf("--underlay-address %q is not an address with its prefix length (192.168.1.254/24): copy the 'klab join' line 'klab token create' printed", underlay)
			}
			if globals.lab == "" {
				return fmt.Errorf("give the lab's name with --lab: copy the 'klab join' line 'klab token create' printed")
			}
			lab, stateDir := globals.lab, globals.stateDir
			serve, err := serverArgv(lab, stateDir)
			if err != nil {
				return err
			}
			if err := cluster.Join(stateDir, lab, o, serve, os.Stderr); err != nil {
				return err
			}
			fmt.Printf("this machine joined lab %s: add nodes here with 'klab node add NAME --lab %s'\n", lab, lab)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Token, "token", "", "the join token ('klab token create')")
	f.StringVar(&o.CAHash, "discovery-token-ca-cert-hash", "", "the pin of the lab's CA: sha256:<hex>")
	f.StringVar(&underlay, "underlay-address", "", "this machine's address on the lab's underlay, reserved by the token")
	f.IntVar(&o.MTU, "underlay-mtu", 0, "the lab's underlay MTU")
	f.StringVar(&o.Name, "name", "", "this machine's name in the lab (default: its hostname)")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Second, "how long to try reaching the first machine")
	return cmd
}
