package cluster

import (
	"bytes"
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
	"github.com/klab-dev/klab/pkg/plan"
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

// HasPod reports whether a pod exists: on this machine, or, in a lab
// that spans machines, on another machine's node (kubelet.go).
func (c *Cluster) HasPod(name string) bool {
	if c.Lab.Pod(name) != nil {
		return true
	}
	o, _ := c.RemotePod(name)
	return o != nil
}

// PodAttachment is the veth wiring of a pod, as the CNI bridge plugin
// would set it up: eth0 with an address from the node's subnet and two
// routes via cni0's address (default, and the cluster network).
func (c *Cluster) PodAttachment(p *Pod) veth.Attachment {
	if c.Lab.Backend == BackendCalico {
		return c.calicoAttachment(p)
	}
	n := c.Lab.Node(p.Node)
	gw := ipam.Gateway(n.PodCIDR)
	cluster := c.Lab.ClusterCIDR
	return veth.Attachment{
		OuterNS: c.NS(n.Name), OuterIface: p.HostVeth, Bridge: bridge.DefaultName, Hairpin: true,
		InnerNS: c.NS(p.Name), InnerIface: PodIface, Addr: netip.PrefixFrom(p.IP, n.PodCIDR.Bits()),
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

// AddPod validates, allocates, builds and records a pod: its address
// (host-local's files), namespace and veth pair, then the rules of the
// services it joins and the state, as plans. On failure what this call
// created is removed and the address released.
func (c *Cluster) AddPod(s PodSpec) (*Pod, error) {
	if c.Lab.spansMachines() && !c.A.DryRun {
		// kubelet.go: another machine's node builds it; names are
		// cluster-wide.
		if s.Node != "" && c.Lab.Node(s.Node) == nil {
			return c.addRemotePod(s)
		}
		if err := c.checkPodFree(s.Name); err != nil {
			return nil, err
		}
	}
	if c.Lab.Backend == BackendCalico {
		return c.addCalicoPod(s)
	}
	n, err := c.podNode(&s)
	if err != nil {
		return nil, err
	}
	store := c.ipamStore(n)
	p0, stale, err := c.releaseStale(store)
	if err != nil {
		return nil, err
	}
	req := []ipam.Request{{ID: s.Name, IfName: PodIface, Want: s.IP}}
	ips, err := store.PlanIgnoring(req, stale)
	if err != nil {
		return nil, err
	}
	p := &Pod{Name: s.Name, Node: n.Name, IP: ips[0], HostVeth: vethName(c.Lab.Name, s.Name), Labels: s.Labels}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	pp, err := c.planPod(p)
	if err != nil {
		return nil, err
	}
	mark := c.A.Mark()
	if err := c.apply(append(append(p0, store.RecordOps(req, ips)...), pp...)); err != nil {
		c.A.RollbackTo(mark)
		return nil, err
	}
	// A pod can be a service endpoint (by name or label) as soon as it
	// exists: commit reprograms the services it joins.
	before := *c.Lab
	c.Lab.Pods = append(c.Lab.Pods, p)
	if err := c.commit(&before); err != nil {
		c.A.RollbackTo(mark)
		return nil, err
	}
	return p, policyCheck("pod "+p.Name+" is up", c.syncPolicies())
}

// podNode validates a pod request against the lab (name, node, address
// not taken by another pod) and returns its node; an empty s.Node is set
// to the lab's only node.
func (c *Cluster) podNode(s *PodSpec) (*Node, error) {
	if err := c.validateName("pod", s.Name); err != nil {
		return nil, err
	}
	s.Name = NormalizeKey(s.Name)
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

// planPod plans a pod's namespace and veth pair against the kernel's
// state of the pod and of its node.
func (c *Cluster) planPod(p *Pod) (plan.Plan, error) {
	nst, err := c.read(p.Node)
	if err != nil {
		return nil, err
	}
	pst, err := c.read(p.Name)
	if err != nil {
		return nil, err
	}
	return c.podPlan(p, nst, pst)
}

// podPlan is planPod given the node's and the pod's State.
func (c *Cluster) podPlan(p *Pod, nst, pst *plan.State) (plan.Plan, error) {
	if c.Lab.Backend == BackendCalico {
		return c.calicoPodPlan(p, nst, pst)
	}
	var pl plan.Plan
	if !pst.Exists {
		pl.Add(plan.Op{Verb: plan.NetnsAdd, NS: c.NS(p.Name), New: true})
	}
	vp, err := veth.Plan(c.PodAttachment(p), nst, pst)
	if err != nil {
		return nil, err
	}
	pl = append(pl, vp...)
	for _, op := range c.resolvConfOps(p) {
		if old, err := os.ReadFile(op.File.Path); err != nil || !bytes.Equal(old, op.File.Data) {
			pl.Add(op)
		}
	}
	return pl, nil
}

// DelPod removes a pod: its servers, its veth pair, its namespace and its
// address. Deleting the namespace alone would also free the veth, but the
// kernel does that asynchronously; deleting the host end first makes the
// node's state right the moment this returns.
func (c *Cluster) DelPod(name string) error {
	p := c.Lab.Pod(name)
	if p == nil && c.Lab.spansMachines() {
		if o, err := c.RemotePod(name); err != nil {
			return err
		} else if o != nil {
			return c.delRemotePod(name) // its machine tears it down (kubelet.go)
		}
	}
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
	var pl plan.Plan
	if p.CNI {
		pl.Add(c.cniDelOps(p)...) // DEL: the plugins remove the veth and free the address (cni.go)
	} else if nst, err := c.read(p.Node); err != nil {
		return err
	} else if vp, err := veth.PlanDelete(c.NS(p.Node), p.HostVeth, nst); err != nil {
		return err
	} else {
		pl.Add(vp...)
	}
	if netns.Exists(c.NS(p.Name)) {
		pl.Add(plan.Op{Verb: plan.NetnsDel, NS: c.NS(p.Name)})
	}
	if dir := filepath.Dir(c.resolvConfPath(p.Name)); exists(dir) {
		pl.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: dir, Recurse: true}})
	}
	if n := c.Lab.Node(p.Node); n != nil && !p.CNI {
		rp, err := c.ipamStore(n).ReleaseOps(p.Name)
		if err != nil {
			return err
		}
		pl.Add(rp...)
	}
	keep := c.Lab.Pods
	c.Lab.Pods = without.Pods
	pl.Add(c.savePlan()...)
	if err := c.apply(pl); err != nil {
		c.Lab.Pods = keep
		return err
	}
	return policyCheck("pod "+name+" is deleted", c.syncPolicies())
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

func exists(path string) bool { _, err := os.Stat(path); return err == nil }
