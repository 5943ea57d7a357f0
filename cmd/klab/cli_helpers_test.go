package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/etcdserver"
	"github.com/klab-dev/klab/pkg/netns"
)

// cli runs the real klab binary against a private state directory, so
// these tests never see (or destroy) labs of other state directories.
type cli struct {
	t     testing.TB
	bin   string
	state string
}

func newCLI(t testing.TB) *cli {
	t.Helper()
	testutil.RequireRoot(t)
	return &cli{t: t, bin: testutil.Klab(t), state: t.TempDir()}
}

// result of one klab run.
type result struct {
	out    string
	code   int            // exit status, or -1 if killed by a signal
	signal syscall.Signal // the signal that killed it, if any
}

func (c *cli) cmd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin, append([]string{"--state-dir", c.state}, args...)...)
	cmd.Env = append(append(os.Environ(), "KLAB_LAB="), env...)
	return cmd
}

// run runs klab with extra environment and returns what happened.
func (c *cli) run(env []string, args ...string) result {
	c.t.Helper()
	cmd := c.cmd(env, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return exitResult(c.t, out.String(), err)
}

func exitResult(t testing.TB, out string, err error) result {
	t.Helper()
	r := result{out: out}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			r.code, r.signal = -1, ws.Signal()
		} else {
			r.code = ws.ExitStatus()
		}
	default:
		t.Fatalf("run klab: %v", err)
	}
	return r
}

// must runs klab and fails the test unless it exits 0.
func (c *cli) must(args ...string) string {
	c.t.Helper()
	r := c.run(nil, args...)
	if r.code != 0 {
		c.t.Fatalf("klab %s: exit %d (signal %v)\n%s", strings.Join(args, " "), r.code, r.signal, r.out)
	}
	return r.out
}

// list returns 'klab list' for the labs starting with prefix.
func (c *cli) list(prefix string) []cluster.LabInfo {
	c.t.Helper()
	var infos []cluster.LabInfo
	out := c.must("list", "--prefix", prefix, "-o", "json")
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		c.t.Fatalf("klab list -o json: %v\n%s", err, out)
	}
	return infos
}

// destroyOnCleanup destroys lab (with this CLI's state directory) when the
// test ends, whatever happened.
func (c *cli) destroyOnCleanup(lab string) {
	c.t.Cleanup(func() { c.run(nil, "destroy", lab) })
}

// leftovers lists what is left on the host of lab: namespaces, mounts,
// processes, files in the state directory. Empty means clean.
func (c *cli) leftovers(lab string) []string {
	c.t.Helper()
	var out []string
	nss, err := netns.List(lab)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, ns := range nss {
		out = append(out, "namespace "+ns)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		c.t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, netns.Prefix+lab+".") || strings.Contains(line, c.state) {
			out = append(out, "mount "+line)
		}
	}
	for _, pid := range processesMentioning(lab) {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		out = append(out, "process "+strconv.Itoa(pid)+": "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	for _, p := range []string{filepath.Join(c.state, lab), filepath.Join(c.state, lab+".lock")} {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, "file "+p)
		}
	}
	return out
}

// assertClean fails the test if anything of lab is left.
func (c *cli) assertClean(lab, when string) {
	c.t.Helper()
	if l := c.leftovers(lab); len(l) > 0 {
		c.t.Fatalf("%s: lab %s left behind:\n  %s", when, lab, strings.Join(l, "\n  "))
	}
}

// processesMentioning lists live processes whose command line or
// environment names the lab (servers, exec'd commands), but not this one.
func processesMentioning(lab string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if len(cmdline) == 0 { // zombies and kernel threads
			continue
		}
		for _, f := range append(bytes.Split(cmdline, []byte{0}), bytes.Split(environ, []byte{0})...) {
			if string(f) == lab || string(f) == "KLAB_LAB="+lab || string(f) == "--lab="+lab {
				out = append(out, pid)
				break
			}
		}
		// The etcd that 'klab __serve --proto etcd' became names the
		// lab in its token and data directory only.
		if l, _ := etcdserver.LabOf(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")); l == lab && !slices.Contains(out, pid) {
			out = append(out, pid)
		}
	}
	return out
}
