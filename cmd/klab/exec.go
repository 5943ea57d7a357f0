package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nsexec"
	"github.com/spf13/cobra"
)

func newExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "exec TARGET -- CMD [ARG...]",
		Short: "Run a command inside a node's or pod's network namespace",
		Long: `Run a command inside the network namespace of a node or pod (or "underlay",
or "external"), like 'ip netns exec', with /sys showing that namespace's
devices. On a node, /run/flannel/subnet.env is that node's own flannel file,
as on a real node. With no command, starts your shell there.`,
		Example: `  klab exec node1 -- ip -d link show flannel.1
  klab exec node1 -- cat /run/flannel/subnet.env
  klab exec node1 -- bridge fdb show dev flannel.1
  klab exec pod-a -- ip route
  klab exec node2            # an interactive shell on node2`,
		Args:                  cobra.MinimumNArgs(1),
		ValidArgsFunction:     completeTargets,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			target := args[0]
			argv := args[1:]
			if dash := cmd.ArgsLenAtDash(); dash > 1 {
				return fmt.Errorf("klab exec takes one TARGET before '--' (got %q): write 'klab exec %s -- CMD...'", strings.Join(args[:dash], " "), args[0])
			}
			if len(argv) == 0 {
				sh := os.Getenv("SHELL")
				if sh == "" {
					sh = "/bin/sh"
				}
				argv = []string{sh}
			}
			name, err := labName()
			if err != nil {
				return err
			}
			l, err := cluster.Load(globals.stateDir, name)
			if err != nil {
				if errors.Is(err, cluster.ErrNoLab) {
					return fmt.Errorf("lab %q does not exist: build it first (klab node add node1) or pick one with --lab", name)
				}
				return err
			}
			spec, err := nsexec.ForTarget(&cluster.Cluster{StateDir: globals.stateDir, Lab: l}, target)
			if err != nil {
				return err
			}
			code, err := spec.Run(argv, os.Stdin, os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
}

// newEnterCmd is the hidden second half of exec (see package nsexec): it
// runs already inside the target's network namespace and replaces itself
// with the command, in a mount namespace of its own.
func newEnterCmd() *cobra.Command {
	var binds []string
	cmd := &cobra.Command{
		Use:    nsexec.EnterCommand + " [--bind SRC:DST]... -- CMD...",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var bs []nsexec.Bind
			for _, s := range binds {
				b, err := nsexec.ParseBind(s)
				if err != nil {
					return err
				}
				bs = append(bs, b)
			}
			err := nsexec.Enter(bs, args)
			if errors.Is(err, nsexec.ErrNotFound) {
				return exitError{code: 127, msg: err.Error()}
			}
			return err
		},
	}
	cmd.Flags().StringArrayVar(&binds, "bind", nil, "SRC:DST bind mount")
	return cmd
}
