package cluster

// The calico backend: routed pods without a bridge (Calico's CNI plugin
// and Felix), IPAM blocks per node, and one real BIRD per node spreading
// the blocks by iBGP. The pure parts (names, blocks, bird.conf) are in
// pkg/calico; this file turns them into plans and runs the daemons.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/pkg/calico"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/veth"
)

// CalicoSettings are a calico lab's settings, fixed when the lab is
// created.
type CalicoSettings struct {
	// BlockSize is the prefix length of the IPAM blocks nodes claim (26).
	BlockSize int `json:"blockSize,omitempty"`
	// Encapsulation is "none" (routed by BGP, no tunnel) or "vxlan"
	// (Felix's vxlan.calico, no BIRD: calico_vxlan.go). Calico's "ipip"
	// needs tunl0 (CONFIG_NET_IPIP) and is refused on kernels without it.
	Encapsulation string `json:"encapsulation,omitempty"`
	// GracefulRestart is the BGP graceful-restart time in seconds: how
	// long the other nodes keep a node's routes after its BIRD dies
	// (calico-node: 120).
	GracefulRestart int `json:"gracefulRestart,omitempty"`
	// Peers are BGP peers outside the cluster that every node peers with
	// (Calico's global BGPPeer resources): a router on the underlay.
	Peers []calico.Peer `json:"peers,omitempty"`
	// Gateway is set while the underlay's router runs a BIRD of its own
	// peering with every node (calico_gateway.go).
	Gateway bool `json:"gateway,omitempty"`
	// RouteReflector turns the node-to-node mesh off: the lab's first node
	// is a route reflector (cluster ID RRClusterID) and every other node
	// peers with it only, as with Calico's routeReflectorClusterID and a
	// BGPPeer selecting it.
	RouteReflector bool `json:"routeReflector,omitempty"`
}

// RRClusterID is the route reflector's cluster ID (Calico's docs use
// 244.0.0.1 in their examples).
var RRClusterID = netip.MustParseAddr("244.0.0.1")

// Calico encapsulation modes (Calico's IPPool vxlanMode/ipipMode).
const (
	EncapNone  = "none"
	EncapVXLAN = "vxlan"
	EncapIPIP  = "ipip"
)

// DefaultGracefulRestart is calico-node's graceful-restart time (seconds).
const DefaultGracefulRestart = 120

// BirdBinary is the BIRD 2 daemon (Debian's bird2 package).
var BirdBinary = "/usr/sbin/bird"

// BirdcBinary is BIRD's client.
var BirdcBinary = "/usr/sbin/birdc"

func (o Options) validateCalico() error {
	s := o.Calico
	if o.Backend != BackendCalico {
		if s.BlockSize != 0 || s.Encapsulation != "" || s.GracefulRestart != 0 || s.RouteReflector {
			return fmt.Errorf("--block-size, --encapsulation, --bgp-graceful-restart and --route-reflector belong to the calico backend: add --backend calico or leave them out")
		}
		return nil
	}
	switch {
	case o.FlannelMode != "":
		return fmt.Errorf("--flannel-mode %s is a mode of flannel's VXLAN device, and the calico backend runs no flannel: leave --flannel-mode out", o.FlannelMode)
	case o.ControlPlane != "" || o.LeaseTTL != 0:
		return fmt.Errorf("--control-plane etcd runs flanneld's leases and agents, and the calico backend spreads its blocks by BGP instead (calico-node's datastore is not built): leave --control-plane and --lease-ttl out")
	}
	switch s.Encapsulation {
	case "", EncapNone:
	case EncapIPIP:
		return fmt.Errorf("--encapsulation ipip needs Calico's tunl0 device, and this kernel has no IPIP support (CONFIG_NET_IPIP is off): use --encapsulation none (routed by BGP) or vxlan")
	case EncapVXLAN:
	default:
		return fmt.Errorf("encapsulation %q is not known: use none (routed by BGP) or vxlan", s.Encapsulation)
	}
	pool := o.ClusterCIDR
	if !pool.IsValid() {
		pool = DefaultClusterCIDR
	}
	bs := s.BlockSize
	if bs == 0 {
		bs = calico.DefaultBlockSize
	}
	if err := calico.ValidateBlockSize(pool, bs); err != nil {
		return err
	}
	if s.GracefulRestart < 0 || s.GracefulRestart > 3600 {
		return fmt.Errorf("BGP graceful-restart time %ds is out of range: use 1-3600 s (calico-node uses 120)", s.GracefulRestart)
	}
	if s.Encapsulation == EncapVXLAN {
		if s.RouteReflector {
			return fmt.Errorf("--route-reflector is a BGP setting, and Calico's VXLAN mode runs no BGP: leave one of them out")
		}
		return nil // calico-node runs no BIRD in VXLAN mode
	}
	return checkBird()
}

// checkBird fails with the fix when BIRD 2 is not installed.
func checkBird() error {
	for _, b := range []string{BirdBinary, BirdcBinary} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("the calico backend runs BIRD, and %s is not installed: apt-get install bird2", b)
		}
	}
	return nil
}

func (o Options) calicoSettings() *CalicoSettings {
	if o.Backend != BackendCalico {
		return nil
	}
	s := o.Calico
	if s.BlockSize == 0 {
		s.BlockSize = calico.DefaultBlockSize
	}
	if s.Encapsulation == "" {
		s.Encapsulation = EncapNone
	}
	if s.GracefulRestart == 0 {
		s.GracefulRestart = DefaultGracefulRestart
	}
	return &s
}

func (l *Lab) calico() CalicoSettings {
	if l.Calico == nil {
		return CalicoSettings{BlockSize: calico.DefaultBlockSize, Encapsulation: EncapNone, GracefulRestart: DefaultGracefulRestart}
	}
	return *l.Calico
}

// claimedBlocks lists every node's blocks.
func (l *Lab) claimedBlocks() []netip.Prefix {
	var out []netip.Prefix
	for _, n := range l.Nodes {
		out = append(out, n.Blocks...)
	}
	return out
}

// planCalicoBlock gives a new node its first block (PlanNode's calico
// part). Calico nodes do not lease a subnet: they claim blocks.
func (c *Cluster) planCalicoBlock(n *Node, s NodeSpec) error {
	if s.PodCIDR.IsValid() {
		return fmt.Errorf("calico nodes claim /%d blocks from the pool %s as they need them: leave --pod-cidr out", c.Lab.calico().BlockSize, c.Lab.ClusterCIDR)
	}
	b, err := calico.NextBlock(c.Lab.ClusterCIDR, c.Lab.calico().BlockSize, c.Lab.claimedBlocks())
	if err != nil {
		return err
	}
	n.Blocks, n.PodCIDR = []netip.Prefix{b}, b
	if c.Lab.calicoVXLAN() {
		c.planCalicoTunnel(n)
	}
	return nil
}

// planCalicoNode plans a calico node: its namespace, uplink, forwarding
// and rules. No cni0 and no tunnel device: pods hang off the node on their
// own veths and are routed.
func (c *Cluster) planCalicoNode(n *Node, u, st *plan.State) (plan.Plan, error) {
	l := c.Lab
	p, err := c.planNodeUplink(n, u, st)
	if err != nil {
		return nil, err
	}
	if l.calicoVXLAN() {
		p.Add(c.planCalicoVXLANDevice(n, st)...)
	}
	rp, err := c.planNodeRules(n, st)
	if err != nil {
		return nil, err
	}
	p.Add(rp...)
	return p, nil
}

// calicoVethName is the pod's host veth as Calico's CNI plugin names it.
func calicoVethName(pod string) string {
	ns, name := SplitKey(pod)
	return calico.VethName(ns, name)
}

// calicoAttachment is a pod's veth as Calico's CNI plugin wires it
// (dataplane_linux.go DoNetworking): the host end caliXXX with MAC
// ee:ee:ee:ee:ee:ee on no bridge; eth0 with a /32, a link route to
// 169.254.1.1 and the default route via it.
func (c *Cluster) calicoAttachment(p *Pod) veth.Attachment {
	gw := calico.Gateway
	return veth.Attachment{
		OuterNS: c.NS(p.Node), OuterIface: p.HostVeth, OuterMAC: calico.HostVethMAC,
		InnerNS: c.NS(p.Name), InnerIface: PodIface, Addr: netip.PrefixFrom(p.IP, 32),
		MTU: c.Lab.MTU(), MAC: MAC(c.Lab.Name, p.Name, "eth0"),
		Routes: []veth.Route{{Dst: netip.PrefixFrom(gw, 32)}, {Gw: gw}},
	}
}

// calicoPodPlan is podPlan for a calico pod: the veth pair, then on the
// node the host veth's sysctls, the /32 route and Felix's static ARP
// entry for the pod (route_table.go: a permanent neighbour, so the node
// never ARPs for its own pods).
func (c *Cluster) calicoPodPlan(p *Pod, nst, pst *plan.State) (plan.Plan, error) {
	var pl plan.Plan
	if !pst.Exists {
		pl.Add(plan.Op{Verb: plan.NetnsAdd, NS: c.NS(p.Name), New: true})
	}
	a := c.calicoAttachment(p)
	vp, err := veth.Plan(a, nst, pst)
	if err != nil {
		return nil, err
	}
	pl.Add(vp...)
	ns := c.NS(p.Node)
	fresh := nst.Link(p.HostVeth) == nil || slices.ContainsFunc(vp, func(op plan.Op) bool { return op.Verb == plan.LinkAdd })
	for _, kv := range calico.HostSysctls(p.HostVeth) {
		if !fresh && !c.A.Simulate {
			if v, err := netns.ReadSysctl(ns, kv[0]); err == nil && v == kv[1] {
				continue
			}
		}
		pl.Add(plan.Op{Verb: plan.Sysctl, NS: ns, Key: kv[0], Value: kv[1]})
	}
	rt := plan.Route{Dst: netip.PrefixFrom(p.IP, 32), Dev: p.HostVeth}
	if fresh || !nst.HasRoute(rt) {
		pl.Add(plan.Op{Verb: plan.RouteReplace, NS: ns, Route: &rt, Why: "Calico's route to the pod"})
	}
	nb := plan.Neigh{Dev: p.HostVeth, IP: p.IP, MAC: a.MAC}
	if fresh || !nst.HasNeigh(nb) {
		pl.Add(plan.Op{Verb: plan.NeighReplace, NS: ns, Neigh: &nb, Why: "Felix's static ARP entry"})
	}
	for _, op := range c.resolvConfOps(p) {
		if old, err := os.ReadFile(op.File.Path); err != nil || !bytes.Equal(old, op.File.Data) {
			pl.Add(op)
		}
	}
	return pl, nil
}

// calicoAllocate picks a pod's address from its node's blocks (the lowest
// free one), claiming another block when they are full, as Calico's IPAM
// does. The claim is recorded on the node; BIRD then announces it.
func (c *Cluster) calicoAllocate(n *Node, want netip.Addr) (netip.Addr, bool, error) {
	used := map[netip.Addr]bool{}
	for _, p := range c.Lab.Pods {
		used[p.IP] = true
	}
	for _, o := range c.Lab.Nodes {
		if o.TunnelIP.IsValid() {
			used[o.TunnelIP] = true
		}
	}
	if want.IsValid() {
		if _, ok := calico.BlockOf(n.Blocks, want); !ok {
			return netip.Addr{}, false, fmt.Errorf("address %s is not in node %s's blocks (%s): pick one of them or leave --ip out", want, n.Name, joinPrefixes(n.Blocks))
		}
		return want, false, nil
	}
	if a, ok := calico.NextIP(n.Blocks, used); ok {
		return a, false, nil
	}
	b, err := calico.NextBlock(c.Lab.ClusterCIDR, c.Lab.calico().BlockSize, c.Lab.claimedBlocks())
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("node %s's blocks are full and %w: use a larger --cluster-cidr or a smaller --block-size", n.Name, err)
	}
	n.Blocks = append(n.Blocks, b)
	return b.Addr(), true, nil
}

func joinPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// addCalicoPod is AddPod on the calico backend.
func (c *Cluster) addCalicoPod(s PodSpec) (*Pod, error) {
	n, err := c.podNode(&s)
	if err != nil {
		return nil, err
	}
	ip, claimed, err := c.calicoAllocate(n, s.IP)
	if err != nil {
		return nil, err
	}
	unclaim := func() {
		if claimed {
			n.Blocks = n.Blocks[:len(n.Blocks)-1]
		}
	}
	p := &Pod{Name: s.Name, Node: n.Name, IP: ip, HostVeth: calicoVethName(s.Name), Labels: s.Labels}
	if err := c.interrupted(); err != nil {
		unclaim()
		return nil, err
	}
	pp, err := c.planPod(p)
	if err != nil {
		unclaim()
		return nil, err
	}
	mark := c.A.Mark()
	if err := c.apply(pp); err != nil {
		c.A.RollbackTo(mark)
		unclaim()
		return nil, err
	}
	before := *c.Lab
	c.Lab.Pods = append(c.Lab.Pods, p)
	if err := c.commit(&before); err != nil {
		c.A.RollbackTo(mark)
		unclaim()
		return nil, err
	}
	if claimed {
		if err := c.announceBlock(n); err != nil {
			return p, fmt.Errorf("pod %s is up, but node %s's new block is not announced yet ('klab repair %s' retries): %w", p.Name, n.Name, c.Lab.Name, err)
		}
	}
	return p, policyCheck("pod "+p.Name+" is up", c.syncPolicies())
}

// BirdDir is where a node's BIRD keeps its configuration, control socket,
// pid file and log.
func (c *Cluster) BirdDir(node string) string { return filepath.Join(c.Dir(), "nodes", node, "bird") }

// BirdSocket is the control socket of a node's BIRD: birdc -s PATH.
func (c *Cluster) BirdSocket(node string) string { return filepath.Join(c.BirdDir(node), "bird.ctl") }

// BirdConfig is the node's BIRD configuration as calico-node renders it.
func (c *Cluster) BirdConfig(n *Node) calico.BirdConfig {
	var mesh []netip.Addr
	for _, o := range c.Lab.Nodes {
		if o.Name != n.Name {
			mesh = append(mesh, o.IP)
		}
	}
	cfg := calico.BirdConfig{
		Node: n.Name, RouterID: n.IP, Pool: c.Lab.ClusterCIDR, Blocks: n.Blocks, Mesh: mesh,
		GracefulRestart: c.Lab.calico().GracefulRestart, Peers: c.Lab.calico().Peers,
	}
	if c.Lab.calico().RouteReflector && len(c.Lab.Nodes) > 0 {
		rr := c.Lab.Nodes[0]
		cfg.Mesh = nil
		if rr.Name == n.Name {
			cfg.RRClusterID, cfg.Clients = RRClusterID, mesh
		} else {
			cfg.Reflectors = []netip.Addr{rr.IP}
		}
	}
	return cfg
}

// BirdPID returns the PID of the node's BIRD, or 0 when none runs. It is
// found by its namespace and its control socket on the command line, so a
// BIRD that outlived a crashed klab is found again.
func (c *Cluster) BirdPID(node string) int {
	procs, _ := ProcessesIn([]string{c.NS(node)})
	sock := c.BirdSocket(node)
	for pid := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) > 0 && filepath.Base(argv[0]) == "bird" && slices.Contains(argv, sock) && !isZombie(pid) {
			return pid
		}
	}
	return 0
}

// birdArgv is the command line of a node's BIRD: in the foreground (klab
// supervises it), with its own configuration, socket and pid file.
func (c *Cluster) birdArgv(node string) []string {
	d := c.BirdDir(node)
	return []string{BirdBinary, "-f", "-c", filepath.Join(d, "bird.conf"), "-s", c.BirdSocket(node), "-P", filepath.Join(d, "bird.pid")}
}

// birdStartOp starts a node's BIRD inside the node's namespace, its own
// session, output to bird.log, and waits for its control socket.
func (c *Cluster) birdStartOp(node string) plan.Op {
	ns, d := c.NS(node), c.BirdDir(node)
	argv := c.birdArgv(node)
	logPath := filepath.Join(d, "bird.log")
	return plan.Op{Verb: plan.Exec, NS: ns, Why: "calico-node's BIRD", Proc: &plan.Proc{
		Cmd: fmt.Sprintf("ip netns exec %s setsid %s > %s 2>&1 &", ns, plan.ShellJoin(argv), plan.Quote(logPath)),
		Run: func() error {
			if len(c.BirdSocket(node)) > 100 {
				return fmt.Errorf("BIRD's control socket path %s is longer than a unix socket allows (108 bytes): use a shorter --state-dir", c.BirdSocket(node))
			}
			os.Remove(c.BirdSocket(node))
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.SysProcAttr = setsid()
			err := netns.Do(ns, func() error {
				lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					return err
				}
				defer lf.Close()
				cmd.Stdout, cmd.Stderr = lf, lf
				return cmd.Start()
			})
			if err != nil {
				return fmt.Errorf("start BIRD in %s: %w", ns, err)
			}
			go cmd.Wait()
			if err := waitBird(c.BirdSocket(node), cmd.Process.Pid); err != nil {
				cmd.Process.Kill()
				b, _ := os.ReadFile(logPath)
				return fmt.Errorf("BIRD on node %s did not start: %v: %s", node, err, lastLines(string(b), 3))
			}
			return nil
		},
	}}
}

// birdStopOp stops a node's BIRD with SIGKILL, as a crashed or restarting
// calico-node: the BGP sessions drop without a notification, so the peers
// keep its routes for the graceful-restart time, then withdraw them. The
// kernel keeps the node's own routes (protocol kernel's persist).
func (c *Cluster) birdStopOp(node string) plan.Op {
	ns := c.NS(node)
	return plan.Op{Verb: plan.Exec, NS: ns, Proc: &plan.Proc{
		Cmd: fmt.Sprintf("kill -9 $(cat %s) 2>/dev/null || true   # BIRD on %s", plan.Quote(filepath.Join(c.BirdDir(node), "bird.pid")), node),
		Run: func() error {
			if pid := c.BirdPID(node); pid != 0 {
				syscall.Kill(pid, syscall.SIGKILL) // not SIGTERM: BIRD would close its sessions with a Cease
				for i := 0; i < 200 && alive(pid); i++ {
					sleepMs(5)
				}
			}
			return nil
		},
	}}
}

// birdConfigureOp makes a running BIRD reload its configuration.
func (c *Cluster) birdConfigureOp(node string) plan.Op {
	sock := c.BirdSocket(node)
	return plan.Op{Verb: plan.Exec, NS: c.NS(node), Proc: &plan.Proc{
		Cmd: fmt.Sprintf("birdc -s %s configure", plan.Quote(sock)),
		Run: func() error {
			out, err := exec.Command(BirdcBinary, "-s", sock, "configure").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "onfigur") {
				return fmt.Errorf("birdc configure on node %s: %v: %s", node, err, strings.TrimSpace(string(out)))
			}
			if strings.Contains(string(out), "error") {
				return fmt.Errorf("birdc configure on node %s: %s", node, strings.TrimSpace(string(out)))
			}
			return nil
		},
	}}
}

// planBird plans one node's BIRD: its configuration written when it
// differs, then the daemon started (unless stopped on purpose) or told to
// reload.
func (c *Cluster) planBird(n *Node) plan.Plan {
	var p plan.Plan
	path := filepath.Join(c.BirdDir(n.Name), "bird.conf")
	data := []byte(c.BirdConfig(n).Render())
	old, err := os.ReadFile(path)
	changed := err != nil || !bytes.Equal(old, data)
	if changed {
		p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: path, Data: data, Mode: 0o600, Atomic: true}, Why: "bird.conf of " + n.Name})
	}
	if n.BGPStopped {
		return p
	}
	// (A dry run plans against what runs; a simulated one, against an
	// empty machine.)
	switch running := !c.A.Simulate && c.BirdPID(n.Name) != 0; {
	case !running:
		p.Add(c.birdStartOp(n.Name))
	case changed:
		p.Add(c.birdConfigureOp(n.Name))
	}
	return p
}

// SyncBird brings every node's BIRD in line with the lab: configurations
// rewritten and reloaded where the mesh or the blocks changed, missing
// daemons started (a crash, a reboot). Nothing when all is in place.
func (c *Cluster) SyncBird() error {
	if c.Lab.Backend != BackendCalico || c.deferBird || c.Lab.calicoVXLAN() {
		return nil
	}
	var p plan.Plan
	for _, n := range c.Lab.Nodes {
		p.Add(c.planBird(n)...)
	}
	p.Add(c.planGatewayBird()...)
	if len(p) == 0 {
		return nil
	}
	return c.apply(p)
}

// SetBGP stops or starts a node's BIRD ('klab calico bgp stop|start').
func (c *Cluster) SetBGP(node string, on bool) error {
	if c.Lab.Backend != BackendCalico {
		return fmt.Errorf("lab %s uses the %s backend, which runs no BGP: create a lab with --backend calico", c.Lab.Name, c.Lab.Backend)
	}
	if err := c.Lab.noBGPInVXLAN(); err != nil {
		return err
	}
	n := c.Lab.Node(node)
	if n == nil {
		return fmt.Errorf("node %q does not exist in lab %s: use one of %s", node, c.Lab.Name, strings.Join(c.nodeNames(), ", "))
	}
	n.BGPStopped = !on
	p := c.planBird(n)
	if !on {
		p = plan.Plan{c.birdStopOp(node)}
	}
	p.Add(c.savePlan()...)
	return c.apply(p)
}

// afterNodeChange is the calico part of adding or removing a node: every
// node's BIRD learns the new mesh.
func (c *Cluster) afterNodeChange() error {
	if err := c.SyncBird(); err != nil {
		return fmt.Errorf("the nodes are in place, but BGP is not ('klab repair %s' retries): %w", c.Lab.Name, err)
	}
	return nil
}

// teardownBird stops a node's BIRD before its namespace goes (a process
// would keep a deleted namespace alive).
func (c *Cluster) teardownBird(n *Node) plan.Plan {
	if c.Lab.Backend != BackendCalico || c.BirdPID(n.Name) == 0 {
		return nil
	}
	return plan.Plan{c.birdStopOp(n.Name)}
}

// Birdc runs birdc against a node's BIRD and returns its output.
func (c *Cluster) Birdc(node string, args ...string) (string, error) {
	if c.Lab.Node(node) == nil {
		return "", fmt.Errorf("node %q does not exist in lab %s: use one of %s", node, c.Lab.Name, strings.Join(c.nodeNames(), ", "))
	}
	out, err := exec.Command(BirdcBinary, append([]string{"-s", c.BirdSocket(node)}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc on node %s: %v: %s", node, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// CalicoStatus is calicoctl node status for a node: whether its BIRD runs
// and its BGP sessions, from `birdc show protocols`.
func (c *Cluster) CalicoStatus(node string) (bool, []calico.PeerStatus, error) {
	if c.Lab.Backend != BackendCalico {
		return false, nil, fmt.Errorf("lab %s uses the %s backend, which runs no BGP: create a lab with --backend calico", c.Lab.Name, c.Lab.Backend)
	}
	if err := c.Lab.noBGPInVXLAN(); err != nil {
		return false, nil, err
	}
	if c.Lab.Node(node) == nil {
		return false, nil, fmt.Errorf("node %q does not exist in lab %s: use one of %s", node, c.Lab.Name, strings.Join(c.nodeNames(), ", "))
	}
	if c.BirdPID(node) == 0 {
		return false, nil, nil
	}
	out, err := c.Birdc(node, "show", "protocols")
	if err != nil {
		return false, nil, err
	}
	return true, calico.ParseProtocols(out), nil
}

// repairBird plans the BIRD of every node that should run one and does
// not (killed, or lost with a rebuilt namespace), and configurations that
// drifted from the lab.
func (c *Cluster) repairBird(rep *RepairReport) plan.Plan {
	if c.Lab.Backend != BackendCalico || c.Lab.calicoVXLAN() {
		return nil
	}
	var p plan.Plan
	for _, n := range c.Lab.Nodes {
		if !n.BGPStopped && c.BirdPID(n.Name) == 0 {
			rep.Rebuilt = append(rep.Rebuilt, "BIRD of node "+n.Name)
		}
		p.Add(c.planBird(n)...)
	}
	p.Add(c.planGatewayBird()...)
	return p
}

// buildCalico is Build on the calico backend: the nodes and pods one by
// one, as AddNode and AddPod would (their plans are small: no peer entries
// to program), with the BIRDs configured once at the end instead of after
// every node.
func (c *Cluster) buildCalico(s Spec) ([]*Node, []*Pod, error) {
	var nodes []*Node
	var pods []*Pod
	c.deferBird = true
	defer func() { c.deferBird = false }()
	// A failure half-way removes what this call added, newest first, so
	// the lab is as before (AddNode and AddPod roll back their own part).
	undo := func(err error) ([]*Node, []*Pod, error) {
		for i := len(pods) - 1; i >= 0; i-- {
			c.DelPod(pods[i].Name)
		}
		for i := len(nodes) - 1; i >= 0; i-- {
			c.DelNode(nodes[i].Name)
		}
		c.deferBird = false
		c.SyncBird()
		return nil, nil, err
	}
	for _, ns := range s.Nodes {
		n, err := c.AddNode(ns)
		if err != nil {
			return undo(err)
		}
		nodes = append(nodes, n)
	}
	for _, ps := range s.Pods {
		p, err := c.AddPod(ps)
		if err != nil {
			return undo(err)
		}
		pods = append(pods, p)
	}
	c.deferBird = false
	return nodes, pods, c.afterNodeChange()
}

// birdProblems names the nodes of a calico lab whose BIRD should run and
// does not (killed behind klab's back, or lost in a crash).
func birdProblems(stateDir string, l *Lab, have map[string]bool) []string {
	if l.Backend != BackendCalico || l.calicoVXLAN() {
		return nil
	}
	c := &Cluster{StateDir: stateDir, Lab: l}
	var out []string
	for _, n := range l.Nodes {
		if have[n.Name] && !n.BGPStopped && c.BirdPID(n.Name) == 0 {
			out = append(out, fmt.Sprintf("node %s's BIRD is not running, so its blocks are not announced: 'klab repair %s' starts it", n.Name, l.Name))
		}
	}
	return out
}

// AddBGPPeer makes every node peer with a BGP speaker outside the cluster
// (Calico's global BGPPeer): ip on the underlay, in AS as (another AS
// than the cluster's 64512 makes it eBGP, and the nodes announce every
// block to it with themselves as next hop).
func (c *Cluster) AddBGPPeer(ip netip.Addr, as int) error {
	l := c.Lab
	if l.Backend != BackendCalico {
		return fmt.Errorf("lab %s uses the %s backend, which runs no BGP: create a lab with --backend calico", l.Name, l.Backend)
	}
	if !ip.Is4() || !l.UnderlayCIDR.Contains(ip) {
		return fmt.Errorf("BGP peer %s is not on the underlay network %s: the nodes reach peers on their own segment", ip, l.UnderlayCIDR)
	}
	for _, n := range l.Nodes {
		if n.IP == ip {
			return fmt.Errorf("BGP peer %s is node %s, which the node-to-node mesh already peers with: pick an address that is not a node's", ip, n.Name)
		}
	}
	if as < 1 || as > 4294967295 {
		return fmt.Errorf("AS number %d is out of range: use 1-4294967295 (64512-65534 are private)", as)
	}
	if err := l.noBGPInVXLAN(); err != nil {
		return err
	}
	s := l.calico()
	for _, p := range s.Peers {
		if p.IP == ip {
			return fmt.Errorf("BGP peer %s is already configured (AS %d): remove it first", ip, p.AS)
		}
	}
	s.Peers = append(s.Peers, calico.Peer{IP: ip, AS: as})
	old := l.Calico
	l.Calico = &s
	if err := c.Save(); err != nil {
		l.Calico = old
		return err
	}
	return c.SyncBird()
}

// DelBGPPeer removes a global BGP peer.
func (c *Cluster) DelBGPPeer(ip netip.Addr) error {
	s := c.Lab.calico()
	i := slices.IndexFunc(s.Peers, func(p calico.Peer) bool { return p.IP == ip })
	if c.Lab.Backend != BackendCalico || i < 0 {
		return fmt.Errorf("lab %s has no BGP peer %s: see 'klab calico status'", c.Lab.Name, ip)
	}
	s.Peers = slices.Delete(slices.Clone(s.Peers), i, i+1)
	c.Lab.Calico = &s
	if err := c.Save(); err != nil {
		return err
	}
	return c.SyncBird()
}

// checkDelReflector refuses to delete the route reflector while clients
// depend on it.
func (c *Cluster) checkDelReflector(n *Node) error {
	if c.Lab.Backend != BackendCalico || !c.Lab.calico().RouteReflector || len(c.Lab.Nodes) < 2 || c.Lab.Nodes[0] != n {
		return nil
	}
	return fmt.Errorf("node %s is lab %s's route reflector, which every other node peers with: delete the other nodes first", n.Name, c.Lab.Name)
}
