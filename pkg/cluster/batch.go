package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/plan"
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
// validated, every address allocated and every plan computed before the
// kernel is touched, each node's plan (its devices, its entries for every
// other node, its pods) is applied by one of a few parallel workers, and
// the state is saved once. The applier lists the operations plan by plan,
// in the order a serial build would run them.
//
// Bad input changes nothing. If the kernel fails half-way, everything this
// call created is removed again and the error is returned.
func (c *Cluster) Build(s Spec) ([]*Node, []*Pod, error) {
	// (Not named results: a return must not clear what the deferred
	// rollback removes.)
	if c.Lab.Backend == BackendCalico {
		return c.buildCalico(s)
	}
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
		if err := checkIptablesRestore(); err != nil && !c.Lab.NFTables() {
			restore()
			return nil, nil, err
		}
		if err := c.cpPrepareBuild(); err != nil {
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
	// node) and written by the node's plan.
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
	// The plans: the underlay first (every node's uplink needs its
	// bridge), then one plan per node, run by parallel workers: a new node
	// is built, learns every other node (the entries need only the plan,
	// not the other node's devices) and gets its pods; an old node learns
	// the new nodes and gets its pods. The external host is a plan of its
	// own. Each is computed against the kernel's state of its namespaces.
	fail := func(err error) ([]*Node, []*Pod, error) {
		restore()
		return nil, nil, err
	}
	var first, ext plan.Plan
	if len(nodes) > 0 {
		var err error
		if first, err = c.planUnderlayBridge(); err != nil {
			return fail(err)
		}
		if ext, err = c.planExternal(); err != nil {
			return fail(err)
		}
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return fail(err)
	}
	// Each node's plan is made by the worker that applies it (only its
	// namespace's State is read here, serially): a few nodes' operations
	// are in memory at a time, not the whole lab's.
	type job struct {
		n      *Node
		isNew  bool
		others []*Node
		st     *plan.State
		pods   []*Pod
	}
	var jobs []job
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
		st, err := c.read(n.Name, ipForward)
		if err != nil {
			return fail(err)
		}
		j := job{n: n, isNew: isNew, others: others, st: st}
		for _, i := range byNode[n.Name] {
			j.pods = append(j.pods, pods[i])
		}
		jobs = append(jobs, j)
	}
	podStates := map[string]*plan.State{}
	for _, p := range pods {
		st, err := c.read(p.Name)
		if err != nil {
			return fail(err)
		}
		podStates[p.Name] = st
	}
	var umu sync.Mutex // u is shared: a stale uplink is dropped from it
	planJob := func(i int) (plan.Plan, error) {
		if i == 0 {
			return ext, nil // the external host
		}
		j := jobs[i-1]
		var p plan.Plan
		if j.isNew {
			umu.Lock()
			np, err := c.planNode(j.n, u, j.st)
			umu.Unlock()
			if err != nil {
				return nil, err
			}
			p.Add(np...)
		}
		p.Add(c.planPeers(j.n, j.others, j.st)...)
		p.Add(c.ipamStore(j.n).RecordOps(reqs[j.n.Name], addrs[j.n.Name])...)
		for _, pod := range j.pods {
			pp, err := c.podPlan(pod, j.st, podStates[pod.Name])
			if err != nil {
				return nil, err
			}
			p.Add(pp...)
		}
		return p, nil
	}
	mark := c.A.Mark()
	undo := func(err error) ([]*Node, []*Pod, error) {
		c.A.RollbackTo(mark)
		for _, n := range nodes {
			removeAll(filepath.Join(c.Dir(), "nodes", n.Name))
			removeAll(filepath.Join(c.Dir(), "ipam", n.Name))
		}
		return fail(err)
	}
	if err := c.apply(first); err != nil {
		return undo(err)
	}
	workers := buildWorkers
	if len(jobs)+1 <= smallBuild {
		workers = 1
	}
	c.A.Overlap = true
	err = c.A.ApplyEach(len(jobs)+1, workers, c.counted(len(jobs)+1, planJob))
	c.A.Overlap = false
	if err != nil {
		return undo(err)
	}
	// One save; services that select the new pods are reprogrammed.
	if err := c.commit(&before); err != nil {
		// commit has put c.Lab back; undo the kernel side too.
		return undo(err)
	}
	if len(pods) > 0 {
		if err := policyCheck("the pods are up", c.syncPolicies()); err != nil {
			return nodes, pods, err
		}
	}
	if err := c.cpStartAgents(nodes); err != nil {
		return nodes, pods, fmt.Errorf("the nodes are up, but their agents are not: %w", err)
	}
	if len(nodes) > 0 {
		if err := c.ensureDNS(); err != nil {
			return nodes, pods, fmt.Errorf("the nodes are up, but the cluster DNS is not: %w", err)
		}
	}
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
