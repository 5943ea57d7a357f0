package cluster

import (
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

// LabInfo is what `klab list` shows about one lab.
type LabInfo struct {
	Name       string   `json:"name"`
	Backend    string   `json:"backend,omitempty"`
	Nodes      []string `json:"nodes"`
	Pods       []string `json:"pods"`
	Namespaces []string `json:"namespaces"`
	// Problems lists disagreements between the state and the kernel.
	Problems []string `json:"problems,omitempty"`
}

// List finds every lab, from the state directory and from the kernel's
// namespace names, and reports what does not match.
func List(stateDir string) ([]LabInfo, error) {
	names := map[string]bool{}
	labs, err := Labs(stateDir)
	if err != nil {
		return nil, err
	}
	for _, l := range labs {
		names[l] = true
	}
	all, err := netns.List("")
	if err != nil {
		return nil, err
	}
	byLab := map[string][]string{}
	for _, ns := range all {
		l, _, _ := netns.Parse(ns)
		names[l] = true
		byLab[l] = append(byLab[l], ns)
	}
	var out []LabInfo
	for name := range names {
		info := LabInfo{Name: name, Namespaces: byLab[name]}
		l, err := Load(stateDir, name)
		switch {
		case errors.Is(err, ErrNoLab):
			info.Problems = append(info.Problems, "namespaces exist but the lab has no state: remove them with 'klab destroy "+name+"'")
		case err != nil:
			info.Problems = append(info.Problems, err.Error())
		default:
			info.Backend = l.Backend
			have := map[string]bool{}
			for _, ns := range byLab[name] {
				_, obj, _ := netns.Parse(ns)
				have[obj] = true
			}
			for _, n := range l.Nodes {
				info.Nodes = append(info.Nodes, n.Name)
				if !have[n.Name] {
					info.Problems = append(info.Problems, fmt.Sprintf("node %s has no namespace: remove it with 'klab node del %s --lab %s' or destroy the lab", n.Name, n.Name, name))
				}
			}
			for _, p := range l.Pods {
				info.Pods = append(info.Pods, p.Name)
				if !have[p.Name] {
					info.Problems = append(info.Problems, fmt.Sprintf("pod %s has no namespace: remove it with 'klab pod del %s --lab %s' or destroy the lab", p.Name, p.Name, name))
				}
			}
			known := map[string]bool{UnderlayName: true, ExternalName: true}
			for _, n := range l.Names() {
				known[n] = true
			}
			for obj := range have {
				if !known[obj] {
					info.Problems = append(info.Problems, fmt.Sprintf("namespace %s is not in the lab's state (an interrupted build?): 'klab destroy %s' removes it", netns.Name(name, obj), name))
				}
			}
		}
		sort.Strings(info.Namespaces)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Destroy removes everything a lab created: the processes running in its
// namespaces (servers, shells), its namespaces (found in the kernel by
// name, so a lost or corrupt state directory does not matter), and its
// state directory. It is idempotent.
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
	if err := killInNamespaces(nss, log); err != nil {
		return err
	}
	var first error
	for _, ns := range nss {
		if err := netns.Delete(ns); err != nil && first == nil {
			first = err
		}
		log.Add("ip netns del %s", ns)
	}
	if first != nil {
		return first
	}
	if err := removeAll(filepath.Join(stateDir, lab)); err != nil {
		return err
	}
	os.Remove(filepath.Join(stateDir, lab+".lock"))
	return CleanupHostDirs(stateDir)
}

// DestroyAll destroys every lab found in the state directory or the
// kernel, and nothing else.
func DestroyAll(stateDir string, log *explain.Log, wait io.Writer) ([]string, error) {
	infos, err := List(stateDir)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, li := range infos {
		if err := Destroy(stateDir, li.Name, log, wait); err != nil {
			return done, fmt.Errorf("destroy lab %s: %w", li.Name, err)
		}
		done = append(done, li.Name)
	}
	return done, nil
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
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
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

// killInNamespaces stops every process living in the namespaces: SIGTERM,
// then SIGKILL after a grace period.
func killInNamespaces(nss []string, log *explain.Log) error {
	procs, err := ProcessesIn(nss)
	if err != nil || len(procs) == 0 {
		return err
	}
	for pid, ns := range procs {
		syscall.Kill(pid, syscall.SIGTERM)
		log.Add("kill %d   # running in %s", pid, ns)
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
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	for pid := range procs {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
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

// runFlannelMarker records that klab created /run/flannel (as the mount
// point for 'klab exec NODE'), so that destroy --all can remove it again.
func runFlannelMarker(stateDir string) string { return filepath.Join(stateDir, ".created-run-flannel") }

// EnsureRunFlannel creates /run/flannel if needed (an empty directory, the
// mount point for a node's subnet.env inside 'klab exec') and remembers
// that klab created it.
func EnsureRunFlannel(stateDir string) error {
	if _, err := os.Stat("/run/flannel"); err == nil {
		return nil
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(runFlannelMarker(stateDir), nil, 0o600); err != nil {
		return err
	}
	if err := os.Mkdir("/run/flannel", 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("create /run/flannel: %w", err)
	}
	return nil
}

// CleanupHostDirs removes what klab left in the host's filesystem once no
// lab is left: /run/flannel if klab created it and it is empty, and the
// state directory if empty.
func CleanupHostDirs(stateDir string) error {
	labs, err := Labs(stateDir)
	if err != nil || len(labs) > 0 {
		return err
	}
	if _, err := os.Stat(runFlannelMarker(stateDir)); err == nil {
		os.Remove("/run/flannel") // only succeeds when empty
		os.Remove(runFlannelMarker(stateDir))
	}
	ents, _ := os.ReadDir(stateDir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".lock") {
			os.Remove(filepath.Join(stateDir, e.Name()))
		}
	}
	os.Remove(stateDir)
	return nil
}
