package cluster

import (
	"errors"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/veth"
	"github.com/klab-dev/klab/pkg/vxlan"
)

// Spec is a batch of nodes and pods to add in one call. Pods may sit on
// nodes of the same Spec.
type Spec struct {
	Nodes []NodeSpec
	Pods  []PodSpec
}

// Build adds the nodes, then the pods, of s. The result in the kernel and
// in the state is the same as calling AddNode for each node and then
// AddPod for each pod, in order; only faster: the whole request is
// validated and every address allocated before the kernel is touched,
// each node (its devices, its entries for every other node, its pods) is
// built by one of a few parallel workers, and the state is saved once.
// With an explain log the work is done serially, so the equivalent
// commands come out in order.
//
// Bad input changes nothing. If the kernel fails half-way, everything this
// call created is removed again and the error is returned.
func (c *Cluster) Build(s Spec) ([]*Node, []*Pod, error) {
	// (Not named results: a return must not clear what the deferred
	// rollback removes.)
	var nodes []*Node
	var pods []*Pod
	before := *c.Lab
	c.Lab.Nodes = slices.Clone(before.Nodes)
	c.Lab.Pods = slices.Clone(before.Pods)
	restore := func() { c.Lab.Nodes, c.Lab.Pods = before.Nodes, before.Pods }
	// Plan: every node, then every pod, each checked against the lab as it
	// would stand after the objects before it in s.
	for _, ns := range s.Nodes {
		n, err := c.PlanNode(ns)
		if err != nil {
			restore()
			return nil, nil, err
		}
		c.Lab.Nodes = append(c.Lab.Nodes, n)
		nodes = append(nodes, n)
	}
	if len(nodes) > 0 {
		if err := checkIptablesRestore(); err != nil {
			restore()
			return nil, nil, err
		}
	}
	byNode := map[string][]int{} // pod indexes per node, in request order
	var order []string           // nodes with new pods, in first-use order
	for _, ps := range s.Pods {
		n, err := c.podNode(&ps)
		if err != nil {
			restore()
			return nil, nil, err
		}
		p := &Pod{Name: ps.Name, Node: n.Name, IP: ps.IP, HostVeth: vethName(c.Lab.Name, ps.Name), Labels: ps.Labels}
		if _, ok := byNode[n.Name]; !ok {
			order = append(order, n.Name)
		}
		byNode[n.Name] = append(byNode[n.Name], len(pods))
		c.Lab.Pods = append(c.Lab.Pods, p)
		pods = append(pods, p)
	}
	// Addresses, host-local style, chosen now (one directory read per
	// node) and written by the node's job, off the critical path.
	reqs := map[string][]ipam.Request{}
	addrs := map[string][]netip.Addr{}
	for _, name := range order {
		for _, i := range byNode[name] {
			reqs[name] = append(reqs[name], ipam.Request{ID: pods[i].Name, IfName: PodIface, Want: pods[i].IP})
		}
		ips, err := c.ipamStore(c.Lab.Node(name)).Plan(reqs[name])
		if err != nil {
			restore()
			return nil, nil, err
		}
		addrs[name] = ips
		for k, i := range byNode[name] {
			pods[i].IP = ips[k]
		}
	}
	release := func() {
		for _, name := range order {
			for _, r := range reqs[name] {
				c.ipamStore(c.Lab.Node(name)).Release(r.ID)
			}
		}
	}

	ok := false
	defer func() {
		if !ok {
			c.unbuild(nodes, pods)
			release()
			restore()
		}
	}()
	// Then one job per node, run by parallel workers: a new node is built,
	// learns every other node (the entries need only the plan, not the
	// other node's devices) and gets its pods; an old node learns the new
	// nodes and gets its pods. The external host is a job of its own.
	c.overlap = true
	defer func() { c.overlap = false }()
	var jobs []func() error
	if len(nodes) > 0 {
		if err := c.ensureUnderlayBridge(); err != nil {
			return nil, nil, err
		}
		jobs = append(jobs, c.ensureExternal)
	}
	podsOf := func(name string) error {
		if err := c.ipamStore(c.Lab.Node(name)).Record(reqs[name], addrs[name]); err != nil {
			return err
		}
		for _, i := range byNode[name] {
			if err := c.buildPod(pods[i]); err != nil {
				return err
			}
			c.dropHandle(pods[i].Name)
		}
		return nil
	}
	for _, n := range c.Lab.Nodes {
		isNew := slices.Contains(nodes, n)
		var others []*Node
		for _, o := range c.Lab.Nodes {
			if o != n && (isNew || slices.Contains(nodes, o)) {
				others = append(others, o)
			}
		}
		if !isNew && len(others) == 0 && len(byNode[n.Name]) == 0 {
			continue
		}
		jobs = append(jobs, func() error {
			if isNew {
				if err := c.buildNode(n); err != nil {
					return err
				}
			}
			if err := c.peerMany(n, others); err != nil {
				return err
			}
			return podsOf(n.Name)
		})
	}
	workers := buildWorkers
	if len(jobs) <= smallBuild {
		workers = 1
	}
	if err := c.parallel(len(jobs), workers, func(i int) error { return jobs[i]() }); err != nil {
		return nil, nil, err
	}
	// One save; services that select the new pods are reprogrammed.
	if err := c.commit(&before); err != nil {
		// commit has put c.Lab back; undo the kernel side too.
		c.Lab.Nodes, c.Lab.Pods = append(slices.Clone(before.Nodes), nodes...), append(slices.Clone(before.Pods), pods...)
		return nil, nil, err
	}
	ok = true
	return nodes, pods, nil
}

// checkIptablesRestore checks, before anything is built, that every node
// can get kube-proxy's and flannel's rules.
func checkIptablesRestore() error {
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return errors.New("iptables-restore is not installed, and every node needs it for kube-proxy's and flannel's rules: install iptables (apt-get install iptables), then run 'klab doctor'")
	}
	return nil
}

// peerMany programs node n to reach the pods of every node in others,
// looking its flannel.1 up once and batching the netlink requests.
func (c *Cluster) peerMany(n *Node, others []*Node) error {
	if len(others) == 0 {
		return nil
	}
	h, err := c.Handle(n.Name)
	if err != nil {
		return err
	}
	if c.Lab.Backend == BackendHostGW {
		for _, o := range others {
			if err := vxlan.EnsureHostGW(h, c.NS(n.Name), NodeUplink, c.peerOf(o), c.Log); err != nil {
				return err
			}
		}
		return nil
	}
	dev, err := vxlan.LookupDevice(h, c.NS(n.Name), c.Lab.VNI, c.Log)
	if err != nil {
		return err
	}
	ns, err := netns.Open(c.NS(n.Name))
	if err != nil {
		return err
	}
	defer ns.Close()
	peers := make([]vxlan.Peer, len(others))
	for i, o := range others {
		peers[i] = c.peerOf(o)
	}
	return dev.AddPeers(ns, peers)
}

// unbuild removes what a failed Build created: the new pods (namespace,
// host veth) and the new nodes (namespace, underlay port, other nodes'
// entries, files). c.Lab still lists them.
func (c *Cluster) unbuild(nodes []*Node, pods []*Pod) {
	for _, p := range pods {
		c.deleteNS(p.Name)
		if !slices.ContainsFunc(nodes, func(n *Node) bool { return n.Name == p.Node }) && netns.Exists(c.NS(p.Node)) {
			if h, err := c.Handle(p.Node); err == nil {
				veth.Delete(h, c.NS(p.Node), p.HostVeth, nil)
			}
		}
	}
	for _, n := range nodes {
		c.teardownNode(n)
		removeAll(filepath.Join(c.Dir(), "nodes", n.Name))
		removeAll(filepath.Join(c.Dir(), "ipam", n.Name))
	}
}

// later runs f in the background, during Build, and returns wait, which
// waits for f and returns its error. Otherwise (AddNode), or with an
// explain log, f runs inside wait instead, so that the operations happen
// in the order of the code (the explain log, and the crash tests' numbered
// crash points, depend on it), and wait(false) skips it (the caller failed
// before it).
func (c *Cluster) later(f func() error) (wait func(run bool) error) {
	if c.Log != nil || !c.overlap {
		return func(run bool) error {
			if !run {
				return nil
			}
			return f()
		}
	}
	done := make(chan error, 1)
	go func() { done <- f() }()
	return func(bool) error { return <-done }
}

// parallel runs f(0..n-1) on up to workers goroutines and returns the
// error of the lowest index that failed, after every started call has
// returned. With an explain log it runs serially, so the log stays in order.
func (c *Cluster) parallel(n, workers int, f func(i int) error) error {
	workers = min(n, workers)
	if c.Log != nil {
		workers = min(n, 1)
	}
	errs := make([]error, n)
	var next int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				failed := slices.ContainsFunc(errs[:min(i, n)], func(e error) bool { return e != nil })
				mu.Unlock()
				if i >= n || failed {
					return
				}
				err := f(i)
				mu.Lock()
				errs[i] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// buildWorkers is how many nodes Build works on at once: one per CPU.
// Most of a build is kernel work under the RTNL lock, which serialises it
// across namespaces: measured on 2 CPUs, 2 workers build 100 nodes x 10
// pods in 2.5 s against 3.4 s for 1, and more workers only spin on the
// lock (10x10: 1 worker 220 ms, 2-3 workers 197 ms, 8 workers 226 ms).
var buildWorkers = runtime.GOMAXPROCS(0)

// smallBuild is the number of jobs (nodes, plus the external host) up to
// which Build uses one worker: with a handful of nodes a second worker
// mostly spins on the RTNL lock and takes CPU from the nodes'
// iptables-restore processes (2 nodes x 2 pods, 2 CPUs: 17 ms with one
// worker, 22 ms with two).
const smallBuild = 4
