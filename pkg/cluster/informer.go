package cluster

// An agent role's list and watch of the API server's keys: client-go's
// informer in miniature, one per role, as kube-proxy and a CNI's policy
// agent each run their own (controlplane_proxy.go, controlplane_policy.go).

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// registryWatch is what one role lists and watches.
type registryWatch struct {
	what     string   // "services", "policies": for the log
	prefixes []string // listed at one revision (a prefix, or one key)
	watched  func(key string) bool
	// decode turns a stored object into the role's value once, when it
	// arrives (nil: one the role cannot use, logged).
	decode func(key string, v []byte, logf func(string, ...any)) any
	// sync programs the node from objs as etcd stood at rev; relisted is
	// set after a (re)list, when the role compares with the kernel.
	sync func(cli *clientv3.Client, objs map[string]any, rev int64, why string, relisted bool)
}

// run lists the prefixes, syncs, then watches /registry/ from the list's
// revision (one ordered stream, one revision to ack), coalesces what
// arrives within 10 ms (as the lease watch does) and syncs each burst
// that changed a watched key. While etcd is away the kernel keeps what it
// has: run dials and lists again with backoff (100 ms doubling to 5 s)
// and reconciles when it answers, until ctx ends.
func (w registryWatch) run(ctx context.Context, c *Cluster, logf func(string, ...any)) {
	d := 100 * time.Millisecond
	backoff := func() {
		sleep(ctx, d)
		d = min(2*d, 5*time.Second)
	}
	var cli *clientv3.Client
	for ctx.Err() == nil {
		var err error
		if cli == nil {
			if cli, err = c.Lab.ControlPlane.EtcdConfig.Dial(c.agentVia, 2*time.Second); err != nil {
				logf("connect: %v; retrying in %v", err, d)
				backoff()
				continue
			}
			defer cli.Close()
		}
		objs := map[string]any{}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var rev int64
		for _, pfx := range w.prefixes {
			var r *clientv3.GetResponse
			if r, err = cli.Get(lctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(rev)); err != nil {
				break
			}
			rev = r.Header.Revision
			for _, kv := range r.Kvs {
				if o := w.decode(string(kv.Key), kv.Value, logf); o != nil {
					objs[string(kv.Key)] = o
				}
			}
		}
		cancel()
		if err != nil {
			logf("list %s: %v; retrying in %v", w.what, err, d)
			backoff()
			continue
		}
		w.sync(cli, objs, rev, "sync", true)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := cli.Watch(wctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range ch {
			if err := wr.Err(); err != nil {
				logf("watch: %v", err)
				break
			}
			d = 100 * time.Millisecond
			events, rev := wr.Events, wr.Header.Revision
		burst:
			for {
				select {
				case more, ok := <-ch:
					if !ok || more.Err() != nil {
						break burst
					}
					events, rev = append(events, more.Events...), more.Header.Revision
				case <-time.After(10 * time.Millisecond):
					break burst
				}
			}
			changed := 0
			for _, ev := range events {
				k := string(ev.Kv.Key)
				if !w.watched(k) {
					continue
				}
				changed++
				delete(objs, k)
				if ev.Type != clientv3.EventTypeDelete {
					if o := w.decode(k, ev.Kv.Value, logf); o != nil {
						objs[k] = o
					}
				}
			}
			if changed > 0 {
				w.sync(cli, objs, rev, fmt.Sprintf("watch (%d change(s))", changed), false)
			}
		}
		wcancel()
		if ctx.Err() == nil {
			logf("watch ended (etcd unreachable?); listing again in %v", d)
			backoff()
		}
	}
}

// proxyWatched reports whether key k is one the proxy role syncs from.
func proxyWatched(k string) bool {
	return strings.HasPrefix(k, ServicesPrefix) || strings.HasPrefix(k, EndpointSlicesPrefix) || k == KubeProxyConfigKey
}
