package cluster

// The lab's control plane (klab node add --control-plane etcd): a
// "control-plane" namespace on the underlay at .100 (kubeadm's
// control-plane address in seed 000) running etcd, and on every node an
// agent in flanneld's role (pkg/agent) that leases the node's subnet in
// etcd and programs flannel.1 and the per-peer entries from the leases.
// The CLI then builds a node's namespace, uplink, cni0 and rules as in
// direct mode, leaves flannel.1, subnet.env and every peer entry to the
// agents, and waits (bounded) until they have converged.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/etcdserver"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/veth"
	"github.com/klab-dev/klab/pkg/vxlan"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ControlPlaneName is the control-plane node's namespace and underlay
// port.
const ControlPlaneName = "control-plane"

// Control-plane kinds and flannel modes.
const (
	ControlPlaneEtcd = "etcd"
	FlannelModeMiss  = "miss"
)

// ControlPlane is a lab's control plane, kept in its state.
type ControlPlane struct {
	Kind string     `json:"kind"` // "etcd"
	IP   netip.Addr `json:"ip"`   // the control-plane node's underlay address
	// Endpoints are etcd's client URLs (the embedded etcd's).
	Endpoints []string `json:"endpoints"`
	// FlannelMode "miss" is old flannel's L2MISS/L3MISS mode.
	FlannelMode string `json:"flannelMode,omitempty"`
	// LeaseTTL is the subnet leases' TTL (flannel: 24h).
	LeaseTTL time.Duration `json:"leaseTTL"`
}

// validateControlPlane checks the control-plane options (see Validate).
func (o Options) validateControlPlane() error {
	switch o.ControlPlane {
	case "", ControlPlaneEtcd:
	default:
		return fmt.Errorf("control plane %q is not known: use --control-plane etcd (or leave it out for klab's direct mode)", o.ControlPlane)
	}
	if o.FlannelMode != "" && o.FlannelMode != FlannelModeMiss {
		return fmt.Errorf("flannel mode %q is not known: use --flannel-mode miss (old flannel's L2MISS/L3MISS) or leave it out", o.FlannelMode)
	}
	if o.ControlPlane == "" {
		switch {
		case o.FlannelMode != "":
			return fmt.Errorf("--flannel-mode miss needs an agent to answer the kernel's misses from the leases: add --control-plane etcd")
		case o.LeaseTTL != 0:
			return fmt.Errorf("--lease-ttl needs --control-plane etcd (direct mode has no leases)")
		}
		return nil
	}
	if o.FlannelMode == FlannelModeMiss && o.Backend == BackendHostGW {
		return fmt.Errorf("--flannel-mode miss is a mode of the vxlan backend: leave out --backend host-gw")
	}
	if o.LeaseTTL != 0 && (o.LeaseTTL < 2*time.Second || o.LeaseTTL%time.Second != 0) {
		return fmt.Errorf("--lease-ttl %v is too short or not whole seconds: use 2s or more (etcd leases count seconds; flannel uses 24h)", o.LeaseTTL)
	}
	return nil
}

// newControlPlane is the control plane of a new lab with options o.
func (o Options) newControlPlane(underlay netip.Prefix) *ControlPlane {
	if o.ControlPlane == "" {
		return nil
	}
	ip, _ := ipam.Nth(underlay, 100)
	ttl := o.LeaseTTL
	if ttl == 0 {
		ttl = agent.DefaultLeaseTTL
	}
	return &ControlPlane{Kind: o.ControlPlane, IP: ip, Endpoints: []string{etcdserver.ClientURL(ip)}, FlannelMode: o.FlannelMode, LeaseTTL: ttl}
}

// agentsProgram is true when the nodes' agents, not the CLI, own
// flannel.1, subnet.env and the peer entries.
func (c *Cluster) agentsProgram() bool { return c.Lab.ControlPlane != nil }

// etcd connects to the lab's etcd from inside the control-plane node's
// namespace (the CLI itself stays in the host's).
func (c *Cluster) etcd() (*clientv3.Client, error) {
	return agent.Dial(c.Lab.ControlPlane.Endpoints, c.NS(ControlPlaneName), 3*time.Second)
}

// netConfig is flannel's config for this lab.
func (c *Cluster) netConfig() agent.NetConfig {
	return agent.NetConfig{Network: c.Lab.ClusterCIDR.String(), Backend: agent.BackendConfig{Type: c.Lab.Backend, VNI: c.Lab.VNI, Port: c.Lab.Port}}
}

// ensureControlPlane builds the control-plane node (namespace, port on
// the underlay bridge at .100), starts etcd if it does not run, and
// writes flannel's network config if etcd has none; etcd holding another
// network's config is refused.
func (c *Cluster) ensureControlPlane() error {
	cp := c.Lab.ControlPlane
	if c.Serve == nil {
		return fmt.Errorf("the control plane runs etcd and the agents as klab processes: use the klab CLI (this caller set no server command)")
	}
	p, err := c.planUnderlayBridge()
	if err != nil {
		return err
	}
	st, err := c.read(ControlPlaneName)
	if err != nil {
		return err
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return err
	}
	name := c.NS(ControlPlaneName)
	if !st.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: name, New: true})
	}
	vp, err := veth.Plan(veth.Attachment{
		OuterNS: c.NS(UnderlayName), OuterIface: ControlPlaneName, Bridge: UnderlayBridge,
		InnerNS: name, InnerIface: NodeUplink, Addr: netip.PrefixFrom(cp.IP, c.Lab.UnderlayCIDR.Bits()),
		MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, ControlPlaneName, "eth0"),
		Routes: []veth.Route{{Gw: c.Lab.UnderlayGateway}},
	}, u, st)
	if err != nil {
		return err
	}
	p.Add(vp...)
	if err := c.apply(p); err != nil {
		return err
	}
	if !c.serving(ControlPlaneName, "etcd") {
		c.forgetDead(ControlPlaneName, "etcd")
		// etcd reads its address from the lab's state.
		if err := c.Save(); err != nil {
			return err
		}
		if _, err := c.StartServer(ControlPlaneName, "etcd", etcdserver.ClientPort, c.Serve(ControlPlaneName, "etcd", etcdserver.ClientPort)); err != nil {
			return fmt.Errorf("etcd on the control-plane node: %w", err)
		}
	}
	if c.A.DryRun {
		return nil
	}
	cli, err := c.etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	reg := &agent.Registry{Cli: cli, Prefix: agent.DefaultPrefix}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	have, err := reg.EnsureConfig(ctx, c.netConfig())
	if err != nil {
		return fmt.Errorf("write flannel's config to etcd: %w", err)
	}
	if have.Network != c.Lab.ClusterCIDR.String() || have.Backend.Type != c.Lab.Backend {
		return fmt.Errorf("etcd at %s holds another network's config (%s/config: Network %s, backend %s; this lab: %s, %s): use another etcd, or remove the key with 'etcdctl del %s/config'",
			strings.Join(cp.Endpoints, ","), agent.DefaultPrefix, have.Network, have.Backend.Type, c.Lab.ClusterCIDR, c.Lab.Backend, agent.DefaultPrefix)
	}
	return nil
}

// serving reports whether a recorded server of target and proto runs.
func (c *Cluster) serving(target, proto string) bool {
	for _, s := range c.Lab.Servers {
		if s.Target == target && s.Proto == proto && alive(s.PID) {
			return true
		}
	}
	return false
}

// cpPrepareNode runs before a node is built: the control plane is made
// sure of, and the node's subnet checked against the leases in etcd (a
// subnet another claimant holds is skipped, as flannel skips it; one that
// a lease of the node's own address holds is taken, as flanneld reuses
// it). On failure, a lab this call created is removed again.
func (c *Cluster) cpPrepareNode(n *Node, s NodeSpec) (err error) {
	if !c.agentsProgram() {
		return nil
	}
	if len(c.Lab.Nodes) == 0 && !c.A.DryRun {
		defer func() {
			if err != nil {
				destroyLocked(c.StateDir, c.Lab.Name, &plan.Applier{})
			}
		}()
	}
	if err := c.ensureControlPlane(); err != nil {
		return err
	}
	if c.A.DryRun {
		return nil
	}
	cli, err := c.etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	leases, _, err := (&agent.Registry{Cli: cli, Prefix: agent.DefaultPrefix}).Leases(ctx)
	if err != nil {
		return fmt.Errorf("list leases in etcd: %w", err)
	}
	taken := map[netip.Prefix]string{}
	for _, o := range c.Lab.Nodes {
		taken[o.PodCIDR] = "node " + o.Name
	}
	for _, l := range leases {
		if l.PublicIP == n.IP && !s.PodCIDR.IsValid() {
			if _, used := taken[l.Subnet]; !used {
				n.PodCIDR = l.Subnet // flanneld reuses the lease of its address
				return nil
			}
		}
		if _, ok := taken[l.Subnet]; !ok {
			taken[l.Subnet] = "a lease of " + l.PublicIP.String()
		}
	}
	if who, ok := taken[n.PodCIDR]; ok && who != "" && !strings.HasPrefix(who, "node ") {
		if s.PodCIDR.IsValid() {
			return fmt.Errorf("pod CIDR %s is leased in etcd by %s (key %s/subnets/%s): pick another --pod-cidr or leave it out", n.PodCIDR, strings.TrimPrefix(who, "a lease of "), agent.DefaultPrefix, agent.SubnetKey(n.PodCIDR))
		}
		var used []netip.Prefix
		for p := range taken {
			used = append(used, p)
		}
		if n.PodCIDR, err = ipam.NextSubnet(c.Lab.ClusterCIDR, 24, used); err != nil {
			return err
		}
	}
	return nil
}

// cpStartAgent starts the new node's agent and waits until it holds its
// lease (on the subnet the node was built with) and every agent has
// programmed every peer.
func (c *Cluster) cpStartAgent(n *Node) error {
	if !c.agentsProgram() {
		return nil
	}
	if err := c.StartAgent(n.Name); err != nil {
		return err
	}
	if c.A.DryRun {
		return nil
	}
	b, err := os.ReadFile(c.SubnetEnvPath(n.Name))
	if err != nil {
		return fmt.Errorf("the agent of node %s wrote no subnet.env: see 'klab agent log %s'", n.Name, n.Name)
	}
	if want := vxlan.SubnetEnv(c.Lab.ClusterCIDR, n.PodCIDR, c.Lab.MTU(), true); string(b) != want {
		return fmt.Errorf("the agent of node %s leased another subnet than %s (its subnet.env: %q): another claimant took it; delete the node and add it again", n.Name, n.PodCIDR, strings.TrimSpace(string(b)))
	}
	return c.WaitConverged(5 * time.Second)
}

// StartAgent starts a node's agent (klab agent start).
func (c *Cluster) StartAgent(node string) error {
	if !c.agentsProgram() {
		return fmt.Errorf("lab %s has no control plane, so no agents: the CLI programs its nodes directly (create a lab with --control-plane etcd)", c.Lab.Name)
	}
	if c.Lab.Node(node) == nil {
		return fmt.Errorf("node %q does not exist in lab %s: see 'klab node list'", node, c.Lab.Name)
	}
	if c.serving(node, "agent") {
		return fmt.Errorf("the agent of node %s already runs: stop it first with 'klab agent stop %s'", node, node)
	}
	c.forgetDead(node, "agent")
	c.forgetAcks(node)
	if _, err := c.StartServer(node, "agent", 0, c.Serve(node, "agent", 0)); err != nil {
		if last := c.lastAgentLine(node); last != "" {
			return fmt.Errorf("the agent of %s did not start: %s", node, last)
		}
		return fmt.Errorf("the agent of %s: %w", node, err)
	}
	return nil
}

// forgetAcks deletes the acks a node's previous agent left (proxy and
// policy roles), so that a wait after starting it waits for the new
// agent's own first syncs, not for what the stopped one had acked. Without
// etcd there is nothing to forget.
func (c *Cluster) forgetAcks(node string) {
	if c.A.DryRun {
		return
	}
	cli, err := c.etcd()
	if err != nil {
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cli.Txn(ctx).Then(clientv3.OpDelete(ProxyAckPrefix+node), clientv3.OpDelete(PolicyAckPrefix+node)).Commit()
}

// lastAgentLine is the last line of a node's agent log, without its
// timestamp: what the agent said last, for an error message.
func (c *Cluster) lastAgentLine(node string) string {
	path, _ := c.AgentLog(node)
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if _, rest, ok := strings.Cut(last, " "); ok && len(last) > 12 && last[2] == ':' {
		last = rest
	}
	return strings.TrimSpace(last)
}

// StopAgent stops a node's agent (klab agent stop): its lease stays in
// etcd until its TTL runs out, as when flanneld dies.
func (c *Cluster) StopAgent(node string) error {
	if !c.agentsProgram() {
		return fmt.Errorf("lab %s has no control plane, so no agents: the CLI programs its nodes directly (create a lab with --control-plane etcd)", c.Lab.Name)
	}
	if c.Lab.Node(node) == nil {
		return fmt.Errorf("node %q does not exist in lab %s: see 'klab node list'", node, c.Lab.Name)
	}
	if !c.serving(node, "agent") {
		return fmt.Errorf("the agent of node %s is not running: start it with 'klab agent start %s'", node, node)
	}
	return c.StopServer(node, "agent", 0)
}

// AgentLog is the path of a node's agent log.
func (c *Cluster) AgentLog(node string) (string, error) {
	if c.Lab.Node(node) == nil {
		return "", fmt.Errorf("node %q does not exist in lab %s: see 'klab node list'", node, c.Lab.Name)
	}
	return filepath.Join(c.Dir(), "servers", fmt.Sprintf("%s-agent-0.log", netns.Object(node))), nil
}

// cpDelNode stops a deleted node's agent and removes its lease, so the
// other agents remove its entries.
func (c *Cluster) cpDelNode(n *Node) error {
	if !c.agentsProgram() {
		return nil
	}
	if c.serving(n.Name, "agent") {
		if err := c.StopServer(n.Name, "agent", 0); err != nil {
			return err
		}
	}
	if c.A.DryRun {
		return nil
	}
	cli, err := c.etcd()
	if err != nil {
		return fmt.Errorf("node %s: remove its lease: %w", n.Name, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := (&agent.Registry{Cli: cli, Prefix: agent.DefaultPrefix}).Delete(ctx, n.PodCIDR); err != nil {
		return fmt.Errorf("node %s: remove its lease: %w", n.Name, err)
	}
	cli.Delete(ctx, ProxyAckPrefix+n.Name)  // its proxy's ack (controlplane_proxy.go): a node added again under the name starts unsynced
	cli.Delete(ctx, PolicyAckPrefix+n.Name) // and its policy role's (controlplane_policy.go)
	return c.WaitConverged(5*time.Second, n.PodCIDR)
}

// WaitConverged waits until every node whose agent runs has a route to
// every other node's subnet, read back from the kernel, and none to the
// subnets in gone (deleted nodes); after timeout it says which nodes lag.
func (c *Cluster) WaitConverged(timeout time.Duration, gone ...netip.Prefix) error {
	deadline := time.Now().Add(timeout)
	proxyLag, done := c.proxyWaiter() // and every service (controlplane_proxy.go)
	defer done()
	policyLag, pdone := c.policyWaiter() // and the network policies (controlplane_policy.go)
	defer pdone()
	for {
		lag := c.lagging(gone)
		for _, n := range append(proxyLag(), policyLag()...) {
			if !slices.Contains(lag, n) {
				lag = append(lag, n)
			}
		}
		if len(lag) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agents of %s have not programmed every peer, service and network policy after %v: see 'klab agent log NODE'", strings.Join(lag, ", "), timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Cluster) lagging(gone []netip.Prefix) []string {
	var lag []string
	a := &plan.Applier{}
	defer a.Close()
	for _, n := range c.Lab.Nodes {
		if !c.serving(n.Name, "agent") {
			continue
		}
		st, err := a.Read(c.NS(n.Name))
		if err != nil {
			lag = append(lag, n.Name)
			continue
		}
		ok := true
		for _, o := range c.Lab.Nodes {
			if o != n && !slices.Contains(gone, o.PodCIDR) && st.RouteTo(o.PodCIDR) == nil {
				ok = false
			}
		}
		for _, g := range gone {
			if g != n.PodCIDR && st.RouteTo(g) != nil {
				ok = false
			}
		}
		if !ok {
			lag = append(lag, n.Name)
		}
	}
	return lag
}

// ServeEtcd is the etcd process of a lab's control-plane node ('klab
// __serve --proto etcd', started in its namespace by ensureControlPlane).
func ServeEtcd(ctx context.Context, stateDir, lab string) error {
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	if l.ControlPlane == nil {
		return fmt.Errorf("lab %s has no control plane", lab)
	}
	return etcdserver.Serve(ctx, filepath.Join(stateDir, lab, "etcd"), l.ControlPlane.IP, func(url string) {
		fmt.Printf("etcd listening on %s (data %s)\n", url, filepath.Join(stateDir, lab, "etcd", "data"))
	})
}

// SuperviseAgent is a node's agent supervisor ('klab __serve --proto
// agent'): it runs the agent (argv, 'klab __agent ...') and starts it
// again with backoff when it dies, until ctx ends (klab agent stop,
// destroy), when it stops the agent. The agent dies with it.
func SuperviseAgent(ctx context.Context, argv []string) error {
	// Pdeathsig follows the thread that forked the child: keep one.
	runtime.LockOSThread()
	d := 200 * time.Millisecond
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			return nil
		case err := <-done:
			if time.Since(start) > 10*time.Second {
				d = 200 * time.Millisecond
			}
			fmt.Printf("%s supervisor: agent (pid %d) exited (%v): restarting in %v\n", time.Now().Format("15:04:05.000"), cmd.Process.Pid, err, d)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			d = min(2*d, 5*time.Second)
		}
	}
}

// RunAgent is a node's agent process ('klab __agent'), inside the node's
// namespace: flanneld's role, configured from the lab's state as flanneld
// is from its command line.
func RunAgent(ctx context.Context, stateDir, lab, node string, log io.Writer) error {
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	n := l.Node(node)
	if n == nil || l.ControlPlane == nil {
		return fmt.Errorf("lab %s has no node %s with a control plane", lab, node)
	}
	c := &Cluster{StateDir: stateDir, Lab: l}
	mac, _ := parseMAC(n.VtepMAC)
	// flanneld takes the subnet its previous run wrote to subnet.env; a
	// klab node keeps the one its cni0 and pods were built on (the CLI
	// checked it against the leases before building the node).
	prefer := n.PodCIDR
	ag := agent.New(agent.Config{Fixed: true,
		NS: c.NS(node), Endpoints: l.ControlPlane.Endpoints, Network: l.ClusterCIDR, Backend: l.Backend,
		PublicIP: n.IP, Underlay: NodeUplink, VNI: l.VNI, Port: l.Port, MTU: l.MTU(), VtepMAC: mac,
		Prefer: prefer, LeaseTTL: l.ControlPlane.LeaseTTL, Miss: l.ControlPlane.FlannelMode == FlannelModeMiss,
		SubnetEnv: c.SubnetEnvPath(node), Log: log,
		Ready: func(sn netip.Prefix) {
			fmt.Fprintf(log, "%s agent of %s listening: lease %s, subnet.env written\n", time.Now().Format("15:04:05.000"), node, agent.SubnetKey(sn))
		},
	})
	c.proxyApplied = &appliedMode{}
	go runProxy(ctx, c, node, log)  // kube-proxy's role (controlplane_proxy.go)
	go runPolicy(ctx, c, node, log) // the NetworkPolicy agent's (controlplane_policy.go)
	err = ag.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (l *Lab) controlPlaneKind() string {
	if l.ControlPlane == nil {
		return ""
	}
	return l.ControlPlane.Kind
}

func (l *Lab) flannelMode() string {
	if l.ControlPlane == nil {
		return ""
	}
	return l.ControlPlane.FlannelMode
}

// cpPrepareBuild makes sure of the control plane before Build adds nodes.
func (c *Cluster) cpPrepareBuild() error {
	if !c.agentsProgram() {
		return nil
	}
	return c.ensureControlPlane()
}

// cpStartAgents starts the agents of nodes Build added and waits until
// every agent has programmed every peer (a bound that grows with the
// lab: each agent programs every other node).
func (c *Cluster) cpStartAgents(nodes []*Node) error {
	if !c.agentsProgram() || len(nodes) == 0 {
		return nil
	}
	if c.A.DryRun {
		for _, n := range nodes {
			if err := c.StartAgent(n.Name); err != nil {
				return err
			}
		}
		return nil
	}
	if err := c.spawnAgents(nodes); err != nil {
		return err
	}
	return c.WaitConverged(5*time.Second + time.Duration(len(c.Lab.Nodes))*100*time.Millisecond)
}

// spawnAgents starts many agents at once (StartServer, one after the
// other, waits for each): each is forked inside its node's namespace as
// StartServer does, then all are waited for, and the state saved once.
func (c *Cluster) spawnAgents(nodes []*Node) error {
	dir := filepath.Join(c.Dir(), "servers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var started []*Server
	fail := func(err error) error {
		for _, s := range started {
			stopPID(s.PID, c.NS(s.Target))
		}
		return err
	}
	for _, n := range nodes {
		if c.serving(n.Name, "agent") {
			continue
		}
		c.forgetDead(n.Name, "agent")
		argv := c.Serve(n.Name, "agent", 0)
		logPath, _ := c.AgentLog(n.Name)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		ns := c.NS(n.Name)
		op := plan.Op{Verb: plan.Exec, NS: ns, Proc: &plan.Proc{
			Cmd: fmt.Sprintf("ip netns exec %s setsid %s > %s 2>&1 &", ns, plan.ShellJoin(argv), plan.Quote(logPath)),
			Run: func() error {
				return netns.Do(ns, func() error {
					lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
					if err != nil {
						return err
					}
					defer lf.Close()
					cmd.Stdout, cmd.Stderr = lf, lf
					return cmd.Start()
				})
			},
		}}
		if err := c.apply(plan.Plan{op}); err != nil {
			return fail(fmt.Errorf("start the agent of %s: %w", n.Name, err))
		}
		go cmd.Wait()
		started = append(started, &Server{Target: n.Name, Proto: "agent", Port: 0, PID: cmd.Process.Pid, Log: logPath})
	}
	deadline := time.Now().Add(5*time.Second + time.Duration(len(started))*50*time.Millisecond)
	for _, s := range started {
		for {
			b, _ := os.ReadFile(s.Log)
			if containsLine(string(b), "listening") {
				break
			}
			if !alive(s.PID) || time.Now().After(deadline) {
				return fail(fmt.Errorf("the agent of %s did not start: %s", s.Target, c.lastAgentLine(s.Target)))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	c.Lab.Servers = append(c.Lab.Servers, started...)
	return c.Save()
}

// cpRepair starts again what a control-plane lab lost: etcd (its data is
// in the state directory) and the agents of nodes whose agent no longer
// runs (a supervisor killed with its agent); repair has just forgotten the
// dead servers. Nothing is started in a healthy lab.
func (c *Cluster) cpRepair(rep *RepairReport) error {
	if !c.agentsProgram() || len(c.Lab.Nodes) == 0 {
		return nil
	}
	if !c.serving(ControlPlaneName, "etcd") {
		rep.Started = append(rep.Started, "etcd on "+ControlPlaneName)
	}
	if err := c.ensureControlPlane(); err != nil {
		return err
	}
	var missing []*Node
	for _, n := range c.Lab.Nodes {
		if !c.serving(n.Name, "agent") {
			missing = append(missing, n)
			rep.Started = append(rep.Started, "agent of "+n.Name)
		}
	}
	return c.cpStartAgents(missing)
}

// forgetDead drops the records of target's proto servers that no longer
// run, before one is started again.
func (c *Cluster) forgetDead(target, proto string) {
	keep := c.Lab.Servers[:0]
	for _, s := range c.Lab.Servers {
		if s.Target != target || s.Proto != proto || alive(s.PID) {
			keep = append(keep, s)
		}
	}
	c.Lab.Servers = keep
}
