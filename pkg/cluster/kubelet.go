package cluster

// The machine agent in kubelet's role, in a lab that spans machines: a
// pod is asked for by writing a Pod object to etcd with spec.nodeName
// set and no status (what the scheduler's binding leaves for the
// kubelet), and the machine that holds the node builds it, as the
// kubelet of that node does; the pod object then carries status.podIP
// (the machine's CLI code writes it, as for a pod added there). A pod
// deleted from etcd is torn down by its node's machine. So 'klab pod add
// NAME --node NODE' and 'klab pod del NAME' work from any machine: on a
// node of this machine they build directly, on another machine's node
// they write the object and wait for its status.
//
// Pod names are cluster-wide: a pod key another machine's node holds is
// refused here.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RequestedIPAnnotation carries 'klab pod add --ip' to the machine that
// builds the pod.
const RequestedIPAnnotation = "klab.dev/requested-ip"

// RemotePodTimeout bounds how long a pod add on another machine's node
// waits for that machine to build it.
const RemotePodTimeout = 10 * time.Second

func podKey(name string) string {
	ns, n := SplitKey(name)
	return PodsPrefix + ns + "/" + n
}

// remoteNode finds a node of another machine in etcd.
func (c *Cluster) remoteNode(cli *clientv3.Client, ctx context.Context, name string) (*corev1.Node, error) {
	r, err := cli.Get(ctx, NodesPrefix+name)
	if err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	var o corev1.Node
	if err := json.Unmarshal(r.Kvs[0].Value, &o); err != nil {
		return nil, fmt.Errorf("the Node object of %s in etcd: %v", name, err)
	}
	return &o, nil
}

// withEtcd runs f with a client of the lab's etcd and a context that
// ends after timeout.
func (c *Cluster) withEtcd(timeout time.Duration, f func(context.Context, *clientv3.Client) error) error {
	cli, err := c.etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f(ctx, cli)
}

// etcdPrefix reads every key under prefix from the lab's etcd.
func (c *Cluster) etcdPrefix(prefix string) (*clientv3.GetResponse, error) {
	var r *clientv3.GetResponse
	err := c.withEtcd(3*time.Second, func(ctx context.Context, cli *clientv3.Client) (err error) {
		r, err = cli.Get(ctx, prefix, clientv3.WithPrefix())
		return err
	})
	return r, err
}

// storedPod is a pod's object in etcd (any machine's), or nil.
func (c *Cluster) storedPod(name string) (*corev1.Pod, error) {
	var o *corev1.Pod
	err := c.withEtcd(3*time.Second, func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Get(ctx, podKey(NormalizeKey(name)))
		if err != nil || len(r.Kvs) == 0 {
			return err
		}
		o = &corev1.Pod{}
		return json.Unmarshal(r.Kvs[0].Value, o)
	})
	return o, err
}

// checkPodFree refuses a pod name that a node of another machine holds.
func (c *Cluster) checkPodFree(name string) error {
	o, err := c.storedPod(name)
	if err != nil || o == nil || c.Lab.Node(o.Spec.NodeName) != nil {
		return err // none, or this machine's: a pod asked for from another machine, being built
	}
	return fmt.Errorf("pod %q already exists in lab %s, on node %s of another machine (etcd key %s): choose another name", name, c.Lab.Name, o.Spec.NodeName, podKey(NormalizeKey(name)))
}

// addRemotePod asks the machine that holds s.Node for the pod and waits
// until it has built it.
func (c *Cluster) addRemotePod(s PodSpec) (*Pod, error) {
	if err := c.validateName("pod", s.Name); err != nil {
		return nil, err
	}
	s.Name = NormalizeKey(s.Name)
	cli, err := c.etcd()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), RemotePodTimeout+3*time.Second)
	defer cancel()
	node, err := c.remoteNode(cli, ctx, s.Node)
	if err != nil {
		return nil, err
	}
	if node == nil {
		return nil, fmt.Errorf("node %q does not exist in lab %s on any machine: use one of %s, or add it with 'klab node add %s'", s.Node, c.Lab.Name, strings.Join(c.nodeNames(), ", "), s.Node)
	}
	machine := node.Labels[MachineLabel]
	ns, name := SplitKey(s.Name)
	o := corev1.Pod{TypeMeta: typeMeta("Pod"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: maps.Clone(s.Labels)},
		Spec:   corev1.PodSpec{NodeName: s.Node, Containers: []corev1.Container{{Name: "echo", Image: "klab-echo"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending}}
	if s.IP.IsValid() {
		o.Annotations = map[string]string{RequestedIPAnnotation: s.IP.String()}
	}
	b, _ := json.Marshal(o)
	key := podKey(s.Name)
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return nil, fmt.Errorf("write pod %s to etcd: %w", s.Name, err)
	}
	if !r.Succeeded {
		return nil, fmt.Errorf("pod %q already exists in lab %s (etcd key %s): choose another name", s.Name, c.Lab.Name, key)
	}
	// Wait for the machine's kubelet role: status.podIP, or the key gone
	// (it refused the pod, and says why in its log).
	wctx, wcancel := context.WithTimeout(ctx, RemotePodTimeout)
	defer wcancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(r.Header.Revision+1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return nil, fmt.Errorf("machine %s did not build pod %s on node %s: see 'klab agent log' there, or its machine agent's log", machine, s.Name, s.Node)
			}
			var got corev1.Pod
			if json.Unmarshal(ev.Kv.Value, &got) == nil && got.Status.PodIP != "" {
				ip, _ := netip.ParseAddr(got.Status.PodIP)
				return &Pod{Name: s.Name, Node: s.Node, IP: ip, Labels: s.Labels}, nil
			}
		}
	}
	cli.Delete(context.Background(), key)
	return nil, fmt.Errorf("machine %s did not build pod %s on node %s within %v (its machine agent down?): the request is withdrawn; check 'klab list' there", machine, s.Name, s.Node, RemotePodTimeout)
}

// RemotePod is a pod on another machine's node, as etcd has it.
func (c *Cluster) RemotePod(name string) (*corev1.Pod, error) {
	if !c.Lab.spansMachines() {
		return nil, nil
	}
	o, err := c.storedPod(name)
	if err != nil || o == nil || c.Lab.Node(o.Spec.NodeName) != nil {
		return nil, err
	}
	return o, nil
}

// delRemotePod deletes a pod of another machine's node from etcd; that
// machine tears it down.
func (c *Cluster) delRemotePod(name string) error {
	return c.withEtcd(3*time.Second, func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.Delete(ctx, podKey(NormalizeKey(name))); err != nil {
			return fmt.Errorf("delete pod %s in etcd: %w", name, err)
		}
		return nil
	})
}

// runKubelet is the machine agent's kubelet role: it builds the pods
// asked for on this machine's nodes and tears down those deleted from
// etcd, each change through the CLI's own AddPod and DelPod under the
// lab's lock.
func runKubelet(ctx context.Context, cli *clientv3.Client, stateDir, lab string, serve ServerArgv, logf func(string, ...any)) error {
	r, err := cli.Get(ctx, PodsPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	handle := func(key string, value []byte, deleted bool) {
		name := strings.TrimPrefix(key, PodsPrefix)
		ns, short, _ := strings.Cut(name, "/")
		pod := Key(ns, short)
		var o corev1.Pod
		if !deleted && json.Unmarshal(value, &o) != nil {
			return
		}
		l, err := Load(stateDir, lab)
		if err != nil {
			return
		}
		switch {
		case deleted && l.Pod(pod) != nil:
		case !deleted && o.Status.PodIP == "" && l.Node(o.Spec.NodeName) != nil && l.Pod(pod) == nil:
		default:
			return // another machine's, or this machine's own write
		}
		c, err := Open(stateDir, lab, nil, io.Discard)
		if err != nil {
			logf("pod %s: %v", pod, err)
			return
		}
		defer c.Close()
		c.Serve = serve
		c.A.Discard = false
		if deleted {
			if c.Lab.Pod(pod) == nil {
				return // gone meanwhile
			}
			t0 := time.Now()
			if err := c.DelPod(pod); err != nil {
				logf("delete pod %s (deleted in etcd): %v", pod, err)
				return
			}
			logf("deleted pod %s (deleted in etcd) in %v", pod, time.Since(t0).Round(time.Millisecond))
			return
		}
		if c.Lab.Pod(pod) != nil {
			return
		}
		spec := PodSpec{Name: pod, Node: o.Spec.NodeName, Labels: o.Labels}
		if a := o.Annotations[RequestedIPAnnotation]; a != "" {
			spec.IP, _ = netip.ParseAddr(a)
		}
		t0 := time.Now()
		p, err := c.AddPod(spec)
		if err != nil {
			logf("pod %s on %s: %v: withdrawing the request", pod, spec.Node, err)
			cli.Delete(ctx, key)
			return
		}
		logf("built pod %s on %s at %s (asked for in etcd) in %v", pod, p.Node, p.IP, time.Since(t0).Round(time.Millisecond))
	}
	for _, kv := range r.Kvs {
		handle(string(kv.Key), kv.Value, false)
	}
	// Pods in the state that etcd no longer has were deleted while the
	// agent was away.
	if l, err := Load(stateDir, lab); err == nil {
		have := map[string]bool{}
		for _, kv := range r.Kvs {
			have[string(kv.Key)] = true
		}
		for _, p := range slices.Clone(l.Pods) {
			if !have[podKey(p.Name)] && publishedBefore(stateDir, lab, podKey(p.Name)) {
				handle(podKey(p.Name), nil, true)
			}
		}
	}
	for wr := range cli.Watch(ctx, PodsPrefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			handle(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
		}
	}
	return ctx.Err()
}

// publishedBefore reports whether this machine's CLI has written the pod
// key (its digest is in policy-objects.json): a pod built but not yet
// published is not one etcd deleted.
func publishedBefore(stateDir, lab, key string) bool {
	c := &Cluster{StateDir: stateDir, Lab: &Lab{Name: lab}}
	b, err := os.ReadFile(c.policyObjectsFile())
	if err != nil {
		return false
	}
	var sums map[string]string
	json.Unmarshal(b, &sums)
	_, ok := sums[key]
	return ok
}
