package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
)

// Machine is a simulated machine for multi-machine tests: a network
// namespace of its own, which is the machine's "host" namespace (its LAN
// interface eth0 and loopback, nothing else), and a mount namespace whose
// /run is a private tmpfs, so /run/netns and /run/klab are the machine's
// own. klab run on it (Command) sees only its own labs, creates its lab
// namespaces inside it, and its "host namespace" rule applies to the
// machine's namespace. Everything a machine holds dies with it: Machines'
// cleanup kills every process in its mount namespace, whose end releases
// the namespaces bound under its /run/netns.
type Machine struct {
	Name string     // m1, m2, ...
	NS   string     // its network namespace in the host's /run/netns
	Addr string     // its LAN address (eth0), e.g. 10.250.0.1
	pid  int        // the process that holds its mount namespace
	mnt  string     // /proc/<pid>/ns/mnt's identity (mnt:[N])
	hold *exec.Cmd  // that process
	t    testing.TB //
}

// Machines builds n simulated machines on one LAN (10.250.0.0/24, .1 to
// .n, MTU 1500): a bridge in a LAN namespace of its own, one veth per
// machine. They and everything run on them are removed when the test
// ends, whatever it did.
func Machines(t testing.TB, prefix string, n int) []*Machine {
	t.Helper()
	RequireRoot(t)
	for _, tool := range []string{"nsenter", "unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, iproute2) for simulated machines", tool)
		}
	}
	id := fmt.Sprintf("%s%04x", prefix, rand.IntN(1<<16))
	lan := "kmach." + id + ".lan"
	var ms []*Machine
	t.Cleanup(func() {
		for _, m := range ms {
			m.remove()
		}
		netns.Delete(lan)
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", lan)
	run("ip", "-n", lan, "link", "add", "lan0", "type", "bridge")
	run("ip", "-n", lan, "link", "set", "lan0", "up")
	for i := 1; i <= n; i++ {
		m := &Machine{Name: fmt.Sprintf("m%d", i), NS: fmt.Sprintf("kmach.%s.m%d", id, i), Addr: fmt.Sprintf("10.250.0.%d", i), t: t}
		ms = append(ms, m)
		run("ip", "netns", "add", m.NS)
		port := fmt.Sprintf("%s-p", m.Name)
		run("ip", "-n", lan, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", m.NS)
		run("ip", "-n", lan, "link", "set", port, "master", "lan0", "up")
		run("ip", "-n", m.NS, "link", "set", "lo", "up")
		run("ip", "-n", m.NS, "addr", "add", m.Addr+"/24", "dev", "eth0")
		run("ip", "-n", m.NS, "link", "set", "eth0", "up")
		// The mount namespace: private propagation, a tmpfs /run.
		hold := exec.Command("ip", "netns", "exec", m.NS, "unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", "mount -t tmpfs -o mode=755 kmach /run && mkdir -p /run/netns /run/klab && echo ready && exec sleep 1000000")
		hold.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		out, err := hold.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		hold.Stderr = os.Stderr
		if err := hold.Start(); err != nil {
			t.Fatalf("start machine %s: %v", m.Name, err)
		}
		m.hold = hold
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("machine %s did not start: %q", m.Name, line)
		}
		// unshare execs sh which execs sleep: the holder is hold's
		// process itself after 'ip netns exec' exec'd unshare.
		m.pid = hold.Process.Pid
		mnt, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", m.pid))
		if err != nil {
			t.Fatal(err)
		}
		self, _ := os.Readlink("/proc/self/ns/mnt")
		if mnt == self {
			t.Fatalf("machine %s shares the test's mount namespace", m.Name)
		}
		m.mnt = mnt
	}
	return ms
}

// Command is a command run on the machine: in its network and mount
// namespaces.
func (m *Machine) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(m.pid), "-n", "-m", "--", name}, args...)...)
}

// Run runs a command on the machine and returns its combined output; a
// failure fails the test.
func (m *Machine) Run(name string, args ...string) string {
	m.t.Helper()
	out, err := m.Try(name, args...)
	if err != nil {
		m.t.Fatalf("on %s: %s %s: %v\n%s", m.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command on the machine and returns its combined output and
// error.
func (m *Machine) Try(name string, args ...string) (string, error) {
	var b bytes.Buffer
	c := m.Command(name, args...)
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	return b.String(), err
}

// Netns lists the network namespaces in the machine's /run/netns.
func (m *Machine) Netns() []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/root/run/netns", m.pid))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Processes lists the PIDs of the processes running on the machine (in
// its mount namespace), the holder left out.
func (m *Machine) Processes() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == m.pid {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt")); err == nil && l == m.mnt {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove kills everything on the machine, then the machine.
func (m *Machine) remove() {
	if m.hold != nil {
		for i := 0; i < 3; i++ {
			pids := m.Processes()
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				syscall.Kill(p, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
		m.hold.Process.Kill()
		m.hold.Wait()
	}
	netns.Delete(m.NS)
}
