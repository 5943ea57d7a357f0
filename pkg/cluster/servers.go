package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// TargetNS returns the namespace of a node, pod, "underlay" or "external"
// of this lab, or an error naming the valid targets.
func (c *Cluster) TargetNS(target string) (string, error) {
	if c.Lab.Node(target) != nil || c.Lab.Pod(target) != nil || target == UnderlayName || (target == ExternalName && netns.Exists(c.NS(ExternalName))) || (target == ControlPlaneName && c.Lab.hasCPNode()) || (target == MachinePortName && c.Lab.Joined()) {
		return c.NS(target), nil
	}
	if where := c.elsewhere(target); where != "" {
		return "", fmt.Errorf("%q is %s, whose namespaces are on that machine: run this there", target, where)
	}
	return "", fmt.Errorf("%q is neither a node nor a pod of lab %s: use one of %v", target, c.Lab.Name, c.Lab.Names())
}

// elsewhere says which machine holds a node or pod of a lab that spans
// machines ("" when none does).
func (c *Cluster) elsewhere(target string) string {
	if !c.Lab.spansMachines() {
		return ""
	}
	if o, _ := c.RemotePod(target); o != nil {
		return fmt.Sprintf("a pod on node %s of another machine", o.Spec.NodeName)
	}
	rn, _ := c.RemoteNodes()
	for _, n := range rn {
		if n.Name == target {
			return fmt.Sprintf("a node of machine %s", dashIfEmpty(n.Machine))
		}
	}
	return ""
}

// StartServer starts argv as a background process (its own session, output
// to a log file in the lab's state directory) and records it, so that
// destroy stops it. The process enters the target's namespace itself.
func (c *Cluster) StartServer(target, proto string, port int, argv []string) (*Server, error) {
	return c.StartServerWith(target, proto, port, argv, 0)
}

// StartServerWith is StartServer with the process created in new
// namespaces (clone flags, such as a sandbox's new mount and PID
// namespaces: see nsexec.SandboxCloneflags).
func (c *Cluster) StartServerWith(target, proto string, port int, argv []string, cloneflags uintptr) (*Server, error) {
	return c.startServer(target, proto, port, argv, cloneflags, nil)
}

// readiness is how startServer knows that a server is up: by default a
// line of its log saying "listening", within 3 s; up replaces the test
// (it gets the log so far), wait the time, and why, if set, says what
// went wrong when the server did not come up.
type readiness struct {
	up   func(log []byte) bool
	wait time.Duration
	why  func(log []byte) string
}

func (c *Cluster) startServer(target, proto string, port int, argv []string, cloneflags uintptr, r *readiness) (*Server, error) {
	if r == nil {
		r = &readiness{up: func(b []byte) bool { return containsLine(string(b), "listening") }, wait: 3 * time.Second}
	}
	target = NormalizeKey(target)
	for _, s := range c.Lab.Servers {
		if s.Target == target && s.Port == port && s.Proto == proto && alive(s.PID) {
			return nil, fmt.Errorf("%s already serves %s port %d (pid %d): stop it with 'klab serve %s --port %d --stop'", target, proto, port, s.PID, target, port)
		}
	}
	dir := filepath.Join(c.Dir(), "servers")
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", netns.Object(target), proto, port))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: cloneflags}
	start := func() error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer lf.Close()
		cmd.Stdout, cmd.Stderr = lf, lf
		return cmd.Start()
	}
	ns, err := c.TargetNS(target)
	if err != nil {
		return nil, err
	}
	// Fork from a thread inside the target's namespace: the whole server
	// process then lives there (ip netns pids shows it, destroy finds it).
	// The script creates the log's directory first, as start does: on a
	// machine without the lab it does not exist yet.
	op := plan.Op{Verb: plan.Exec, NS: ns, Proc: &plan.Proc{
		Cmd: fmt.Sprintf("mkdir -p %s && ip netns exec %s setsid %s > %s 2>&1%s &", plan.Quote(dir), ns, plan.ShellJoin(argv), plan.Quote(logPath), c.agentRedirect(proto)),
		Run: func() error {
			done, err := c.inheritMachineNetns(cmd, proto) // an agent of an external etcd (controlplane_external.go)
			if err != nil {
				return err
			}
			defer done()
			return netns.Do(ns, start)
		},
	}}
	if err := c.apply(plan.Plan{op}); err != nil {
		return nil, fmt.Errorf("start server in %s: %w", target, err)
	}
	if c.A.DryRun {
		return &Server{Target: target, Proto: proto, Port: port, Log: logPath}, nil
	}
	s := &Server{Target: target, Proto: proto, Port: port, PID: cmd.Process.Pid, Log: logPath}
	// Whether it died is what Wait says, not /proc: a server that
	// execs another program (klab __serve --proto etcd) from a thread
	// other than its first looks like a zombie for a moment, while the
	// kernel hands the PID to the exec'ing thread.
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	dead := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	// Wait until the server reports that it listens (or died).
	deadline := time.Now().Add(r.wait)
	for {
		b, _ := os.ReadFile(logPath)
		if r.up(b) {
			break
		}
		if dead() || time.Now().After(deadline) {
			cmd.Process.Kill()
			why := string(b)
			if r.why != nil {
				why = r.why(b)
			}
			return nil, fmt.Errorf("server in %s did not start: %s", target, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Lab.Servers = append(c.Lab.Servers, s)
	return s, c.Save()
}

func containsLine(s, word string) bool {
	for i := 0; i+len(word) <= len(s); i++ {
		if s[i:i+len(word)] == word {
			return true
		}
	}
	return false
}

// StopServers stops the servers of a target ("" for all) and forgets them.
func (c *Cluster) StopServers(target string) error {
	return c.StopServer(target, "", 0)
}

// StopServer stops matching servers (empty target/proto or zero port
// match anything) and forgets them. Stopping is an operation of the plan
// like any other: shown by --explain and --script, skipped by --dry-run.
func (c *Cluster) StopServer(target, proto string, port int) error {
	if target != "" {
		target = NormalizeKey(target)
	}
	keep := c.Lab.Servers[:0]
	var p plan.Plan
	for _, s := range c.Lab.Servers {
		if (target == "" || s.Target == target) && (proto == "" || s.Proto == proto) && (port == 0 || s.Port == port) {
			pid, ns := s.PID, c.NS(s.Target)
			p.Add(plan.Op{Verb: plan.Exec, Proc: &plan.Proc{
				Cmd: fmt.Sprintf("kill %d 2>/dev/null || true   # the %s server on %s port %d", pid, s.Proto, s.Target, s.Port),
				Run: func() error { stopPID(pid, ns); return nil },
			}})
			continue
		}
		keep = append(keep, s)
	}
	c.Lab.Servers = keep
	if len(p) == 0 {
		return nil
	}
	p.Add(c.savePlan()...)
	return c.apply(p)
}

// stopPID kills pid only if it still runs inside ns (PIDs get reused).
func stopPID(pid int, ns string) {
	procs, _ := ProcessesIn([]string{ns})
	if _, ok := procs[pid]; !ok {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil && !isZombie(pid) }
