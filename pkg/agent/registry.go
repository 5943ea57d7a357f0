package agent

// flannel's etcd subnet registry, mirrored from flannel-io/flannel
// pkg/subnet/etcd/registry.go (commit 016ef8321f1d: getNetworkConfig,
// getSubnets, createSubnet's txn If(Version(key)=0) on a granted lease,
// updateSubnet's renewal with a new grant) and local_manager.go
// (tryAcquireLease: reuse the lease of our own PublicIP, else the
// previous subnet if free, else a free one; up to 10 attempts), with
// pkg/subnet's key format (10.244.1.0-24).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is flannel's --etcd-prefix.
const DefaultPrefix = "/coreos.com/network"

// DefaultLeaseTTL is flannel's subnet lease TTL (24 h).
const DefaultLeaseTTL = 24 * time.Hour

// NetConfig is <prefix>/config, flannel's network configuration.
type NetConfig struct {
	Network   string        `json:"Network"`
	SubnetLen int           `json:"SubnetLen,omitempty"`
	Backend   BackendConfig `json:"Backend"`
}

// BackendConfig is the config's Backend section.
type BackendConfig struct {
	Type string `json:"Type"`
	VNI  int    `json:"VNI,omitempty"`
	Port int    `json:"Port,omitempty"`
}

// LeaseAttrs is a lease's value, flannel's lease.LeaseAttrs.
type LeaseAttrs struct {
	PublicIP    string          `json:"PublicIP"`
	PublicIPv6  *string         `json:"PublicIPv6"`
	BackendType string          `json:"BackendType"`
	BackendData json.RawMessage `json:"BackendData,omitempty"`
}

// VXLANData is the vxlan backend's BackendData.
type VXLANData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// Lease is one subnet lease as read from etcd.
type Lease struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	Backend  string
	VtepMAC  net.HardwareAddr
	LeaseID  clientv3.LeaseID // 0: a permanent reservation
	Revision int64            // ModRevision of the key
}

// SubnetKey is flannel's key for a subnet: 10.244.1.0-24.
func SubnetKey(p netip.Prefix) string {
	return fmt.Sprintf("%s-%d", p.Masked().Addr(), p.Bits())
}

// ParseSubnetKey parses the last element of a subnet key (IPv4 only: the
// "&<v6>-<len>" dual-stack suffix is cut off).
func ParseSubnetKey(key string) (netip.Prefix, bool) {
	k := path.Base(key)
	k, _, _ = strings.Cut(k, "&")
	a, bits, ok := strings.Cut(k, "-")
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(a + "/" + bits)
	if err != nil || !p.Addr().Is4() || p.Masked() != p {
		return netip.Prefix{}, false
	}
	return p, true
}

// Registry is flannel's etcd registry under one prefix.
type Registry struct {
	Cli    *clientv3.Client
	Prefix string
}

func (r *Registry) configKey() string  { return path.Join(r.Prefix, "config") }
func (r *Registry) subnetsKey() string { return path.Join(r.Prefix, "subnets") }
func (r *Registry) subnetKey(p netip.Prefix) string {
	return path.Join(r.subnetsKey(), SubnetKey(p))
}

// ErrNoConfig is returned when <prefix>/config is missing.
var ErrNoConfig = errors.New("flannel config not found in etcd")

// Config reads the network config.
func (r *Registry) Config(ctx context.Context) (*NetConfig, error) {
	resp, err := r.Cli.Get(ctx, r.configKey())
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w at %s", ErrNoConfig, r.configKey())
	}
	var c NetConfig
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return nil, fmt.Errorf("%s is not flannel's config (%v): fix it with etcdctl put %s", r.configKey(), err, r.configKey())
	}
	return &c, nil
}

// EnsureConfig writes the config if the key is absent (in a transaction,
// so two writers cannot both win) and returns the config etcd holds.
func (r *Registry) EnsureConfig(ctx context.Context, want NetConfig) (*NetConfig, error) {
	b, _ := json.Marshal(want)
	k := r.configKey()
	if _, err := r.Cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit(); err != nil {
		return nil, err
	}
	return r.Config(ctx)
}

// Leases lists the leases and the revision they were read at: the watch
// starts after it, as flannel's getSubnets/watchSubnets do.
func (r *Registry) Leases(ctx context.Context) ([]Lease, int64, error) {
	resp, err := r.Cli.Get(ctx, r.subnetsKey()+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	var out []Lease
	for _, kv := range resp.Kvs {
		if l, err := parseLease(string(kv.Key), kv.Value); err == nil {
			l.LeaseID, l.Revision = clientv3.LeaseID(kv.Lease), kv.ModRevision
			out = append(out, l)
		}
	}
	return out, resp.Header.Revision, nil
}

func parseLease(key string, value []byte) (Lease, error) {
	sn, ok := ParseSubnetKey(key)
	if !ok {
		return Lease{}, fmt.Errorf("%q is not a subnet key", key)
	}
	var a LeaseAttrs
	if err := json.Unmarshal(value, &a); err != nil {
		return Lease{}, fmt.Errorf("lease %s: %v", key, err)
	}
	ip, err := netip.ParseAddr(a.PublicIP)
	if err != nil {
		return Lease{}, fmt.Errorf("lease %s: PublicIP %q: %v", key, a.PublicIP, err)
	}
	l := Lease{Subnet: sn, PublicIP: ip, Backend: a.BackendType}
	if a.BackendType == "vxlan" {
		var d VXLANData
		if err := json.Unmarshal(a.BackendData, &d); err != nil {
			return Lease{}, fmt.Errorf("lease %s: BackendData: %v", key, err)
		}
		if l.VtepMAC, err = net.ParseMAC(d.VtepMAC); err != nil {
			return Lease{}, fmt.Errorf("lease %s: VtepMAC %q: %v", key, d.VtepMAC, err)
		}
	}
	return l, nil
}

// Attrs is the value a node publishes.
func Attrs(publicIP netip.Addr, backend string, vni int, vtepMAC net.HardwareAddr) []byte {
	a := LeaseAttrs{PublicIP: publicIP.String(), BackendType: backend}
	if backend == "vxlan" {
		a.BackendData, _ = json.Marshal(VXLANData{VNI: vni, VtepMAC: vtepMAC.String()})
	}
	b, _ := json.Marshal(a)
	return b
}

var errSubnetTaken = errors.New("subnet already exists")

// create is flannel's createSubnet: grant a lease with the TTL, put the
// key on it only if the key does not exist, revoke the grant otherwise.
func (r *Registry) create(ctx context.Context, sn netip.Prefix, value []byte, ttl time.Duration) (clientv3.LeaseID, error) {
	g, err := r.Cli.Grant(ctx, int64(ttl.Seconds()))
	if err != nil {
		return 0, err
	}
	k := r.subnetKey(sn)
	t, err := r.Cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(value), clientv3.WithLease(g.ID))).Commit()
	if err != nil || !t.Succeeded {
		r.Cli.Revoke(ctx, g.ID)
		if err == nil {
			err = errSubnetTaken
		}
		return 0, err
	}
	return g.ID, nil
}

// Renew is flannel's updateSubnet: a new grant with the full TTL and the
// key put again on it. flannel leaves the old grant to expire with nothing
// attached; klab revokes it (it holds no key any more), so an etcd a lab
// shares holds no orphan grant after destroy.
func (r *Registry) Renew(ctx context.Context, sn netip.Prefix, value []byte, ttl time.Duration) (clientv3.LeaseID, error) {
	g, err := r.Cli.Grant(ctx, int64(ttl.Seconds()))
	if err != nil {
		return 0, err
	}
	resp, err := r.Cli.Put(ctx, r.subnetKey(sn), string(value), clientv3.WithLease(g.ID), clientv3.WithPrevKV())
	if err != nil {
		r.Cli.Revoke(ctx, g.ID)
		return 0, err
	}
	if prev := resp.PrevKv; prev != nil && prev.Lease != 0 && clientv3.LeaseID(prev.Lease) != g.ID {
		r.Cli.Revoke(ctx, clientv3.LeaseID(prev.Lease))
	}
	return g.ID, nil
}

// Delete removes a subnet's lease (a node deleted from the lab) and
// revokes the etcd lease it was granted on, so nothing of it is left.
func (r *Registry) Delete(ctx context.Context, sn netip.Prefix) error {
	resp, err := r.Cli.Delete(ctx, r.subnetKey(sn), clientv3.WithPrevKV())
	if err != nil {
		return err
	}
	for _, kv := range resp.PrevKvs {
		if kv.Lease != 0 {
			r.Cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)) // already expired: nothing to revoke
		}
	}
	return nil
}

// Acquire is flannel's tryAcquireLease: a lease already holding our
// PublicIP is reused (renewed, same subnet: a restarted flanneld keeps its
// subnet); else prefer, if valid, inside the network and free; else the
// lowest free subnet of the network (flannel picks a random free one;
// klab the lowest, so labs are repeatable). The first /24 (holding the
// network address) is never leased, as in flannel (SubnetMin). A subnet
// another node takes between the list and the transaction makes the
// attempt start over, up to 10 times.
func (r *Registry) Acquire(ctx context.Context, network netip.Prefix, prefer netip.Prefix, publicIP netip.Addr, value []byte, ttl time.Duration) (netip.Prefix, clientv3.LeaseID, error) {
	for attempt := 0; attempt < 10; attempt++ {
		leases, _, err := r.Leases(ctx)
		if err != nil {
			return netip.Prefix{}, 0, err
		}
		taken := map[netip.Prefix]bool{}
		for _, l := range leases {
			taken[l.Subnet] = true
			if l.PublicIP == publicIP && network.Contains(l.Subnet.Addr()) {
				id, err := r.Renew(ctx, l.Subnet, value, ttl)
				return l.Subnet, id, err
			}
		}
		sn := prefer
		if !sn.IsValid() || sn.Bits() != 24 || !network.Contains(sn.Addr()) || taken[sn] || sn.Addr() == network.Addr() {
			var ok bool
			if sn, ok = freeSubnet(network, taken); !ok {
				return netip.Prefix{}, 0, fmt.Errorf("network %s has no free /24 left: every subnet is leased", network)
			}
		}
		id, err := r.create(ctx, sn, value, ttl)
		if errors.Is(err, errSubnetTaken) {
			continue
		}
		return sn, id, err
	}
	return netip.Prefix{}, 0, fmt.Errorf("could not lease a subnet of %s after 10 attempts: other nodes keep taking them", network)
}

// freeSubnet returns the lowest /24 of network that is not taken, after
// the first.
func freeSubnet(network netip.Prefix, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	a := network.Addr().As4()
	n := 1 << (24 - network.Bits())
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8
	for i := 1; i < n; i++ {
		v := base + uint32(i)<<8
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
		if !taken[p] {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Claim leases exactly sn: renewed if it already holds our PublicIP,
// created (if absent, in a transaction) otherwise; held by another node,
// it fails. A klab node's cni0 and pods are built on its subnet, so its
// agent may not move to another one, as flanneld would on a fresh node.
func (r *Registry) Claim(ctx context.Context, sn netip.Prefix, publicIP netip.Addr, value []byte, ttl time.Duration) (clientv3.LeaseID, error) {
	resp, err := r.Cli.Get(ctx, r.subnetKey(sn))
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) > 0 {
		l, err := parseLease(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
		if err == nil && l.PublicIP == publicIP {
			return r.Renew(ctx, sn, value, ttl)
		}
		holder := "a value that is not a lease"
		if err == nil {
			holder = l.PublicIP.String()
		}
		return 0, fmt.Errorf("this node's subnet %s is leased by %s (%s): delete that key, or the node", sn, holder, r.subnetKey(sn))
	}
	id, err := r.create(ctx, sn, value, ttl)
	if errors.Is(err, errSubnetTaken) {
		return 0, fmt.Errorf("this node's subnet %s was just leased by another node (%s)", sn, r.subnetKey(sn))
	}
	return id, err
}
