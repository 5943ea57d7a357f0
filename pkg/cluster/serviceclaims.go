package cluster

// Services in a lab that spans machines: any machine creates them, so
// what must be unique cluster-wide is claimed in etcd transactions, as
// kube-apiserver's allocators do:
//
//	/registry/ipaddresses/<ip>       an IPAddress (networking.k8s.io/v1,
//	                                 the allocator of MultiCIDRServiceAllocator,
//	                                 GA in Kubernetes 1.33) whose parentRef is
//	                                 the Service
//	/klab/nodeports/<port>           "<ns>/<name>" (kube-apiserver keeps a
//	                                 bitmap at /registry/ranges/servicenodeports;
//	                                 one key per port makes the claim one
//	                                 compare)
//	/registry/services/specs/<ns>/<name>
//	                                 the Service itself: a name another
//	                                 machine's Service holds is refused
//
// Each machine keeps the Services it created in its own state and
// publishes them (controlplane_proxy.go); their slices are rendered from
// every machine's pods (endpointslices.go). PlanService allocates around
// the claims; changeServices claims what a change adds and releases what
// it removes, in one transaction each.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Claim prefixes.
const (
	IPAddressesPrefix = "/registry/ipaddresses/"
	NodePortsPrefix   = "/klab/nodeports/"
)

// serviceClaims are the claims etcd holds.
type serviceClaims struct {
	ips      map[netip.Addr]string // ClusterIP -> its Service ("ns/name")
	ports    map[int]string        // NodePort -> its Service
	services map[string]bool       // Service keys
}

// claims reads the claims once per Cluster (one verb), in a lab that spans
// machines; nil elsewhere.
func (c *Cluster) claims() (*serviceClaims, error) {
	if !c.Lab.spansMachines() || c.A.DryRun {
		return nil, nil
	}
	if c.claimCache != nil {
		return c.claimCache, nil
	}
	cl := &serviceClaims{ips: map[netip.Addr]string{}, ports: map[int]string{}, services: map[string]bool{}}
	err := c.withEtcd(3*time.Second, func(ctx context.Context, cli *clientv3.Client) error {
		for _, pfx := range []string{IPAddressesPrefix, NodePortsPrefix, ServicesPrefix} {
			r, err := cli.Get(ctx, pfx, clientv3.WithPrefix())
			if err != nil {
				return err
			}
			cl.add(pfx, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the cluster's service claims in etcd: %w", err)
	}
	c.claimCache = cl
	return cl, nil
}

// add records the claims of one prefix.
func (cl *serviceClaims) add(pfx string, r *clientv3.GetResponse) {
	for _, kv := range r.Kvs {
		k := strings.TrimPrefix(string(kv.Key), pfx)
		switch pfx {
		case IPAddressesPrefix:
			if ip, err := netip.ParseAddr(k); err == nil {
				cl.ips[ip] = ipOwner(kv.Value)
			}
		case NodePortsPrefix:
			if p, err := strconv.Atoi(k); err == nil {
				cl.ports[p] = string(kv.Value)
			}
		case ServicesPrefix:
			cl.services[string(kv.Key)] = true
		}
	}
}

// ipAddress is the IPAddress object of a Service's ClusterIP.
type ipAddress struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ParentRef struct {
			Group     string `json:"group"`
			Resource  string `json:"resource"`
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"parentRef"`
	} `json:"spec"`
}

func ipAddressObject(s *Service) string {
	o := ipAddress{TypeMeta: metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "IPAddress"},
		ObjectMeta: metav1.ObjectMeta{Name: s.ClusterIP.String(), Labels: map[string]string{"ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"}}}
	o.Spec.ParentRef.Resource, o.Spec.ParentRef.Namespace, o.Spec.ParentRef.Name = "services", s.Namespace(), s.ShortName()
	b, _ := json.Marshal(o)
	return string(b)
}

func ipOwner(v []byte) string {
	var o ipAddress
	if json.Unmarshal(v, &o) != nil {
		return string(v)
	}
	return Key(o.Spec.ParentRef.Namespace, o.Spec.ParentRef.Name)
}

// checkClaims refuses a new Service whose name, ClusterIP or NodePort
// another machine's Service holds (PlanService).
func (c *Cluster) checkClaims(s *Service, cl *serviceClaims) error {
	if cl == nil {
		return nil
	}
	if cl.services[ServiceKey(s)] {
		return fmt.Errorf("service %q already exists in lab %s, created on another machine (etcd key %s): choose another name", s.Name, c.Lab.Name, ServiceKey(s))
	}
	if s.ClusterIP.IsValid() {
		if who, ok := cl.ips[s.ClusterIP]; ok {
			return fmt.Errorf("ClusterIP %s is taken by service %s (etcd key %s%s): pick another or leave --cluster-ip out", s.ClusterIP, who, IPAddressesPrefix, s.ClusterIP)
		}
	}
	for _, p := range s.Ports {
		if who, ok := cl.ports[p.NodePort]; ok && p.NodePort > 0 {
			return fmt.Errorf("NodePort %d is taken by service %s (etcd key %s%d): pick another or leave --node-port out", p.NodePort, who, NodePortsPrefix, p.NodePort)
		}
	}
	return nil
}

// claimOps are the transaction parts that claim (or release) a Service's
// ClusterIP and NodePorts.
func claimOps(s *Service) (cmps []clientv3.Cmp, puts, dels []clientv3.Op) {
	for _, k := range claimKeyList(s) {
		v := s.Name
		if strings.HasPrefix(k, IPAddressesPrefix) {
			v = ipAddressObject(s)
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		puts = append(puts, clientv3.OpPut(k, v))
		dels = append(dels, clientv3.OpDelete(k))
	}
	return cmps, puts, dels
}

// claimServices claims the ClusterIPs and NodePorts of the Services after
// has and before had not, and releases those of the Services gone, in
// one transaction; a claim another machine won meanwhile is refused.
func (c *Cluster) claimServices(before, after *Lab) (undo func(), err error) {
	undo = func() {}
	if !c.Lab.spansMachines() || c.A.DryRun {
		return undo, nil
	}
	var cmps []clientv3.Cmp
	var ops, undoOps []clientv3.Op
	var added []string
	for _, s := range after.Services {
		o := before.Service(s.Name)
		if o != nil && o.ClusterIP == s.ClusterIP && samePorts(o, s) {
			continue
		}
		// New keys are claimed (compare: absent); a changed Service's
		// old keys are released, its kept ones rewritten.
		var had map[string]bool
		if o != nil {
			had = claimKeys(o)
			_, oputs, odels := claimOps(o)
			ops = append(ops, odels...)
			undoOps = append(undoOps, oputs...)
		}
		cm, puts, dels := claimOps(s)
		for i, k := range claimKeyList(s) {
			if !had[k] {
				cmps = append(cmps, cm[i])
			}
		}
		ops = append(ops, puts...)
		undoOps = append(undoOps, dels...)
		added = append(added, s.Name)
	}
	for _, s := range before.Services {
		if after.Service(s.Name) == nil {
			_, puts, dels := claimOps(s)
			ops = append(ops, dels...)
			undoOps = append(undoOps, puts...)
		}
	}
	if len(ops) == 0 {
		return undo, nil
	}
	cli, err := c.etcd()
	if err != nil {
		return undo, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return undo, fmt.Errorf("claim the services' addresses in etcd: %w", err)
	}
	if !r.Succeeded {
		c.claimCache = nil
		return undo, fmt.Errorf("another machine claimed the ClusterIP or a NodePort of service %s meanwhile: run the command again", strings.Join(added, ", "))
	}
	c.claimCache = nil
	return func() {
		c.withEtcd(3*time.Second, func(ctx context.Context, cli *clientv3.Client) error {
			_, err := cli.Txn(ctx).Then(undoOps...).Commit()
			return err
		})
	}, nil
}

// claimKeyList is the keys claimOps claims, in its order.
func claimKeyList(s *Service) []string {
	var keys []string
	if s.ClusterIP.IsValid() {
		keys = append(keys, IPAddressesPrefix+s.ClusterIP.String())
	}
	seen := map[int]bool{}
	for _, p := range s.Ports {
		if p.NodePort > 0 && !seen[p.NodePort] {
			seen[p.NodePort] = true
			keys = append(keys, NodePortsPrefix+strconv.Itoa(p.NodePort))
		}
	}
	return keys
}

func claimKeys(s *Service) map[string]bool {
	m := map[string]bool{}
	for _, k := range claimKeyList(s) {
		m[k] = true
	}
	return m
}

func samePorts(a, b *Service) bool {
	if len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.Ports {
		if a.Ports[i].NodePort != b.Ports[i].NodePort {
			return false
		}
	}
	return true
}

// OtherServices is, in a lab that spans machines, the lab as etcd has it
// with only the other machines' Services (their endpoints from their
// EndpointSlices, as the agents see them), and the machine that made each
// (klab service list).
func (c *Cluster) OtherServices() (*Lab, map[string]string, error) {
	if !c.Lab.spansMachines() {
		return nil, nil, nil
	}
	objs := map[string]any{}
	machine := map[string]string{}
	selector := map[string]map[string]string{}
	for _, pfx := range []string{ServicesPrefix, EndpointSlicesPrefix} {
		r, err := c.etcdPrefix(pfx)
		if err != nil {
			return nil, nil, err
		}
		for _, kv := range r.Kvs {
			if o := decodeObject(string(kv.Key), kv.Value, func(string, ...any) {}); o != nil {
				objs[string(kv.Key)] = o
				if s, ok := o.(*corev1.Service); ok {
					machine[Key(s.Namespace, s.Name)] = s.Annotations[MachineLabel]
					selector[Key(s.Namespace, s.Name)] = s.Spec.Selector
				}
			}
		}
	}
	v := labFromObjects(c.Lab, objs)
	keep := v.Services[:0]
	for _, s := range v.Services {
		if c.Lab.Service(s.Name) == nil && machine[s.Name] != c.Lab.ControlPlane.Machine.Name {
			s.Selector = selector[s.Name] // the agents' view leaves it out
			keep = append(keep, s)
		}
	}
	v.Services = keep
	return v, machine, nil
}
