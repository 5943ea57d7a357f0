package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// Deleting the state directory of a running lab (with a server whose pod
// namespace was also deleted by hand, so only its command line names the
// lab, and a 'klab exec' command whose klab parent was SIGKILLed) loses
// nothing: 'klab list' still finds the lab, in the kernel, and flags it
// damaged with the fix; 'klab destroy --all' removes every namespace,
// process and file.
func TestDestroyAllAfterStateDirDeleted(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	prefix := testutil.LabName(t, "rlgone")
	lab := prefix + "-x"
	k.destroyOnCleanup(lab)
	for _, step := range crossnodeBuild {
		k.must(append([]string{"--lab", lab}, step...)...)
	}
	shell := k.cmd(nil, "--lab", lab, "exec", "node1", "--", "sleep", "600")
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Process.Kill(); shell.Wait() })
	sleeper := waitForProcessIn(t, netns.Name(lab, "node1"))
	shell.Process.Kill() // the klab exec parent dies; its command lives on
	shell.Wait()

	if err := netns.Delete(netns.Name(lab, "pod-c")); err != nil { // ip netns del, behind klab's back
		t.Fatal(err)
	}
	if err := os.RemoveAll(k.state); err != nil {
		t.Fatal(err)
	}
	infos := k.list(prefix)
	if len(infos) != 1 || infos[0].Name != lab || !infos[0].Damaged() || infos[0].Fix != "klab destroy "+lab {
		t.Fatalf("klab list after losing the state: %+v", infos)
	}
	if len(infos[0].Namespaces) != 5 || len(infos[0].Processes) != 2 {
		t.Errorf("klab list: namespaces %v, processes %v (want 5 namespaces: underlay, external, 2 nodes, pod-a; the server and the sleeper)", infos[0].Namespaces, infos[0].Processes)
	}
	out := k.must("destroy", "--all", "--prefix", prefix)
	if !strings.Contains(out, "lab "+lab+" destroyed") {
		t.Fatalf("destroy --all: %s", out)
	}
	k.assertClean(lab, "destroy --all after the state directory was deleted")
	if syscall.Kill(sleeper, 0) == nil && !zombie(sleeper) {
		t.Fatalf("the command of 'klab exec' (pid %d) still runs", sleeper)
	}
	if _, err := os.Stat(k.state); err == nil {
		t.Errorf("state directory %s re-created and left behind", k.state)
	}
}

// 'klab exec' mounts nothing on the host, and its private mount namespace
// follows the host's unmounts: a lab destroyed while another lab's shell
// runs is really gone (its namespaces are not kept alive by the shell).
func TestExecMountsStayPrivateAndFollowHost(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	prefix := testutil.LabName(t, "rlexec")
	a, b := prefix+"-a", prefix+"-b"
	k.destroyOnCleanup(a)
	k.destroyOnCleanup(b)
	k.must("--lab", a, "node", "add", "node1")
	hostBefore := mountsMatching(t, "self", cluster.RunFlannel)
	shell := k.cmd(nil, "--lab", a, "exec", "node1", "--", "sleep", "600")
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Process.Kill(); shell.Wait() })
	pid := waitForProcessIn(t, netns.Name(a, "node1"))
	inside := mountsMatching(t, strconv.Itoa(pid), cluster.RunFlannel)
	if len(inside) == 0 || !strings.Contains(strings.Join(inside, "\n"), filepath.Join(a, "nodes", "node1", "flannel")) {
		t.Fatalf("no bind mount of node1's flannel directory on /run/flannel inside klab exec:\n%s", strings.Join(inside, "\n"))
	}
	if after := mountsMatching(t, "self", cluster.RunFlannel); len(after) != len(hostBefore) {
		t.Fatalf("klab exec mounted on the host: %v", after)
	}
	// Lab b appears and disappears while the shell runs.
	k.must("--lab", b, "node", "add", "node1")
	if len(mountsMatching(t, strconv.Itoa(pid), netns.Prefix+b+".")) == 0 {
		t.Errorf("lab %s's namespaces did not propagate into the running klab exec", b)
	}
	k.must("destroy", b)
	k.assertClean(b, "destroy while another lab's klab exec runs")
	if m := mountsMatching(t, strconv.Itoa(pid), netns.Prefix+b+"."); len(m) > 0 {
		t.Fatalf("klab exec of lab %s still holds lab %s's namespaces:\n%s", a, b, strings.Join(m, "\n"))
	}
	k.must("destroy", a)
	shell.Wait()
	k.assertClean(a, "destroy with a klab exec running")
}

// waitForProcessIn waits until a process runs in the namespace (the exec'd
// command) and returns its PID.
func waitForProcessIn(t *testing.T, ns string) int {
	t.Helper()
	for i := 0; ; i++ {
		procs, err := cluster.ProcessesIn([]string{ns})
		if err != nil {
			t.Fatal(err)
		}
		for pid := range procs {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); strings.TrimSpace(string(b)) == "sleep" {
				return pid
			}
		}
		if i > 500 {
			t.Fatalf("no command started in %s", ns)
		}
		syscall.Nanosleep(&syscall.Timespec{Nsec: 10e6}, nil)
	}
}

// mountsMatching returns the lines of /proc/PID/mountinfo containing s.
func mountsMatching(t *testing.T, pid, s string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}
