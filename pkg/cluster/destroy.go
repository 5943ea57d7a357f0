package cluster

// Destroying: removing everything a lab (or every lab) created.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/klab-dev/klab/pkg/netns"
)

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
