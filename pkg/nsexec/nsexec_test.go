package nsexec

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"golang.org/x/sys/unix"
)

// TestMain makes the test binary its own EnterCommand, as the klab binary
// is, so Spec.Run can re-execute it.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == EnterCommand {
		os.Exit(enterMain(os.Args[2:]))
	}
	testutil.Main(m)
}

// enterMain is cmd/klab's __enter verb, without cobra.
func enterMain(args []string) int {
	var binds []Bind
	var rw []string
	sandbox := false
	for len(args) > 0 {
		switch {
		case args[0] == "--sandbox":
			sandbox, args = true, args[1:]
			continue
		case len(args) > 1 && args[0] == "--rw":
			rw, args = append(rw, args[1]), args[2:]
			continue
		case len(args) > 1 && args[0] == "--bind":
			b, err := ParseBind(args[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			binds, args = append(binds, b), args[2:]
			continue
		}
		break
	}
	if len(args) == 0 || args[0] != "--" {
		fmt.Fprintln(os.Stderr, "want -- before the command")
		return 2
	}
	if sandbox {
		code, err := EnterSandbox(binds, rw, args[1:])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
		return code
	}
	err := Enter(binds, args[1:])
	fmt.Fprintln(os.Stderr, err)
	if errors.Is(err, ErrNotFound) {
		return 127
	}
	return 1
}

func TestEnterArgs(t *testing.T) {
	for _, tc := range []struct {
		binds []Bind
		argv  []string
		want  []string
	}{
		{nil, []string{"ip", "route"}, []string{"__enter", "--", "ip", "route"}},
		{[]Bind{{Src: "/run/klab/demo/nodes/node1/flannel", Dst: "/run/flannel"}}, []string{"cat", "--", "x"},
			[]string{"__enter", "--bind", "/run/klab/demo/nodes/node1/flannel:/run/flannel", "--", "cat", "--", "x"}},
	} {
		if got := EnterArgs(tc.binds, tc.argv); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("EnterArgs(%v, %q) = %q, want %q", tc.binds, tc.argv, got, tc.want)
		}
	}
}

func TestParseBind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bind
		err  bool
	}{
		{"/a:/b", Bind{Src: "/a", Dst: "/b"}, false},
		{"/a:/b:c", Bind{Src: "/a", Dst: "/b:c"}, false},
		{"/a:/b:ro", Bind{Src: "/a", Dst: "/b", RO: true}, false},
		{"/a", Bind{}, true},
		{":/b", Bind{}, true},
		{"/a:", Bind{}, true},
	} {
		got, err := ParseBind(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBind(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("ParseBind(%q).String() = %q", tc.in, got.String())
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
			t.Errorf("ParseBind(%q): error %q does not quote the bind", tc.in, err)
		}
	}
}

// TestRun runs commands in a fresh namespace: /sys shows its devices, the
// bind is there and reaches nothing outside, and exit statuses come back
// as a shell reports them.
func TestRun(t *testing.T) {
	testutil.RequireRoot(t)
	ns := netns.Name(testutil.LabName(t, "hyexec"), "n1")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	src, dst := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "subnet.env"), []byte("FLANNEL_SUBNET=10.244.1.1/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec{NS: ns, Binds: []Bind{{Src: src, Dst: dst}}, Env: []string{"KLAB_TARGET=n1"}}
	run := func(argv ...string) (int, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code, err := spec.Run(argv, nil, &out, &errb)
		if err != nil {
			t.Fatalf("Run(%q): %v", argv, err)
		}
		return code, out.String(), errb.String()
	}

	code, out, errs := run("sh", "-c", `ls /sys/class/net; cat `+dst+`/subnet.env; echo "$KLAB_TARGET"`)
	if want := "lo\nFLANNEL_SUBNET=10.244.1.1/24\nn1\n"; code != 0 || out != want {
		t.Errorf("exit %d, stdout %q (stderr %q), want %q", code, out, errs, want)
	}
	if code, _, _ := run("sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit 7 came back as %d", code)
	}
	if code, _, _ := run("sh", "-c", "kill -TERM $$"); code != 128+15 {
		t.Errorf("SIGTERM came back as %d, want 143", code)
	}
	code, _, errs = run("klab-no-such-command")
	if code != 127 || !strings.Contains(errs, "klab-no-such-command: command not found in PATH") {
		t.Errorf("a missing command: exit %d, stderr %q; want 127 and 'command not found'", code, errs)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("the bind reached the host: %s holds %v", dst, ents)
	}
	// Other tests mount namespaces under /run/netns meanwhile: look for
	// this bind only.
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mounts, []byte(" "+dst+" ")) {
		t.Errorf("the bind on %s is mounted on the host", dst)
	}
	if _, err := (Spec{NS: netns.Name("hyexec-none", "n1")}).Run([]string{"true"}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "klab.hyexec-none.n1") {
		t.Errorf("Run in a missing namespace: %v, want an error naming it", err)
	}
}

// sandboxNS makes a throwaway namespace for sandbox tests and a spec
// running in it sandboxed, with a bind standing in for a node's
// /run/flannel (its destination a directory the test made).
func sandboxNS(t testing.TB) (Spec, string) {
	t.Helper()
	testutil.RequireRoot(t)
	ns := netns.Name(testutil.LabName(t, "sbnsx"), "n1")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	// Outside /tmp: the sandbox has a private one.
	src, err := os.MkdirTemp("/var/tmp", "klab-sb-src-")
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.MkdirTemp("/var/tmp", "klab-sb-dst-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(src); os.Remove(dst) })
	return Spec{NS: ns, Binds: []Bind{{Src: src, Dst: dst}}, Sandbox: true}, src
}

// TestSandbox checks what the sandbox is made of from inside it, and that
// what a lab's networking needs still works there.
func TestSandbox(t *testing.T) {
	spec, src := sandboxNS(t)
	dst := spec.Binds[0].Dst
	run := func(script string) (int, string) {
		t.Helper()
		var out bytes.Buffer
		code, err := spec.Run([]string{"sh", "-c", script}, nil, &out, &out)
		if err != nil {
			t.Fatalf("Run(%q): %v", script, err)
		}
		return code, out.String()
	}
	// Capabilities: NET_ADMIN (12), NET_RAW (13), NET_BIND_SERVICE (10)
	// in every set, the bounding set too; no ambient; no_new_privs.
	code, out := run("grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
	for _, want := range []string{"CapInh:\t0000000000003400", "CapPrm:\t0000000000003400", "CapEff:\t0000000000003400", "CapBnd:\t0000000000003400", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	// A fresh /proc: the init and the command, nothing of the host.
	// (The init's threads take PID numbers too: the shell is not 2.)
	if code, out := run(`ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\n' ' '; echo; echo $$; cat /proc/1/cmdline | tr '\0' ' '`); code != 0 || !strings.HasPrefix(out, "1 ") || len(strings.Fields(strings.Split(out, "\n")[0])) > 10 || !strings.Contains(out, " "+EnterCommand+" --sandbox ") {
		t.Errorf("processes seen in the sandbox: %q (want the init 1, the shell and its children only)", out)
	}
	// No namespace files, no host /dev.
	if code, out := run(`grep -c nsfs /proc/self/mountinfo; ls -A /run/netns | wc -l; ls /dev | tr '\n' ' '`); code != 0 || out != "0\n0\nfd full null random shm stderr stdin stdout tty urandom zero " {
		t.Errorf("nsfs mounts, /run/netns entries, /dev: exit %d, %q", code, out)
	}
	// Writable: a private /tmp, the bind, this namespace's net sysctls.
	if code, out := run(`echo x > /tmp/klab-sb && echo y > ` + dst + `/subnet.env && sysctl -qw net.ipv4.ip_forward=1 && cat /proc/sys/net/ipv4/ip_forward`); code != 0 || out != "1\n" {
		t.Errorf("writable places: exit %d, %q", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(src, "subnet.env")); err != nil || string(b) != "y\n" {
		t.Errorf("the bind's source holds %q, %v; want the sandbox's write", b, err)
	}
	if _, err := os.Stat("/tmp/klab-sb"); err == nil {
		t.Errorf("the sandbox's /tmp is the host's")
	}
	// Read-only or refused: the host's files, kernel sysctls, mounts,
	// other namespaces.
	for _, c := range []string{
		"touch /etc/klab-sb-x", "touch /var/tmp/klab-sb-x", "sysctl -qw kernel.domainname=klab-sb",
		"mount -t tmpfs none /mnt", "umount -l /tmp", "nsenter -t 1 -n true", "unshare -n true",
		"chroot / true", "hostname klab-sb", "ip link add klabsb0 type veth peer name klabsb1 netns " + netns.Name("sbnsx-other", "n1"),
	} {
		if code, out := run(c + " 2>&1"); code == 0 {
			t.Errorf("%s succeeded in the sandbox: %s", c, out)
		}
	}
	if b, _ := os.ReadFile("/proc/sys/kernel/domainname"); strings.TrimSpace(string(b)) == "klab-sb" {
		t.Errorf("kernel.domainname changed on the host")
	}
	// What the shipped labs run inside nodes keeps working.
	for _, c := range []string{"ip link add klabsb0 type veth peer name klabsb1", "ip addr add 10.9.9.1/24 dev klabsb0", "ip link set klabsb0 up", "ip route", "bridge link show", "cat /proc/sys/net/ipv4/ip_forward", "ip link set lo up", "ping -c 1 -W 1 127.0.0.1"} {
		if _, err := exec.LookPath(strings.Fields(c)[0]); err != nil {
			continue
		}
		if code, out := run(c + " 2>&1"); code != 0 {
			t.Errorf("%s failed in the sandbox (exit %d): %s", c, code, out)
		}
	}
	if _, err := exec.LookPath("iptables"); err == nil {
		if code, out := run("iptables -w -t nat -A POSTROUTING -s 10.9.9.0/24 -j MASQUERADE && iptables-save -t nat | grep -c MASQUERADE"); code != 0 || out != "1\n" {
			t.Errorf("iptables in the sandbox: exit %d, %q", code, out)
		}
	}
	// Exit statuses and signals come back as without the sandbox, and
	// what the command leaves behind dies with it.
	if code, _ := run("exit 7"); code != 7 {
		t.Errorf("exit 7 came back as %d", code)
	}
	if code, _ := run("kill -TERM $$"); code != 128+15 {
		t.Errorf("SIGTERM came back as %d, want 143", code)
	}
	if code, _ := run("sleep 300 & echo $! > " + dst + "/pid"); code != 0 {
		t.Fatalf("background sleep: exit %d", code)
	}
	if procs, _ := ProcessesInNS(spec.NS); len(procs) != 0 {
		t.Errorf("processes left in %s after the command: %v", spec.NS, procs)
	}
	var out2 bytes.Buffer
	if code, err := spec.Run([]string{"klab-no-such-command"}, nil, &out2, &out2); err != nil || code != 127 || !strings.Contains(out2.String(), "command not found") {
		t.Errorf("a missing command: exit %d, %v, %q; want 127", code, err, out2.String())
	}
}

// ProcessesInNS lists the processes whose network namespace is ns.
func ProcessesInNS(ns string) ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out, nil
}

// BenchmarkExec is the cost of one command (true) run in a namespace,
// without and with the sandbox, in the same run.
func BenchmarkExec(b *testing.B) {
	spec, _ := sandboxNS(b)
	for _, sb := range []bool{false, true} {
		name := "plain"
		if sb {
			name = "sandboxed"
		}
		b.Run(name, func(b *testing.B) {
			s := spec
			s.Sandbox = sb
			for i := 0; i < b.N; i++ {
				if code, err := s.Run([]string{"true"}, nil, nil, nil); err != nil || code != 0 {
					b.Fatalf("exit %d, %v", code, err)
				}
			}
		})
	}
}
