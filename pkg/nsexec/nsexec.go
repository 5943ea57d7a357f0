package nsexec

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"golang.org/x/sys/unix"
)

// EnterCommand is the hidden verb of the klab binary that runs Enter; Run
// starts it as "klab __enter [--bind SRC:DST]... -- CMD...".
const EnterCommand = "__enter"

// Bind is a bind mount of the host's directory (or file) Src on Dst inside
// the command's mount namespace. RO binds are for the sandbox only: the
// lab's own state, readable where a sandbox would hide it (under /tmp).
type Bind struct {
	Src, Dst string
	RO       bool
}

// String is the bind as the --bind flag of EnterCommand takes it.
func (b Bind) String() string {
	if b.RO {
		return b.Src + ":" + b.Dst + ":ro"
	}
	return b.Src + ":" + b.Dst
}

// ParseBind parses "SRC:DST" or "SRC:DST:ro".
func ParseBind(s string) (Bind, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || dst == "" {
		return Bind{}, fmt.Errorf("bind %q: write it as SRC:DST", s)
	}
	b := Bind{Src: src, Dst: dst}
	if d, ok := strings.CutSuffix(dst, ":ro"); ok && d != "" {
		b.Dst, b.RO = d, true
	}
	return b, nil
}

// Spec says where a command runs: a network namespace, the binds of its
// mount namespace, and the variables added to its environment. With
// Sandbox, the command runs in the sandbox EnterSandbox builds, where only
// the binds and the Writable paths (each bound read-write on itself, when
// it exists) can be written, besides a private /tmp.
type Spec struct {
	NS       string
	Binds    []Bind
	Env      []string
	Sandbox  bool
	Writable []string
}

// ForTarget returns where a command runs in target (a node, pod,
// "underlay" or "external") of the lab: the target's namespace, which must
// exist, and on a node the node's flannel directory bound on RunFlannel
// (created, marked as klab's, if the host has none). The environment names
// the lab and target (KLAB_LAB, KLAB_TARGET).
func ForTarget(c *cluster.Cluster, target string) (Spec, error) {
	ns, err := c.TargetNS(target)
	if err != nil {
		return Spec{}, err
	}
	if !netns.Exists(ns) {
		return Spec{}, fmt.Errorf("namespace %s of %s is missing (a damaged lab?): see 'klab list', or rebuild with 'klab destroy %s'", ns, target, c.Lab.Name)
	}
	s := Spec{NS: ns, Env: []string{"KLAB_LAB=" + c.Lab.Name, "KLAB_TARGET=" + target}}
	// The target's own /etc/netns entries (resolv.conf, hosts), for a
	// sandboxed command; the lab's state file stays read-only there: klab
	// reads it back with full root, so a lab must not be able to rewrite it.
	s.Writable = []string{filepath.Join("/etc/netns", ns)}
	if c.Lab.Node(target) != nil {
		if err := cluster.EnsureRunFlannel(); err != nil {
			return Spec{}, err
		}
		s.Binds = []Bind{{Src: filepath.Dir(c.SubnetEnvPath(target)), Dst: cluster.RunFlannel}}
	}
	// The lab's state (its host-local IPAM files, subnet.env), readable in
	// a sandbox even where its private /tmp would hide it.
	s.Binds = append(s.Binds, Bind{Src: c.Dir(), Dst: c.Dir(), RO: true})
	// A pod's command sees its namespace's Services in its environment, as
	// the kubelet sets it.
	if p := c.Lab.Pod(target); p != nil {
		s.Env = append(s.Env, c.Lab.ServiceEnv(p)...)
	}
	// A pod's /etc/netns files stand in for the host's /etc, as 'ip netns
	// exec' does it: with cluster DNS, its resolv.conf.
	if rc := c.ResolvConfPath(target); rc != "" {
		if _, err := os.Stat(rc); err == nil {
			s.Binds = append(s.Binds, Bind{Src: rc, Dst: "/etc/resolv.conf"})
		}
	}
	return s, nil
}

// EnterArgs is the command line of EnterCommand that runs argv with binds.
func EnterArgs(binds []Bind, argv []string) []string {
	return Spec{Binds: binds}.EnterArgs(argv)
}

// EnterArgs is the command line of EnterCommand that runs argv as s says:
// "__enter [--sandbox] [--bind SRC:DST]... [--rw PATH]... -- argv".
func (s Spec) EnterArgs(argv []string) []string {
	out := []string{EnterCommand}
	if s.Sandbox {
		out = append(out, "--sandbox")
	}
	for _, b := range s.Binds {
		if b.RO && !s.Sandbox {
			continue // outside a sandbox the host's files are there anyway
		}
		out = append(out, "--bind", b.String())
	}
	if s.Sandbox {
		for _, w := range s.Writable {
			out = append(out, "--rw", w)
		}
	}
	return append(append(out, "--"), argv...)
}

// SysProcAttr is what the process running s.EnterArgs must be started
// with: for a sandbox, the new mount and PID namespaces EnterSandbox needs.
func (s Spec) SysProcAttr() *syscall.SysProcAttr {
	if !s.Sandbox {
		return nil
	}
	return &syscall.SysProcAttr{Cloneflags: SandboxCloneflags}
}

// Run runs argv as s says, with the given standard input and outputs, and
// returns its exit status (128+N if signal N killed it). It starts this
// binary's EnterCommand from a thread inside s.NS, so the binary must have
// that verb calling Enter. While the command runs, this process ignores
// SIGINT and SIGQUIT: they are the command's, as with any shell command.
func (s Spec) Run(argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find the klab binary: %w", err)
	}
	cmd := exec.Command(self, s.EnterArgs(argv)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if attr := s.SysProcAttr(); attr != nil {
		// If this process dies, the sandbox's init dies, and with it
		// everything in its PID namespace.
		attr.Pdeathsig = syscall.SIGKILL
		cmd.SysProcAttr = attr
	}
	cmd.Env = append(os.Environ(), s.Env...)
	signal.Ignore(os.Interrupt, syscall.SIGQUIT)
	defer signal.Reset(os.Interrupt, syscall.SIGQUIT)
	if err := netns.Do(s.NS, cmd.Start); err != nil {
		return 0, fmt.Errorf("start command in %s: %w", s.NS, err)
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

// ErrNotFound is returned (wrapped) by Enter when argv[0] is not in PATH:
// the caller exits 127, as a shell does.
var ErrNotFound = errors.New("command not found")

// Enter is EnterCommand, the second half of Run: it runs already inside the
// target's network namespace, enters a new mount namespace whose mounts are
// slaves of the host's, remounts /sys so it shows this namespace's devices
// (as ip netns exec does), makes the binds, then replaces itself with argv.
// It returns only on failure.
//
// Slave, not private (which Go's SysProcAttr.Unshareflags would make it):
// when 'klab destroy' unmounts a namespace under /run/netns, the unmount
// reaches this mount namespace too, so a long-running 'klab exec' never
// keeps another lab's (or its own lab's) namespace alive; and nothing
// mounted here reaches the host, so a crash leaks no mount.
func Enter(binds []Bind, argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command to run")
	}
	// The new mount namespace belongs to this thread only; the same
	// thread execs the command below.
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
		// A file (a pod's resolv.conf) is bound as it is; a directory is
		// created if missing.
		if fi, err := os.Stat(b.Src); err != nil || fi.IsDir() {
			if err := os.MkdirAll(b.Src, 0o755); err != nil {
				return err
			}
		}
		// Dst is not created here: that would change the host's file
		// system (see cluster.EnsureRunFlannel).
		if err := unix.Mount(b.Src, b.Dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", b.Src, b.Dst, err)
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("%s: %w in PATH (the command runs with the host's filesystem; install it on the host)", argv[0], ErrNotFound)
	}
	return syscall.Exec(path, argv, os.Environ())
}
