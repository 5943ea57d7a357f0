package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where iproute2 (and klab) keep the bind mounts of named
// namespaces.
const RunDir = "/run/netns"

// Prefix starts the name of every namespace klab creates.
const Prefix = "klab."

// label reports whether s is 1-max lowercase letters, digits or '-',
// starting and ending with a letter or digit (an RFC 1123 label when max is
// 63). Hand-written rather than a regexp: rendering 10,000 services checks
// 10,000 names.
func label(s string, max int) bool {
	if len(s) == 0 || len(s) > max || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateLab checks a lab name: lowercase letters, digits and '-', at most
// 32 characters, starting and ending with a letter or digit.
func ValidateLab(lab string) error {
	if !label(lab, 32) {
		return fmt.Errorf("lab name %q is not valid: use 1-32 lowercase letters, digits or '-', starting and ending with a letter or digit", lab)
	}
	return nil
}

// ValidateObject checks a node, pod or host name: a DNS label (RFC 1123) as
// Kubernetes uses for pod and node names.
func ValidateObject(kind, name string) error {
	if !label(name, 63) {
		return fmt.Errorf("%s name %q is not valid: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}

// Name returns the namespace name of object obj in lab: klab.<lab>.<obj>.
// A pod of a Kubernetes namespace other than default is named by its key
// "<namespace>/<pod>", and its network namespace is
// klab.<lab>.<namespace>.<pod> (Object): it still ends in ".<pod>", and
// Parse tells it apart because lab names and Kubernetes names hold no dots.
func Name(lab, obj string) string { return Prefix + lab + "." + Object(obj) }

// Object is the part of a namespace name that names obj: obj itself, or
// for a namespaced pod key "<namespace>/<pod>", "<namespace>.<pod>".
func Object(obj string) string { return strings.Replace(obj, "/", ".", 1) }

// Parse splits a klab namespace name into its lab and object. ok is false for
// names klab did not create.
func Parse(name string) (lab, obj string, ok bool) {
	if !strings.HasPrefix(name, Prefix) {
		return "", "", false
	}
	rest := strings.TrimPrefix(name, Prefix)
	i := strings.IndexByte(rest, '.')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false
	}
	lab, obj = rest[:i], rest[i+1:]
	if !label(lab, 32) {
		return "", "", false
	}
	if ns, pod, ok := strings.Cut(obj, "."); ok {
		if label(ns, 63) && label(pod, 63) {
			return lab, obj, true
		}
		return "", "", false
	}
	if label(obj, 63) {
		return lab, obj, true
	}
	return "", "", false
}

// Path is the file that holds the named namespace.
func Path(name string) string { return filepath.Join(RunDir, name) }

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(Path(name), &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// List returns the names of every klab namespace (of lab, or of every lab if
// lab is empty) found under /run/netns.
func List(lab string) ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", RunDir, err)
	}
	var out []string
	for _, e := range ents {
		l, _, ok := Parse(e.Name())
		if ok && (lab == "" || l == lab) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// ensureRunDir prepares /run/netns the way iproute2 does: a shared mount
// point, so namespaces added later propagate into mount namespaces created
// by `ip netns exec` or `klab exec`.
func ensureRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL {
		// Not a mount point yet: bind it onto itself (keeping any namespace
		// mounts already below it) and retry, as iproute2 does.
		if err = unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", RunDir, err)
	}
	return nil
}

var (
	runDirMu    sync.Mutex
	runDirReady bool
)

// prepareRunDir runs ensureRunDir once per process; Ensure may be called
// from several goroutines at once (cluster.Build creates namespaces in
// parallel).
func prepareRunDir() error {
	runDirMu.Lock()
	defer runDirMu.Unlock()
	if runDirReady {
		return nil
	}
	if err := ensureRunDir(); err != nil {
		return err
	}
	runDirReady = true
	return nil
}

// Ensure creates the named namespace if it does not exist yet. It reports
// whether it created it. The calling thread never changes namespace: the
// work happens on another locked thread, which returns to its original
// namespace afterwards.
func Ensure(name string) (created bool, err error) {
	if Exists(name) {
		return false, nil
	}
	if err := prepareRunDir(); err != nil {
		return false, err
	}
	p := Path(name)
	// A file by that name that is not a namespace is left from a build
	// killed between creating and mounting it, or from before a reboot when
	// /run is not a tmpfs: klab's own, by its name, so reuse the name.
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("create namespace %s: remove stale %s: %w", name, p, err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return false, fmt.Errorf("create namespace %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		merr := unix.Mount(src, p, "none", unix.MS_BIND, "")
		// Back to the original namespace, so that the thread can be
		// reused (creating a thread per namespace shows at 1,000 pods). If
		// that fails the thread stays locked, and the runtime ends it when
		// this goroutine returns instead of reusing it in the wrong
		// namespace.
		if err := vnetns.Set(orig); err != nil {
			if merr == nil {
				unix.Unmount(p, unix.MNT_DETACH)
			}
			errc <- fmt.Errorf("return to original namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		if merr != nil {
			errc <- fmt.Errorf("bind mount %s: %w", p, merr)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(p)
		return false, fmt.Errorf("create namespace %s: %w", name, err)
	}
	return true, nil
}

// Delete removes the named namespace. It is idempotent. The kernel frees
// the namespace (and every link, route and rule inside it) once the last
// process inside it has exited.
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("delete namespace %s: unmount: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// Open returns a handle (an open file descriptor) of the named namespace.
// The caller closes it.
func Open(name string) (vnetns.NsHandle, error) {
	h, err := vnetns.GetFromPath(Path(name))
	if err != nil {
		return vnetns.None(), fmt.Errorf("open namespace %s: %w", name, err)
	}
	return h, nil
}

// Handle opens a netlink handle whose socket lives in the named namespace:
// every link, address, route, neighbour and FDB operation made through it
// happens there, from any goroutine, without switching threads.
func Handle(name string) (*netlink.Handle, error) {
	ns, err := Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in namespace %s: %w", name, err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into the named namespace, and waits
// for it. fn must not start goroutines that expect to be in the namespace
// (they would run on other threads); sockets it opens stay in the namespace
// after fn returns, which is the way to serve or dial from a namespace.
func Do(name string, fn func() error) error {
	ns, err := Open(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return DoHandle(ns, fn)
}

// DoHandle is Do for an already open namespace handle.
func DoHandle(ns vnetns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := vnetns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			// Leave the thread locked: the runtime kills it when this
			// goroutine exits, instead of reusing it in the wrong namespace.
			errc <- fmt.Errorf("return to original namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Sysctl writes a value under /proc/sys inside the named namespace, for
// example Sysctl(ns, "net/ipv4/ip_forward", "1"). /proc/sys/net follows the
// network namespace of the thread that opens the file.
func Sysctl(name, key, value string) error {
	return Do(name, func() error { return writeSysctl(key, value) })
}

func writeSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

// ReadSysctl reads a value under /proc/sys inside the named namespace.
func ReadSysctl(name, key string) (string, error) {
	var v string
	err := Do(name, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}
