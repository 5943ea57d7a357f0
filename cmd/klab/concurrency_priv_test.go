package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// Two klab processes on one lab are serialised: while this process holds
// the lab's lock, 'klab node add' says it is waiting and builds nothing;
// once the lock is released it goes on and completes.
func TestCommandWaitsForLabLock(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "rlwait")
	k.destroyOnCleanup(lab)
	lock, err := cluster.Lock(k.state, lab, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	cmd := k.cmd(nil, "--lab", lab, "node", "add", "node1")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stderr)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, fmt.Sprintf("waiting for another klab command on lab %q", lab)) {
		t.Fatalf("klab node add said %q (%v), want the waiting message", line, err)
	}
	if nss, _ := netns.List(lab); len(nss) > 0 {
		t.Fatalf("klab built %v while waiting for the lock", nss)
	}
	lock.Close()
	rest, _ := io.ReadAll(br)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("klab node add after the lock was released: %v\n%s%s", err, stdout.String(), rest)
	}
	if l, err := cluster.Load(k.state, lab); err != nil || l.Node("node1") == nil {
		t.Fatalf("node1 not added: %v", err)
	}
}

// Two labs built and exercised at the same time, through the CLI, with the
// same default addresses: no name or address collides (everything lives in
// each lab's own namespaces), each passes its own checks with real traffic,
// and destroying one leaves the other intact.
func TestTwoLabsConcurrently(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	prefix := testutil.LabName(t, "rlpair")
	labs := []string{prefix + "-a", prefix + "-b"}
	for _, l := range labs {
		k.destroyOnCleanup(l)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(labs))
	for i, lab := range labs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = exercise(k, lab)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("lab %s: %v", labs[i], err)
		}
	}
	infos := k.list(prefix)
	if len(infos) != 2 {
		t.Fatalf("klab list --prefix %s: %d labs, want 2", prefix, len(infos))
	}
	for _, li := range infos {
		if li.Damaged() || len(li.Nodes) != 2 || len(li.Pods) != 3 {
			t.Errorf("lab %s: nodes %v pods %v problems %v", li.Name, li.Nodes, li.Pods, li.Problems)
		}
	}
	k.must("destroy", labs[0])
	k.assertClean(labs[0], "destroy")
	if err := check(k, labs[1]); err != nil {
		t.Fatalf("lab %s after destroying %s: %v", labs[1], labs[0], err)
	}
}

// exercise builds the flannel-crossnode network in lab (plus a pod sharing
// node1) and checks it with real traffic.
func exercise(k *cli, lab string) error {
	for _, step := range append(crossnodeBuild, []string{"pod", "add", "pod-b", "--node", "node1"}) {
		if r := k.run(nil, append([]string{"--lab", lab}, step...)...); r.code != 0 {
			return fmt.Errorf("klab %s: exit %d\n%s", strings.Join(step, " "), r.code, r.out)
		}
	}
	if r := k.run(nil, "--lab", lab, "ping", "pod-b", "pod-a", "-c", "2"); r.code != 0 {
		return fmt.Errorf("klab ping pod-b pod-a: exit %d\n%s", r.code, r.out)
	}
	return check(k, lab)
}

// check proves the crossnodeBuild network works with real traffic: a ping
// across nodes, HTTP to the pod, through the ClusterIP and through the
// NodePort from the external host.
func check(k *cli, lab string) error {
	for _, c := range [][]string{
		{"ping", "pod-a", "pod-c", "-c", "2"},
		{"curl", "pod-a", "http://pod-c:8080/"},
		{"curl", "pod-a", "http://web/"},
		{"curl", "external", "http://node1:30080/"},
	} {
		r := k.run(nil, append([]string{"--lab", lab}, c...)...)
		if r.code != 0 {
			return fmt.Errorf("klab %s: exit %d\n%s", strings.Join(c, " "), r.code, r.out)
		}
		if c[0] == "curl" && !strings.Contains(r.out, "pod-c") {
			return fmt.Errorf("klab %s: reply not from pod-c:\n%s", strings.Join(c, " "), r.out)
		}
	}
	return nil
}
