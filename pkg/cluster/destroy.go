package cluster

// Destroying: removing everything a lab (or every lab) created.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// Destroy removes everything a lab created: the processes running in its
// namespaces or serving it, its namespaces (found in the kernel by name, so
// a lost or corrupt state directory does not matter), its state directory
// and lock, and host directories klab created once no lab is left. It is
// idempotent.
func Destroy(stateDir, lab string, a *plan.Applier, wait io.Writer) error {
	if err := netns.ValidateLab(lab); err != nil {
		return err
	}
	lock, err := Lock(stateDir, lab, wait)
	if err != nil {
		return err
	}
	if a != nil && a.DryRun {
		// A dry run leaves nothing behind: for a lab without state, unlock
		// removes the lock file Lock has just created.
		defer unlock(stateDir, lab, lock)
	} else {
		defer lock.Close()
	}
	if a == nil || !a.DryRun {
		leaveCluster(stateDir, lab) // a joined machine says goodbye in etcd (machines.go)
	}
	return destroyLocked(stateDir, lab, a)
}

// Destroy removes the open lab completely (see the function Destroy); the
// cluster must not be used afterwards.
func (c *Cluster) Destroy() error {
	c.Close()
	return Destroy(c.StateDir, c.Lab.Name, c.A, nil)
}

// PlanDestroy returns the operations that remove a lab: stop the
// processes in its namespaces and its servers, delete every namespace of
// the lab found in the kernel, remove its state directory.
func PlanDestroy(stateDir, lab string) (plan.Plan, error) {
	nss, err := netns.List(lab)
	if err != nil {
		return nil, err
	}
	procs, err := ProcessesIn(nss)
	if err != nil {
		return nil, err
	}
	for _, pid := range serverProcesses()[lab] {
		if _, ok := procs[pid]; !ok {
			procs[pid] = "server of lab " + lab
		}
	}
	var p plan.Plan
	if len(procs) > 0 {
		p.Add(killOp(procs))
	}
	if l, err := Load(stateDir, lab); err == nil {
		p.Add(planEtcdCleanup(l)...) // an external etcd's keys (controlplane_external.go)
	}
	p.Add(planCNIDestroy(stateDir, lab)...) // CNI-wired pods: DEL (cni.go)
	sort.Strings(nss)
	for _, ns := range nss {
		p.Add(plan.Op{Verb: plan.NetnsDel, NS: ns})
	}
	p.Add(planEtcNetnsCleanup(lab)...)
	if _, err := os.Stat(filepath.Join(stateDir, lab)); err == nil {
		p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: filepath.Join(stateDir, lab), Recurse: true}})
	}
	return p, nil
}

func destroyLocked(stateDir, lab string, a *plan.Applier) error {
	if a == nil {
		a = &plan.Applier{}
	}
	p, err := PlanDestroy(stateDir, lab)
	if err != nil {
		return err
	}
	if err := a.Apply(p); err != nil {
		return err
	}
	if a.DryRun {
		return nil
	}
	// We hold this lock: removing it is safe (see Lock).
	os.Remove(filepath.Join(stateDir, lab+".lock"))
	return CleanupHostDirs(stateDir)
}

// DestroyAll destroys every lab found in the state directory, the kernel
// or the servers' command lines, and nothing else.
func DestroyAll(stateDir string, a *plan.Applier, wait io.Writer) ([]string, error) {
	return DestroyMatching(stateDir, nil, a, wait)
}

// DestroyMatching is DestroyAll restricted to the labs for which match
// returns true (nil matches every lab). It goes on after a failure and
// returns every error.
func DestroyMatching(stateDir string, match func(lab string) bool, a *plan.Applier, wait io.Writer) ([]string, error) {
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
		if err := Destroy(stateDir, n, a, wait); err != nil {
			errs = append(errs, fmt.Errorf("destroy lab %s: %w", n, err))
			continue
		}
		done = append(done, n)
	}
	if a == nil || !a.DryRun {
		if err := CleanupHostDirs(stateDir); err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}
