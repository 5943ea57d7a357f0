package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
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
			c := &cluster.Cluster{StateDir: globals.stateDir, Lab: l}
			ns, err := c.TargetNS(target)
			if err != nil {
				return err
			}
			if !netns.Exists(ns) {
				return fmt.Errorf("namespace %s of %s is missing (a damaged lab?): see 'klab list', or rebuild with 'klab destroy %s'", ns, target, name)
			}
			enter := []string{"__enter", "--"}
			if l.Node(target) != nil {
				if err := cluster.EnsureRunFlannel(); err != nil {
					return err
				}
				enter = []string{"__enter", "--bind", filepath.Dir(c.SubnetEnvPath(target)) + ":" + cluster.RunFlannel, "--"}
			}
			code, err := runInNS(ns, append(enter, argv...), name, target)
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

// runInNS starts `klab __enter ... -- argv` as a child forked from a thread
// inside ns, and returns its exit status. The child makes its own mount
// namespace (see newEnterCmd).
func runInNS(ns string, args []string, lab, target string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find the klab binary: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "KLAB_LAB="+lab, "KLAB_TARGET="+target)
	signal.Ignore(os.Interrupt, syscall.SIGQUIT)
	defer signal.Reset(os.Interrupt, syscall.SIGQUIT)
	if err := netns.Do(ns, cmd.Start); err != nil {
		return 0, fmt.Errorf("start command in %s: %w", ns, err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 0, err
}

// newEnterCmd is the hidden second half of exec: it runs already inside
// the target's network namespace, enters a new mount namespace whose mounts
// are slaves of the host's, remounts /sys so it shows this namespace's
// devices (as ip netns exec does), bind mounts per-node files, then replaces
// itself with the command.
//
// Slave, not private (which Go's SysProcAttr.Unshareflags would make it):
// when 'klab destroy' unmounts a namespace under /run/netns, the unmount
// reaches this mount namespace too, so a long-running 'klab exec' never
// keeps another lab's (or its own lab's) namespace alive; and nothing
// mounted here reaches the host, so a crash leaks no mount.
func newEnterCmd() *cobra.Command {
	var binds []string
	cmd := &cobra.Command{
		Use:    "__enter [--bind SRC:DST]... -- CMD...",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The new mount namespace belongs to this thread only; the
			// same thread execs the command below.
			runtime.LockOSThread()
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("new mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("make / a slave mount: %w", err)
			}
			if err := unix.Unmount("/sys", unix.MNT_DETACH); err == nil {
				if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
					return fmt.Errorf("mount /sys: %w", err)
				}
			}
			for _, b := range binds {
				src, dst, _ := strings.Cut(b, ":")
				if err := os.MkdirAll(src, 0o755); err != nil {
					return err
				}
				// dst is not created here: that would change the host's
				// file system (see cluster.EnsureRunFlannel).
				if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
					return fmt.Errorf("bind %s on %s: %w", src, dst, err)
				}
			}
			path, err := exec.LookPath(args[0])
			if err != nil {
				return exitError{code: 127, msg: fmt.Sprintf("%s: command not found in PATH (the command runs with the host's filesystem; install it on the host)", args[0])}
			}
			return syscall.Exec(path, args, os.Environ())
		},
	}
	cmd.Flags().StringArrayVar(&binds, "bind", nil, "SRC:DST bind mount")
	return cmd
}
