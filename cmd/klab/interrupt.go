package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/pkg/cluster"
)

// Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal) during a command
// that changes a lab must not leave it half built. guardBuild, called once
// the lab is locked, catches them: the first one cancels c.Ctx, so the build
// stops after its current kernel operation and rolls back what it created;
// later ones only say that klab is finishing. The command then exits 130
// with what is up and how to remove it (interrupted). Before the lock is
// taken nothing has changed, and a signal kills klab as usual.

// interruptSignals are the signals guardBuild catches.
var interruptSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

// guardBuild installs the handler; the returned function removes it.
func guardBuild(c *cluster.Cluster) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c.Ctx = ctx
	return catchSignals(func(n int) {
		if n == 1 {
			cancel()
			fmt.Fprintln(os.Stderr, "klab: interrupted: finishing the current kernel operation, then removing what this command created...")
			return
		}
		fmt.Fprintln(os.Stderr, "klab: still rolling back, so that the lab stays consistent: please wait")
	})
}

// guardDestroy keeps a destroy going to its end when interrupted: stopping
// half way would only leave more to destroy.
func guardDestroy() (stop func()) {
	return catchSignals(func(int) {
		fmt.Fprintln(os.Stderr, "klab: destroying: finishing, so that nothing is left behind: please wait")
	})
}

// catchSignals calls on(n) for the nth interrupt signal until stopped.
func catchSignals(on func(n int)) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, interruptSignals...)
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for n := 1; ; n++ {
			select {
			case <-ch:
				on(n)
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
		<-exited
	}
}

// wasInterrupted reports whether guardBuild saw a signal.
func wasInterrupted(c *cluster.Cluster) bool { return c.Ctx != nil && c.Ctx.Err() != nil }

// interrupted turns the result of a build step into the interrupted exit
// (130, with what is up and how to remove it) when a signal arrived; other
// results pass through. what names the object, e.g. "node node2"; done says
// whether the step completed.
func interrupted(c *cluster.Cluster, what string, done bool, err error) error {
	if !wasInterrupted(c) || (err != nil && !errors.Is(err, cluster.ErrInterrupted)) {
		return err
	}
	msg := fmt.Sprintf("interrupted: %s was not created (what it had created is removed again)", what)
	if done {
		msg = fmt.Sprintf("interrupted: %s was done just before", what)
	}
	return exitError{code: 130, msg: msg + ". " + labSummary(c)}
}

// labSummary says what a lab has and how to remove it.
func labSummary(c *cluster.Cluster) string {
	l := c.Lab
	if len(l.Nodes) == 0 && len(l.Pods) == 0 {
		if _, err := os.Stat(cluster.StateFile(c.StateDir, l.Name)); err != nil {
			return fmt.Sprintf("Lab %s has nothing up ('klab list' shows any leftover; 'klab destroy %s' removes it)", l.Name, l.Name)
		}
	}
	var nodes, pods []string
	for _, n := range l.Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, p := range l.Pods {
		pods = append(pods, p.Name)
	}
	return fmt.Sprintf("Lab %s now has nodes [%s] and pods [%s]: go on from here, check it with 'klab list', or remove it with 'klab destroy %s'",
		l.Name, strings.Join(nodes, " "), strings.Join(pods, " "), l.Name)
}
