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
	"net"
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
	"github.com/klab-dev/klab/pkg/pki"
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
	IP   netip.Addr `json:"ip"`   // the control-plane node's underlay address (none with an external etcd)
	// EtcdConfig is how clients reach etcd: the embedded etcd's client
	// URL, or an external cluster's endpoints, TLS files and prefix
	// (--etcd-endpoints, controlplane_external.go).
	agent.EtcdConfig
	// External is set when etcd is a cluster outside the lab: no
	// control-plane node, no etcd process in the lab.
	External bool `json:"external,omitempty"`
	// Owner is the lab's identity in an external etcd's ownership key
	// (/klab/lab); Claimed is set once that key is written.
	Owner   string `json:"owner,omitempty"`
	Claimed bool   `json:"claimed,omitempty"`
	// FlannelMode "miss" is old flannel's L2MISS/L3MISS mode.
	FlannelMode string `json:"flannelMode,omitempty"`
	// LeaseTTL is the subnet leases' TTL (flannel: 24h).
	LeaseTTL time.Duration `json:"leaseTTL"`
	// Machine is set once the lab spans machines: this machine's part
	// (machines.go).
	Machine *MachineInfo `json:"machine,omitempty"`
}

// validateControlPlane checks the control-plane options (see Validate).
func (o Options) validateControlPlane() error {
	if err := o.validateEtcd(); err != nil {
		return err
	}
	o.ControlPlane = o.controlPlaneKind()
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
	if o.controlPlaneKind() == "" {
		return nil
	}
	ttl := o.LeaseTTL
	if ttl == 0 {
		ttl = agent.DefaultLeaseTTL
	}
	cp := &ControlPlane{Kind: o.controlPlaneKind(), EtcdConfig: o.Etcd, FlannelMode: o.FlannelMode, LeaseTTL: ttl}
	if len(o.Etcd.Endpoints) > 0 {
		cp.External, cp.Owner = true, newOwnerID()
		return cp
	}
	cp.IP, _ = ipam.Nth(underlay, 100)
	cp.Endpoints = []string{etcdserver.ClientURL(cp.IP)}
	return cp
}

// agentsProgram is true when the nodes' agents, not the CLI, own
// flannel.1, subnet.env and the peer entries.
func (c *Cluster) agentsProgram() bool { return c.Lab.ControlPlane != nil }

// etcd connects to the lab's etcd: the embedded one from inside the
// control-plane node's namespace (the CLI itself stays in the machine's),
// an external one from the CLI's own namespace (the machine's network).
//
// On a machine that joined the lab, from its machine port, over TLS with
// its certificate of the lab's CA (machines.go).
func (c *Cluster) etcd() (*clientv3.Client, error) {
	cp := c.Lab.ControlPlane
	if c.Lab.Joined() {
		return cp.EtcdConfig.Dial(agent.ViaNetns(c.NS(MachinePortName)), 3*time.Second)
	}
	if cp.External {
		return cp.EtcdConfig.Dial(agent.ViaCaller(), 3*time.Second)
	}
	return cp.EtcdConfig.Dial(agent.ViaNetns(c.NS(ControlPlaneName)), 3*time.Second)
}

// prefix is flannel's key prefix in the lab's etcd (--etcd-prefix).
func (c *Cluster) prefix() string { return c.Lab.ControlPlane.KeyPrefix() }

// registry is flannel's registry in the lab's etcd.
func (c *Cluster) registry(cli *clientv3.Client) *agent.Registry {
	return &agent.Registry{Cli: cli, Prefix: c.prefix()}
}

// ensureJoined is ensureControlPlane on a machine that joined: its
// share of the underlay and its machine agent (etcd is on the first).
func (c *Cluster) ensureJoined() error {
	if !netns.Exists(c.NS(MachinePortName)) || !netns.Exists(c.NS(UnderlayName)) {
		if err := c.buildMachinePort(); err != nil {
			return err
		}
	}
	if !c.serving(MachinePortName, "machine") && !c.A.DryRun {
		c.forgetDead(MachinePortName, "machine")
		if _, err := c.StartServer(MachinePortName, "machine", 0, c.Serve(MachinePortName, "machine", 0)); err != nil {
			return fmt.Errorf("the machine agent: %w", err)
		}
	}
	return nil
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
	if cp.External {
		return c.ensureExternalEtcd()
	}
	if c.Serve == nil {
		return fmt.Errorf("the control plane runs etcd and the agents as klab processes: use the klab CLI (this caller set no server command)")
	}
	if c.Lab.Joined() {
		return c.ensureJoined()
	}
	start := !c.serving(ControlPlaneName, "etcd")
	if start {
		// Said before anything is built: 'klab __serve --proto etcd'
		// looks for the server the same way, beside the same klab.
		if _, err := etcdserver.Find(filepath.Dir(c.Serve(ControlPlaneName, "etcd", etcdserver.ClientPort)[0]), exec.LookPath); err != nil {
			return err
		}
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
	if start {
		c.forgetDead(ControlPlaneName, "etcd")
		if err := c.ensurePKI(); err != nil { // etcd's TLS port, for machines that join
			return err
		}
		// etcd reads its address from the lab's state.
		if err := c.Save(); err != nil {
			return err
		}
		if _, err := c.startServer(ControlPlaneName, "etcd", etcdserver.ClientPort, c.Serve(ControlPlaneName, "etcd", etcdserver.ClientPort), 0, c.etcdReady()); err != nil {
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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	have, err := c.registry(cli).EnsureConfig(ctx, c.netConfig())
	if err != nil {
		return fmt.Errorf("write flannel's config to etcd: %w", err)
	}
	return c.checkNetConfig(have)
}

// checkNetConfig refuses an etcd holding another network's config.
func (c *Cluster) checkNetConfig(have *agent.NetConfig) error {
	if have.Network != c.Lab.ClusterCIDR.String() || have.Backend.Type != c.Lab.Backend {
		return fmt.Errorf("etcd at %s holds another network's config (%s/config: Network %s, backend %s; this lab: %s, %s): use another etcd or --etcd-prefix, or remove the key with 'etcdctl del %s/config'",
			strings.Join(c.Lab.ControlPlane.Endpoints, ","), c.prefix(), have.Network, have.Backend.Type, c.Lab.ClusterCIDR, c.Lab.Backend, c.prefix())
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
	if err := c.cpRegisterNode(ctx, cli, n, s.IP.IsValid()); err != nil {
		return err
	}
	leases, _, err := c.registry(cli).Leases(ctx)
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
			return fmt.Errorf("pod CIDR %s is leased in etcd by %s (key %s/subnets/%s): pick another --pod-cidr or leave it out", n.PodCIDR, strings.TrimPrefix(who, "a lease of "), c.prefix(), agent.SubnetKey(n.PodCIDR))
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
	if err := c.registry(cli).Delete(ctx, n.PodCIDR); err != nil {
		return fmt.Errorf("node %s: remove its lease: %w", n.Name, err)
	}
	cpUnregisterNode(ctx, cli, n)           // its Node object and underlay address (machines.go)
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

// ServeEtcd is 'klab __serve --proto etcd', started in the control-plane
// node's namespace by ensureControlPlane: it becomes the lab's etcd. It
// finds the server (etcdserver.Find: klab-etcd in selfDir, the running
// klab's directory, then on PATH, then Debian's etcd), says in the server
// log which one it runs, and execs it with the lab's etcd flags, so the
// server's recorded PID is etcd's own (destroy, repair and list need
// nothing else) and klab's code is gone from the process.
func ServeEtcd(stateDir, lab, selfDir string) error {
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	if l.ControlPlane == nil {
		return fmt.Errorf("lab %s has no control plane", lab)
	}
	dir := filepath.Join(stateDir, lab, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := etcdserver.Find(selfDir, exec.LookPath)
	if err != nil {
		return err
	}
	if err := b.ReadVersion(); err != nil {
		return err
	}
	cfg := etcdserver.Lab(lab, dir, l.ControlPlane.IP)
	if pdir := PKIDir(stateDir, lab); fileExists(filepath.Join(pdir, pki.ServerCert)) {
		// etcd's TLS port, for machines that join the lab (machines.go):
		// client certificates of the lab's CA only.
		cfg.ExtraListenClientURLs = []string{EtcdTLSURL(l.ControlPlane.IP)}
		cfg.CertFile, cfg.KeyFile = filepath.Join(pdir, pki.ServerCert), filepath.Join(pdir, pki.ServerKey)
		cfg.TrustedCAFile, cfg.ClientCertAuth = filepath.Join(pdir, pki.CACert), true
		fmt.Printf("etcd: TLS for other machines on %s (client certificates of the lab's CA, %s)\n", EtcdTLSURL(l.ControlPlane.IP), pdir)
	}
	argv, notes := b.Argv(cfg)
	fmt.Printf("etcd: running %s (%s); its log: %s\n", b.Path, b.Why, filepath.Join(dir, "etcd.log"))
	for _, n := range notes {
		fmt.Printf("etcd: %s\n", n)
	}
	// etcd reads ETCD_<FLAG> variables as flags: none of the caller's
	// may change the lab's etcd.
	env := slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "ETCD_") })
	if err := syscall.Exec(b.Path, argv, env); err != nil {
		return fmt.Errorf("run %s: %w", b.Path, err)
	}
	return nil
}

// etcdHealthy asks the lab's etcd for /health from inside the
// control-plane node's namespace, on its loopback listener (plain http
// whatever TLS the other listeners have): true once it serves clients (a
// one-member cluster then has its leader). A connection etcd accepts
// while still starting is answered when it is ready, so the wait is
// bounded by timeout, not polled.
func (c *Cluster) etcdHealthy(timeout time.Duration) bool {
	addr := netip.AddrPortFrom(netip.MustParseAddr(etcdserver.LoopbackIP), etcdserver.ClientPort).String()
	var conn net.Conn
	err := netns.Do(c.NS(ControlPlaneName), func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return false
	}
	defer conn.Close()
	return etcdserver.Healthy(conn, addr, timeout)
}

// SuperviseAgent is a node's agent supervisor ('klab __serve --proto
// agent'): it runs the agent (argv, 'klab __agent ...') and starts it
// again with backoff when it dies, until ctx ends (klab agent stop,
// destroy), when it stops the agent. The agent dies with it. The machine's
// network namespace, inherited on agent.MachineNetnsFD when the lab's etcd
// is external, is handed down to every agent it starts.
func SuperviseAgent(ctx context.Context, argv []string) error {
	// Pdeathsig follows the thread that forked the child: keep one.
	runtime.LockOSThread()
	var extra []*os.File
	if f, err := agent.InheritedMachineNetns(); err == nil {
		extra = []*os.File{f}
	}
	d := 200 * time.Millisecond
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.ExtraFiles = extra
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
	if l.ControlPlane.External {
		// An external etcd is on the machine's network: the agent opens
		// its sockets in the machine's namespace, inherited from the CLI.
		f, err := agent.InheritedMachineNetns()
		if err != nil {
			return err
		}
		defer f.Close()
		c.agentVia = agent.ViaFile(f)
	}
	mac, _ := parseMAC(n.VtepMAC)
	// flanneld takes the subnet its previous run wrote to subnet.env; a
	// klab node keeps the one its cni0 and pods were built on (the CLI
	// checked it against the leases before building the node).
	prefer := n.PodCIDR
	ag := agent.New(agent.Config{Fixed: true,
		NS: c.NS(node), Etcd: l.ControlPlane.EtcdConfig, Via: c.agentVia, Network: l.ClusterCIDR, Backend: l.Backend,
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
			Cmd: fmt.Sprintf("ip netns exec %s setsid %s > %s 2>&1%s &", ns, plan.ShellJoin(argv), plan.Quote(logPath), c.agentRedirect("agent")),
			Run: func() error {
				done, err := c.inheritMachineNetns(cmd, "agent")
				if err != nil {
					return err
				}
				defer done()
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
	switch {
	case c.Lab.Joined():
		if !c.serving(MachinePortName, "machine") {
			rep.Started = append(rep.Started, "the machine agent on "+MachinePortName)
		}
	case !c.Lab.ControlPlane.External && !c.serving(ControlPlaneName, "etcd"):
		rep.Started = append(rep.Started, "etcd on "+ControlPlaneName)
	}
	if err := c.ensureControlPlane(); err != nil {
		return err
	}
	if c.Lab.spansMachines() && !c.Lab.Joined() && !c.A.DryRun {
		started, err := c.ensureFirstMachineServers()
		rep.Started = append(rep.Started, started...)
		if err != nil {
			return err
		}
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

// etcdReady is when the lab's etcd is up: it answers /health (whichever
// etcd binary runs, whatever it logs). A cold etcd is up in well under a
// second; 15 s leaves room for a loaded machine. If it is not, the error
// quotes the server log (which binary ran, klab-etcd's own errors) and
// the end of etcd's log.
func (c *Cluster) etcdReady() *readiness {
	return &readiness{
		up:   func([]byte) bool { return c.etcdHealthy(time.Second) },
		wait: 15 * time.Second,
		why: func(b []byte) string {
			log := filepath.Join(c.Dir(), "etcd", "etcd.log")
			tail, _ := os.ReadFile(log)
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return fmt.Sprintf("%s\n%s ends:\n%s", strings.TrimSpace(string(b)), log, strings.TrimSpace(string(tail)))
		},
	}
}
