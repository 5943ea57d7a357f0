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
	var sandbox bool
	cmd := &cobra.Command{
		Use:   "exec TARGET -- CMD [ARG...]",
		Short: "Run a command inside a node's or pod's network namespace",
		Long: `Run a command inside the network namespace of a node or pod (or "underlay",
or "external"), like 'ip netns exec', with /sys showing that namespace's
devices. On a node, /run/flannel/subnet.env is that node's own flannel file,
as on a real node. With no command, starts your shell there.

The command runs with full root, as with 'ip netns exec'. --sandbox runs it
the way a lab's commands run (docs/security.md): its own mount and PID
namespaces, the host's files read-only except a private /tmp and the node's
/run/flannel, no other namespace's files, only the NET_ADMIN, NET_RAW and
NET_BIND_SERVICE capabilities, and no_new_privs. Inside 'klab run'
($KLAB_SANDBOX=1) every command is sandboxed and --sandbox=false is refused.`,
		Example: `  klab exec node1 -- ip -d link show flannel.1
  klab exec node1 -- cat /run/flannel/subnet.env
  klab exec node1 -- bridge fdb show dev flannel.1
  klab exec pod-a -- ip route
  klab exec node2            # an interactive shell on node2
  klab exec --sandbox node1 -- touch /etc/x   # refused: read-only file system`,
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
			if nsexec.Sandboxed() {
				if f := cmd.Flags().Lookup("sandbox"); f.Changed && !sandbox {
					return exitError{code: 1, msg: "this klab exec runs inside a lab, whose commands are sandboxed: --sandbox=false is refused (run the lab with 'klab run FILE --trust' if you wrote it yourself)"}
				}
				sandbox = true
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
			spec.Sandbox = sandbox
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
	cmd.Flags().BoolVar(&sandbox, "sandbox", false, "run the command sandboxed, as a lab's commands run (read-only host files, fresh /proc, networking capabilities only)")
	return cmd
}

// newEnterCmd is the hidden second half of exec (see package nsexec): it
// runs already inside the target's network namespace and replaces itself
// with the command, in a mount namespace of its own.
func newEnterCmd() *cobra.Command {
	var binds, rw []string
	var sandbox bool
	cmd := &cobra.Command{
		Use:    nsexec.EnterCommand + " [--sandbox] [--bind SRC:DST]... [--rw PATH]... -- CMD...",
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
			if sandbox {
				code, err := nsexec.EnterSandbox(bs, rw, args)
				if err != nil {
					if code == 0 {
						code = 1
					}
					return exitError{code: code, msg: err.Error()}
				}
				if code != 0 {
					return exitError{code: code}
				}
				return nil
			}
			err := nsexec.Enter(bs, args)
			if errors.Is(err, nsexec.ErrNotFound) {
				return exitError{code: 127, msg: err.Error()}
			}
			return err
		},
	}
	cmd.Flags().StringArrayVar(&binds, "bind", nil, "SRC:DST bind mount")
	cmd.Flags().BoolVar(&sandbox, "sandbox", false, "build the sandbox (process 1 of a new PID namespace)")
	cmd.Flags().StringArrayVar(&rw, "rw", nil, "a path left writable in the sandbox")
	return cmd
}
