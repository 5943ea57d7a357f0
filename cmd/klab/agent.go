package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Start, stop and watch the node agents of a lab with a control plane (flanneld's role)",
		Long: `In a lab created with --control-plane etcd, every node runs an agent in
flanneld's role: it leases the node's subnet in etcd (/coreos.com/network/
subnets/10.244.N.0-24, with a TTL), writes subnet.env, creates flannel.1 and
programs each peer's ARP entry, FDB entry and route as the other leases
appear, change and expire. Stop one to watch its lease expire.

The agent also has kube-proxy's role: the CLI and 'klab apply' write the
lab's Services and EndpointSlices to etcd (/registry/services/specs/NS/NAME,
/registry/endpointslices/NS/NAME), and every agent watches them and syncs
its node's rules (iptables or nftables mode), then acks the revision under
/klab/proxy/nodes/NODE; a verb returns when every running agent has acked.`,
	}
	cmd.AddCommand(newAgentStartStopCmd("start"), newAgentStartStopCmd("stop"), newAgentLogCmd())
	return cmd
}

func newAgentStartStopCmd(verb string) *cobra.Command {
	short := map[string]string{
		"start": "Start a node's agent again (it finds its lease and reprograms only what is missing)",
		"stop":  "Stop a node's agent, as if flanneld died: its lease expires after the TTL and the peers remove its entries",
	}[verb]
	return &cobra.Command{
		Use:               verb + " NODE",
		Short:             short,
		Example:           "  klab agent " + verb + " node2",
		Args:              exactArgs(1, "NODE"),
		ValidArgsFunction: completeNodes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if verb == "stop" {
				err = c.StopAgent(args[0])
			} else if err = c.StartAgent(args[0]); err == nil && !globals.dryRun {
				// Return once every agent has programmed every peer (or
				// say which lag).
				err = c.WaitConverged(5 * time.Second)
			}
			if err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil || globals.dryRun {
				return err
			}
			fmt.Fprintf(out(), "agent of %s %s\n", args[0], map[string]string{"start": "started", "stop": "stopped (its lease stays until its TTL runs out)"}[verb])
			return nil
		},
	}
}

func newAgentLogCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:               "log NODE",
		Short:             "Print a node agent's log: its lease, every entry it programmed or removed, every L2MISS/L3MISS it answered",
		Example:           "  klab agent log node1\n  klab agent log node1 -f",
		Args:              exactArgs(1, "NODE"),
		ValidArgsFunction: completeNodes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			if c.Lab.ControlPlane == nil {
				c.Close()
				return fmt.Errorf("lab %s has no control plane, so no agents: the CLI programs its nodes directly (create a lab with --control-plane etcd)", c.Lab.Name)
			}
			path, err := c.AgentLog(args[0])
			c.Close() // do not hold the lab's lock while following
			if err != nil {
				return err
			}
			f, err := os.Open(path)
			if err != nil {
				return fmt.Errorf("node %s has no agent log yet: start its agent with 'klab agent start %s'", args[0], args[0])
			}
			defer f.Close()
			if _, err := io.Copy(os.Stdout, f); err != nil || !follow {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			for ctx.Err() == nil {
				if _, err := io.Copy(os.Stdout, f); err != nil {
					return err
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what the agent logs, until Ctrl-C")
	return cmd
}

// serveControlPlane runs the lab's etcd or a node agent's supervisor
// (klab __serve --proto etcd|agent).
func serveControlPlane(ctx context.Context, proto, node string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if proto == "etcd" {
		// klab-etcd is looked for beside this very binary (make
		// builds both into bin/).
		return cluster.ServeEtcd(globals.stateDir, globals.lab, filepath.Dir(self))
	}
	return cluster.SuperviseAgent(ctx, []string{self, "__agent", "--node", node, "--lab", globals.lab, "--state-dir", globals.stateDir})
}

// newAgentWorkerCmd is a node's agent process, run by its supervisor.
func newAgentWorkerCmd() *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:    "__agent",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return cluster.RunAgent(ctx, globals.stateDir, globals.lab, node, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node")
	return cmd
}
