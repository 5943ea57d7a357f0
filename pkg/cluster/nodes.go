package cluster

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/veth"
	"github.com/klab-dev/klab/pkg/vxlan"
)

// NodeSpec asks for a node; zero fields are allocated.
type NodeSpec struct {
	Name    string
	IP      netip.Addr   // underlay address; default .101, .102, ...
	PodCIDR netip.Prefix // pod subnet; default the next free /24
}

// SubnetEnvPath is where a node's flannel subnet.env lives on the host;
// `klab exec NODE` mounts its directory over /run/flannel.
func (c *Cluster) SubnetEnvPath(node string) string {
	return filepath.Join(c.Dir(), "nodes", node, "flannel", "subnet.env")
}

// validateName checks a new node or pod name against the rules and the
// names already in use.
func (c *Cluster) validateName(kind, name string) error {
	if kind == "pod" {
		if err := c.Lab.validateKey(kind, name); err != nil {
			return err
		}
		if strings.Contains(name, "/") {
			if c.Lab.Pod(name) != nil {
				return fmt.Errorf("pod %q already exists in lab %s: choose another name", name, c.Lab.Name)
			}
			return nil // a namespaced pod's network namespace cannot collide with a node's
		}
		name = NormalizeKey(name)
	} else if err := netns.ValidateObject(kind, name); err != nil {
		return err
	}
	if name == UnderlayName || name == ExternalName || name == ControlPlaneName || name == MachinePortName || name == StitchDev {
		return fmt.Errorf("%s name %q is reserved for the lab's own %s namespace: choose another name", kind, name, name)
	}
	if c.Lab.Node(name) != nil {
		return fmt.Errorf("%s name %q is already taken by a node of lab %s: choose another name", kind, name, c.Lab.Name)
	}
	if c.Lab.Pod(name) != nil {
		return fmt.Errorf("%s name %q is already taken by a pod of lab %s: choose another name", kind, name, c.Lab.Name)
	}
	return nil
}

// PlanNode validates a node request against the lab and fills in the
// allocated fields, without touching the kernel.
func (c *Cluster) PlanNode(s NodeSpec) (*Node, error) {
	l := c.Lab
	if err := c.validateName("node", s.Name); err != nil {
		return nil, err
	}
	if len(s.Name) > veth.MaxNameLen {
		return nil, fmt.Errorf("node name %q is %d bytes, but it names the node's port on the underlay bridge, and interface names are limited to %d bytes: choose a shorter name", s.Name, len(s.Name), veth.MaxNameLen)
	}
	n := &Node{Name: s.Name, IP: s.IP, PodCIDR: s.PodCIDR}
	used := map[netip.Addr]bool{l.UnderlayGateway: true}
	if l.ControlPlane != nil {
		used[l.ControlPlane.IP] = true
	}
	for _, o := range l.Nodes {
		used[o.IP] = true
	}
	if n.IP.IsValid() {
		switch {
		case !l.UnderlayCIDR.Contains(n.IP):
			return nil, fmt.Errorf("node IP %s is outside the underlay network %s: pick an address inside it", n.IP, l.UnderlayCIDR)
		case n.IP == l.UnderlayCIDR.Addr() || n.IP == l.UnderlayGateway || !l.UnderlayCIDR.Contains(n.IP.Next()):
			return nil, fmt.Errorf("node IP %s is the network, gateway or broadcast address of %s: pick another", n.IP, l.UnderlayCIDR)
		case used[n.IP]:
			return nil, fmt.Errorf("node IP %s is already used by another node: pick another or leave --ip out", n.IP)
		}
	} else {
		var ok bool
		n.IP, ok = nextNodeIP(l.UnderlayCIDR, used)
		if !ok {
			return nil, fmt.Errorf("underlay network %s is full: create the lab with a larger --underlay-cidr", l.UnderlayCIDR)
		}
	}
	if l.Backend == BackendCalico {
		if err := c.planCalicoBlock(n, s); err != nil {
			return nil, err
		}
		return n, nil
	}
	var subnets []netip.Prefix
	for _, o := range l.Nodes {
		subnets = append(subnets, o.PodCIDR)
	}
	if n.PodCIDR.IsValid() {
		if n.PodCIDR.Masked() != n.PodCIDR {
			return nil, fmt.Errorf("pod CIDR %s has host bits set: did you mean %s?", n.PodCIDR, n.PodCIDR.Masked())
		}
		if n.PodCIDR.Bits() < l.ClusterCIDR.Bits() || !l.ClusterCIDR.Contains(n.PodCIDR.Addr()) {
			return nil, fmt.Errorf("pod CIDR %s is not inside the cluster network %s: pick a subnet of it", n.PodCIDR, l.ClusterCIDR)
		}
		if n.PodCIDR.Bits() > 28 {
			return nil, fmt.Errorf("pod CIDR %s is too small: use a /28 or larger (flannel leases a /24)", n.PodCIDR)
		}
		for _, o := range l.Nodes {
			if o.PodCIDR.Overlaps(n.PodCIDR) {
				return nil, fmt.Errorf("pod CIDR %s overlaps %s of node %s: pick a free subnet or leave --pod-cidr out", n.PodCIDR, o.PodCIDR, o.Name)
			}
		}
	} else {
		p, err := ipam.NextSubnet(l.ClusterCIDR, 24, subnets)
		if err != nil {
			return nil, err
		}
		n.PodCIDR = p
	}
	if l.Backend == BackendVXLAN {
		n.VtepMAC = MAC(l.Name, n.Name, "vtep").String()
	}
	return n, nil
}

// nextNodeIP picks .101, .102, ... (seed 003's node addresses), then the
// rest of the range.
func nextNodeIP(p netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	size := 1 << (32 - p.Bits())
	try := func(i int) (netip.Addr, bool) {
		a, ok := ipam.Nth(p, i)
		if !ok || i <= 0 || i >= size-1 || used[a] {
			return netip.Addr{}, false
		}
		return a, true
	}
	for i := 101; i < size-1; i++ {
		if a, ok := try(i); ok {
			return a, true
		}
	}
	for i := 2; i < 101 && i < size-1; i++ {
		if a, ok := try(i); ok {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// ipForward is the sysctl every router namespace (underlay, nodes) needs.
const ipForward = "net/ipv4/ip_forward"

// AddNode validates, builds and records a node, and peers it with every
// existing node: one plan, computed from the kernel's current state and
// applied. On failure, what this call created is removed again.
func (c *Cluster) AddNode(s NodeSpec) (*Node, error) {
	n, err := c.PlanNode(s)
	if err != nil {
		return nil, err
	}
	// Every node runs kube-proxy's and flannel's rules: check for the tool
	// before anything is built.
	if err := checkIptablesRestore(); err != nil && !c.Lab.NFTables() {
		return nil, err
	}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	if err := c.cpPrepareNode(n, s); err != nil {
		return nil, err
	}
	p, err := c.planUnderlay()
	if err != nil {
		return nil, err
	}
	st, err := c.read(n.Name, ipForward)
	if err != nil {
		return nil, err
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return nil, err
	}
	np, err := c.planNode(n, u, st)
	if err != nil {
		return nil, err
	}
	p.Add(np...)
	for _, o := range c.Lab.Nodes {
		ost, err := c.read(o.Name)
		if err != nil {
			return nil, err
		}
		p.Add(c.planPeers(n, []*Node{o}, st)...)
		p.Add(c.planPeers(o, []*Node{n}, ost)...)
	}
	c.Lab.Nodes = append(c.Lab.Nodes, n)
	p.Add(c.savePlan()...)
	mark := c.A.Mark()
	if err := c.apply(p); err != nil {
		c.A.RollbackTo(mark)
		c.Lab.Nodes = c.Lab.Nodes[:len(c.Lab.Nodes)-1]
		c.rollbackNode(n)
		return nil, err
	}
	if err := c.cpStartAgent(n); err != nil {
		c.DelNode(n.Name)
		return nil, fmt.Errorf("node %s: %w (the node was removed again)", n.Name, err)
	}
	if err := c.afterNodeChange(); err != nil {
		return n, err
	}
	if err := c.ensureDNS(); err != nil {
		return n, fmt.Errorf("node %s is up, but the cluster DNS is not: %w", n.Name, err)
	}
	return n, nil
}

// planUnderlay plans the underlay namespace — the underlay0 bridge that
// joins all nodes, holding the nodes' default gateway address, with
// forwarding on — and the external host.
func (c *Cluster) planUnderlay() (plan.Plan, error) {
	p, err := c.planUnderlayBridge()
	if err != nil {
		return nil, err
	}
	e, err := c.planExternal()
	if err != nil {
		return nil, err
	}
	return append(p, e...), nil
}

// planUnderlayBridge is planUnderlay without the external host.
func (c *Cluster) planUnderlayBridge() (plan.Plan, error) {
	u, err := c.read(UnderlayName, ipForward)
	if err != nil {
		return nil, err
	}
	name := c.NS(UnderlayName)
	var p plan.Plan
	if !u.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: name, New: true})
	}
	bp, err := bridge.Plan(c.underlayBridgeConfig(), u)
	if err != nil {
		return nil, err
	}
	p.Add(bp...)
	if !c.Lab.Joined() {
		p.Add(forwarding(name, u)...)
	}
	return p, nil
}

// underlayBridgeConfig is the underlay bridge: the nodes' gateway address
// on it, but on a machine that joined the lab (the gateway is on the
// first machine), where it has a MAC address of its own, since bridges on
// one stitched segment must not share one (machines.go).
func (c *Cluster) underlayBridgeConfig() bridge.Config {
	cfg := bridge.Config{NS: c.NS(UnderlayName), Name: UnderlayBridge, MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, UnderlayName, "bridge")}
	if c.Lab.Joined() {
		cfg.MAC = MAC(c.Lab.Name, UnderlayName+"@"+c.Lab.ControlPlane.Machine.Name, "bridge")
		return cfg
	}
	cfg.Gateway = netip.PrefixFrom(c.Lab.UnderlayGateway, c.Lab.UnderlayCIDR.Bits())
	return cfg
}

// forwarding turns on IPv4 forwarding in a router namespace, unless st
// shows it on already.
func forwarding(ns string, st *plan.State) plan.Plan {
	if st.Sysctls[ipForward] == "1" {
		return nil
	}
	return plan.Plan{{Verb: plan.Sysctl, NS: ns, Key: ipForward, Value: "1"}}
}

// planExternal plans the lab's "external" host: a namespace outside the
// cluster (203.0.113.10, a documentation range), routed by the underlay
// namespace like a server on the internet behind the nodes' gateway. The
// underlay knows the nodes' network but not the pod network, so pod
// traffic only gets answers from it once a node masquerades it.
func (c *Cluster) planExternal() (plan.Plan, error) {
	if c.Lab.Joined() {
		return nil, nil // the external host is on the first machine
	}
	e, err := c.read(ExternalName)
	if err != nil {
		return nil, err
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return nil, err
	}
	name := c.NS(ExternalName)
	var p plan.Plan
	if !e.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: name, New: true})
	}
	bits := ExternalCIDR.Bits()
	vp, err := veth.Plan(veth.Attachment{
		OuterNS: c.NS(UnderlayName), OuterIface: ExternalName, OuterAddr: netip.PrefixFrom(ExternalGateway, bits),
		InnerNS: name, InnerIface: NodeUplink, Addr: netip.PrefixFrom(ExternalIP, bits),
		MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, ExternalName, "eth0"),
		Routes: []veth.Route{{Gw: ExternalGateway}},
	}, u, e)
	if err != nil {
		return nil, err
	}
	return append(p, vp...), nil
}

// planNodeUplink plans what every node has whatever its backend: its
// namespace, eth0 on the underlay bridge with its address and default
// route, and forwarding.
func (c *Cluster) planNodeUplink(n *Node, u, st *plan.State) (plan.Plan, error) {
	l := c.Lab
	name := c.NS(n.Name)
	var p plan.Plan
	if !st.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: name, New: true})
	}
	up, err := veth.Plan(veth.Attachment{
		OuterNS: c.NS(UnderlayName), OuterIface: n.Name, Bridge: UnderlayBridge,
		InnerNS: name, InnerIface: NodeUplink, Addr: netip.PrefixFrom(n.IP, l.UnderlayCIDR.Bits()),
		MTU: l.UnderlayMTU, MAC: MAC(l.Name, n.Name, "eth0"),
		Routes: []veth.Route{{Gw: l.UnderlayGateway}},
	}, u, st)
	if err != nil {
		return nil, err
	}
	p.Add(up...)
	p.Add(forwarding(name, st)...)
	return p, nil
}

// planNode plans a node's namespace, uplink, forwarding, cni0, flannel.1,
// rules and subnet.env, against u (the underlay's state) and st (the
// node's).
func (c *Cluster) planNode(n *Node, u, st *plan.State) (plan.Plan, error) {
	if c.Lab.Backend == BackendCalico {
		return c.planCalicoNode(n, u, st)
	}
	l := c.Lab
	name := c.NS(n.Name)
	p, err := c.planNodeUplink(n, u, st)
	if err != nil {
		return nil, err
	}
	gw := netip.PrefixFrom(ipam.Gateway(n.PodCIDR), n.PodCIDR.Bits())
	bp, err := bridge.Plan(bridge.Config{NS: name, Name: bridge.DefaultName, Gateway: gw, MTU: l.MTU(), MAC: MAC(l.Name, n.Name, "cni0")}, st)
	if err != nil {
		return nil, err
	}
	p.Add(bp...)
	if l.Backend == BackendVXLAN && !c.agentsProgram() {
		p.Add(vxlan.PlanDevice(c.vxlanConfig(n), st)...)
	}
	rp, err := c.planNodeRules(n, st)
	if err != nil {
		return nil, err
	}
	p.Add(rp...)
	env := vxlan.WriteSubnetEnv(c.SubnetEnvPath(n.Name), l.ClusterCIDR, n.PodCIDR, l.MTU(), true)
	if old, err := os.ReadFile(env.File.Path); !c.agentsProgram() && (err != nil || !bytes.Equal(old, env.File.Data)) {
		env.New = err != nil
		p.Add(env)
	}
	return p, nil
}

func (c *Cluster) vxlanConfig(n *Node) vxlan.Config {
	mac, _ := parseMAC(n.VtepMAC)
	return vxlan.Config{NS: c.NS(n.Name), VNI: c.Lab.VNI, Port: c.Lab.Port, Local: n.IP, Underlay: NodeUplink, MTU: c.Lab.MTU(), MAC: mac, Subnet: n.PodCIDR}
}

func (c *Cluster) peerOf(o *Node) vxlan.Peer {
	mac, _ := parseMAC(o.VtepMAC)
	return vxlan.Peer{Subnet: o.PodCIDR, VtepMAC: mac, PublicIP: o.IP}
}

// planPeers plans node n's entries for reaching the pods of others (the
// flannel.1 ARP/FDB/route triple, or the host-gw route), against st, n's
// state.
func (c *Cluster) planPeers(n *Node, others []*Node, st *plan.State) plan.Plan {
	if c.Lab.Backend == BackendCalico {
		return c.planCalicoPeers(n, others, st) // BIRD learns them by BGP, or Felix's VXLAN entries
	}
	if c.agentsProgram() {
		return nil // the agents program peers from the leases
	}
	peers := make([]vxlan.Peer, len(others))
	for i, o := range others {
		peers[i] = c.peerOf(o)
	}
	if c.Lab.Backend == BackendHostGW {
		return vxlan.PlanHostGW(c.NS(n.Name), NodeUplink, peers, st)
	}
	return vxlan.PlanPeers(c.NS(n.Name), c.Lab.VNI, peers, st)
}

// planUnpeer plans the removal of node n's entries for node o.
func (c *Cluster) planUnpeer(n, o *Node, st *plan.State) plan.Plan {
	if c.Lab.Backend == BackendCalico {
		return c.planCalicoUnpeer(n, o, st) // BGP withdraws its routes, or Felix's VXLAN entries go
	}
	if c.agentsProgram() {
		return nil // the agents remove a peer when its lease goes
	}
	if c.Lab.Backend == BackendHostGW {
		return vxlan.PlanDelHostGW(c.NS(n.Name), NodeUplink, c.peerOf(o), st)
	}
	return vxlan.PlanDelPeer(c.NS(n.Name), c.Lab.VNI, c.peerOf(o), st)
}

// planTeardownNode plans removing everything of a node from the kernel
// (its pods are deleted before): its entries in the other nodes, its
// underlay port and its namespace.
func (c *Cluster) planTeardownNode(n *Node) (plan.Plan, error) {
	var p plan.Plan
	for _, o := range c.Lab.Nodes {
		if o.Name == n.Name {
			continue
		}
		st, err := c.read(o.Name)
		if err != nil {
			return nil, err
		}
		p.Add(c.planUnpeer(o, n, st)...)
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return nil, err
	}
	vp, err := veth.PlanDelete(c.NS(UnderlayName), n.Name, u)
	if err != nil {
		return nil, err
	}
	p.Add(vp...)
	p.Add(c.teardownBird(n)...)
	if netns.Exists(c.NS(n.Name)) {
		p.Add(plan.Op{Verb: plan.NetnsDel, NS: c.NS(n.Name)})
	}
	return p, nil
}

// DelNode removes a node, its pods, and every other node's entries for it.
func (c *Cluster) DelNode(name string) error {
	n := c.Lab.Node(name)
	if n == nil {
		return fmt.Errorf("node %q does not exist in lab %s: see 'klab node list'", name, c.Lab.Name)
	}
	if err := c.checkDelReflector(n); err != nil {
		return err
	}
	for _, p := range c.Lab.PodsOn(name) {
		if err := c.DelPod(p.Name); err != nil {
			return err
		}
	}
	if err := c.cpDelNode(n); err != nil {
		return err
	}
	p, err := c.planTeardownNode(n)
	if err != nil {
		return err
	}
	for _, dir := range []string{filepath.Join(c.Dir(), "nodes", name), filepath.Join(c.Dir(), "ipam", name)} {
		if _, err := os.Stat(dir); err == nil {
			p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: dir, Recurse: true}})
		}
	}
	nodes := c.Lab.Nodes[:0:0]
	for _, o := range c.Lab.Nodes {
		if o.Name != name {
			nodes = append(nodes, o)
		}
	}
	before := c.Lab.Nodes
	c.Lab.Nodes = nodes
	p.Add(c.savePlan()...)
	if err := c.apply(p); err != nil {
		c.Lab.Nodes = before
		return err
	}
	return c.afterNodeChange()
}
