package cluster

// Discovery: finding the labs on this machine and their objects without
// trusting the state directory, from the state directory's lab directories,
// the kernel's namespace names and the servers' command lines.

import (
	"errors"
	"fmt"
	"os"

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
