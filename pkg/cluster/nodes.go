package cluster

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
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
	if err := netns.ValidateObject(kind, name); err != nil {
		return err
	}
	if name == UnderlayName || name == ExternalName {
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

// AddNode validates, builds and records a node, and peers it with every
// existing node. On failure, what this call created is removed again.
func (c *Cluster) AddNode(s NodeSpec) (*Node, error) {
	n, err := c.PlanNode(s)
	if err != nil {
		return nil, err
	}
	// Every node runs kube-proxy's and flannel's rules: check for the tool
	// before anything is built.
	if err := checkIptablesRestore(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.rollbackNode(n)
		}
	}()
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	if err := c.ensureUnderlay(); err != nil {
		return nil, err
	}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	if err := c.buildNode(n); err != nil {
		return nil, err
	}
	for _, o := range c.Lab.Nodes {
		if err := c.interrupted(); err != nil {
			return nil, err
		}
		if err := c.peer(n, o); err != nil {
			return nil, err
		}
		if err := c.peer(o, n); err != nil {
			return nil, err
		}
	}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	c.Lab.Nodes = append(c.Lab.Nodes, n)
	if err := c.Save(); err != nil {
		c.Lab.Nodes = c.Lab.Nodes[:len(c.Lab.Nodes)-1]
		return nil, err
	}
	ok = true
	return n, nil
}

// ensureUnderlay builds the underlay namespace: the underlay0 bridge that
// joins all nodes, holding the nodes' default gateway address.
func (c *Cluster) ensureUnderlay() error {
	if err := c.ensureUnderlayBridge(); err != nil {
		return err
	}
	return c.ensureExternal()
}

// ensureUnderlayBridge is ensureUnderlay without the external host.
func (c *Cluster) ensureUnderlayBridge() error {
	name := c.NS(UnderlayName)
	created, err := netns.Ensure(name)
	if err != nil {
		return err
	}
	if created {
		c.Log.Add("ip netns add %s", name)
	}
	h, err := c.Handle(UnderlayName)
	if err != nil {
		return err
	}
	gw := ipam.IPNet(c.Lab.UnderlayGateway, c.Lab.UnderlayCIDR.Bits())
	if _, err := bridge.Ensure(h, bridge.Config{NS: name, Name: UnderlayBridge, Gateway: gw, MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, UnderlayName, "bridge")}, c.Log); err != nil {
		return err
	}
	if created {
		if err := c.enableForwarding(name); err != nil {
			return err
		}
	}
	return nil
}

// ensureExternal builds the lab's "external" host: a namespace outside the
// cluster (203.0.113.10, a documentation range), routed by the underlay
// namespace like a server on the internet behind the nodes' gateway. The
// underlay knows the nodes' network but not the pod network, so pod
// traffic only gets answers from it once a node masquerades it.
func (c *Cluster) ensureExternal() error {
	name := c.NS(ExternalName)
	if netns.Exists(name) {
		return nil
	}
	if _, err := netns.Ensure(name); err != nil {
		return err
	}
	c.Log.Add("ip netns add %s", name)
	uh, err := c.Handle(UnderlayName)
	if err != nil {
		return err
	}
	eh, err := c.Handle(ExternalName)
	if err != nil {
		return err
	}
	fd, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer fd.Close()
	bits := ExternalCIDR.Bits()
	return veth.Ensure(uh, eh, fd, veth.Attachment{
		OuterNS: c.NS(UnderlayName), OuterIface: ExternalName, OuterAddr: ipam.IPNet(ExternalGateway, bits),
		InnerNS: name, InnerIface: NodeUplink, Addr: ipam.IPNet(ExternalIP, bits),
		MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, ExternalName, "eth0"),
		Routes: []veth.Route{{Gw: ExternalGateway.AsSlice()}},
	}, c.Log)
}

func (c *Cluster) enableForwarding(ns string) error {
	if err := netns.Sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable forwarding in %s: %w", ns, err)
	}
	c.Log.NSExec(ns, "sysctl -w net.ipv4.ip_forward=1")
	return nil
}

// buildNode creates a node's namespace, uplink, cni0, flannel.1 and
// subnet.env.
func (c *Cluster) buildNode(n *Node) (err error) {
	l := c.Lab
	name := c.NS(n.Name)
	created, err := netns.Ensure(name)
	if err != nil {
		return err
	}
	if created {
		c.Log.Add("ip netns add %s", name)
	}
	// The rules and subnet.env do not depend on the links, and
	// iptables-restore (an exec) is the slowest step: they are made while
	// the links are.
	rules := c.later(func() error {
		if err := c.programNewNode(n, created); err != nil {
			return err
		}
		network := ipam.IPNet(l.ClusterCIDR.Addr(), l.ClusterCIDR.Bits())
		subnet := ipam.IPNet(n.PodCIDR.Addr(), n.PodCIDR.Bits())
		return vxlan.WriteSubnetEnv(c.SubnetEnvPath(n.Name), network, subnet, l.MTU(), true)
	})
	defer func() {
		if rerr := rules(err == nil); err == nil {
			err = rerr
		}
	}()
	uh, err := c.Handle(UnderlayName)
	if err != nil {
		return err
	}
	nh, err := c.Handle(n.Name)
	if err != nil {
		return err
	}
	nsFd, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer nsFd.Close()
	up := veth.Attachment{
		OuterNS: c.NS(UnderlayName), OuterIface: n.Name, Bridge: UnderlayBridge,
		InnerNS: name, InnerIface: NodeUplink, Addr: ipam.IPNet(n.IP, l.UnderlayCIDR.Bits()),
		MTU: l.UnderlayMTU, MAC: MAC(l.Name, n.Name, "eth0"),
		Routes: []veth.Route{{Gw: l.UnderlayGateway.AsSlice()}},
	}
	if err := veth.Ensure(uh, nh, nsFd, up, c.Log); err != nil {
		return err
	}
	if err := c.enableForwarding(name); err != nil {
		return err
	}
	gw := ipam.IPNet(ipam.Gateway(n.PodCIDR), n.PodCIDR.Bits())
	if _, err := bridge.Ensure(nh, bridge.Config{NS: name, Name: bridge.DefaultName, Gateway: gw, MTU: l.MTU(), MAC: MAC(l.Name, n.Name, "cni0")}, c.Log); err != nil {
		return err
	}
	if l.Backend == BackendVXLAN {
		dev, err := vxlan.EnsureDevice(nh, c.vxlanConfig(n), c.Log)
		if err != nil {
			return err
		}
		if err := dev.EnsureAddress(ipam.IPNet(n.PodCIDR.Addr(), n.PodCIDR.Bits())); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) vxlanConfig(n *Node) vxlan.Config {
	mac, _ := parseMAC(n.VtepMAC)
	return vxlan.Config{NS: c.NS(n.Name), VNI: c.Lab.VNI, Port: c.Lab.Port, Local: n.IP.AsSlice(), Underlay: NodeUplink, MTU: c.Lab.MTU(), MAC: mac}
}

func (c *Cluster) peerOf(o *Node) vxlan.Peer {
	mac, _ := parseMAC(o.VtepMAC)
	return vxlan.Peer{Subnet: ipam.IPNet(o.PodCIDR.Addr(), o.PodCIDR.Bits()), VtepMAC: mac, PublicIP: o.IP.AsSlice()}
}

// peer programs node n to reach node o's pods.
func (c *Cluster) peer(n, o *Node) error {
	h, err := c.Handle(n.Name)
	if err != nil {
		return err
	}
	if c.Lab.Backend == BackendHostGW {
		return vxlan.EnsureHostGW(h, c.NS(n.Name), NodeUplink, c.peerOf(o), c.Log)
	}
	dev, err := vxlan.LookupDevice(h, c.NS(n.Name), c.Lab.VNI, c.Log)
	if err != nil {
		return err
	}
	return dev.AddPeer(c.peerOf(o))
}

// unpeer removes node n's entries for node o; missing entries are fine.
func (c *Cluster) unpeer(n, o *Node) error {
	if !netns.Exists(c.NS(n.Name)) {
		return nil
	}
	h, err := c.Handle(n.Name)
	if err != nil {
		return err
	}
	if c.Lab.Backend == BackendHostGW {
		return vxlan.DeleteHostGW(h, c.NS(n.Name), NodeUplink, c.peerOf(o), c.Log)
	}
	dev, err := vxlan.LookupDevice(h, c.NS(n.Name), c.Lab.VNI, c.Log)
	if err != nil {
		return nil // no device, so no entries for o either
	}
	return dev.DelPeer(c.peerOf(o))
}

// teardownNode removes everything of a node from the kernel: its pods'
// namespaces, its entries in other nodes, its underlay port and its
// namespace. It is best-effort and idempotent (used for rollback too).
func (c *Cluster) teardownNode(n *Node) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, o := range c.Lab.Nodes {
		if o.Name != n.Name {
			keep(c.unpeer(o, n))
		}
	}
	if netns.Exists(c.NS(UnderlayName)) {
		if uh, err := c.Handle(UnderlayName); err == nil {
			keep(veth.Delete(uh, c.NS(UnderlayName), n.Name, c.Log))
		}
	}
	c.dropHandle(n.Name)
	keep(c.deleteNS(n.Name))
	return first
}

func (c *Cluster) deleteNS(obj string) error {
	name := c.NS(obj)
	if !netns.Exists(name) {
		return nil
	}
	c.dropHandle(obj)
	if err := netns.Delete(name); err != nil {
		return err
	}
	c.Log.Add("ip netns del %s", name)
	return nil
}

// DelNode removes a node, its pods, and every other node's entries for it.
func (c *Cluster) DelNode(name string) error {
	n := c.Lab.Node(name)
	if n == nil {
		return fmt.Errorf("node %q does not exist in lab %s: see 'klab node list'", name, c.Lab.Name)
	}
	for _, p := range c.Lab.PodsOn(name) {
		if err := c.DelPod(p.Name); err != nil {
			return err
		}
	}
	if err := c.teardownNode(n); err != nil {
		return err
	}
	nodes := c.Lab.Nodes[:0]
	for _, o := range c.Lab.Nodes {
		if o.Name != name {
			nodes = append(nodes, o)
		}
	}
	c.Lab.Nodes = nodes
	if err := removeAll(filepath.Join(c.Dir(), "nodes", name)); err != nil {
		return err
	}
	if err := removeAll(filepath.Join(c.Dir(), "ipam", name)); err != nil {
		return err
	}
	return c.Save()
}
