package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/veth"
)

// PodSpec asks for a pod; a zero IP is allocated from the node's subnet.
type PodSpec struct {
	Name   string
	Node   string
	IP     netip.Addr
	Labels map[string]string
}

func (c *Cluster) ipamStore(node *Node) ipam.Store {
	return ipam.Store{Dir: filepath.Join(c.Dir(), "ipam", node.Name), Subnet: node.PodCIDR}
}

// PodAttachment is the veth wiring of a pod, as the CNI bridge plugin
// would set it up: eth0 with an address from the node's subnet and two
// routes via cni0's address (default, and the cluster network).
func (c *Cluster) PodAttachment(p *Pod) veth.Attachment {
	n := c.Lab.Node(p.Node)
	gw := ipam.Gateway(n.PodCIDR).AsSlice()
	cluster := ipam.IPNet(c.Lab.ClusterCIDR.Addr(), c.Lab.ClusterCIDR.Bits())
	return veth.Attachment{
		OuterNS: c.NS(n.Name), OuterIface: p.HostVeth, Bridge: bridge.DefaultName, Hairpin: true,
		InnerNS: c.NS(p.Name), InnerIface: PodIface, Addr: ipam.IPNet(p.IP, n.PodCIDR.Bits()),
		MTU: c.Lab.MTU(), MAC: MAC(c.Lab.Name, p.Name, "eth0"),
		Routes: []veth.Route{{Gw: gw}, {Dst: cluster, Gw: gw}},
	}
}

// ParseLabels parses "k=v" pairs.
func ParseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q is not of the form key=value: write it like app=web", kv)
		}
		out[k] = v
	}
	return out, nil
}

// AddPod validates, allocates, builds and records a pod. On failure what
// this call created is removed and the address released.
func (c *Cluster) AddPod(s PodSpec) (*Pod, error) {
	n, err := c.podNode(&s)
	if err != nil {
		return nil, err
	}
	store := c.ipamStore(n)
	c.releaseStale(store)
	ip, err := store.Allocate(s.Name, PodIface, s.IP)
	if err != nil {
		return nil, err
	}
	p := &Pod{Name: s.Name, Node: n.Name, IP: ip, HostVeth: vethName(c.Lab.Name, s.Name), Labels: s.Labels}
	ok := false
	defer func() {
		if !ok {
			c.deleteNS(p.Name)
			if h, err := c.Handle(n.Name); err == nil {
				veth.Delete(h, c.NS(n.Name), p.HostVeth, nil)
			}
			store.Release(p.Name)
		}
	}()
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	if err := c.buildPod(p); err != nil {
		return nil, err
	}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	// A pod can be a service endpoint (by name or label) as soon as it
	// exists: commit reprograms the services it joins.
	before := *c.Lab
	c.Lab.Pods = append(c.Lab.Pods, p)
	if err := c.commit(&before); err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// podNode validates a pod request against the lab (name, node, address
// not taken by another pod) and returns its node; an empty s.Node is set
// to the lab's only node.
func (c *Cluster) podNode(s *PodSpec) (*Node, error) {
	if err := c.validateName("pod", s.Name); err != nil {
		return nil, err
	}
	if s.Node == "" {
		switch len(c.Lab.Nodes) {
		case 0:
			return nil, fmt.Errorf("lab %s has no nodes yet: add one first (klab node add node1)", c.Lab.Name)
		case 1:
			s.Node = c.Lab.Nodes[0].Name
		default:
			return nil, fmt.Errorf("pod %s needs a node: add --node (one of %s)", s.Name, strings.Join(c.nodeNames(), ", "))
		}
	}
	n := c.Lab.Node(s.Node)
	if n == nil {
		return nil, fmt.Errorf("node %q does not exist in lab %s: use one of %s, or add it with 'klab node add %s'", s.Node, c.Lab.Name, strings.Join(c.nodeNames(), ", "), s.Node)
	}
	for _, o := range c.Lab.Pods {
		if s.IP.IsValid() && o.IP == s.IP {
			return nil, fmt.Errorf("address %s is already used by pod %s: pick another or leave --ip out", s.IP, o.Name)
		}
	}
	return n, nil
}

func (c *Cluster) buildPod(p *Pod) error {
	name := c.NS(p.Name)
	created, err := netns.Ensure(name)
	if err != nil {
		return err
	}
	if created {
		c.Log.Add("ip netns add %s", name)
	}
	nh, err := c.Handle(p.Node)
	if err != nil {
		return err
	}
	ph, err := c.Handle(p.Name)
	if err != nil {
		return err
	}
	fd, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer fd.Close()
	return veth.Ensure(nh, ph, fd, c.PodAttachment(p), c.Log)
}

// DelPod removes a pod: its servers, its veth pair, its namespace and its
// address. Deleting the namespace alone would also free the veth, but the
// kernel does that asynchronously; deleting the host end first makes the
// node's state right the moment this returns.
func (c *Cluster) DelPod(name string) error {
	p := c.Lab.Pod(name)
	if p == nil {
		return fmt.Errorf("pod %q does not exist in lab %s: see 'klab pod list'", name, c.Lab.Name)
	}
	// The pod leaves the services it backs first, as the endpoints
	// controller removes it before the kubelet tears it down, so no new
	// connection is sent to an address that is going away.
	without := *c.Lab
	without.Pods = slices.DeleteFunc(slices.Clone(c.Lab.Pods), func(o *Pod) bool { return o.Name == name })
	if err := c.syncRules(c.Lab, &without); err != nil {
		return err
	}
	if err := c.StopServers(name); err != nil {
		return err
	}
	if netns.Exists(c.NS(p.Node)) {
		h, err := c.Handle(p.Node)
		if err != nil {
			return err
		}
		if err := veth.Delete(h, c.NS(p.Node), p.HostVeth, c.Log); err != nil {
			return err
		}
	}
	if err := c.deleteNS(p.Name); err != nil {
		return err
	}
	if n := c.Lab.Node(p.Node); n != nil {
		if err := c.ipamStore(n).Release(p.Name); err != nil {
			return err
		}
	}
	c.Lab.Pods = without.Pods
	return c.Save()
}

func (c *Cluster) nodeNames() []string {
	var out []string
	for _, n := range c.Lab.Nodes {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}

// vethName is the host-side name of a pod's veth: stable for a lab and pod.
func vethName(lab, pod string) string { return veth.HostName(lab + "/" + pod) }

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	return net.ParseMAC(s)
}

func removeAll(p string) error {
	if err := os.RemoveAll(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}
