package nsexec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeptCaps are the only capabilities a sandboxed command has: what
// networking inside its own network namespace needs (links, addresses,
// routes, iptables, conntrack, raw sockets for ping and captures, ports
// below 1024). Writing /proc/sys/net needs no capability beyond being
// uid 0 (and NET_ADMIN for a few keys). Everything else, SYS_ADMIN (mount,
// setns, unshare), SYS_MODULE, SYS_PTRACE, SYS_RAWIO, SYS_BOOT, DAC_OVERRIDE,
// KILL, SETUID, MKNOD, ... is dropped from every set, the bounding set too.
var KeptCaps = []int{unix.CAP_NET_ADMIN, unix.CAP_NET_BIND_SERVICE, unix.CAP_NET_RAW}

// SandboxCloneflags are the namespaces Spec.Run (and a lab's server) gives a
// sandboxed EnterCommand: a mount namespace and a PID namespace of its own,
// so that EnterCommand is process 1 of a fresh /proc.
const SandboxCloneflags = unix.CLONE_NEWNS | unix.CLONE_NEWPID

// SandboxEnv is the variable the lab runner sets for the commands of a lab
// (see package labs): with KLAB_SANDBOX=1, 'klab exec' and 'klab serve' run
// their command sandboxed, and a command line cannot turn that off.
const SandboxEnv = "KLAB_SANDBOX"

// Sandboxed reports whether $KLAB_SANDBOX asks for the sandbox.
func Sandboxed() bool { return os.Getenv(SandboxEnv) == "1" }

// XtablesLock is the lock file iptables (legacy, and nft for -w) takes; a
// sandboxed command shares the host's, so it waits for klab's own rule
// loaders as any other iptables does.
const XtablesLock = "/run/xtables.lock"

// Docker's lists: parts of /proc that are read-only or hidden in a
// container.
var (
	procReadOnly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"}
	procMasked   = []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats"}
	procMaskDirs = []string{"/proc/acpi", "/proc/scsi"}
)

// EnterSandbox is EnterCommand with --sandbox, the second half of a
// sandboxed Spec.Run. It runs as process 1 of a new PID namespace, in a new
// mount namespace (SandboxCloneflags), already inside the target's network
// namespace, and builds the sandbox:
//
//   - every mount of the host read-only (one recursive mount_setattr), with
//     the namespace files of /run/netns and every other nsfs mount detached,
//     and an empty read-only /run/netns;
//   - a fresh read-only /sys for this network namespace, a fresh /proc for
//     this PID namespace (no host process can be seen or signalled, and
//     /proc/1/ns is this sandbox's) with /proc/sys read-only except
//     /proc/sys/net, and Docker's read-only and masked /proc paths;
//   - a minimal /dev (null, zero, full, random, urandom, tty; no disks, no
//     /dev/mem), a private writable /tmp and /dev/shm;
//   - binds (the node's /run/flannel) and the writable paths bound
//     read-write, and the host's xtables lock;
//   - then, on every thread, only KeptCaps, no ambient capabilities,
//     and no_new_privs, so neither a setuid binary nor file capabilities
//     win anything back.
//
// It then starts argv as process 2 and stays as its init: it passes on
// SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 (SIGINT and SIGQUIT reach the
// command from the terminal directly, as with any shell command), reaps
// orphans, and returns the command's exit status (128+N after signal N).
// When it returns, the kernel kills whatever the command left behind in the
// PID namespace: nothing a lab starts outlives its command.
func EnterSandbox(binds []Bind, writable []string, argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("no command to run")
	}
	if os.Getpid() != 1 {
		return 0, errors.New("the sandbox needs a PID namespace of its own: start it through nsexec.Spec.Run with Sandbox set")
	}
	runtime.LockOSThread()
	// Resolved before the file system changes: the command may be this
	// very binary under /tmp (a test's build), which the private /tmp hides.
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 127, fmt.Errorf("%s: %w in PATH (the command runs with the host's filesystem; install it on the host)", argv[0], ErrNotFound)
	}
	if self, err := os.Executable(); err == nil && sameFile(self, path) {
		path = "/proc/self/exe"
	}
	lastCap, err := lastCapability()
	if err != nil {
		return 0, err
	}
	if err := buildSandbox(binds, writable); err != nil {
		return 0, fmt.Errorf("sandbox: %w", err)
	}
	if err := dropPrivileges(lastCap); err != nil {
		return 0, fmt.Errorf("sandbox: %w", err)
	}
	return runInit(path, argv)
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func lastCapability() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return unix.CAP_LAST_CAP, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	return n, nil
}

// mountInfo is one line of /proc/self/mountinfo: the mount point, its
// file system type and its per-mount options.
type mountInfo struct {
	point, fstype string
	opts          []string
}

func readMountInfo() ([]mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountInfo{point: unescapeMount(fields[4]), fstype: fields[sep+1], opts: strings.Split(fields[5], ",")})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func buildSandbox(binds []Bind, writable []string) error {
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	// Namespace files give a way into other namespaces (ip link set
	// netns, a veth peer in another namespace): detach every one, deepest
	// first, and /run/netns itself.
	var ns []string
	for _, m := range mounts {
		if m.fstype == "nsfs" || m.point == "/run/netns" {
			ns = append(ns, m.point)
		}
	}
	sort.Slice(ns, func(i, j int) bool { return len(ns[i]) > len(ns[j]) })
	for _, p := range ns {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("detach %s: %w", p, err)
		}
	}
	// Resolve the sources of binds now: /tmp is replaced below.
	type bindFd struct {
		dst string
		fd  int
		ro  bool
	}
	var rw []bindFd
	openPath := func(src, dst string, ro bool) error {
		fd, err := unix.Open(src, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", src, err)
		}
		rw = append(rw, bindFd{dst, fd, ro})
		return nil
	}
	for _, b := range binds {
		if fi, err := os.Stat(b.Src); err != nil || fi.IsDir() {
			if err := os.MkdirAll(b.Src, 0o755); err != nil {
				return err
			}
		}
		if err := openPath(b.Src, b.Dst, b.RO); err != nil {
			return err
		}
	}
	for _, p := range writable {
		if _, err := os.Lstat(p); err != nil {
			continue // nothing to make writable
		}
		if err := openPath(p, p, false); err != nil {
			return err
		}
	}
	if _, err := os.Stat(XtablesLock); err == nil {
		if err := openPath(XtablesLock, XtablesLock, false); err != nil {
			return err
		}
	}
	defer func() {
		for _, b := range rw {
			unix.Close(b.fd)
		}
	}()

	if err := readOnlyTree(); err != nil {
		return err
	}
	const hard = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Unmount("/sys", unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach /sys: %w", err)
	}
	if err := unix.Mount("sysfs", "/sys", "sysfs", hard|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount /sys: %w", err)
	}
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach /proc: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", hard, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := bindReadOnly("/proc/sys", "/proc/sys"); err != nil {
		return err
	}
	if err := bindWritable("/proc/sys/net", "/proc/sys/net", hard); err != nil {
		return err
	}
	for _, p := range procReadOnly {
		if err := bindReadOnly(p, p); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	for _, p := range procMasked {
		if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	for _, p := range procMaskDirs {
		if err := unix.Mount("tmpfs", p, "tmpfs", hard|unix.MS_RDONLY, "mode=555,size=0"); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	if err := minimalDev(); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=64m"); err != nil {
		return fmt.Errorf("mount a private /tmp: %w", err)
	}
	if fi, err := os.Stat("/run/netns"); err == nil && fi.IsDir() {
		if err := unix.Mount("tmpfs", "/run/netns", "tmpfs", hard|unix.MS_RDONLY, "mode=755,size=0"); err != nil {
			return fmt.Errorf("hide /run/netns: %w", err)
		}
	}
	for _, b := range rw {
		src := "/proc/self/fd/" + strconv.Itoa(b.fd)
		if b.ro {
			// Under the private /tmp the mount point is made there.
			os.MkdirAll(b.dst, 0o755)
			if err := bindReadOnly(src, b.dst); err != nil {
				return err
			}
			continue
		}
		if err := bindWritable(src, b.dst, unix.MS_NOSUID|unix.MS_NODEV); err != nil {
			return err
		}
	}
	return nil
}

// readOnlyTree makes every mount read-only: one mount_setattr on the whole
// tree, or, on kernels before 5.12, a read-only remount of each mount.
func readOnlyTree() error {
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
	err := unix.MountSetattr(-1, "/", unix.AT_RECURSIVE, &attr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("make the file system read-only: %w", err)
	}
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
		for _, o := range m.opts {
			switch o {
			case "nosuid":
				flags |= unix.MS_NOSUID
			case "nodev":
				flags |= unix.MS_NODEV
			case "noexec":
				flags |= unix.MS_NOEXEC
			case "noatime":
				flags |= unix.MS_NOATIME
			case "nodiratime":
				flags |= unix.MS_NODIRATIME
			case "relatime":
				flags |= unix.MS_RELATIME
			}
		}
		if err := unix.Mount("", m.point, "", flags, ""); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remount %s read-only: %w", m.point, err)
		}
	}
	return nil
}

func bindReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", dst, err)
	}
	return nil
}

// bindWritable binds src on dst and makes that one mount writable (a new
// bind copies the read-only flag of the mount it comes from).
func bindWritable(src, dst string, flags uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
		return fmt.Errorf("make %s writable: %w", dst, err)
	}
	return nil
}

// minimalDev replaces /dev with a tmpfs holding the harmless character
// devices only: no disk, no /dev/mem, /dev/kmsg or /dev/pts of the host.
func minimalDev() error {
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		if err := unix.Mknod("/dev/"+d.name, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", d.name, err)
		}
		// mknod is subject to the umask.
		if err := unix.Chmod("/dev/"+d.name, 0o666); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, "/dev/"+name); err != nil {
			return err
		}
	}
	if err := os.Mkdir("/dev/shm", 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=16m"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	if err := unix.Mount("", "/dev", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return fmt.Errorf("make /dev read-only: %w", err)
	}
	return nil
}

// dropPrivileges leaves KeptCaps only: out of the bounding set (so no exec
// of a setuid-root or file-capability binary gets more), the ambient set
// cleared, inheritable, permitted and effective sets reduced, and
// no_new_privs set. The bounding set, ambient set and no_new_privs are
// per thread, and the command is forked from this locked thread; capset
// is applied to every thread of this process where the runtime allows it,
// so this init holds nothing more than its command.
func dropPrivileges(lastCap int) error {
	keep := map[int]bool{}
	for _, c := range KeptCaps {
		keep[c] = true
	}
	for c := 0; c <= lastCap; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	var data [2]unix.CapUserData
	for _, c := range KeptCaps {
		data[c/32].Effective |= 1 << (c % 32)
	}
	for i := range data {
		data[i].Permitted, data[i].Inheritable = data[i].Effective, data[i].Effective
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	_, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if e != 0 && e != unix.ENOTSUP {
		return fmt.Errorf("capset: %w", e)
	}
	// This thread in any case (AllThreadsSyscall is not available when
	// cgo is linked in, as in some test binaries).
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// runInit starts the command from this locked thread and waits for it as
// the PID namespace's init.
func runInit(path string, argv []string) (int, error) {
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// SIGINT and SIGQUIT come from the terminal to the command itself.
	signal.Ignore(os.Interrupt, syscall.SIGQUIT)
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	if err := cmd.Start(); err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			fmt.Fprintf(os.Stderr, "%s: %v\n", argv[0], err)
			return 126, nil
		}
		return 0, err
	}
	child := cmd.Process.Pid
	go func() {
		for s := range sigc {
			syscall.Kill(child, s.(syscall.Signal))
		}
	}()
	// Reap every child (the command's orphans come to process 1) until
	// the command itself exits.
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for %s: %w", argv[0], err)
		}
		if pid != child {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ws.ExitStatus(), nil
	}
}
