package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/vxlan"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config is what flanneld is told on its command line and finds on its
// node.
type Config struct {
	NS string // the node's network namespace (the agent runs inside it)
	// Etcd is flanneld's --etcd-endpoints, --etcd-prefix and TLS files.
	Etcd EtcdConfig
	// Via is the namespace the agent's etcd sockets are opened from: its
	// own (the node's, for the lab's embedded etcd on the underlay) or
	// the machine's (ViaFile, for an external etcd).
	Via      Via
	Network  netip.Prefix
	Backend  string // "vxlan" or "host-gw"
	PublicIP netip.Addr
	Underlay string // the node's underlay device, eth0
	VNI      int
	Port     int
	MTU      int // flannel.1's MTU
	VtepMAC  net.HardwareAddr
	// Prefer is the subnet to lease if it is free (flanneld reads it from
	// the subnet.env a previous run left).
	Prefer netip.Prefix
	// Fixed leases Prefer or nothing (Registry.Claim): the node's pods
	// live in it already.
	Fixed     bool
	LeaseTTL  time.Duration
	Miss      bool   // old flannel's L2MISS/L3MISS mode (miss.go)
	SubnetEnv string // path of subnet.env
	Log       io.Writer
	// Ready, if set, is called once the lease is held, subnet.env
	// written and flannel.1 up.
	Ready func(subnet netip.Prefix)
}

// Agent is one node's flanneld.
type Agent struct {
	cfg   Config
	reg   *Registry
	value []byte

	mu     sync.Mutex
	subnet netip.Prefix
	peers  map[netip.Prefix]vxlan.Peer // the leases of the other nodes, as last synced
	misses MissCounters
}

// MissCounters count the miss notifications an agent answered.
type MissCounters struct {
	L3, L2, L3Answered, L2Answered, Unanswered int
}

// New returns an agent for cfg.
func New(cfg Config) *Agent {
	cfg.Etcd.Prefix = cfg.Etcd.KeyPrefix()
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	return &Agent{cfg: cfg, peers: map[netip.Prefix]vxlan.Peer{}, value: Attrs(cfg.PublicIP, cfg.Backend, cfg.VNI, cfg.VtepMAC)}
}

func (ag *Agent) logf(format string, args ...any) {
	fmt.Fprintf(ag.cfg.Log, time.Now().Format("15:04:05.000")+" "+format+"\n", args...)
}

// Subnet is the leased subnet (invalid before the lease is held).
func (ag *Agent) Subnet() netip.Prefix {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return ag.subnet
}

// Misses returns the miss counters.
func (ag *Agent) Misses() MissCounters {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return ag.misses
}

// ErrWrongNetwork is returned when etcd holds another network's config.
var ErrWrongNetwork = errors.New("etcd holds another network's config")

// backoff doubles a delay up to 5 s, like flannel's watch loop.
func backoff(d time.Duration) time.Duration { return min(d*2, 5*time.Second) }

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Run is flanneld's main loop; it returns when ctx ends or the network
// config in etcd is not this lab's (ErrWrongNetwork). It never gives up on
// an unreachable etcd: it retries with backoff.
func (ag *Agent) Run(ctx context.Context) error {
	var cli *clientv3.Client
	for d := 100 * time.Millisecond; ; d = backoff(d) {
		var err error
		if cli, err = ag.cfg.Etcd.Dial(ag.cfg.Via, 2*time.Second); err == nil {
			break
		}
		ag.logf("connect: %v; retrying in %v", err, d)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
	defer cli.Close()
	ag.reg = &Registry{Cli: cli, Prefix: ag.cfg.Etcd.Prefix}
	ag.logf("connected to etcd at %v", ag.cfg.Etcd.Endpoints)

	var sn netip.Prefix
	for d := 100 * time.Millisecond; ; d = backoff(d) {
		err := ag.acquire(ctx, &sn)
		if err == nil {
			break
		}
		if errors.Is(err, ErrWrongNetwork) || ctx.Err() != nil {
			return err
		}
		ag.logf("lease: %v; retrying in %v", err, d)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
	if err := ag.ensureDevice(sn); err != nil {
		return err
	}
	if ag.cfg.Ready != nil {
		ag.cfg.Ready(sn)
	}
	renewNow := make(chan struct{}, 1)
	lost := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go ag.renewLoop(ctx, renewNow, lost)
	if ag.cfg.Miss {
		if err := ag.listenMisses(ctx); err != nil {
			return err
		}
	}
	werr := make(chan error, 1)
	go func() { werr <- ag.watchLoop(ctx, renewNow) }()
	select {
	case err := <-lost:
		cancel()
		<-werr
		return err
	case err := <-werr:
		return err
	}
}

// acquire checks the config and takes the lease.
func (ag *Agent) acquire(ctx context.Context, out *netip.Prefix) error {
	c, err := ag.reg.Config(ctx)
	if err != nil {
		return err
	}
	if c.Network != ag.cfg.Network.String() {
		return fmt.Errorf("%w: %s/config says Network %s, but this node is in %s", ErrWrongNetwork, ag.cfg.Etcd.Prefix, c.Network, ag.cfg.Network)
	}
	var sn netip.Prefix
	var id clientv3.LeaseID
	if ag.cfg.Fixed {
		sn = ag.cfg.Prefer
		id, err = ag.reg.Claim(ctx, sn, ag.cfg.PublicIP, ag.value, ag.cfg.LeaseTTL)
	} else {
		sn, id, err = ag.reg.Acquire(ctx, ag.cfg.Network, ag.cfg.Prefer, ag.cfg.PublicIP, ag.value, ag.cfg.LeaseTTL)
	}
	if err != nil {
		return err
	}
	ag.mu.Lock()
	ag.subnet = sn
	ag.mu.Unlock()
	ag.logf("lease acquired: %s/subnets/%s (etcd lease %x, TTL %v)", ag.cfg.Etcd.Prefix, SubnetKey(sn), int64(id), ag.cfg.LeaseTTL)
	*out = sn
	return nil
}

// apply runs a plan against the node and logs each operation as the
// command it is.
func (ag *Agent) apply(why string, p plan.Plan) error {
	if len(p) == 0 {
		return nil
	}
	a := &plan.Applier{}
	defer a.Close()
	err := a.Apply(p)
	for _, op := range a.Ran() {
		ag.logf("%s: %s", why, op.Command())
	}
	if err != nil {
		ag.logf("%s: %v", why, err)
	}
	return err
}

// ensureDevice makes flannel.1 (vxlan) and subnet.env match the lease.
func (ag *Agent) ensureDevice(sn netip.Prefix) error {
	a := &plan.Applier{}
	st, err := a.Read(ag.cfg.NS)
	a.Close()
	if err != nil {
		return err
	}
	var p plan.Plan
	if ag.cfg.Backend == "vxlan" {
		p.Add(vxlan.PlanDevice(vxlan.Config{NS: ag.cfg.NS, VNI: ag.cfg.VNI, Port: ag.cfg.Port, Local: ag.cfg.PublicIP, Underlay: ag.cfg.Underlay,
			MTU: ag.cfg.MTU, MAC: ag.cfg.VtepMAC, Subnet: sn, Miss: ag.cfg.Miss}, st)...)
		if ag.cfg.Miss {
			// The device's sysctl exists once the device does.
			if err := ag.apply("ensure", p); err != nil {
				return err
			}
			p = nil
			a := &plan.Applier{}
			st, err := a.Read(ag.cfg.NS, vxlan.AppSolicitKey(ag.cfg.VNI))
			a.Close()
			if err != nil {
				return err
			}
			p.Add(vxlan.PlanAppSolicit(ag.cfg.NS, ag.cfg.VNI, st)...)
		}
	}
	if ag.cfg.SubnetEnv != "" {
		env := vxlan.WriteSubnetEnv(ag.cfg.SubnetEnv, ag.cfg.Network, sn, ag.cfg.MTU, true)
		if old, err := os.ReadFile(env.File.Path); err != nil || !bytes.Equal(old, env.File.Data) {
			if err := os.MkdirAll(dirOf(env.File.Path), 0o755); err != nil {
				return err
			}
			p.Add(env)
		}
	}
	return ag.apply("ensure", p)
}

func dirOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "."
}

// renewInterval is when a lease is renewed: flannel's margin of 60 min
// before expiry (--subnet-lease-renew-margin), or at two thirds of a
// short lab TTL.
func renewInterval(ttl time.Duration) time.Duration {
	if ttl > 2*time.Hour {
		return ttl - time.Hour
	}
	return ttl * 2 / 3
}

// renewLoop renews the lease before it expires. Told (now) that the
// key is gone - it expired while etcd or this agent was away, or someone
// deleted it - it takes the subnet back only if nobody else has it (in a
// transaction, like the first lease); if another node holds it now, the
// agent gives up (lost), as flanneld exits when its lease is gone, and its
// supervisor starts it again to lease a subnet afresh.
func (ag *Agent) renewLoop(ctx context.Context, now <-chan struct{}, lost chan<- error) {
	every := renewInterval(ag.cfg.LeaseTTL)
	t := time.NewTimer(every)
	defer t.Stop()
	missing := false // kept until the subnet is taken again
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-now:
			missing = true
		}
		sn := ag.Subnet()
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var id clientv3.LeaseID
		var err error
		if missing {
			id, err = ag.reg.create(rctx, sn, ag.value, ag.cfg.LeaseTTL)
			if errors.Is(err, errSubnetTaken) {
				cancel()
				ag.logf("lease %s is gone and another node holds the subnet now: giving it up", SubnetKey(sn))
				lost <- fmt.Errorf("lease %s lost to another node", SubnetKey(sn))
				return
			}
			if err == nil {
				missing = false
				ag.logf("lease %s was gone: taken again (etcd lease %x)", SubnetKey(sn), int64(id))
			}
		} else {
			id, err = ag.reg.Renew(rctx, sn, ag.value, ag.cfg.LeaseTTL)
		}
		cancel()
		next := every
		if err != nil {
			ag.logf("renew %s: %v; retrying", SubnetKey(sn), err)
			next = min(every, time.Second)
		} else if every >= time.Minute {
			// Short lab TTLs renew every few seconds: only long-lived
			// renewals are logged, as flanneld logs each one.
			ag.logf("lease renewed: %s (etcd lease %x)", SubnetKey(sn), int64(id))
		}
		t.Reset(next)
	}
}

// watchLoop lists the leases, syncs, and watches for changes from the
// revision after the list, starting over (with backoff) whenever etcd
// goes away: the entries already in the kernel stay while it is gone.
func (ag *Agent) watchLoop(ctx context.Context, renewNow chan<- struct{}) error {
	d := 100 * time.Millisecond
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		leases, rev, err := ag.reg.Leases(lctx)
		cancel()
		if err != nil {
			ag.logf("list leases: %v; retrying in %v", err, d)
			sleep(ctx, d)
			d = backoff(d)
			continue
		}
		cur := map[netip.Prefix]Lease{}
		for _, l := range leases {
			cur[l.Subnet] = l
		}
		ag.sync(cur, "sync")
		if _, ok := cur[ag.Subnet()]; !ok {
			nonBlocking(renewNow)
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := ag.reg.Cli.Watch(wctx, ag.reg.subnetsKey()+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range ch {
			if err := wr.Err(); err != nil {
				ag.logf("watch: %v", err)
				break
			}
			d = 100 * time.Millisecond
			// Leases come in bursts (a lab's nodes start together): take
			// what arrives within 10 ms into one sync, one plan.
			events := wr.Events
		burst:
			for {
				select {
				case more, ok := <-ch:
					if !ok || more.Err() != nil {
						break burst
					}
					events = append(events, more.Events...)
				case <-time.After(10 * time.Millisecond):
					break burst
				}
			}
			for _, ev := range events {
				sn, ok := ParseSubnetKey(string(ev.Kv.Key))
				if !ok {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					ag.logf("watch: lease %s removed (revision %d)", SubnetKey(sn), ev.Kv.ModRevision)
					delete(cur, sn)
					if sn == ag.Subnet() {
						nonBlocking(renewNow)
					}
					continue
				}
				l, err := parseLease(string(ev.Kv.Key), ev.Kv.Value)
				if err != nil {
					ag.logf("watch: ignoring %v", err)
					continue
				}
				if old, ok := cur[sn]; !ok || old.PublicIP != l.PublicIP || old.VtepMAC.String() != l.VtepMAC.String() {
					ag.logf("watch: lease %s: PublicIP %s VtepMAC %s", SubnetKey(sn), l.PublicIP, l.VtepMAC)
				}
				cur[sn] = l
			}
			ag.sync(cur, "watch")
		}
		wcancel()
		if ctx.Err() == nil {
			ag.logf("watch ended (etcd unreachable?); listing again in %v", d)
			sleep(ctx, d)
			d = backoff(d)
		}
	}
	return ctx.Err()
}

func nonBlocking(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sync makes the node's entries match the leases: each peer's entries
// added (vxlan.PlanPeers, the host-gw route, or in miss mode only the
// route), and the entries of peers whose lease is gone removed — also the
// ones a previous run left in the kernel (a peer that expired while this
// agent was down), found by their route into the cluster network.
func (ag *Agent) sync(leases map[netip.Prefix]Lease, why string) {
	own := ag.Subnet()
	want := map[netip.Prefix]vxlan.Peer{}
	for sn, l := range leases {
		if sn == own || !ag.cfg.Network.Contains(sn.Addr()) || l.Backend != ag.cfg.Backend {
			continue
		}
		want[sn] = vxlan.Peer{Subnet: sn, VtepMAC: l.VtepMAC, PublicIP: l.PublicIP}
	}
	a := &plan.Applier{}
	st, err := a.Read(ag.cfg.NS)
	a.Close()
	if err != nil {
		ag.logf("%s: read node: %v", why, err)
		return
	}
	ag.mu.Lock()
	old := ag.peers
	ag.mu.Unlock()
	ns, vni := ag.cfg.NS, ag.cfg.VNI
	var p plan.Plan
	// Removals first: a peer whose subnet moved to another node must lose
	// its old FDB entry before the new one goes in.
	gone := map[netip.Prefix]vxlan.Peer{}
	for sn, peer := range old {
		if w, ok := want[sn]; !ok || w.PublicIP != peer.PublicIP || w.VtepMAC.String() != peer.VtepMAC.String() {
			gone[sn] = peer
		}
	}
	for _, r := range st.Routes {
		if r.Dst.IsValid() && r.Dst != own && ag.cfg.Network.Contains(r.Dst.Addr()) && r.Dst.Bits() > ag.cfg.Network.Bits() {
			if _, ok := want[r.Dst]; !ok {
				if _, ok := gone[r.Dst]; !ok {
					gone[r.Dst] = ag.orphan(r, st)
				}
			}
		}
	}
	for _, sn := range sortedKeys(gone) {
		peer := gone[sn]
		switch {
		case ag.cfg.Backend == "host-gw":
			p.Add(vxlan.PlanDelHostGW(ns, ag.cfg.Underlay, peer, st)...)
		case ag.cfg.Miss:
			p.Add(vxlan.PlanDelMissPeer(ns, vni, peer, st)...)
		default:
			p.Add(vxlan.PlanDelPeer(ns, vni, peer, st)...)
		}
	}
	if len(p) > 0 {
		ag.apply(why+": remove", p)
		a := &plan.Applier{}
		st, err = a.Read(ag.cfg.NS)
		a.Close()
		if err != nil {
			ag.logf("%s: read node: %v", why, err)
			return
		}
		p = nil
	}
	var peers []vxlan.Peer
	for _, sn := range sortedKeys(want) {
		peers = append(peers, want[sn])
	}
	switch {
	case ag.cfg.Backend == "host-gw":
		p.Add(vxlan.PlanHostGW(ns, ag.cfg.Underlay, peers, st)...)
	case ag.cfg.Miss:
		p.Add(vxlan.PlanMissRoutes(ns, vni, peers, st)...)
	default:
		p.Add(vxlan.PlanPeers(ns, vni, peers, st)...)
	}
	if err := ag.apply(why+": add", p); err != nil {
		// Forget what we think we programmed: the next sync compares
		// against the kernel again.
		want = map[netip.Prefix]vxlan.Peer{}
	}
	ag.mu.Lock()
	ag.peers = want
	ag.mu.Unlock()
}

// orphan rebuilds what the kernel holds for a peer from its route: the
// VtepMAC from the gateway's neighbour entry, the PublicIP from that
// MAC's FDB entry (vxlan), or the route's gateway (host-gw).
func (ag *Agent) orphan(r plan.Route, st *plan.State) vxlan.Peer {
	peer := vxlan.Peer{Subnet: r.Dst}
	if ag.cfg.Backend == "host-gw" {
		peer.PublicIP = r.Gw
		return peer
	}
	dev := vxlan.DeviceName(ag.cfg.VNI)
	if n := st.NeighOf(dev, r.Dst.Addr()); n != nil {
		peer.VtepMAC = n.MAC
	}
	for _, n := range st.Neighs {
		if peer.VtepMAC == nil && n.Dev == dev && r.Dst.Contains(n.IP) {
			peer.VtepMAC = n.MAC // miss mode: an answered pod IP
		}
	}
	for _, f := range st.FDB {
		if f.Dev == dev && peer.VtepMAC != nil && f.MAC.String() == peer.VtepMAC.String() {
			peer.PublicIP = f.IP
		}
	}
	return peer
}

func sortedKeys[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}
