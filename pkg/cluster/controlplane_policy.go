package cluster

// The NetworkPolicy agent's role in a control-plane lab, as the policy
// agent of a real CNI (kube-network-policies, Calico's Felix, the Cilium
// agent) runs on every node: it watches NetworkPolicies, Pods and
// Namespaces from the API server and enforces them for the pods of its own
// node. The CLI (klab apply of NetworkPolicy, Pod and Namespace manifests,
// pod add/del, label changes) writes those objects to etcd where the API
// server stores them and programs no policy rule itself; every node's
// agent keeps a long-lived policy.Compiler, compiles its node's chains and
// sets and applies them with the CLI's own planNodePolicies (iptables and
// ipsets, or table ip klab-policy in nftables mode), then acks.
//
// Keys: /registry/<resource>/<ns>/<name>, the resources having no special
// prefix (kubernetes/kubernetes pkg/kubeapiserver/default_storage_factory_builder.go
// SpecialDefaultResourcePrefixes does not list them; ResourcePrefix in
// staging/src/k8s.io/apiserver/pkg/server/storage/storage_factory.go is
// the lowercased resource, commit fa7ba8e2f963), a cluster-scoped
// Namespace without the namespace part:
//
//	/registry/networkpolicies/<ns>/<name>   a networking.k8s.io/v1 NetworkPolicy
//	/registry/pods/<ns>/<name>              a v1 Pod (labels, spec.nodeName, containerPorts, status.podIP)
//	/registry/namespaces/<name>             a v1 Namespace (labels)
//
// as JSON of the official k8s.io/api types (the API server stores
// protobuf), like the Services (controlplane_proxy.go).
//
// Writes: the CLI diffs the objects against the ones it wrote last (their
// digests are kept in <lab dir>/policy-objects.json, written in the same
// plan as the transaction), so a verb writes only what it changed and an
// object edited by hand with etcdctl stays until a verb changes that same
// object, as with the Services.
//
// Acks: after every sync an agent puts /klab/policy/nodes/<node> =
// {"node":...,"revision":R,...}; a verb that wrote at revision W returns
// once every running agent acked R >= W, or names the ones that did not
// within the bound.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Key prefixes of the objects the policy agents watch, and of their acks.
const (
	NetworkPoliciesPrefix = "/registry/networkpolicies/"
	PodsPrefix            = "/registry/pods/"
	NamespacesPrefix      = "/registry/namespaces/"
	PolicyAckPrefix       = "/klab/policy/nodes/"
	// PolicyConvergeTimeout bounds how long a verb waits for the agents
	// (plus 1 ms per pod and per policy: each agent compiles them all).
	PolicyConvergeTimeout = 5 * time.Second
)

// policyWatched reports whether key k is one the policy role syncs from
// (kube-proxy's ConfigMap for the proxy mode, which decides the form).
func policyWatched(k string) bool {
	return strings.HasPrefix(k, NetworkPoliciesPrefix) || strings.HasPrefix(k, PodsPrefix) ||
		strings.HasPrefix(k, NamespacesPrefix) || k == KubeProxyConfigKey
}

// PolicyAck is what an agent's policy role writes after a sync.
type PolicyAck struct {
	Node     string `json:"node"`
	Revision int64  `json:"revision"`
	Policies int    `json:"policies"`
	Pods     int    `json:"pods"` // the pods of this node it filters
	Time     string `json:"time"`
}

// policyObjects is the lab's namespaces, pods and NetworkPolicies as etcd
// keys and values: the objects 'klab get' shows (a pod with its labels,
// spec.nodeName, containerPorts and status.podIP).
func (l *Lab) policyObjects() map[string]string {
	out := make(map[string]string, len(l.Pods)+len(l.Policies)+len(l.Namespaces)+4)
	for _, n := range l.AllNamespaces() {
		b, _ := json.Marshal(NamespaceObject(n))
		out[NamespacesPrefix+n.Name] = string(b)
	}
	for _, p := range l.Pods {
		o := l.PodObject(p)
		// Readiness is the EndpointSlices' (controlplane_proxy.go) and no
		// policy reads it: the stored pod leaves it out, so that set-ready,
		// which writes only the slices, leaves nothing stale here.
		// In a lab that spans machines the Ready condition stays: the
		// endpointslice controller reads the other machines' pods from
		// here (endpointslices.go), and set-ready writes it too.
		if !l.spansMachines() {
			o.Status.Conditions = nil
		}
		o.Status.ContainerStatuses = nil
		b, _ := json.Marshal(o)
		out[PodsPrefix+p.Namespace()+"/"+p.ShortName()] = string(b)
	}
	for _, np := range l.Policies {
		o := *np
		o.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
		b, _ := json.Marshal(&o)
		out[NetworkPoliciesPrefix+np.Namespace+"/"+np.Name] = string(b)
	}
	return out
}

// policyObjectsFile keeps the digests of the objects the CLI wrote last.
func (c *Cluster) policyObjectsFile() string { return filepath.Join(c.Dir(), "policy-objects.json") }

func digest(v string) string {
	h := sha256.Sum256([]byte(v))
	return hex.EncodeToString(h[:12])
}

// policyLagError is a publish whose write succeeded but whose agents did
// not all ack in time: the change is in etcd and must be in the state too.
type policyLagError struct{ error }

// publishPolicies is syncPolicies in a control-plane lab: it writes to
// etcd the namespaces, pods and NetworkPolicies that changed since the
// CLI's last write (one transaction, as publishServices), keeps their
// digests, and waits for every running agent's policy ack. A wait in vain
// is a *policyLagError.
func (c *Cluster) publishPolicies() error {
	if len(c.Lab.Nodes) == 0 {
		// No etcd yet (the first node starts it) and nothing to enforce:
		// the first write after it holds every object (the digests
		// file is not written either).
		return nil
	}
	if len(c.Lab.Policies) > 0 {
		// As SetPolicies does before any node changes: policies that do
		// not compile are refused here, not written for the agents to
		// ignore.
		if _, err := policy.NewEvaluator(c.Lab.PolicyState()); err != nil {
			return err
		}
	}
	var old map[string]string
	if b, err := os.ReadFile(c.policyObjectsFile()); err == nil {
		json.Unmarshal(b, &old) // a damaged file only costs writing every object again
	}
	cur := c.Lab.policyObjects()
	sums := make(map[string]string, len(cur))
	for k, v := range cur {
		sums[k] = digest(v)
	}
	ops, script := etcdDiff(old, cur, func(k string) string { return sums[k] })
	if len(ops) == 0 {
		return nil
	}
	data, err := json.Marshal(sums)
	if err != nil {
		return err
	}
	keep := plan.Plan{{Verb: plan.WriteFile, File: &plan.File{Path: c.policyObjectsFile(), Data: data, Mode: 0o600, Atomic: true}}}
	rev, cli, err := c.etcdWrite("the namespaces, pods and network policies", ops, script, keep)
	if cli != nil {
		defer cli.Close()
	}
	if err != nil || c.A.DryRun || rev == 0 {
		return err
	}
	timeout := PolicyConvergeTimeout + time.Duration(len(c.Lab.Pods)+len(c.Lab.Policies))*time.Millisecond
	if err := waitAcks(c, cli, PolicyAckPrefix, "network policies", rev, timeout); err != nil {
		return &policyLagError{err}
	}
	return nil
}

// etcdDiff is the transaction that takes etcd from old (the digests of
// what was written last) to cur: a put per changed or new key, a delete
// per key gone, sorted, with the etcdctl txn script that does the same.
func etcdDiff(old, cur map[string]string, sum func(k string) string) ([]clientv3.Op, string) {
	var ops []clientv3.Op
	var script strings.Builder
	keys := make([]string, 0, len(cur))
	for k := range cur {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if old[k] != sum(k) {
			ops = append(ops, clientv3.OpPut(k, cur[k]))
			fmt.Fprintf(&script, "put %s %q\n", k, cur[k]) // etcdctl unquotes "..." as Go does
		}
	}
	keys = keys[:0]
	for k := range old {
		if _, ok := cur[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		ops = append(ops, clientv3.OpDelete(k))
		fmt.Fprintf(&script, "del %s\n", k)
	}
	return ops, script.String()
}

// etcdWrite applies ops in etcd as one plan operation shown as the etcdctl
// txn it is (several transactions past etcd's 128 operations), then the
// operations of after. It returns the revision of the last transaction
// and the client, kept open for a wait (the caller closes it).
func (c *Cluster) etcdWrite(what string, ops []clientv3.Op, script string, after plan.Plan) (int64, *clientv3.Client, error) {
	var rev int64
	var cli *clientv3.Client
	op := plan.Op{Verb: plan.Exec, NS: c.etcdctlNS(), Proc: &plan.Proc{
		// etcdctl txn reads compares, a blank line, the requests on
		// success, a blank line, those on failure and a blank line: no
		// compare, every request on success, none on failure.
		Cmd: fmt.Sprintf("%s txn <<'EOF'\n\n%s\n\nEOF", c.etcdctl(), script),
		Run: func() error {
			var err error
			if cli, err = c.etcd(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i := 0; i < len(ops); i += maxTxnOps {
				r, err := cli.Txn(ctx).Then(ops[i:min(i+maxTxnOps, len(ops))]...).Commit()
				if err != nil {
					return fmt.Errorf("write %s to etcd: %v: is etcd up? ('klab repair' starts it again)", what, err)
				}
				rev = r.Header.Revision
			}
			return nil
		},
	}}
	c.A.Ctx = c.Ctx
	err := c.A.Apply(append(plan.Plan{op}, after...))
	return rev, cli, err
}

// waitAcks waits until every running agent acked revision rev under
// prefix (what names what they sync, for the message). It watches the
// acks, so it returns as soon as the last one is written, and checks
// every 100 ms besides (an agent that dies writes nothing).
func waitAcks(c *Cluster, cli *clientv3.Client, prefix, what string, rev int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var acks clientv3.WatchChan
	watching := false
	for {
		lag, at := c.ackLaggingAt(cli, prefix, rev)
		if len(lag) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the %s are in etcd (revision %d), but the agents of %s have not synced them after %v: see 'klab agent log NODE'", what, rev, strings.Join(lag, ", "), timeout.Round(100*time.Millisecond))
		}
		if !watching && at > 0 {
			acks, watching = cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(at+1)), true
		}
		select {
		case _, ok := <-acks:
			if !ok {
				acks = nil // ended: the ticker goes on
			}
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// ackLagging lists the nodes whose running agent has not acked rev under
// prefix (the proxy's or the policy role's acks: both carry node and
// revision).
func (c *Cluster) ackLagging(cli *clientv3.Client, prefix string, rev int64) []string {
	lag, _ := c.ackLaggingAt(cli, prefix, rev)
	return lag
}

// ackLaggingAt is ackLagging and the revision it read the acks at (0 when
// etcd did not answer).
func (c *Cluster) ackLaggingAt(cli *clientv3.Client, prefix string, rev int64) ([]string, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	acks := map[string]int64{}
	var at int64
	if r, err := cli.Get(ctx, prefix, clientv3.WithPrefix()); err == nil {
		at = r.Header.Revision
		for _, kv := range r.Kvs {
			var a struct {
				Node     string `json:"node"`
				Revision int64  `json:"revision"`
			}
			if json.Unmarshal(kv.Value, &a) == nil {
				acks[a.Node] = a.Revision
			}
		}
	}
	var lag []string
	for _, n := range c.Lab.Nodes {
		if c.serving(n.Name, "agent") && acks[n.Name] < rev {
			lag = append(lag, n.Name)
		}
	}
	// Across machines, the other machines' nodes too: those etcd has a
	// Node for and whose agent has acked before (machines.go).
	if at > 0 && c.Lab.spansMachines() {
		if r, err := cli.Get(ctx, NodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()); err == nil {
			for _, kv := range r.Kvs {
				name := strings.TrimPrefix(string(kv.Key), NodesPrefix)
				if a, ok := acks[name]; ok && c.Lab.Node(name) == nil && a < rev {
					lag = append(lag, name)
				}
			}
		}
	}
	return lag, at
}

// policyTarget is the revision every running agent's policy role must
// have acked for what etcd holds now: the newest change of a watched key
// (at least 1, so an agent that never synced lags).
func policyTarget(cli *clientv3.Client) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rev := int64(1)
	for _, pfx := range []string{NetworkPoliciesPrefix, PodsPrefix, NamespacesPrefix, KubeProxyConfigKey} {
		r, err := cli.Get(ctx, pfx, append(clientv3.WithLastRev(), clientv3.WithPrefix(), clientv3.WithKeysOnly())...)
		if err == nil && len(r.Kvs) > 0 {
			rev = max(rev, r.Kvs[0].ModRevision)
		}
	}
	return rev
}

// policyWaiter is proxyWaiter for the policy role.
func (c *Cluster) policyWaiter() (func() []string, func()) {
	cli, err := c.etcd()
	if err != nil {
		return func() []string { return nil }, func() {}
	}
	rev := policyTarget(cli)
	return func() []string { return c.ackLagging(cli, PolicyAckPrefix, rev) }, func() { cli.Close() }
}

// takePolicyLag returns (and forgets) the lag a publish inside
// setPolicyObjects found.
func (c *Cluster) takePolicyLag() error {
	err := c.policyLag
	c.policyLag = nil
	return err
}

// decodePolicyObject decodes a stored NetworkPolicy, Pod, Namespace or
// kube-proxy's ConfigMap once, when it arrives, or returns nil, logging
// why, for one the policy agent cannot use (a policy that does not parse
// on its own, a pod without an address or node: not filtered yet, as a
// pending pod is not).
func decodePolicyObject(k string, v []byte, log func(string, ...any)) any {
	switch {
	case strings.HasPrefix(k, NetworkPoliciesPrefix):
		var o networkingv1.NetworkPolicy
		if err := json.Unmarshal(v, &o); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		if o.Namespace == "" || o.Name == "" {
			log("ignoring %s: metadata.namespace and metadata.name are required", k)
			return nil
		}
		if _, err := policy.NewEvaluator(policy.State{Policies: []*networkingv1.NetworkPolicy{&o}}); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		return &o
	case strings.HasPrefix(k, PodsPrefix):
		var o corev1.Pod
		if err := json.Unmarshal(v, &o); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		if _, err := netip.ParseAddr(o.Status.PodIP); err != nil || o.Spec.NodeName == "" || o.Namespace == "" || o.Name == "" {
			log("ignoring %s: no status.podIP, spec.nodeName or metadata name and namespace (not running yet)", k)
			return nil
		}
		return &o
	case strings.HasPrefix(k, NamespacesPrefix):
		var o corev1.Namespace
		if err := json.Unmarshal(v, &o); err != nil || o.Name == "" {
			log("ignoring %s: not a Namespace with a name (%v)", k, err)
			return nil
		}
		return &o
	case k == KubeProxyConfigKey:
		return decodeObject(k, v, log)
	}
	return nil
}

// policyStateFromObjects is the policy.State an agent compiles: base's
// nodes (their addresses) and external host, with the namespaces, pods
// and policies etcd holds; and the proxy mode of kube-proxy's ConfigMap
// (base's when there is none).
func policyStateFromObjects(base *Lab, objs map[string]any) (policy.State, string) {
	l := *base
	l.Pods, l.Policies = nil, nil
	st := l.PolicyState()
	st.Namespaces = nil
	mode := base.Mode()
	for _, v := range objs {
		switch o := v.(type) {
		case *networkingv1.NetworkPolicy:
			st.Policies = append(st.Policies, o)
		case *corev1.Namespace:
			st.Namespaces = append(st.Namespaces, policy.Namespace{Name: o.Name, Labels: o.Labels})
		case *corev1.Pod:
			pp := policy.Pod{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels, IP: netip.MustParseAddr(o.Status.PodIP), Node: o.Spec.NodeName}
			for _, c := range o.Spec.Containers {
				for _, cp := range c.Ports {
					proto := cp.Protocol
					if proto == "" {
						proto = corev1.ProtocolTCP
					}
					pp.Ports = append(pp.Ports, policy.Port{Name: cp.Name, Port: cp.ContainerPort, Protocol: proto})
				}
			}
			st.Pods = append(st.Pods, pp)
		case *corev1.ConfigMap:
			mode = proxyModeOf(o)
		}
	}
	sort.Slice(st.Policies, func(i, j int) bool {
		return st.Policies[i].Namespace+"/"+st.Policies[i].Name < st.Policies[j].Namespace+"/"+st.Policies[j].Name
	})
	sort.Slice(st.Namespaces, func(i, j int) bool { return st.Namespaces[i].Name < st.Namespaces[j].Name })
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].Key() < st.Pods[j].Key() })
	return st, mode
}

// policyView is what a node's policy role keeps between syncs: the
// long-lived Compiler (a change recompiles only what it touched), the mode
// of the last sync, and whether a sync since the last (re)list applied.
type policyView struct {
	cc     policy.Compiler
	mode   string
	synced bool
}

// runPolicy is the policy agent in a node's agent: list the policies,
// pods and namespaces, sync, watch /registry/ from the list's revision
// and sync every burst of changes (10 ms), acking each sync. While etcd is
// away the kernel keeps enforcing what it has; the loop lists again with
// backoff (100 ms doubling to 5 s) and reconciles when it answers.
func runPolicy(ctx context.Context, c *Cluster, node string, log io.Writer) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(log, time.Now().Format("15:04:05.000")+" policy: "+format+"\n", args...)
	}
	n := c.Lab.Node(node)
	view := &policyView{}
	registryWatch{what: "policies", prefixes: []string{NetworkPoliciesPrefix, PodsPrefix, NamespacesPrefix, KubeProxyConfigKey}, watched: policyWatched, decode: decodePolicyObject,
		sync: func(cli *clientv3.Client, objs map[string]any, rev int64, why string, relisted bool) {
			// The first sync after a (re)list compares with the kernel
			// (what changed while etcd or the agent was away, drift);
			// the later ones with the plan this node applied last.
			if relisted {
				view.synced = false
			}
			policySync(ctx, c, n, view, cli, objs, rev, why, logf)
		}}.run(ctx, c, logf)
}

// policySync compiles node n's policies from the objects with the view's
// Compiler and applies them with the CLI's own code: planNodePolicies (a
// diff from the plan this node applied last, kept in <lab dir>/policy/),
// or, on the first iptables sync after a (re)list, the repair's
// comparison with the kernel rule by rule and member by member (nothing
// that is right is rewritten); with no policy left, the node's are
// removed as ClearPolicies does. Then it acks the revision.
func policySync(ctx context.Context, c *Cluster, n *Node, view *policyView, cli *clientv3.Client, objs map[string]any, rev int64, why string, logf func(string, ...any)) {
	t0 := time.Now()
	st, mode := policyStateFromObjects(c.Lab, objs)
	l := *c.Lab
	l.ProxyMode, l.Policies = mode, st.Policies
	a := &plan.Applier{}
	defer a.Close()
	ac := &Cluster{StateDir: c.StateDir, Lab: &l, A: a}
	if view.mode != "" && view.mode != l.Mode() {
		logf("%s: proxy mode %s -> %s (%s): the policies move to its form", why, view.mode, l.Mode(), KubeProxyConfigKey)
	}
	moved := view.mode != "" && view.mode != l.Mode()
	view.mode = l.Mode()
	if !c.proxyApplied.wait(ctx, l.Mode(), PolicyConvergeTimeout) {
		logf("%s: the proxy role has not synced %s mode after %v: applying the policies anyway", why, l.Mode(), PolicyConvergeTimeout)
	}
	var p plan.Plan
	var err error
	var t1 time.Time
	filtered := 0
	if len(st.Policies) > 0 {
		var next *policy.Plan
		if next, err = view.cc.Compile(st, policy.CompileOptions{Lab: l.Name, Node: n.Name}); err == nil {
			filtered = len(next.Pods)
		}
		t1 = time.Now()
		if err == nil {
			p, err = ac.planAgentPolicies(n, next, !view.synced && !moved)
		}
	} else {
		t1 = time.Now()
		p, err = ac.planClearNodePolicies(n, true)
	}
	t2 := time.Now()
	if err == nil {
		err = a.Apply(p)
	}
	t3 := time.Now()
	for _, op := range a.Ran() {
		if op.Verb != plan.WriteFile && op.Verb != plan.RemoveFile {
			logf("%s: %s", why, firstLine(op.Command()))
		}
	}
	if err != nil {
		// What the node holds is unknown now: forget the plan files so
		// that the next sync plans against the kernel (as SetPolicies
		// does after a failure).
		forget := plan.Plan{{Verb: plan.RemoveFile, File: &plan.File{Path: ac.policyFile(n.Name)}}, {Verb: plan.RemoveFile, File: &plan.File{Path: ac.policyNFTFile(n.Name)}}}
		if ferr := a.Apply(forget); ferr != nil {
			logf("%s: %v", why, ferr)
		}
		view.synced = false
		logf("%s: %v", why, err)
		return
	}
	view.synced = true
	b, _ := json.Marshal(PolicyAck{Node: n.Name, Revision: rev, Policies: len(st.Policies), Pods: filtered, Time: time.Now().UTC().Format(time.RFC3339Nano)})
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := cli.Put(actx, PolicyAckPrefix+n.Name, string(b)); err != nil {
		logf("%s: ack revision %d: %v", why, rev, err)
		return
	}
	changed := "nothing changed"
	if k := kernelOps(p); k > 0 {
		changed = fmt.Sprintf("%d kernel operation(s)", k)
	}
	logf("%s: synced %d policies (%d pods of %s filtered, %s mode) at revision %d in %v: compile %v, plan %v, apply %v; %s", why, len(st.Policies), filtered, n.Name, l.Mode(), rev,
		time.Since(t0).Round(time.Millisecond), t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), t3.Sub(t2).Round(time.Millisecond), changed)
}

// kernelOps counts a plan's operations that change the kernel (not the
// plan files).
func kernelOps(p plan.Plan) int {
	k := 0
	for _, op := range p {
		if op.Verb != plan.WriteFile && op.Verb != plan.RemoveFile {
			k++
		}
	}
	return k
}

// planAgentPolicies is an agent's plan for node n to enforce next:
// against the kernel (the repair's rule-by-rule comparison, PlanRepair:
// nil when it already enforces next) when fromKernel is set and the node
// is in iptables form, else planNodePolicies (a diff from the plan file;
// in nftables mode checked against the kernel's table shape; a mode
// switch moves the other form away).
func (c *Cluster) planAgentPolicies(n *Node, next *policy.Plan, fromKernel bool) (plan.Plan, error) {
	ns := c.NS(n.Name)
	if fromKernel && !c.Lab.NFTables() && !exists(c.policyNFTFile(n.Name)) && netns.Exists(ns) {
		k, err := policy.ReadContent(ns, c.Lab.Name)
		if err != nil {
			return nil, err
		}
		p := policy.PlanRepair(ns, next, k)
		if p == nil {
			return nil, nil
		}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: c.policyFile(n.Name), Data: data, Mode: 0o600, Atomic: true}})
		return p, nil
	}
	return c.planNodePolicies(n.Name, next)
}

// planClearNodePolicies removes every policy object from node n (jumps,
// chains, sets, the nftables table) with its plan files; with ifAny, only
// when a plan file says some were applied (nothing to do otherwise).
func (c *Cluster) planClearNodePolicies(n *Node, ifAny bool) (plan.Plan, error) {
	if ifAny && !exists(c.policyFile(n.Name)) && !exists(c.policyNFTFile(n.Name)) {
		return nil, nil
	}
	ns := c.NS(n.Name)
	prev, err := c.loadPolicyPlan(n.Name)
	if err != nil {
		return nil, err
	}
	var k *policy.Kernel
	if !c.A.Simulate && netns.Exists(ns) {
		if k, err = policy.ReadKernel(ns, c.Lab.Name); err != nil {
			return nil, err
		}
	}
	p := policy.PlanRemove(ns, c.Lab.Name, prev, k)
	p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.policyFile(n.Name)}})
	p = append(p, c.clearPoliciesNFT(n.Name)...) // policy_nft.go
	return p, nil
}

// isPolicyLag reports whether err is only the agents' lag after a write.
func isPolicyLag(err error) bool {
	var l *policyLagError
	return errors.As(err, &l)
}

// waitPolicies waits (bounded) until every running agent's policy role
// synced what etcd holds now: after a change they follow without a
// policy write of the CLI (a proxy mode switch).
func (c *Cluster) waitPolicies() error {
	if c.A.DryRun {
		return nil
	}
	cli, err := c.etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	timeout := PolicyConvergeTimeout + time.Duration(len(c.Lab.Pods)+len(c.Lab.Policies))*time.Millisecond
	return waitAcks(c, cli, PolicyAckPrefix, "network policies", policyTarget(cli), timeout)
}

// appliedMode is the proxy mode a node's kube-proxy role last synced the
// node in. Switching to iptables mode, that sync restores the filter
// table whole (iptables-restore without --noflush: nftables mode left no
// kube-proxy chains to diff), which would take the policy chains with it,
// so the policy role applies a mode's form only once the proxy role has
// synced that mode (as the CLI's SetProxyMode moves the policies after
// the rules). Nil outside an agent: no wait.
type appliedMode struct {
	mu   sync.Mutex
	mode string
	ch   chan struct{} // closed and replaced at every change
}

func (m *appliedMode) set(mode string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mode != mode {
		m.mode = mode
		if m.ch != nil {
			close(m.ch)
		}
		m.ch = make(chan struct{})
	}
}

// wait waits (at most timeout) until the proxy role synced mode; false if
// it did not.
func (m *appliedMode) wait(ctx context.Context, mode string, timeout time.Duration) bool {
	if m == nil {
		return true
	}
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		if m.ch == nil {
			m.ch = make(chan struct{})
		}
		have, ch := m.mode, m.ch
		m.mu.Unlock()
		if have == mode {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		}
	}
}
