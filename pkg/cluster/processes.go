package cluster

// Process control: the processes running in a lab's namespaces or serving
// it (found by namespace inode and by command line), and stopping them.

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/etcdserver"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// ProcessesIn returns the PIDs of processes whose network namespace is one
// of the named namespaces.
func ProcessesIn(nss []string) (map[int]string, error) {
	inodes := map[uint64]string{}
	for _, ns := range nss {
		var st syscall.Stat_t
		if err := syscall.Stat(netns.Path(ns), &st); err == nil {
			inodes[st.Ino] = ns
		}
	}
	out := map[int]string{}
	if len(inodes) == 0 {
		return out, nil
	}
	pids, err := allPIDs()
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		link, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", "net"))
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil {
			continue
		}
		if ns, ok := inodes[ino]; ok {
			out[pid] = ns
		}
	}
	return out, nil
}

// allPIDs lists every process but this one.
func allPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != self {
			out = append(out, pid)
		}
	}
	return out, nil
}

// serverProcesses finds klab's background servers by their command line
// ("<klab> __serve ... --lab <lab>", see StartServer's callers, and the
// etcd that 'klab __serve --proto etcd' became, see etcdserver.LabOf), by
// lab: they are found even if their namespace was deleted behind klab's
// back.
func serverProcesses() map[string][]int {
	out := map[string][]int{}
	pids, _ := allPIDs()
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("\x00__serve\x00")) && !bytes.Contains(b, []byte("\x00--initial-cluster-token="+etcdserver.TokenPrefix)) {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		lab, dir := ServerLab(argv), stateDirOf(argv)
		if lab == "" {
			if l, sd := etcdserver.LabOf(argv); netns.ValidateLab(l) == nil {
				lab, dir = l, sd
			}
		}
		if lab != "" && !otherMachine(pid, dir) {
			out[lab] = append(out[lab], pid)
		}
	}
	return out
}

// otherMachine reports whether a server process belongs to another
// machine's klab: its state directory, seen from its own root, is not
// ours (simulated machines share one kernel's PIDs, each with its own
// mount namespace and /run: a destroy on one must not stop the other's
// servers). A server whose state directory cannot be seen counts as ours.
func otherMachine(pid int, dir string) bool {
	if dir == "" {
		return false
	}
	var theirs, ours syscall.Stat_t
	if syscall.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", dir), &theirs) != nil || syscall.Stat(dir, &ours) != nil {
		return false
	}
	return theirs.Dev != ours.Dev || theirs.Ino != ours.Ino
}

// stateDirOf is a klab server's --state-dir (klab's default when it has
// none).
func stateDirOf(argv []string) string {
	dir := "/run/klab"
	for i, a := range argv {
		if v, ok := strings.CutPrefix(a, "--state-dir="); ok {
			dir = v
		} else if a == "--state-dir" && i+1 < len(argv) {
			dir = argv[i+1]
		}
	}
	return dir
}

// ServerLab returns the lab of a klab server's command line ("klab __serve
// ... --lab LAB"), or "" if argv is not one.
func ServerLab(argv []string) string {
	if len(argv) < 2 || argv[1] != "__serve" {
		return ""
	}
	for i, a := range argv[2:] {
		lab, ok := strings.CutPrefix(a, "--lab=")
		if !ok && a == "--lab" && i+3 < len(argv) {
			lab, ok = argv[i+3], true
		}
		if ok && netns.ValidateLab(lab) == nil {
			return lab
		}
	}
	return ""
}

// killOp is the operation that stops processes (killProcesses), shown as
// the kill command with where each process was found.
func killOp(procs map[int]string) plan.Op {
	pids := slices.Sorted(maps.Keys(procs))
	var args, where []string
	for _, pid := range pids {
		args = append(args, strconv.Itoa(pid))
		where = append(where, fmt.Sprintf("%d: %s", pid, procs[pid]))
	}
	return plan.Op{Verb: plan.Exec, Proc: &plan.Proc{
		Cmd: "kill " + strings.Join(args, " ") + " 2>/dev/null || true   # " + strings.Join(where, "; "),
		Run: func() error { killProcesses(procs); return nil },
	}}
}

// killProcesses stops processes: SIGTERM, then SIGKILL after a grace
// period for those still running.
func killProcesses(procs map[int]string) {
	if len(procs) == 0 {
		return
	}
	for pid := range procs {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		alive := 0
		for pid := range procs {
			if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
				alive++
			}
		}
		if alive == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for pid := range procs {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}
