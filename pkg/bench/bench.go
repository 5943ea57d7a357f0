package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FlannelSpec is the benchmarks' topology: nodes node1..nodeN (192.168.1.101,
// ... and 10.244.1.0/24, ...) with pods pod-<n>-<i>, as
// scripts/baseline/flannel.sh builds it.
func FlannelSpec(nodes, podsPerNode int) cluster.Spec {
	var s cluster.Spec
	for i := 1; i <= nodes; i++ {
		s.Nodes = append(s.Nodes, cluster.NodeSpec{Name: fmt.Sprintf("node%d", i)})
	}
	for i := 1; i <= nodes; i++ {
		for k := 1; k <= podsPerNode; k++ {
			s.Pods = append(s.Pods, cluster.PodSpec{Name: fmt.Sprintf("pod-%d-%d", i, k), Node: fmt.Sprintf("node%d", i)})
		}
	}
	return s
}

// Quiet tells when the kernel has finished tearing down deleted namespaces.
//
// Deleting a namespace only drops its last reference: the kernel frees it
// later, in a worker (cleanup_net) that unregisters its devices while
// holding the RTNL lock, mostly waiting for RCU grace periods. Until it is
// done, every link, address and route change anywhere on the machine
// waits for that lock, so a lab built right after another one was
// destroyed is several times slower. Quiet measures that: it repeatedly
// brings lo up (a no-op that takes the RTNL lock) in a namespace of its
// own and reports the lock busy while that takes longer than BusyAbove.
type Quiet struct {
	ns string
	h  *netlink.Handle
	lo netlink.Link
	// BusyAbove is the probe latency that counts as "lock busy"; an idle
	// probe takes 20-60 µs.
	BusyAbove time.Duration
	// Window is how long the lock must stay free to count as quiet.
	Window time.Duration
	// Max bounds a wait.
	Max time.Duration
}

// NewQuiet creates the probe's namespace, klab.<lab>.quiet; Close removes
// it.
func NewQuiet(lab string) (*Quiet, error) {
	name := netns.Name(lab, "quiet")
	if _, err := netns.Ensure(name); err != nil {
		return nil, err
	}
	h, err := netns.Handle(name)
	if err != nil {
		netns.Delete(name)
		return nil, err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		netns.Delete(name)
		return nil, fmt.Errorf("find lo in %s: %w", name, err)
	}
	return &Quiet{ns: name, h: h, lo: lo, BusyAbove: time.Millisecond, Window: 200 * time.Millisecond, Max: 60 * time.Second}, nil
}

// Close removes the probe's namespace.
func (q *Quiet) Close() error {
	q.h.Close()
	return netns.Delete(q.ns)
}

// Wait returns once the RTNL lock has been free for Window (or after Max),
// and reports how long after since the lock was last seen busy: the time
// the kernel took to finish a teardown that started at since (0 if the
// lock was never busy).
func (q *Quiet) Wait(since time.Time) (time.Duration, error) {
	var lastBusy time.Time
	start := time.Now()
	for {
		t0 := time.Now()
		if err := q.h.LinkSetUp(q.lo); err != nil {
			return 0, fmt.Errorf("probe the RTNL lock in %s: %w", q.ns, err)
		}
		t1 := time.Now()
		if t1.Sub(t0) > q.BusyAbove {
			lastBusy = t1
		}
		quietSince := start
		if lastBusy.After(quietSince) {
			quietSince = lastBusy
		}
		if t1.Sub(quietSince) >= q.Window || t1.Sub(start) >= q.Max {
			if lastBusy.IsZero() {
				return 0, nil
			}
			return lastBusy.Sub(since), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TempStateDir makes a temporary state directory for benchmark labs on a
// tmpfs (/dev/shm) when there is one, as klab's default /run/klab is on
// most systems, else under os.TempDir(). On a disk file system every file
// a build creates (state, IPAM reservations, subnet.env) costs an inode
// allocation, which is slow when many files were just deleted: measured
// here, that is a quarter of a 2-node build's CPU time. The caller removes
// the directory.
func TempStateDir() (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		if d, err := os.MkdirTemp("/dev/shm", "klab-bench-"); err == nil {
			return d, nil
		}
	}
	return os.MkdirTemp("", "klab-bench-")
}

// CPUTime is the CPU time (user + system) used so far by this process and
// by its children that have been waited for.
func CPUTime() time.Duration {
	var self, kids unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
	d := func(tv unix.Timeval) time.Duration { return time.Duration(tv.Nano()) }
	return d(self.Utime) + d(self.Stime) + d(kids.Utime) + d(kids.Stime)
}

// Median of xs (0 for none); xs is sorted in place.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// Runs collects the per-iteration figures of a bring-up/teardown
// benchmark, in milliseconds.
type Runs struct{ Up, Down, Kernel []float64 }

// Add records one iteration: the bring-up, the teardown until the command
// returned, and until the kernel had freed everything (never less than the
// teardown itself).
func (r *Runs) Add(up, down, kernel time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	r.Up = append(r.Up, ms(up))
	r.Down = append(r.Down, ms(down))
	r.Kernel = append(r.Kernel, ms(max(kernel, down)))
}

// Report reports the medians as up-ms, down-ms and kernel-ms, and pods/s
// for a lab of pods pods, to a *testing.B; it returns the median bring-up.
func (r *Runs) Report(b interface{ ReportMetric(float64, string) }, pods int) float64 {
	up := Median(r.Up)
	b.ReportMetric(up, "up-ms")
	b.ReportMetric(Median(r.Down), "down-ms")
	b.ReportMetric(Median(r.Kernel), "kernel-ms")
	b.ReportMetric(float64(pods)/up*1e3, "pods/s")
	return up
}

// ResetPeakRSS resets this process's resident-set high-water mark (VmHWM),
// so that PeakRSS reports the peak of what follows.
func ResetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// PeakRSS is this process's resident-set high-water mark in bytes.
func PeakRSS() (int64, error) { return statusField("/proc/self/status", "VmHWM:") }

// MemAvailable is the kernel's estimate of memory available for new work,
// in bytes (/proc/meminfo).
func MemAvailable() (int64, error) { return statusField("/proc/meminfo", "MemAvailable:") }

func statusField(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == key {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New(key + " not found in " + path)
}
