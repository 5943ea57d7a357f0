package cluster

// kube-proxy's role in a control-plane lab. The CLI (and klab apply) write
// the lab's Services and their EndpointSlices to etcd where the API server
// stores them, and every node's agent watches those prefixes and syncs its
// node's rules — the CLI programs no proxy rule itself. It lives here, not
// in pkg/agent, because an agent renders its node with the CLI's own code
// (planNodeRules: iptables or nftables mode, flannel's masquerade), and
// pkg/cluster imports pkg/agent; RunAgent starts it beside flanneld's loop.
//
// Keys: the API server's storage layout, /registry/<prefix>/<ns>/<name>,
// the prefix being the resource's special one or its lowercased name
// (kubernetes/kubernetes pkg/kubeapiserver/default_storage_factory_builder.go
// SpecialDefaultResourcePrefixes, services -> "services/specs"; and
// staging/src/k8s.io/apiserver/pkg/server/storage/storage_factory.go
// ResourcePrefix, commit fa7ba8e2f963, so endpointslices -> "endpointslices"):
//
//	/registry/services/specs/<ns>/<name>       a v1 Service
//	/registry/endpointslices/<ns>/<name>       a discovery.k8s.io/v1 EndpointSlice
//
// The API server stores them as protobuf (the "k8s\x00" envelope);
// klab stores the JSON of the same official k8s.io/api types, so
// `etcdctl get` shows readable objects and an edit by hand is plain JSON.
// The endpointslice controller names a slice <service>-<5 random
// characters> (generateName); klab names it after its service, so the key
// is easy to find, and links it by the kubernetes.io/service-name label as
// the controller does (kube-proxy, and the agent, join slices to services
// by that label, not by name).
//
// Acks: after every sync an agent puts /klab/proxy/nodes/<node> =
// {"node":...,"revision":R,...}: it has programmed its node as etcd stood
// at revision R, an observedGeneration for the whole store. A verb that
// wrote at revision W returns once every running agent acked R >= W, or
// names the ones that did not within the bound.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Key prefixes of the objects kube-proxy watches, and of the agents' acks.
const (
	ServicesPrefix       = "/registry/services/specs/"
	EndpointSlicesPrefix = "/registry/endpointslices/"
	ProxyAckPrefix       = "/klab/proxy/nodes/"
	// KubeProxyConfigKey is kube-proxy's ConfigMap (kubeadm's
	// kube-system/kube-proxy, its config.conf a KubeProxyConfiguration):
	// the agents take the proxy mode from it.
	KubeProxyConfigKey = "/registry/configmaps/kube-system/kube-proxy"
	serviceNameLabel   = discoveryv1.LabelServiceName
	maxTxnOps          = 128 // etcd's default --max-txn-ops
	// ProxyConvergeTimeout bounds how long a verb waits for the agents.
	ProxyConvergeTimeout = 5 * time.Second
)

// ServiceKey and EndpointSliceKey are where a service and its slice live.
func ServiceKey(s *Service) string { return ServicesPrefix + s.Namespace() + "/" + s.ShortName() }

// EndpointSliceKey is the key of a service's EndpointSlice.
func EndpointSliceKey(s *Service) string {
	return EndpointSlicesPrefix + s.Namespace() + "/" + s.ShortName()
}

// ProxyAck is what an agent writes after a sync.
type ProxyAck struct {
	Node     string `json:"node"`
	Revision int64  `json:"revision"`
	Services int    `json:"services"`
	Time     string `json:"time"`
}

// EndpointSliceObject is a service's EndpointSlice as the endpointslice
// controller writes it: every selected pod, ready or not (the ready
// condition says which), in the order the lab resolves them.
func (l *Lab) EndpointSliceObject(s *Service) discoveryv1.EndpointSlice {
	o := discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Name: s.ShortName(), Namespace: s.Namespace(), Labels: map[string]string{serviceNameLabel: s.ShortName(), discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4}
	for _, p := range l.SelectedPods(s) {
		ready := !p.Unready
		node := p.Node
		o.Endpoints = append(o.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace(), Name: p.ShortName()}})
	}
	for _, sp := range s.Ports {
		name, port := sp.Name, int32(cmp.Or(sp.TargetPort, sp.Port))
		proto := corev1.ProtocolTCP
		if sp.Protocol == nat.UDP {
			proto = corev1.ProtocolUDP
		}
		o.Ports = append(o.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	return o
}

// proxyObjects is the lab's services and slices as etcd keys and values.
func (l *Lab) proxyObjects() map[string]string {
	out := make(map[string]string, 2*len(l.Services)+1)
	cm := corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: "kube-system"},
		Data: map[string]string{"config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: " + l.Mode() + "\n"}}
	b, _ := json.Marshal(cm)
	out[KubeProxyConfigKey] = string(b)
	for _, s := range l.Services {
		so := l.ServiceObject(s)
		if l.spansMachines() {
			// Which machine created it: the endpointslice controller
			// renders the other machines' Services (endpointslices.go).
			so.Annotations = map[string]string{MachineLabel: l.ControlPlane.Machine.Name}
		}
		b, _ = json.Marshal(so)
		out[ServiceKey(s)] = string(b)
		if s.Type != ServiceExternalName {
			b, _ = json.Marshal(l.EndpointSliceObject(s))
			out[EndpointSliceKey(s)] = string(b)
		}
	}
	return out
}

// publishServices writes to etcd what changed between the objects of
// before and after, in one transaction (only the objects this verb
// changed: an edit made by hand with etcdctl to another object stays), and
// waits for the agents. It is syncRules in a control-plane lab. A lag is
// kept for commit to report after the state is saved (etcd has the
// change: the lab must record it too).
func (c *Cluster) publishServices(before, after *Lab) error {
	c.proxyLag = nil
	// With the other machines' pods, as the endpointslice controller
	// renders them (endpointslices.go).
	remote := c.withRemotePods()
	old, cur := remote(before).proxyObjects(), remote(after).proxyObjects()
	ops, script := etcdDiff(old, cur, func(k string) string { return cur[k] }) // controlplane_policy.go
	if len(ops) == 0 {
		return nil
	}
	if old[KubeProxyConfigKey] == cur[KubeProxyConfigKey] {
		// Along with every write, so it is there from the first one on.
		ops = append(ops, clientv3.OpPut(KubeProxyConfigKey, cur[KubeProxyConfigKey]))
		script += fmt.Sprintf("put %s %s\n", KubeProxyConfigKey, strconv.Quote(cur[KubeProxyConfigKey]))
	}
	// etcd caps a transaction at 128 operations (--max-txn-ops): a bigger
	// change (an apply of many services) is several.
	rev, cli, err := c.etcdWrite("the services", ops, script, nil)
	if cli != nil {
		defer cli.Close()
	}
	if err != nil {
		return err
	}
	if c.A.DryRun || rev == 0 {
		return nil
	}
	// Each agent renders every service: the bound grows with them.
	c.proxyLag = c.waitProxyAcks(cli, rev, ProxyConvergeTimeout+time.Duration(len(after.Services))*2*time.Millisecond)
	return nil
}

// waitProxyAcks waits until every running agent acked revision rev.
func (c *Cluster) waitProxyAcks(cli *clientv3.Client, rev int64, timeout time.Duration) error {
	return waitAcks(c, cli, ProxyAckPrefix, "services", rev, timeout)
}

// proxyLagging lists the nodes whose running agent has not acked rev.
func (c *Cluster) proxyLagging(cli *clientv3.Client, rev int64) []string {
	return c.ackLagging(cli, ProxyAckPrefix, rev)
}

// takeProxyLag returns (and forgets) the lag the last publish found.
func (c *Cluster) takeProxyLag() error {
	err := c.proxyLag
	c.proxyLag = nil
	return err
}

// withoutServices is the lab as the CLI renders a new node of a
// control-plane lab: its agent syncs the services, the CLI does not.
func (l *Lab) withoutServices() *Lab {
	cp := *l
	cp.Services = nil
	return &cp
}

// labFromObjects is the lab as an agent sees it: base's settings (CIDRs,
// proxy mode, nodes) with the services and endpoints that etcd holds. An
// endpoint becomes a pod named by its targetRef (or by its address, for
// one written by hand without), so the rendering is the CLI's own
// (planNodeRules), from the same kind of input.
func labFromObjects(base *Lab, objs map[string]any) *Lab {
	l := *base
	l.Services, l.Pods = nil, nil
	slicesBySvc := map[string][]*discoveryv1.EndpointSlice{}
	var svcs []*corev1.Service
	for _, v := range objs {
		switch o := v.(type) {
		case *discoveryv1.EndpointSlice:
			svc := Key(o.Namespace, o.Labels[serviceNameLabel])
			slicesBySvc[svc] = append(slicesBySvc[svc], o)
		case *corev1.Service:
			svcs = append(svcs, o)
		case *corev1.ConfigMap:
			l.ProxyMode = proxyModeOf(o)
		}
	}
	sort.Slice(svcs, func(i, j int) bool {
		return Key(svcs[i].Namespace, svcs[i].Name) < Key(svcs[j].Namespace, svcs[j].Name)
	})
	pods := map[string]*Pod{}
	for _, o := range svcs {
		s := serviceFromObject(o)
		sl := slicesBySvc[s.Name]
		sort.Slice(sl, func(i, j int) bool { return sl[i].Name < sl[j].Name })
		for _, es := range sl {
			for _, ep := range es.Endpoints {
				for _, a := range ep.Addresses {
					ip, err := netip.ParseAddr(a)
					if err != nil {
						continue // decodeObject logged it
					}
					name := "ip-" + strings.ReplaceAll(a, ".", "-")
					if ep.TargetRef != nil && ep.TargetRef.Name != "" && len(ep.Addresses) == 1 {
						name = ep.TargetRef.Name
					}
					key := Key(o.Namespace, name)
					p := &Pod{Name: key, IP: ip, Unready: ep.Conditions.Ready != nil && !*ep.Conditions.Ready}
					if ep.NodeName != nil {
						p.Node = *ep.NodeName
					}
					if old, ok := pods[key]; ok && old.IP != ip {
						key = Key(o.Namespace, name+"-"+strings.ReplaceAll(a, ".", "-"))
						p.Name = key
					}
					pods[key] = p
					if !slices.Contains(s.Endpoints, key) {
						s.Endpoints = append(s.Endpoints, key)
					}
				}
			}
		}
		l.Services = append(l.Services, s)
	}
	for _, p := range pods {
		l.Pods = append(l.Pods, p)
	}
	sort.Slice(l.Pods, func(i, j int) bool { return l.Pods[i].Name < l.Pods[j].Name })
	return &l
}

// decodeObject decodes a stored Service or EndpointSlice once, when it
// arrives (not at every sync: 2,000 objects are 100 ms of JSON), or
// returns nil, logging why, for one the proxy cannot use.
func decodeObject(k string, v []byte, log func(string, ...any)) any {
	switch {
	case strings.HasPrefix(k, EndpointSlicesPrefix):
		var o discoveryv1.EndpointSlice
		if err := json.Unmarshal(v, &o); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		if o.Labels[serviceNameLabel] == "" {
			log("ignoring %s: no %s label names its service", k, serviceNameLabel)
			return nil
		}
		for _, ep := range o.Endpoints {
			for _, a := range ep.Addresses {
				if _, err := netip.ParseAddr(a); err != nil {
					log("%s: ignoring endpoint %q: not an IP address", k, a)
				}
			}
		}
		return &o
	case k == KubeProxyConfigKey:
		var o corev1.ConfigMap
		if err := json.Unmarshal(v, &o); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		if m := proxyModeOf(&o); ValidateProxyMode(m) != nil || m == "" {
			log("ignoring %s: mode %q is not iptables or nftables", k, m)
			return nil
		}
		return &o
	case strings.HasPrefix(k, ServicesPrefix):
		var o corev1.Service
		if err := json.Unmarshal(v, &o); err != nil {
			log("ignoring %s: %v", k, err)
			return nil
		}
		if serviceFromObject(&o) == nil {
			log("ignoring %s: clusterIP %q is not an address", k, o.Spec.ClusterIP)
			return nil
		}
		return &o
	}
	return nil
}

// serviceFromObject is a stored v1 Service as the lab's Service (its
// endpoints are filled from the slices).
func serviceFromObject(o *corev1.Service) *Service {
	s := &Service{Name: Key(o.Namespace, o.Name), Affinity: nat.AffinityNone}
	switch {
	case o.Spec.Type == corev1.ServiceTypeExternalName:
		s.Type, s.ExternalName = ServiceExternalName, o.Spec.ExternalName
		return s
	case o.Spec.ClusterIP == corev1.ClusterIPNone:
		s.Type = ServiceHeadless
		return s
	}
	ip, err := netip.ParseAddr(o.Spec.ClusterIP)
	if err != nil {
		return nil
	}
	s.ClusterIP = ip
	if o.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.Affinity = nat.AffinityClientIP
	}
	if o.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		// Rendered per node: only the endpoints whose nodeName is this
		// node's answer its NodePort (natConfig's NodeName).
		s.ExternalTrafficPolicy = nat.PolicyLocal
	}
	for _, p := range o.Spec.Ports {
		sp := nat.ServicePort{Name: p.Name, Port: int(p.Port), NodePort: int(p.NodePort)}
		if p.Protocol == corev1.ProtocolUDP {
			sp.Protocol = nat.UDP
		}
		if tp := int(p.TargetPort.IntVal); tp != 0 && tp != sp.Port {
			sp.TargetPort = tp
		}
		s.Ports = append(s.Ports, sp)
	}
	s.Endpoints = []string{} // explicit (possibly empty), never a selector
	return s
}

// runProxy is kube-proxy in a node's agent: list the services and slices,
// sync, watch both prefixes from the list's revision and sync every burst
// of changes (10 ms, as the lease watch coalesces), acking each sync.
// While etcd is away the kernel keeps its rules (forwarding goes on); the
// loop lists again with backoff and reconciles when it answers.
func runProxy(ctx context.Context, c *Cluster, node string, log io.Writer) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(log, time.Now().Format("15:04:05.000")+" proxy: "+format+"\n", args...)
	}
	n := c.Lab.Node(node)
	var view *proxyView
	registryWatch{what: "services", prefixes: []string{ServicesPrefix, EndpointSlicesPrefix, KubeProxyConfigKey}, watched: proxyWatched, decode: decodeObject,
		sync: func(cli *clientv3.Client, objs map[string]any, rev int64, why string, relisted bool) {
			// After a (re)list the plan compares with the kernel
			// (iptables-save: drift and what changed while etcd was
			// away); then with the last rendering, as kube-proxy keeps
			// it, so a one-service change rewrites that service's
			// chains only.
			if relisted {
				view = &proxyView{}
			}
			proxySync(ctx, c, n, view, cli, objs, rev, why, logf)
		}}.run(ctx, c, logf)
}

// proxySync renders the node's rules from the objects with the CLI's own
// planNodeRules, against the kernel's state, applies the plan (one
// iptables-restore or nft transaction: only the chains that changed), and
// acks the revision.
func proxySync(ctx context.Context, c *Cluster, n *Node, view *proxyView, cli *clientv3.Client, objs map[string]any, rev int64, why string, logf func(string, ...any)) {
	t0 := time.Now()
	ac := &Cluster{StateDir: c.StateDir, Lab: labFromObjects(c.Lab, objs), agentProxy: view}
	if ac.Lab.Mode() != view.mode {
		if view.mode != "" {
			logf("%s: proxy mode %s -> %s (%s)", why, view.mode, ac.Lab.Mode(), KubeProxyConfigKey)
		}
		view.prev, view.prevNFT, view.mode = nil, nil, ac.Lab.Mode() // nothing to diff against: compare with the kernel
	}
	t1 := time.Now()
	a := &plan.Applier{}
	defer a.Close()
	st, err := a.Read(c.NS(n.Name))
	if err != nil {
		logf("%s: read node: %v", why, err)
		return
	}
	var p plan.Plan
	if ac.Lab.NFTables() && view.prevNFT != nil {
		// nftables mode: the partial sync syncNFT does for the CLI, the
		// difference from the last table this agent loaded.
		var cur *nft.Table
		if cur, err = ac.Lab.nftServices(n); err == nil {
			if fwd := nft.Diff(view.prevNFT, cur); !fwd.Empty() {
				p = nftOp(ac.NS(n.Name), &nft.Batch{Changes: []*nft.Change{fwd}}, "kube-proxy partial sync")
			}
			view.curNFT = cur
		}
	} else if p, err = ac.planNodeRules(n, st); err == nil && ac.Lab.NFTables() {
		view.curNFT, err = ac.Lab.nftServices(n)
	}
	t2 := time.Now()
	if err == nil {
		err = a.Apply(p)
	}
	t3 := time.Now()
	for _, op := range a.Ran() {
		logf("%s: %s", why, firstLine(op.Command()))
	}
	if err != nil {
		view.prev, view.prevNFT = nil, nil // unknown now: the next sync reads the kernel
		logf("%s: %v", why, err)
		return
	}
	view.prev, view.prevNFT = view.cur, view.curNFT
	c.proxyApplied.set(ac.Lab.Mode())
	b, _ := json.Marshal(ProxyAck{Node: n.Name, Revision: rev, Services: len(ac.Lab.Services), Time: time.Now().UTC().Format(time.RFC3339Nano)})
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := cli.Put(actx, ProxyAckPrefix+n.Name, string(b)); err != nil {
		logf("%s: ack revision %d: %v", why, rev, err)
		return
	}
	if len(p) > 0 {
		logf("%s: synced %d service(s) at revision %d in %v: decode %v, plan against the kernel %v, apply %v", why, len(ac.Lab.Services), rev,
			time.Since(t0).Round(time.Millisecond), t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), t3.Sub(t2).Round(time.Millisecond))
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// proxyLab is the lab whose services the CLI renders into a node: all of
// them, except into a new node of a control-plane lab (its agent syncs them
// from etcd once it runs). An existing node (klab repair) gets the lab's
// state, which is what the CLI wrote to etcd.
func (c *Cluster) proxyLab(st *plan.State) *Lab {
	if c.agentsProgram() && c.agentProxy == nil && !st.Exists {
		return c.Lab.withoutServices()
	}
	return c.Lab
}

// proxyTarget is the revision every running agent must have acked for
// the services etcd holds now: the newest change under the two prefixes
// (at least 1, so an agent that never synced lags).
func proxyTarget(cli *clientv3.Client) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rev := int64(1)
	for _, pfx := range []string{ServicesPrefix, EndpointSlicesPrefix, KubeProxyConfigKey} {
		r, err := cli.Get(ctx, pfx, append(clientv3.WithLastRev(), clientv3.WithPrefix(), clientv3.WithKeysOnly())...)
		if err == nil && len(r.Kvs) > 0 {
			rev = max(rev, r.Kvs[0].ModRevision)
		}
	}
	return rev
}

// proxyWaiter returns a check of which running agents have not synced the
// services etcd holds now, and a func to close its client. Without etcd
// it reports nothing: the lease check says the rest.
func (c *Cluster) proxyWaiter() (func() []string, func()) {
	cli, err := c.etcd()
	if err != nil {
		return func() []string { return nil }, func() {}
	}
	rev := proxyTarget(cli)
	return func() []string { return c.proxyLagging(cli, rev) }, func() { cli.Close() }
}

// proxyView is what a node's agent keeps between syncs: the ruleset (or
// nftables table) it applied last (prev, nil to compare with the kernel
// instead) and the one rendered now (cur). Nil for the CLI.
type proxyView struct {
	prev, cur       *nat.Ruleset
	prevNFT, curNFT *nft.Table // the same in nftables mode (kube-proxy's table)
	mode            string     // the proxy mode of the last sync
}

func (v *proxyView) last() *nat.Ruleset {
	if v == nil {
		return nil
	}
	return v.prev
}

func (v *proxyView) rendered(rs *nat.Ruleset) {
	if v != nil {
		v.cur = rs
	}
}

// proxyModeOf reads mode from a kube-proxy ConfigMap's config.conf.
func proxyModeOf(cm *corev1.ConfigMap) string {
	for _, line := range strings.Split(cm.Data["config.conf"], "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "mode:"); ok {
			return strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return ""
}

// cpSetProxyMode switches a control-plane lab's proxy mode: kube-proxy's
// ConfigMap in etcd gets the new mode and every agent re-syncs its node in
// it (kube-proxy itself reads the ConfigMap at start and is restarted to
// switch; an agent follows the watch instead), then the state is saved.
func (c *Cluster) cpSetProxyMode(mode string) error {
	before := *c.Lab
	c.Lab.ProxyMode = mode
	err := c.commit(&before)
	if c.Lab.ProxyMode != mode {
		return err // not switched: etcd was not written
	}
	// The agents' policy roles read the mode from the same ConfigMap and
	// move their node's policies to the new mode's form: wait for them
	// too (controlplane_policy.go).
	if perr := c.waitPolicies(); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}
