package cluster

// Listing: what `klab list` shows about each lab found, and the
// disagreements between its state and the kernel.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// LabInfo is what `klab list` shows about one lab.
type LabInfo struct {
	Name      string   `json:"name"`
	Backend   string   `json:"backend,omitempty"`
	ProxyMode string   `json:"proxyMode,omitempty"`
	Nodes     []string `json:"nodes"`
	// RemoteNodes are the nodes other machines hold in a lab that spans
	// machines, as NODE@MACHINE, read from etcd (machines.go).
	RemoteNodes []string `json:"remoteNodes,omitempty"`
	// Machine is this machine's name in such a lab.
	Machine    string   `json:"machine,omitempty"`
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
		info.ProxyMode = l.Mode()
		info.Services = serviceNames(l)
		for _, n := range l.Nodes {
			info.Nodes = append(info.Nodes, n.Name)
			if !have[n.Name] {
				problem("node %s has no namespace: remove it with 'klab node del %s --lab %s'", n.Name, n.Name, name)
			}
		}
		for _, p := range l.Pods {
			info.Pods = append(info.Pods, p.Name)
			if !have[netns.Object(p.Name)] {
				problem("pod %s has no namespace: remove it with 'klab pod del %s --lab %s'", p.Name, p.Name, name)
			}
		}
		if len(l.Nodes) > 0 && !have[UnderlayName] {
			problem("the underlay namespace %s is missing: no node can reach another", netns.Name(name, UnderlayName))
		}
		known := map[string]bool{UnderlayName: true, ExternalName: true, ControlPlaneName: l.hasCPNode(), MachinePortName: l.Joined()}
		if l.spansMachines() {
			info.Machine = l.ControlPlane.Machine.Name
			c := &Cluster{StateDir: stateDir, Lab: l, A: &plan.Applier{}}
			rn, err := c.RemoteNodes()
			c.A.Close()
			if err != nil {
				problem("the other machines' nodes are unknown: %v", err)
			}
			for _, n := range rn {
				info.RemoteNodes = append(info.RemoteNodes, n.Name+"@"+dashIfEmpty(n.Machine))
			}
		}
		for _, n := range l.Names() {
			known[netns.Object(n)] = true
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
		info.Problems = append(info.Problems, birdProblems(stateDir, l, have)...)
		info.Problems = append(info.Problems, CNICheck(stateDir, l)...)
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

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// serviceNames lists the lab's services.
func serviceNames(l *Lab) []string {
	var out []string
	for _, s := range l.Services {
		out = append(out, s.Name)
	}
	return out
}
