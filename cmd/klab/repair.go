package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

func newRepairCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "repair [LAB]",
		Short: "Rebuild a damaged lab from its state: complete what is half built, remove what the state does not know",
		Long: `Reconcile a lab that 'klab list' marks DAMAGED with its state, as a controller
would: namespaces the state does not know (a build that was killed) are removed,
with their processes and a half-added node's entries in the other nodes; every
node, pod, peer entry and iptables rule the state has is ensured again with the
steps that build it, so missing or half-built objects are completed and rules
that drifted are rewritten; servers that died are forgotten. A lab without a
readable state cannot be repaired: remove it with 'klab destroy LAB'.`,
		Example: `  klab list
  klab repair flannel-crossnode`,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeLabs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			if len(args) == 1 {
				globals.lab = args[0]
			}
			name, err := labName()
			if err != nil {
				return err
			}
			if _, err := cluster.Load(globals.stateDir, name); err != nil {
				if errors.Is(err, cluster.ErrNoLab) {
					return fmt.Errorf("lab %s has no state to repair from: remove what is left of it with 'klab destroy %s'", name, name)
				}
				return fmt.Errorf("%v", err)
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardDestroy()()
			rep, err := c.Repair()
			if ferr := finish(c.A); err == nil {
				err = ferr
			}
			w := out()
			for _, r := range rep.Removed {
				fmt.Fprintf(w, "removed %s (not in the lab's state)\n", r)
			}
			for _, r := range rep.Rebuilt {
				fmt.Fprintf(w, "rebuilt %s\n", r)
			}
			for _, r := range rep.Forgot {
				fmt.Fprintf(w, "forgot server %s (not running)\n", r)
			}
			for _, pid := range rep.Stopped {
				fmt.Fprintf(w, "stopped server pid %d (not in the lab's state)\n", pid)
			}
			for _, r := range rep.Released {
				fmt.Fprintf(w, "released address %s\n", r)
			}
			for _, r := range rep.Policies {
				fmt.Fprintf(w, "rebuilt policies: %s\n", r)
			}
			for _, r := range rep.Started {
				fmt.Fprintf(w, "started %s again\n", r)
			}
			if err != nil {
				return fmt.Errorf("repair of lab %s stopped: %w (remove the lab with 'klab destroy %s')", name, err, name)
			}
			c.Close()
			infos, err := cluster.List(globals.stateDir)
			if err != nil {
				return err
			}
			for _, i := range infos {
				if i.Name == name && i.Damaged() {
					return fmt.Errorf("lab %s is still damaged: %s; remove it with 'klab destroy %s'", name, strings.Join(i.Problems, "; "), name)
				}
			}
			fmt.Fprintf(os.Stdout, "lab %s matches its state\n", name)
			return nil
		},
	}
}
