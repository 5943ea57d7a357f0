package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
	"github.com/klab-dev/klab/pkg/probe"
)

// NetworkPolicy enforcement, the way kube-router and Calico's Felix do it:
// each node's namespace holds the filter chains of the pods it hosts and
// the ipsets of their peers (pkg/policy compiles them), jumped to from
// FORWARD. The plan compiled for a node and applied there is kept in
// <lab dir>/policy/<node>.json, written after the kernel change as the last
// operation of that node's plan: the next change is planned as a diff
// against it (a set's new members, the chains that changed), and a node
// without it (a first apply, or one that failed half-way) is planned
// against what its kernel holds (policy.ReadKernel). Destroying the lab
// removes nothing extra: sets and chains go with the node namespaces, the
// files with the state directory.

// policyFile is where the plan applied to a node is kept.
func (c *Cluster) policyFile(node string) string {
	return filepath.Join(c.Dir(), "policy", node+".json")
}

// loadPolicyPlan returns the plan applied to node last, or nil.
func (c *Cluster) loadPolicyPlan(node string) (*policy.Plan, error) {
	b, err := os.ReadFile(c.policyFile(node))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p policy.Plan
	if err := json.Unmarshal(b, &p); err != nil {
		// A damaged file only costs a resync against the kernel.
		return nil, nil
	}
	return &p, nil
}

// checkPolicyState validates st against the lab before anything changes:
// every pod of st is a pod of the lab (same address, same node), and the
// policies compile.
func (c *Cluster) checkPolicyState(st policy.State) (*policy.Evaluator, error) {
	byIP := map[netip.Addr]*Pod{}
	for _, p := range c.Lab.Pods {
		byIP[p.IP] = p
	}
	for _, sp := range st.Pods {
		lp := byIP[sp.IP]
		if lp == nil {
			return nil, fmt.Errorf("policy pod %s: no pod of lab %s has address %v", sp.Key(), c.Lab.Name, sp.IP)
		}
		if lp.Node != sp.Node {
			return nil, fmt.Errorf("policy pod %s: lab pod %s at %v runs on %s, not %s", sp.Key(), lp.Name, sp.IP, lp.Node, sp.Node)
		}
	}
	return policy.NewEvaluator(st)
}

// SetPolicies makes every node enforce the policies of st (its pods must
// be the lab's, by address and node; Namespaces and labels are st's, since
// the lab has no Kubernetes namespaces of its own). One plan per node:
// sysctl, ipset restore, one iptables-restore of the changed chains, the
// FORWARD jump, set destroys, the plan file. Nodes are independent and run
// on workers. An invalid state is reported before anything changes; a
// failure on one node leaves it to be resynced by the next call.
func (c *Cluster) SetPolicies(st policy.State) error {
	if err := c.onFirstMachine("NetworkPolicies"); err != nil {
		return err
	}
	ev, err := c.checkPolicyState(st)
	if err != nil {
		return err
	}
	plans := make([]plan.Plan, 0, len(c.Lab.Nodes))
	for _, n := range c.Lab.Nodes {
		next := ev.Compile(policy.CompileOptions{Lab: c.Lab.Name, Node: n.Name})
		p, err := c.planNodePolicies(n.Name, next)
		if err != nil {
			return err
		}
		plans = append(plans, p)
	}
	c.states = nil
	c.A.Ctx = c.Ctx
	if err := c.A.ApplyAll(plans, len(plans)); err != nil {
		// What a failed node holds is unknown now: forget what was applied
		// so that the next call plans against its kernel (a stale file
		// would make every later diff fail the same way).
		var forget plan.Plan
		for _, n := range c.Lab.Nodes {
			forget.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.policyFile(n.Name)}})
		}
		return errors.Join(err, c.A.Apply(forget))
	}
	return nil
}

// planNodePolicies plans one node's change to next, and the plan file.
func (c *Cluster) planNodePolicies(node string, next *policy.Plan) (plan.Plan, error) {
	if c.Lab.NFTables() {
		return c.planNodePoliciesNFT(node, next) // policy_nft.go
	}
	ns := c.NS(node)
	pre := c.planNodePoliciesIPTablesPre(node)
	prev, err := c.loadPolicyPlan(node)
	if err != nil {
		return nil, err
	}
	var k *policy.Kernel
	if prev == nil && !c.A.Simulate && netns.Exists(ns) {
		if k, err = policy.ReadKernel(ns, c.Lab.Name); err != nil {
			return nil, err
		}
	}
	p := append(pre, policy.PlanApply(ns, prev, next, k)...)
	if prev != nil && len(p) == 0 {
		return nil, nil
	}
	data, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: c.policyFile(node), Data: data, Mode: 0o600, Atomic: true}})
	return p, nil
}

// ClearPolicies removes every policy object from every node (jumps,
// chains, sets) and the plan files: all pods are non-isolated again.
func (c *Cluster) ClearPolicies() error {
	if err := c.onFirstMachine("NetworkPolicies"); err != nil {
		return err
	}
	var plans []plan.Plan
	for _, n := range c.Lab.Nodes {
		p, err := c.planClearNodePolicies(n, false) // controlplane_policy.go
		if err != nil {
			return err
		}
		plans = append(plans, p)
	}
	c.states = nil
	c.A.Ctx = c.Ctx
	return c.A.ApplyAll(plans, len(plans))
}

// PolicyExplanation answers "why was this dropped (or let through)?" for
// one connection: the evaluator's verdict, and the kernel's confirmation
// from a real attempt — the packet counter of the drop rule that should
// refuse it, before and after.
type PolicyExplanation struct {
	Verdict policy.Verdict
	// Node and Rule name the drop rule that decides: the refusing side's
	// (its DropComment) when the verdict is a drop; when it is allowed,
	// Rule is empty and every isolated side's drop rule is watched.
	Node, Rule string
	// Dropped is how many packets the watched drop rules counted during
	// the attempt.
	Dropped uint64
	// Logged lists the NFLOG prefixes of the watched drop rules that the
	// nodes logged during the attempt (policy.ListenDrops on their group):
	// the same drop seen as an event rather than a counter.
	Logged []string
	// Connected: the attempt got the echo server's answer.
	Connected bool
	// Confirmed: the kernel agrees with the verdict (a drop: no answer and
	// the drop rule counted; allowed: an answer and no drop counted).
	Confirmed bool
	// Text is the verdict's sentence and the confirmation: "dropped at
	// node2 ingress of y/b: ... (confirmed: drop rule counter +1)".
	Text string
}

func (e *PolicyExplanation) String() string { return e.Text }

// ExplainPolicy evaluates conn against st's policies and attempts the
// connection for real (TCP: an HTTP request; UDP: a datagram, answered by
// the destination's echo server) from the source pod's namespace, reading
// the drop rules' counters on the deciding nodes before and after. The
// source must be a pod of st; the destination a pod of st or an address.
// Run it while no other traffic crosses those rules.
func (c *Cluster) ExplainPolicy(st policy.State, conn policy.Connection, timeout time.Duration) (*PolicyExplanation, error) {
	ev, err := c.checkPolicyState(st)
	if err != nil {
		return nil, err
	}
	v, err := ev.Evaluate(conn)
	if err != nil {
		return nil, err
	}
	src, dstIP, err := c.policyEnds(st, conn)
	if err != nil {
		return nil, err
	}
	x := &PolicyExplanation{Verdict: v}
	// The drop rules to watch, by node namespace, and the NFLOG prefixes
	// they log with.
	watch := map[string][]string{}
	prefixes := map[string]bool{}
	for _, s := range []struct {
		dir  string
		side policy.Side
	}{{"egress", v.Egress}, {"ingress", v.Ingress}} {
		if !s.side.Isolated {
			continue
		}
		rule := policy.DropComment(c.Lab.Name, s.dir, s.side.Pod)
		prefix := policy.NFLOGPrefix(c.Lab.Name, s.dir, s.side.Pod)
		if !v.Allowed && !s.side.Allowed {
			watch = map[string][]string{c.NS(s.side.Node): {rule}}
			prefixes = map[string]bool{prefix: true}
			x.Node, x.Rule = s.side.Node, rule
			break
		}
		watch[c.NS(s.side.Node)] = append(watch[c.NS(s.side.Node)], rule)
		prefixes[prefix] = true
	}
	count := func() (map[string]uint64, error) {
		m := map[string]uint64{}
		for ns, rules := range watch {
			cs, err := c.dropCounters(ns)
			if err != nil {
				return nil, err
			}
			for _, r := range rules {
				m[ns+"|"+r] = cs[r]
			}
		}
		return m, nil
	}
	before, err := count()
	if err != nil {
		return nil, err
	}
	// A TCP attempt gives up before TCP's initial retransmission timeout
	// (1 s): a SYN retransmitted as it gives up would reach the drop rule
	// after the counters were read, and count against the next question.
	if conn.Protocol != corev1.ProtocolUDP && timeout >= time.Second {
		timeout = 900 * time.Millisecond
	}
	// NFLOG listeners on the deciding nodes' group; without one (another
	// listener holds the group) the counters still decide.
	var logs []*policy.DropLog
	for ns := range watch {
		if d, err := policy.ListenDrops(ns, policy.DefaultNFLOGGroup); err == nil {
			logs = append(logs, d)
		}
	}
	_, perr := Attempt(context.Background(), c.NS(src.Name), conn.Protocol, netip.AddrPortFrom(dstIP, uint16(conn.Port)), timeout)
	x.Connected = perr == nil
	for _, d := range logs {
		for _, p := range d.Close(10 * time.Millisecond) {
			if prefixes[p] && !slices.Contains(x.Logged, p) {
				x.Logged = append(x.Logged, p)
			}
		}
	}
	logged := ""
	if len(x.Logged) > 0 {
		logged = fmt.Sprintf("; NFLOG group %d logged %q", policy.DefaultNFLOGGroup, strings.Join(x.Logged, ", "))
	}
	after, err := count()
	if err != nil {
		return nil, err
	}
	for k, n := range after {
		x.Dropped += n - before[k]
	}
	switch {
	case !v.Allowed && !x.Connected && x.Dropped > 0:
		x.Confirmed = true
		x.Text = fmt.Sprintf("%s (confirmed: drop rule counter +%d%s)", v.Reason, x.Dropped, logged)
	case v.Allowed && x.Connected && x.Dropped == 0:
		x.Confirmed = true
		x.Text = fmt.Sprintf("%s (confirmed: connected, no drop rule counted)", v.Reason)
	case !v.Allowed:
		x.Text = fmt.Sprintf("%s (NOT confirmed by the kernel: connected=%v, drop rule counter +%d%s)", v.Reason, x.Connected, x.Dropped, logged)
	default:
		x.Text = fmt.Sprintf("%s (NOT confirmed by the kernel: connected=%v: %v, drop rules counted %d)", v.Reason, x.Connected, perr, x.Dropped)
	}
	return x, nil
}

// policyEnds resolves a connection's source to the lab pod and its
// destination to an address.
func (c *Cluster) policyEnds(st policy.State, conn policy.Connection) (*Pod, netip.Addr, error) {
	podIP := func(key string) (netip.Addr, bool) {
		for i := range st.Pods {
			if st.Pods[i].Key() == key {
				return st.Pods[i].IP, true
			}
		}
		return netip.Addr{}, false
	}
	if conn.Src.Pod == "" {
		return nil, netip.Addr{}, fmt.Errorf("the source of a connection to explain must be a pod (it is where the attempt starts)")
	}
	sip, ok := podIP(conn.Src.Pod)
	if !ok {
		return nil, netip.Addr{}, fmt.Errorf("no pod %s in the policy state", conn.Src.Pod)
	}
	var src *Pod
	for _, p := range c.Lab.Pods {
		if p.IP == sip {
			src = p
		}
	}
	dst := conn.Dst.IP
	if conn.Dst.Pod != "" {
		if dst, ok = podIP(conn.Dst.Pod); !ok {
			return nil, netip.Addr{}, fmt.Errorf("no pod %s in the policy state", conn.Dst.Pod)
		}
	}
	if !dst.IsValid() {
		return nil, netip.Addr{}, fmt.Errorf("the destination of a connection to explain must be a pod or an address")
	}
	return src, dst, nil
}

// Attempt makes one real connection from namespace ns to dst and returns
// the answering server's name: TCP, an HTTP GET answered by klab's echo
// server; UDP, a datagram (sent again every 250 ms on the same socket, so
// one lost to neighbour resolution does not count as a refusal) answered
// by the UDP echo server. An error means no answer within timeout.
func Attempt(ctx context.Context, ns string, proto corev1.Protocol, dst netip.AddrPort, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if proto == corev1.ProtocolUDP {
		conn, err := probe.Dial(ctx, ns, "udp4", dst.String())
		if err != nil {
			return "", err
		}
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		buf := make([]byte, 2048)
		for {
			if _, err := conn.Write([]byte("klab\n")); err != nil {
				return "", err
			}
			conn.SetReadDeadline(minTime(deadline, time.Now().Add(250*time.Millisecond)))
			n, err := conn.Read(buf)
			if err == nil {
				return probe.FirstLine(string(buf[:n])), nil
			}
			if time.Now().After(deadline) || !isTimeout(err) {
				return "", err
			}
		}
	}
	body, err := probe.Get(ctx, probe.Client(ns, timeout), "http://"+dst.String()+"/")
	if err != nil {
		return "", err
	}
	return probe.FirstLine(body), nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout() || strings.Contains(err.Error(), "timeout")
}
