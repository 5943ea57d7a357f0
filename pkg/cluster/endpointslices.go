package cluster

// The endpointslice controller of a lab that spans machines (the
// kube-controller-manager's, on the control-plane node: the first
// machine's machine agent runs it). A Service's endpoints are pods of
// every machine: the first machine's own, with their readiness, from its
// state; the others' from their Pod objects in etcd (/registry/pods/,
// spec.nodeName of another machine's node and status.podIP). Whenever a
// Service, a Pod or an EndpointSlice changes in etcd, the controller
// renders each Service's slice (EndpointSliceObject, the CLI's own) from
// that view and writes the ones that differ, so a pod added on any
// machine joins the Services that select it, and one deleted there leaves
// them. The first machine's CLI renders its slices from the same view
// (withRemotePods), so the two writers agree and nothing flaps.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
)

// remotePods are the pods of other machines' nodes, from their Pod
// objects in etcd.
func remotePods(l *Lab, kvs [][2][]byte) []*Pod {
	var out []*Pod
	for _, kv := range kvs {
		var o corev1.Pod
		if json.Unmarshal(kv[1], &o) != nil || o.Status.PodIP == "" || o.Spec.NodeName == "" || l.Node(o.Spec.NodeName) != nil {
			continue
		}
		ip, err := netip.ParseAddr(o.Status.PodIP)
		if err != nil {
			continue
		}
		p := &Pod{Name: Key(o.Namespace, o.Name), Node: o.Spec.NodeName, IP: ip, Labels: o.Labels}
		for _, c := range o.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse {
				p.Unready = true
			}
		}
		if l.Pod(p.Name) == nil {
			out = append(out, p)
		}
	}
	return out
}

// withRemotePods returns a function that adds the other machines' pods
// (read from etcd once) to a lab, for rendering Services' endpoints in a
// lab that spans machines; the identity elsewhere.
func (c *Cluster) withRemotePods() func(*Lab) *Lab {
	same := func(l *Lab) *Lab { return l }
	if !c.Lab.spansMachines() || c.A.DryRun {
		return same
	}
	r, err := c.etcdPrefix(PodsPrefix)
	if err != nil {
		return same
	}
	var kvs [][2][]byte
	for _, kv := range r.Kvs {
		kvs = append(kvs, [2][]byte{kv.Key, kv.Value})
	}
	return func(l *Lab) *Lab {
		v := *l
		v.Pods = append(append([]*Pod(nil), l.Pods...), remotePods(l, kvs)...)
		return &v
	}
}

// runEndpointSlices is the controller, on the first machine, until ctx
// ends or the watch does.
func runEndpointSlices(ctx context.Context, cli *clientv3.Client, stateDir, lab string, logf func(string, ...any)) error {
	for {
		r, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		pods := map[string][]byte{}
		slices := map[string]string{}
		svcs := map[string][]byte{} // the Services etcd has: only theirs are written
		for _, kv := range r.Kvs {
			k := string(kv.Key)
			switch {
			case strings.HasPrefix(k, PodsPrefix):
				pods[k] = kv.Value
			case strings.HasPrefix(k, EndpointSlicesPrefix):
				slices[k] = string(kv.Value)
			case strings.HasPrefix(k, ServicesPrefix):
				svcs[k] = kv.Value
			}
		}
		reconcile := func(why string) {
			l, err := Load(stateDir, lab)
			if err != nil {
				return
			}
			var kvs [][2][]byte
			for k, v := range pods {
				kvs = append(kvs, [2][]byte{[]byte(k), v})
			}
			remote := remotePods(l, kvs)
			v := *l
			v.Pods = append(append([]*Pod(nil), l.Pods...), remote...)
			var ops []clientv3.Op
			var names []string
			// This machine's Services from its state; the other
			// machines' selector Services from their objects (a Service
			// without a selector has the slice its machine writes).
			services := append([]*Service(nil), l.Services...)
			for _, b := range svcs {
				var o corev1.Service
				// This machine's own Service not yet in its state (the
				// CLI saves it after the write) has the slice the CLI wrote.
				if json.Unmarshal(b, &o) != nil || o.Spec.Selector == nil || o.Annotations[MachineLabel] == l.ControlPlane.Machine.Name || l.Service(Key(o.Namespace, o.Name)) != nil {
					continue
				}
				if svc := serviceFromObject(&o); svc != nil {
					svc.Selector = o.Spec.Selector // the agents' view leaves it out: it reads the slices
					services = append(services, svc)
				}
			}
			for _, s := range services {
				// A Service the state has but etcd not (being deleted:
				// the state is saved after the write) gets no slice back.
				if _, ok := svcs[ServiceKey(s)]; s.Type == ServiceExternalName || !ok {
					continue
				}
				b, _ := json.Marshal(v.EndpointSliceObject(s))
				key := EndpointSliceKey(s)
				if slices[key] != string(b) {
					ops = append(ops, clientv3.OpPut(key, string(b)))
					slices[key] = string(b)
					names = append(names, s.Name)
				}
			}
			if len(ops) == 0 {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			for i := 0; i < len(ops); i += maxTxnOps {
				if _, err := cli.Txn(wctx).Then(ops[i:min(i+maxTxnOps, len(ops))]...).Commit(); err != nil {
					logf("endpointslices: %s: %v", why, err)
					return
				}
			}
			logf("endpointslices: %s: wrote %s (%d pods of other machines)", why, strings.Join(names, ", "), len(remote))
		}
		reconcile("sync")
		for wr := range cli.Watch(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				return err
			}
			changed := false
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				switch {
				case strings.HasPrefix(k, PodsPrefix):
					if ev.Type == clientv3.EventTypeDelete {
						delete(pods, k)
					} else {
						pods[k] = ev.Kv.Value
					}
					changed = true
				case strings.HasPrefix(k, EndpointSlicesPrefix):
					if ev.Type == clientv3.EventTypeDelete {
						delete(slices, k)
					} else {
						slices[k] = string(ev.Kv.Value)
					}
					changed = true
				case strings.HasPrefix(k, ServicesPrefix):
					if ev.Type == clientv3.EventTypeDelete {
						delete(svcs, k)
					} else {
						svcs[k] = ev.Kv.Value
					}
					changed = true
				}
			}
			if changed {
				reconcile(fmt.Sprintf("watch (%d change(s))", len(wr.Events)))
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
