package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/klab-dev/klab/pkg/netns"
)

// What klab creates, and how destroy finds it again without trusting the
// state directory (docs/reliability.md):
//
//   - network namespaces named klab.<lab>.<object>, bind mounted under
//     /run/netns: found by name; every link, address, route, neighbour and
//     iptables rule of the lab lives inside them and goes with them;
//   - processes (servers, 'klab exec' shells): found by the network
//     namespace they run in, and servers also by their command line
//     ("klab __serve ... --lab <lab>");
//   - the state directory <stateDir>/<lab>/ and the lock <stateDir>/<lab>.lock;
//   - /run/flannel, only if klab had to create it (marked by a file inside).

// LabInfo is what `klab list` shows about one lab.
type LabInfo struct {
	Name       string   `json:"name"`
	Backend    string   `json:"backend,omitempty"`
	Nodes      []string `json:"nodes"`
	Pods       []string `json:"pods"`
	Services   []string `json:"services,omitempty"`
	Servers    []string `json:"servers,omitempty"`
	Namespaces []string `json:"namespaces"`
	// Processes are the PIDs running in the lab's namespaces or serving it.
	Processes []int `json:"processes,omitempty"`
	// Problems lists disagreements between the state and the kernel, each
	// with the command that repairs or removes it.
	Problems []string `json:"problems,omitempty"`
	// Repair is the command that rebuilds a damaged lab from its state
	// (when the state is readable); Fix removes it completely.
	Repair string `json:"repair,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

// Damaged reports whether the state and the kernel disagree.
func (i LabInfo) Damaged() bool { return len(i.Problems) > 0 }

// found is what discover learns about the labs on this machine.
type found struct {
	names   map[string]bool
	nss     map[string][]string // lab -> namespaces
	servers map[string][]int    // lab -> server PIDs found by command line
}

// discover finds every lab: from the state directory (with or without a
// readable state file), from the kernel's namespace names, and from the
// command lines of klab servers.
func discover(stateDir string) (*found, error) {
	f := &found{names: map[string]bool{}, nss: map[string][]string{}, servers: map[string][]int{}}
	dirs, err := labDirs(stateDir)
	if err != nil {
		return nil, err
	}
	for _, l := range dirs {
		f.names[l] = true
	}
	all, err := netns.List("")
	if err != nil {
		return nil, err
	}
	for _, ns := range all {
		l, _, _ := netns.Parse(ns)
		f.names[l] = true
		f.nss[l] = append(f.nss[l], ns)
	}
	for l, pids := range serverProcesses() {
		f.names[l] = true
		f.servers[l] = pids
	}
	return f, nil
}

// labDirs lists the directories of stateDir named like a lab, whether or
// not they hold a state file (an interrupted build or destroy leaves one
// without).
func labDirs(stateDir string) ([]string, error) {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs in %s: %w", stateDir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && netns.ValidateLab(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// List finds every lab, from the state directory, the kernel's namespace
// names and the servers' command lines, and reports what does not match:
// objects of the state missing in the kernel (or partly built), kernel
// objects the state does not know, dead servers, unreadable state.
func List(stateDir string) ([]LabInfo, error) {
	f, err := discover(stateDir)
	if err != nil {
		return nil, err
	}
	var out []LabInfo
	for name := range f.names {
		out = append(out, inspectLab(stateDir, name, f))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func inspectLab(stateDir, name string, f *found) LabInfo {
	info := LabInfo{Name: name, Namespaces: f.nss[name]}
	sort.Strings(info.Namespaces)
	procs, _ := ProcessesIn(info.Namespaces)
	for _, pid := range f.servers[name] {
		procs[pid] = ""
	}
	for pid := range procs {
		info.Processes = append(info.Processes, pid)
	}
	sort.Ints(info.Processes)
	problem := func(format string, args ...any) { info.Problems = append(info.Problems, fmt.Sprintf(format, args...)) }
	have := map[string]bool{}
	for _, ns := range info.Namespaces {
		_, obj, _ := netns.Parse(ns)
		have[obj] = true
	}
	l, err := Load(stateDir, name)
	switch {
	case errors.Is(err, ErrNoLab):
		if _, err := os.Stat(filepath.Join(stateDir, name)); err == nil {
			problem("the state directory %s has no state file (an interrupted build or destroy)", filepath.Join(stateDir, name))
		}
		if len(info.Namespaces) > 0 {
			problem("%d namespace(s) exist but the lab has no state (an interrupted build, or a lost state directory)", len(info.Namespaces))
		}
		if len(f.servers[name]) > 0 {
			problem("server process(es) %v serve the lab but it has no state", f.servers[name])
		}
	case err != nil:
		problem("%v", err)
	default:
		info.Backend = l.Backend
		info.Services = serviceNames(l)
		for _, n := range l.Nodes {
			info.Nodes = append(info.Nodes, n.Name)
			if !have[n.Name] {
				problem("node %s has no namespace: remove it with 'klab node del %s --lab %s'", n.Name, n.Name, name)
			}
		}
		for _, p := range l.Pods {
			info.Pods = append(info.Pods, p.Name)
			if !have[p.Name] {
				problem("pod %s has no namespace: remove it with 'klab pod del %s --lab %s'", p.Name, p.Name, name)
			}
		}
		if len(l.Nodes) > 0 && !have[UnderlayName] {
			problem("the underlay namespace %s is missing: no node can reach another", netns.Name(name, UnderlayName))
		}
		known := map[string]bool{UnderlayName: true, ExternalName: true}
		for _, n := range l.Names() {
			known[n] = true
		}
		for obj := range have {
			if known[obj] {
				continue
			}
			ns := netns.Name(name, obj)
			if isUnderlayPort(name, obj) {
				problem("namespace %s is a node the state does not know (an interrupted 'klab node add'): 'klab node add %s --lab %s' completes it, or remove it with 'ip netns del %s'", ns, obj, name, ns)
			} else {
				problem("namespace %s is not in the lab's state (an interrupted build): remove it with 'ip netns del %s'", ns, ns)
			}
		}
		info.Problems = append(info.Problems, kernelProblems(l, have)...)
		for _, s := range l.Servers {
			info.Servers = append(info.Servers, fmt.Sprintf("%s %s/%d (pid %d)", s.Target, s.Proto, s.Port, s.PID))
			if !alive(s.PID) {
				problem("the %s server on %s port %d (pid %d) is not running: 'klab serve %s --port %d --stop --lab %s' forgets it", s.Proto, s.Target, s.Port, s.PID, s.Target, s.Port, name)
			}
		}
	}
	if info.Damaged() {
		info.Fix = "klab destroy " + name
		if err == nil {
			info.Repair = "klab repair " + name
		}
	}
	return info
}

// serviceNames lists the lab's services.
func serviceNames(l *Lab) []string {
	var out []string
	for _, s := range l.Services {
		out = append(out, s.Name)
	}
	return out
}

// Destroy removes everything a lab created: the processes running in its
// namespaces or serving it, its namespaces (found in the kernel by name, so
// a lost or corrupt state directory does not matter), its state directory
// and lock, and host directories klab created once no lab is left. It is
// idempotent.
func Destroy(stateDir, lab string, log *explain.Log, wait io.Writer) error {
	if err := netns.ValidateLab(lab); err != nil {
		return err
	}
	lock, err := Lock(stateDir, lab, wait)
	if err != nil {
		return err
	}
	defer lock.Close()
	return destroyLocked(stateDir, lab, log)
}

// Destroy removes the open lab completely (see the function Destroy); the
// cluster must not be used afterwards.
func (c *Cluster) Destroy() error {
	c.Close()
	return Destroy(c.StateDir, c.Lab.Name, c.Log, nil)
}

func destroyLocked(stateDir, lab string, log *explain.Log) error {
	nss, err := netns.List(lab)
	if err != nil {
		return err
	}
	procs, err := ProcessesIn(nss)
	if err != nil {
		return err
	}
	for _, pid := range serverProcesses()[lab] {
		if _, ok := procs[pid]; !ok {
			procs[pid] = "server of lab " + lab
		}
	}
	killProcesses(procs, log)
	var errs []error
	for _, ns := range nss {
		if err := netns.Delete(ns); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Add("ip netns del %s", ns)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := removeAll(filepath.Join(stateDir, lab)); err != nil {
		return err
	}
	explain.CrashPoint()
	// We hold this lock: removing it is safe (see Lock).
	os.Remove(filepath.Join(stateDir, lab+".lock"))
	return CleanupHostDirs(stateDir)
}

// DestroyAll destroys every lab found in the state directory, the kernel
// or the servers' command lines, and nothing else.
func DestroyAll(stateDir string, log *explain.Log, wait io.Writer) ([]string, error) {
	return DestroyMatching(stateDir, nil, log, wait)
}

// DestroyMatching is DestroyAll restricted to the labs for which match
// returns true (nil matches every lab). It goes on after a failure and
// returns every error.
func DestroyMatching(stateDir string, match func(lab string) bool, log *explain.Log, wait io.Writer) ([]string, error) {
	f, err := discover(stateDir)
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range f.names {
		if match == nil || match(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var done []string
	var errs []error
	for _, n := range names {
		if err := Destroy(stateDir, n, log, wait); err != nil {
			errs = append(errs, fmt.Errorf("destroy lab %s: %w", n, err))
			continue
		}
		done = append(done, n)
	}
	if err := CleanupHostDirs(stateDir); err != nil {
		errs = append(errs, err)
	}
	return done, errors.Join(errs...)
}

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
// ("<klab> __serve ... --lab <lab>", see StartServer's callers), by lab:
// they are found even if their namespace was deleted behind klab's back.
func serverProcesses() map[string][]int {
	out := map[string][]int{}
	pids, _ := allPIDs()
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("\x00__serve\x00")) {
			continue
		}
		if lab := ServerLab(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")); lab != "" {
			out[lab] = append(out[lab], pid)
		}
	}
	return out
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

// killProcesses stops processes: SIGTERM, then SIGKILL after a grace
// period for those still running.
func killProcesses(procs map[int]string, log *explain.Log) {
	if len(procs) == 0 {
		return
	}
	for pid, where := range procs {
		syscall.Kill(pid, syscall.SIGTERM)
		log.Add("kill %d   # %s", pid, where)
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

// RunFlannel is the mount point 'klab exec NODE' uses for the node's
// subnet.env; runFlannelMarker, inside it, says that klab created it (the
// bind mount hides the marker inside 'klab exec', and a real flannel's
// directory has none).
const (
	RunFlannel       = "/run/flannel"
	runFlannelMarker = ".klab-created"
)

// runFlannel is RunFlannel; tests point it elsewhere.
var runFlannel = RunFlannel

// EnsureRunFlannel creates /run/flannel, marked as klab's, if it does not
// exist.
func EnsureRunFlannel() error {
	if _, err := os.Stat(runFlannel); err == nil {
		return nil
	}
	if err := os.Mkdir(runFlannel, 0o755); err != nil {
		if os.IsExist(err) {
			return nil
		}
		return fmt.Errorf("create %s: %w", runFlannel, err)
	}
	explain.CrashPoint()
	return os.WriteFile(filepath.Join(runFlannel, runFlannelMarker), []byte("created by klab as the mount point of a node's subnet.env in 'klab exec'; removed by 'klab destroy' once no lab is left\n"), 0o644)
}

// CleanupHostDirs removes what klab left in the host's filesystem once no
// lab is left: the lock files (each only while holding it) and the state
// directory itself if empty; and /run/flannel, if klab created it and no
// klab namespace exists any more (it is shared by every lab of every state
// directory).
func CleanupHostDirs(stateDir string) error {
	dirs, err := labDirs(stateDir)
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		ents, _ := os.ReadDir(stateDir)
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				continue
			}
			p := filepath.Join(stateDir, e.Name())
			if f, ok := tryLockPath(p); ok {
				os.Remove(p)
				f.Close()
			}
		}
	}
	// Older versions marked /run/flannel as theirs in the state directory.
	legacy := filepath.Join(stateDir, ".created-run-flannel")
	_, err = os.Stat(legacy)
	legacyMarked := err == nil
	if nss, err := netns.List(""); err == nil && len(nss) == 0 {
		ents, err := os.ReadDir(runFlannel)
		switch {
		case err == nil && len(ents) == 1 && ents[0].Name() == runFlannelMarker:
			os.Remove(filepath.Join(runFlannel, runFlannelMarker))
			os.Remove(runFlannel)
		case err == nil && len(ents) == 0 && legacyMarked:
			os.Remove(runFlannel)
		}
	}
	if _, err := os.Stat(runFlannel); legacyMarked && errors.Is(err, os.ErrNotExist) {
		os.Remove(legacy)
	}
	if len(dirs) == 0 {
		os.Remove(stateDir) // only succeeds when empty
	}
	return nil
}
