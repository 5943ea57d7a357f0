package cluster

// The machine agent ('klab __serve --proto machine'): one per machine of
// a lab that spans machines, on its port on the underlay (the
// control-plane node on the first machine, the "machine" port on the
// others). It watches the machines registered in etcd (/klab/machines/)
// and keeps this machine's stitch flooding to every other one — one
// "bridge fdb append 00:00:00:00:00:00 dev stitch dst ADDRESS" each —
// and removes the entry of a machine that left (machines.go). A change is
// a plan against the underlay namespace's state, applied by the one
// applier, and logged.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/plan"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RunMachineAgent runs a machine's agent until ctx ends.
//
// It also has kubelet's role for this machine's nodes (kubelet.go): the
// pods asked for in etcd on them are built here, those deleted there torn
// down; serve is the server command line, for what AddPod starts.
func RunMachineAgent(ctx context.Context, stateDir, lab string, serve ServerArgv, log io.Writer) error {
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	if !l.spansMachines() {
		return fmt.Errorf("lab %s does not span machines", lab)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(log, time.Now().Format("15:04:05.000")+" machine: "+format+"\n", args...)
	}
	c := &Cluster{StateDir: stateDir, Lab: l, A: &plan.Applier{}}
	defer c.A.Close()
	self := l.ControlPlane.Machine
	fmt.Fprintf(log, "machine agent of %s (%s) listening: keeps the stitch flooding to every machine in %s\n", self.Name, self.Address, MachinesPrefix)
	d := 100 * time.Millisecond
	var last []netip.Addr
	for ctx.Err() == nil {
		cli, err := l.ControlPlane.EtcdConfig.Dial(agent.ViaCaller(), 2*time.Second)
		if err != nil {
			logf("connect: %v; retrying in %v", err, d)
			sleep(ctx, d)
			d = min(2*d, 5*time.Second)
			continue
		}
		r, err := cli.Get(ctx, MachinesPrefix, clientv3.WithPrefix())
		if err != nil {
			cli.Close()
			logf("list machines: %v; retrying in %v", err, d)
			sleep(ctx, d)
			d = min(2*d, 5*time.Second)
			continue
		}
		d = 100 * time.Millisecond
		machines := map[string]machineRecord{}
		for _, kv := range r.Kvs {
			var m machineRecord
			if json.Unmarshal(kv.Value, &m) == nil {
				machines[string(kv.Key)] = m
			}
		}
		sync := func(why string) {
			var remotes []netip.Addr
			for _, m := range machines {
				if m.Name != self.Name && m.Address.IsValid() && !slices.Contains(remotes, m.Address) {
					remotes = append(remotes, m.Address)
				}
			}
			slices.SortFunc(remotes, netip.Addr.Compare)
			if err := c.syncStitch(remotes); err != nil {
				logf("%s: %v", why, err)
				return
			}
			if !slices.Equal(remotes, last) {
				logf("%s: stitch floods to %s", why, addrList(remotes))
				last = remotes
			}
		}
		sync("sync")
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		go func() {
			if err := runKubelet(wctx, cli, stateDir, lab, serve, logf); err != nil && wctx.Err() == nil {
				logf("kubelet: %v", err)
			}
		}()
		if !l.Joined() {
			// The control plane's controller (endpointslices.go).
			go func() {
				if err := runEndpointSlices(wctx, cli, stateDir, lab, logf); err != nil && wctx.Err() == nil {
					logf("endpointslices: %v", err)
				}
			}()
		}
		for wr := range cli.Watch(wctx, MachinesPrefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1)) {
			if wr.Err() != nil {
				logf("watch: %v", wr.Err())
				break
			}
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				var m machineRecord
				if ev.Type == clientv3.EventTypeDelete {
					logf("machine %s left", strings.TrimPrefix(k, MachinesPrefix))
					delete(machines, k)
				} else if json.Unmarshal(ev.Kv.Value, &m) == nil {
					if _, ok := machines[k]; !ok {
						logf("machine %s (%s) joined at %s", m.Name, m.Address, m.UnderlayIP)
					}
					machines[k] = m
				}
			}
			sync("watch")
		}
		cancel()
		cli.Close()
		if ctx.Err() == nil {
			logf("watch ended (etcd unreachable?); listing again in %v", d)
			sleep(ctx, d)
		}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}

// syncStitch makes the stitch flood to exactly the remotes (on a joined
// machine the first machine's address stays, as the join put it: it is
// the way to etcd).
func (c *Cluster) syncStitch(remotes []netip.Addr) error {
	if m := c.Lab.ControlPlane.Machine; m.First.IsValid() && !slices.Contains(remotes, m.First) {
		remotes = append(remotes, m.First)
	}
	u, err := c.read(UnderlayName)
	if err != nil {
		return err
	}
	if u.Link(StitchDev) == nil {
		return fmt.Errorf("the underlay has no %s device: run 'klab repair --lab %s'", StitchDev, c.Lab.Name)
	}
	p := c.planStitch(u, remotes)
	if len(p) == 0 {
		return nil
	}
	return c.apply(p)
}

func addrList(as []netip.Addr) string {
	if len(as) == 0 {
		return "no other machine"
	}
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
