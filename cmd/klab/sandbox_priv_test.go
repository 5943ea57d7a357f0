package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// hostState is what a hostile lab must leave as it found it: the host's
// network namespace (testutil's snapshot), its mounts (other tests'
// namespace mounts and temporary directories apart), its kernel modules,
// the kernel sysctls a lab tries, and the files given.
type hostState struct {
	net     *testutil.HostSnapshot
	mounts  []string
	modules string
	sysctls string
	files   map[string]string
}

func takeHostState(t *testing.T, files []string) hostState {
	t.Helper()
	snap, err := testutil.TakeHostSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	s := hostState{net: snap, files: map[string]string{}}
	mi, err := os.ReadFile("/proc/1/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasPrefix(f[4], "/run/netns/") || strings.HasPrefix(f[4], "/tmp/") {
			continue
		}
		s.mounts = append(s.mounts, f[4]+" "+f[5])
	}
	sort.Strings(s.mounts)
	mods, _ := os.ReadFile("/proc/modules")
	s.modules = string(mods)
	for _, k := range []string{"kernel/domainname", "kernel/hostname", "kernel/panic", "kernel/printk"} {
		b, _ := os.ReadFile("/proc/sys/" + k)
		s.sysctls += k + "=" + string(b)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			s.files[f] = "(absent: " + err.Error() + ")"
			if os.IsNotExist(err) {
				s.files[f] = "(absent)"
			}
			continue
		}
		s.files[f] = string(b)
	}
	return s
}

func (s hostState) diff(after hostState) string {
	var b strings.Builder
	if d := s.net.Diff(after.net); d != "" {
		fmt.Fprintf(&b, "host network namespace:\n%s", d)
	}
	if strings.Join(s.mounts, "\n") != strings.Join(after.mounts, "\n") {
		fmt.Fprintf(&b, "host mounts changed:\nbefore %q\nafter  %q\n", s.mounts, after.mounts)
	}
	if s.modules != after.modules {
		fmt.Fprintf(&b, "kernel modules changed:\nbefore %s\nafter  %s\n", s.modules, after.modules)
	}
	if s.sysctls != after.sysctls {
		fmt.Fprintf(&b, "kernel sysctls changed:\nbefore %s\nafter  %s\n", s.sysctls, after.sysctls)
	}
	for f, v := range s.files {
		if after.files[f] != v {
			fmt.Fprintf(&b, "%s changed: %q -> %q\n", f, v, after.files[f])
		}
	}
	return b.String()
}

// hostileLab is a lab file whose second action is cmd (the words after
// 'klab exec node1 --'), as a stranger could share it.
func hostileLab(t *testing.T, lab, cmd string) string {
	t.Helper()
	src := fmt.Sprintf(`---
name: %s
title: A lab that tries to hurt the host
summary: Its second command reaches outside its namespaces.
time: 5m
---

## Harmless

`+"```klab"+`
klab node add node1
`+"```"+`

## Hostile

`+"```klab"+`
klab exec node1 -- %s
`+"```"+`
`, lab, cmd)
	p := filepath.Join(t.TempDir(), lab+".md")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// outsideTmp is a scratch directory the host has but the sandbox's private
// /tmp does not hide.
func outsideTmp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/var/tmp", "klab-sb-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestHostileLabs runs lab files that try to change the host, each as a
// stranger's lab runs (klab run FILE --yes: sandboxed, no question asked).
// Each hostile command must fail with the error the sandbox gives it, the
// lab must stop at that step and say so, and afterwards the host's files,
// mounts, kernel modules, kernel sysctls and network namespace are as they
// were, and 'klab destroy' leaves nothing of the lab.
func TestHostileLabs(t *testing.T) {
	c := newCLI(t)
	id := strconv.Itoa(os.Getpid())
	scratch := outsideTmp(t)
	victim := filepath.Join(scratch, "victim")
	if err := os.WriteFile(victim, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another lab's namespace, and an unrelated one.
	other := netns.Name(testutil.LabName(t, "sbother"), "node1")
	unrelated := netns.Name(testutil.LabName(t, "sbunrel"), "x")
	for _, ns := range []string{other, unrelated} {
		if _, err := netns.Ensure(ns); err != nil {
			t.Fatal(err)
		}
	}
	// A setuid-root helper with CAP_SYS_ADMIN as a file capability, too.
	helper := filepath.Join(scratch, "unshare-suid")
	if b, err := os.ReadFile("/usr/bin/unshare"); err == nil {
		if err := os.WriteFile(helper, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(helper, 0o4755|os.ModeSetuid); err != nil {
			t.Fatal(err)
		}
		if setcap, err := exec.LookPath("setcap"); err == nil {
			exec.Command(setcap, "cap_sys_admin+ep", helper).Run()
		}
	}
	// A process outside the lab.
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	// Should the sandbox ever let nsenter through, the host's snapshot
	// fails the test; this removes what it would have made.
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("klabsbx"); err == nil {
			netlink.LinkDel(l)
		}
	})

	for _, tc := range []struct {
		name  string
		cmd   string
		want  string   // in the failing command's output
		files []string // must be as before
		skip  string   // why the host cannot show this refusal
	}{
		{"write-etc", "touch /etc/klab-sb-" + id, "Read-only file system", []string{"/etc/klab-sb-" + id}, ""},
		{"write-root", "sh -c 'echo x > /root/klab-sb-" + id + "'", "Read-only file system", []string{"/root/klab-sb-" + id}, ""},
		{"write-usr", "cp /etc/hostname /usr/klab-sb-" + id, "Read-only file system", []string{"/usr/klab-sb-" + id}, ""},
		{"write-var", "mkdir /var/klab-sb-" + id, "Read-only file system", []string{"/var/klab-sb-" + id}, ""},
		{"delete-outside-tmp", "rm -f " + victim, "Read-only file system", []string{victim}, ""},
		{"nsenter-host", "nsenter -t 1 -n ip link add klabsbx type veth peer name klabsby", "Operation not permitted", nil, ""},
		{"netns-exec-other-lab", "ip netns exec " + other + " ip link add klabsbx type veth peer name klabsby", "", nil, ""},
		{"netns-exec-unrelated", "ip netns exec " + unrelated + " ip link set lo up", "", nil, ""},
		{"veth-into-other-lab", "ip link add klabsb0 type veth peer name klabsb1 netns " + other, "", nil, ""},
		{"mount", "mount -t tmpfs none /mnt", "permission denied", nil, ""},
		{"umount", "umount -l /proc", "must be superuser", nil, ""},
		{"insmod", `perl -e 'syscall(175, "", 0, "") == -1 and die "init_module: $!\n"'`, "init_module: ", nil, noModules()},
		{"modprobe", `perl -e 'open F, "</dev/null"; syscall(313, fileno(F), "", 0) == -1 and die "finit_module: $!\n"'`, "finit_module: ", nil, noModules()},
		{"sysctl-kernel", "sysctl -w kernel.domainname=klab-sb", "permission denied", nil, ""},
		{"sysrq-trigger", "sh -c 'echo h > /proc/sysrq-trigger'", "", nil, ""},
		{"chroot", "chroot / true", "Operation not permitted", nil, ""},
		{"setuid-helper", helper + " -m true", "Operation not permitted", nil, ""},
		{"kill-outside", "kill -9 " + strconv.Itoa(sleeper.Process.Pid), "No such process", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "setuid-helper" {
				if _, err := os.Stat(helper); err != nil {
					t.Skip("needs /usr/bin/unshare to make a setuid helper from")
				}
			}
			lab := testutil.LabName(t, "sbh")
			c.destroyOnCleanup(lab)
			file := hostileLab(t, lab, tc.cmd)
			before := takeHostState(t, tc.files)
			r := c.run(nil, "run", file, "--yes")
			after := takeHostState(t, tc.files)
			if d := before.diff(after); d != "" {
				t.Errorf("the lab changed the host:\n%s", d)
			}
			if r.code != 1 {
				t.Errorf("klab run exited %d, want 1:\n%s", r.code, r.out)
			}
			if want := fmt.Sprintf("lab %s: step %q: klab exec node1 -- ", lab, "Hostile"); !strings.Contains(r.out, want) {
				t.Errorf("the run does not name the failing step (%q):\n%s", want, r.out)
			}
			if tc.want != "" && !strings.Contains(strings.ToLower(r.out), strings.ToLower(tc.want)) {
				t.Errorf("the run does not show the refusal %q:\n%s", tc.want, r.out)
			}
			if tc.skip != "" {
				t.Logf("refused, but %s", tc.skip)
			}
			if alive := syscall.Kill(sleeper.Process.Pid, 0) == nil; !alive {
				t.Fatalf("the process outside the lab was killed")
			}
			for _, ns := range []string{other, unrelated} {
				if n := linksIn(t, ns); n != "lo down" {
					t.Errorf("namespace %s changed: links %s", ns, n)
				}
			}
			c.must("destroy", lab)
			c.assertClean(lab, "after destroy")
		})
	}
}

// noModules says why a module refusal proves little here: on a kernel
// without module support init_module fails for everyone.
func noModules() string {
	if _, err := os.Stat("/proc/modules"); err != nil {
		return "this kernel has no module support, so any caller is refused (the sandbox's bounding set lacks CAP_SYS_MODULE all the same: see pkg/nsexec's TestSandbox)"
	}
	return ""
}

// linksIn lists a namespace's links as "name up|down".
func linksIn(t *testing.T, ns string) string {
	t.Helper()
	var out []string
	err := netns.Do(ns, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			st := "down"
			if l.Attrs().Flags&1 != 0 {
				st = "up"
			}
			out = append(out, l.Attrs().Name+" "+st)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, ", ")
}

// TestPrivilegedBlocks: a block marked privileged is named and asked
// about; --yes does not answer for it; --allow-privileged runs it
// unsandboxed; the other blocks stay sandboxed; lint lists it.
func TestPrivilegedBlocks(t *testing.T) {
	c := newCLI(t)
	lab := testutil.LabName(t, "sbpriv")
	c.destroyOnCleanup(lab)
	dir := outsideTmp(t)
	mark := filepath.Join(dir, "privileged-was-here")
	src := fmt.Sprintf(`---
name: %s
title: A lab with one privileged block
summary: The privilege is the lesson.
time: 5m
---

## Sandboxed

`+"```klab"+`
klab node add node1
`+"```"+`

`+"```check"+`
klab exec node1 -- test -w %s
  exit: nonzero
`+"```"+`

## By hand

`+"```klab privileged"+`
klab exec node1 -- touch %s
`+"```"+`
`, lab, dir, mark)
	file := filepath.Join(t.TempDir(), "priv.md")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := c.must("lab", "lint", file); !strings.Contains(out, "1 privileged block(s)") || !strings.Contains(out, "line 21") {
		t.Errorf("lint does not list the privileged block:\n%s", out)
	}
	r := c.run(nil, "run", file, "--yes")
	if r.code != 1 || !strings.Contains(r.out, "marks 1 block(s) privileged") || !strings.Contains(r.out, "klab exec node1 -- touch "+mark) || !strings.Contains(r.out, "--allow-privileged") {
		t.Errorf("--yes alone: exit %d, want 1 with the block named and --allow-privileged suggested:\n%s", r.code, r.out)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Fatalf("the privileged block ran without being allowed")
	}
	cmd := c.cmd(nil, "run", file, "--yes")
	cmd.Stdin = strings.NewReader("n\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err == nil {
		t.Errorf("answered n: the lab ran:\n%s", out.String())
	}
	c.must("run", file, "--yes", "--allow-privileged")
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("--allow-privileged: the privileged block did not run unsandboxed: %v", err)
	}
	c.must("destroy", lab)
	c.assertClean(lab, "after destroy")
}

// TestTrustPrompt: a lab file that is not klab's own is described and
// asked about; no answer runs nothing; --trust runs it unsandboxed.
func TestTrustPrompt(t *testing.T) {
	c := newCLI(t)
	lab := testutil.LabName(t, "sbtrust")
	c.destroyOnCleanup(lab)
	dir := outsideTmp(t)
	mark := filepath.Join(dir, "trusted")
	file := hostileLab(t, lab, "touch "+mark)
	cmd := c.cmd(nil, "run", file)
	cmd.Stdin = strings.NewReader("")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	abs, _ := filepath.Abs(file)
	for _, want := range []string{"not one of klab's own labs", abs, "sha256 ", "1 command(s) inside nodes and pods (touch ×1)", "sandbox:  on", "was not run: no answer on stdin"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the prompt lacks %q:\n%s", want, out.String())
		}
	}
	if err == nil || len(sbNetnsOf(t, lab)) != 0 {
		t.Errorf("without an answer the lab ran (err %v)", err)
	}
	cmd = c.cmd(nil, "run", file, "--trust")
	cmd.Stdin = strings.NewReader("y\n")
	out.Reset()
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "sandbox:  OFF (--trust)") {
		t.Errorf("--trust, answered y: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("--trust: the command did not run unsandboxed: %v", err)
	}
	c.must("destroy", lab)
}

func sbNetnsOf(t *testing.T, lab string) []string {
	nss, err := netns.List(lab)
	if err != nil {
		t.Fatal(err)
	}
	return nss
}
