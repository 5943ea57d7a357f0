package cluster

// A lab across several machines (klab token create / klab join), the
// kubeadm way. The first machine holds the control plane (etcd on the
// control-plane node, .100 of the underlay). Another machine joins with
// the command 'klab token create' prints there; afterwards 'klab node
// add' on either machine adds nodes to the same cluster.
//
// The underlay spans the machines: each machine's underlay bridge gets a
// port "stitch", a VXLAN device whose UDP socket is in the machine's own
// network namespace (plan.Link.HostSocket) and whose frames cross the
// machines' own network. That socket is the only thing a lab opens in a
// machine's namespace; no link, address, route or rule changes there.
// The first machine's stitch learns machines from the frames they send;
// a joining machine's stitch floods to the first; every machine is
// registered in etcd (/klab/machines/NAME) once it reaches it, and each
// machine's agent ("machine", machineagent.go) adds a flood entry (one
// "bridge fdb append 00:00:00:00:00:00 dst ADDRESS") per other machine,
// so all of them share one L2 segment, 192.168.1.0/24, and reach etcd at
// .100.
//
// One stitch device per machine, with one flood destination per remote
// machine (head-end replication), rather than one device per remote:
// Linux allows one device per VNI and UDP port in a namespace, and the
// bridge never sends a frame back out of the port it came in, so a full
// mesh of machines has no loop and needs no spanning tree.
//
// MTUs nest: a pod's packet (the lab's pod MTU) is wrapped by flannel's
// VXLAN (50 bytes) into an underlay frame (the underlay MTU), which the
// stitch wraps again (50 bytes) into a packet on the machines' network.
// So a lab that spans machines needs an underlay MTU at most the
// machines' MTU - 50: 1450 on a 1500-byte LAN, leaving pods 1400.
//
// Trust: anything that crosses machines is TLS with certificates from the
// lab's own CA (pkg/pki), kept in the first machine's state directory.
// etcd serves plain HTTP on :2379 to the nodes of its own machine and TLS
// with client certificates on :2378 to the others; the join endpoint on
// :6443 (kube-apiserver's port, where kubeadm join goes) is TLS. A token
// ("abcdef.0123456789abcdef", kubeadm's form) admits one machine: it
// reserves that machine's address on the underlay, expires after its TTL
// (etcd lease), and is deleted when used. The join command carries the
// CA's public-key pin (--discovery-token-ca-cert-hash), so the joining
// machine trusts the first without copying a file, as kubeadm does.
//
// Allocations that must be cluster-wide go through etcd transactions:
// underlay addresses (/klab/underlay/IP), node names (/registry/minions/
// NAME, Kubernetes' Node objects), pod subnets (flannel's leases).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	stdlog "log"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/bridge"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/pki"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/veth"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names, ports and keys of a lab that spans machines.
const (
	// MachinePortName is a joined machine's port on the underlay: the
	// namespace its CLI and machine agent reach etcd from.
	MachinePortName = "machine"
	// StitchDev is the underlay bridge's port to the other machines.
	StitchDev = "stitch"
	// StitchPort is the stitch's UDP port (IANA's VXLAN port).
	StitchPort = 4789
	// JoinPort is the join endpoint's port on the control-plane node.
	JoinPort = 6443
	// EtcdTLSPort is etcd's TLS client port, for other machines.
	EtcdTLSPort = 2378

	MachinesPrefix = "/klab/machines/"
	TokensPrefix   = "/klab/bootstrap-tokens/"
	UnderlayPrefix = "/klab/underlay/"
	NodesPrefix    = "/registry/minions/" // where kube-apiserver keeps Nodes
	// MachineLabel names a Node's machine.
	MachineLabel = "klab.dev/machine"
	// DefaultTokenTTL is kubeadm's token TTL.
	DefaultTokenTTL = 24 * time.Hour
)

// MachineInfo is this machine's place in a lab that spans machines.
type MachineInfo struct {
	Name string `json:"name"`
	// Address is the machine's own address, where the stitch's packets
	// go (the other machines' stitches send to it).
	Address netip.Addr `json:"address"`
	// UnderlayIP is its port on the lab's underlay: the control-plane
	// node's .100 on the first machine, its "machine" port on the others.
	UnderlayIP netip.Addr `json:"underlayIP"`
	// First is the first machine's address, on joined machines.
	First netip.Addr `json:"first,omitempty"`
}

// machineRecord is a machine's key in etcd (/klab/machines/NAME).
type machineRecord struct {
	Name       string     `json:"name"`
	Address    netip.Addr `json:"address"`
	UnderlayIP netip.Addr `json:"underlayIP"`
	First      bool       `json:"first,omitempty"`
}

// tokenRecord is a bootstrap token's key (/klab/bootstrap-tokens/ID),
// with the token's TTL as its etcd lease.
type tokenRecord struct {
	SecretSHA256 string     `json:"secretSHA256"`
	UnderlayIP   netip.Addr `json:"underlayIP"`
	Expires      time.Time  `json:"expires"`
}

// Joined reports whether this machine joined the lab from another.
func (l *Lab) Joined() bool {
	return l.ControlPlane != nil && l.ControlPlane.Machine != nil && l.ControlPlane.Machine.First.IsValid()
}

// spansMachines reports whether the lab has a stitch (a token was
// created, or it joined).
func (l *Lab) spansMachines() bool { return l.ControlPlane != nil && l.ControlPlane.Machine != nil }

// pkiDir holds the lab's certificates.
func (c *Cluster) pkiDir() string { return filepath.Join(c.Dir(), "pki") }

// PKIDir is where a lab's certificates live.
func PKIDir(stateDir, lab string) string { return filepath.Join(stateDir, lab, "pki") }

// StitchVNI is the stitch's VNI: derived from the lab's name, so both
// ends know it before they have spoken.
func StitchVNI(lab string) int {
	h := fnv.New32a()
	h.Write([]byte("klab-stitch/" + lab))
	return int(h.Sum32()%(1<<24-2)) + 2
}

// ensurePKI makes the lab's CA and etcd's serving certificate on the
// first machine, once (before etcd first starts).
func (c *Cluster) ensurePKI() error {
	dir := c.pkiDir()
	if _, err := os.Stat(filepath.Join(dir, pki.ServerCert)); err == nil {
		return nil
	}
	ca, err := pki.NewCA(c.Lab.Name)
	if err != nil {
		return err
	}
	srv, err := ca.Server("etcd", c.Lab.ControlPlane.IP, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return err
	}
	var p plan.Plan
	for _, f := range []struct {
		name string
		data []byte
	}{{pki.CACert, ca.PEM.Cert}, {pki.CAKey, ca.PEM.Key}, {pki.ServerCert, append(srv.Cert, ca.PEM.Cert...)}, {pki.ServerKey, srv.Key}} {
		p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: filepath.Join(dir, f.name), Data: f.data, Mode: 0o600, Atomic: true}, Why: "the lab's CA (pkg/pki)"})
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return c.apply(p)
}

// EtcdTLSURL is etcd's TLS client URL on the control-plane address.
func EtcdTLSURL(ip netip.Addr) string { return fmt.Sprintf("https://%s:%d", ip, EtcdTLSPort) }

// ---- the stitch

// planStitch plans this machine's stitch on the underlay bridge: the
// VXLAN device (socket in the machine's namespace) and a flood entry per
// remote machine address; entries for addresses not in remotes go.
func (c *Cluster) planStitch(u *plan.State, remotes []netip.Addr) plan.Plan {
	ns := c.NS(UnderlayName)
	var p plan.Plan
	m := c.Lab.ControlPlane.Machine
	if u.Link(StitchDev) == nil {
		p.Add(plan.Op{Verb: plan.LinkAdd, NS: ns, New: true, Why: "the underlay's port to the other machines: its UDP socket is in this machine's namespace", Link: &plan.Link{
			Name: StitchDev, Type: "vxlan", VNI: StitchVNI(c.Lab.Name), Port: StitchPort, Learning: true,
			MTU: c.Lab.UnderlayMTU, MAC: MAC(c.Lab.Name, StitchDev+"@"+m.Name, "vxlan"), HostSocket: true,
		}})
		p.Add(plan.Op{Verb: plan.LinkSetMaster, NS: ns, Link: &plan.Link{Name: StitchDev, Master: UnderlayBridge}})
		p.Add(plan.Op{Verb: plan.LinkSetUp, NS: ns, Link: &plan.Link{Name: StitchDev}})
	}
	zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	have := map[netip.Addr]bool{}
	for _, f := range u.FDB {
		if f.Dev == StitchDev && bytes.Equal(f.MAC, zero) {
			have[f.IP] = true
		}
	}
	want := map[netip.Addr]bool{}
	for _, r := range remotes {
		want[r] = true
		if !have[r] {
			p.Add(plan.Op{Verb: plan.FDBAppend, NS: ns, New: true, Neigh: &plan.Neigh{Dev: StitchDev, MAC: zero, IP: r}, Why: "flood to that machine"})
		}
	}
	for _, a := range slices.SortedFunc(maps.Keys(have), netip.Addr.Compare) {
		if !want[a] {
			p.Add(plan.Op{Verb: plan.FDBDel, NS: ns, Neigh: &plan.Neigh{Dev: StitchDev, MAC: zero, IP: a}, Why: "that machine left"})
		}
	}
	return p
}

// hostMTU is the MTU of the machine's device toward dst (the device
// holding dst when it is the machine's own), read in the machine's
// namespace.
func hostMTU(dst netip.Addr) (int, string, error) {
	var link netlink.Link
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP.To4()); ip == dst {
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				return l.Attrs().MTU, l.Attrs().Name, nil
			}
		}
	}
	if dst.IsValid() {
		rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
		if err != nil || len(rs) == 0 {
			return 0, "", fmt.Errorf("this machine has no route to %s: check its network", dst)
		}
		if link, err = netlink.LinkByIndex(rs[0].LinkIndex); err != nil {
			return 0, "", err
		}
	} else {
		rs, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return 0, "", err
		}
		for _, r := range rs {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if link, err = netlink.LinkByIndex(r.LinkIndex); err == nil {
					break
				}
			}
		}
		if link == nil {
			return 1500, "", nil
		}
	}
	return link.Attrs().MTU, link.Attrs().Name, nil
}

// checkStitchMTU refuses an underlay MTU the stitch cannot carry whole.
func checkStitchMTU(underlayMTU int, toward netip.Addr) error {
	mtu, dev, err := hostMTU(toward)
	if err != nil {
		return err
	}
	if underlayMTU > mtu-50 {
		return fmt.Errorf("the lab's underlay MTU is %d, but frames crossing machines are wrapped in VXLAN (50 bytes) on this machine's %d-byte network (%s): create the lab with --underlay-mtu %d to span machines (pods then get %d)",
			underlayMTU, mtu, dev, mtu-50, mtu-100)
	}
	return nil
}

// advertiseAddress is this machine's address for the others: the given
// one, else the preferred source of the default route, else the first
// global IPv4 address of an up device.
func advertiseAddress(given netip.Addr) (netip.Addr, error) {
	if given.IsValid() {
		addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
		for _, a := range addrs {
			if ip, _ := netip.AddrFromSlice(a.IP.To4()); ip == given {
				return given, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("--advertise-address %s is not an address of this machine: give one 'ip -4 addr' shows", given)
	}
	rs, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range rs {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Src != nil {
			ip, _ := netip.AddrFromSlice(r.Src.To4())
			return ip, nil
		}
	}
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if ip.IsGlobalUnicast() && !ip.IsLoopback() {
			return ip, nil
		}
	}
	return netip.Addr{}, errors.New("this machine has no IPv4 address for the others to reach: give --advertise-address")
}

// ---- tokens

var tokenRE = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

func randomToken() string {
	const abc = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 22)
	rand.Read(b)
	for i := range b {
		b[i] = abc[int(b[i])%len(abc)]
	}
	return string(b[:6]) + "." + string(b[6:])
}

func secretHash(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}

// TokenOptions are 'klab token create's.
type TokenOptions struct {
	Name             string        // this machine's name (default: its hostname)
	AdvertiseAddress netip.Addr    // this machine's address for the others
	TTL              time.Duration // the token's (24h)
}

// JoinCommand is what 'klab token create' prints.
type JoinCommand struct {
	Address    netip.Addr
	Lab        string
	Token      string
	CAHash     string
	UnderlayIP netip.Prefix
	MTU        int
}

func (j JoinCommand) String() string {
	return fmt.Sprintf("klab join %s --lab %s --token %s --discovery-token-ca-cert-hash %s --underlay-address %s --underlay-mtu %d",
		j.Address, j.Lab, j.Token, j.CAHash, j.UnderlayIP, j.MTU)
}

// CreateToken makes this (first) machine ready to be joined — its
// stitch, its record in etcd, the join endpoint and its machine agent —
// and a token that admits one more machine, whose underlay address it
// reserves.
func (c *Cluster) CreateToken(o TokenOptions) (JoinCommand, error) {
	l := c.Lab
	switch {
	case l.ControlPlane == nil:
		return JoinCommand{}, fmt.Errorf("lab %s has no control plane for other machines to join: create it with --control-plane etcd", l.Name)
	case l.Joined():
		return JoinCommand{}, fmt.Errorf("this machine joined lab %s from %s: create tokens on the first machine", l.Name, l.ControlPlane.Machine.First)
	case l.ControlPlane.External:
		return JoinCommand{}, fmt.Errorf("lab %s uses an external etcd (%s): other machines join a lab whose etcd runs on its control-plane node (create it with --control-plane etcd and no --etcd-endpoints)", l.Name, strings.Join(l.ControlPlane.Endpoints, ","))
	case len(l.Nodes) == 0:
		return JoinCommand{}, fmt.Errorf("lab %s has no node yet: add one first (klab node add node1 --lab %s --control-plane etcd)", l.Name, l.Name)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTokenTTL
	}
	if o.TTL < 10*time.Second || o.TTL%time.Second != 0 {
		return JoinCommand{}, fmt.Errorf("--ttl %v is too short or not whole seconds: use 10s or more (kubeadm's default is 24h)", o.TTL)
	}
	if l.ControlPlane.Machine == nil {
		addr, err := advertiseAddress(o.AdvertiseAddress)
		if err != nil {
			return JoinCommand{}, err
		}
		if err := checkStitchMTU(l.UnderlayMTU, addr); err != nil {
			return JoinCommand{}, err
		}
		name := o.Name
		if name == "" {
			name, _ = os.Hostname()
		}
		if err := netns.ValidateObject("machine", name); err != nil {
			return JoinCommand{}, err
		}
		l.ControlPlane.Machine = &MachineInfo{Name: name, Address: addr, UnderlayIP: l.ControlPlane.IP}
	}
	m := l.ControlPlane.Machine
	u, err := c.read(UnderlayName)
	if err != nil {
		return JoinCommand{}, err
	}
	if err := c.apply(append(c.planStitch(u, nil), c.planStitchFilter()...)); err != nil {
		return JoinCommand{}, err
	}
	if err := c.Save(); err != nil {
		return JoinCommand{}, err
	}
	cli, err := c.etcd()
	if err != nil {
		return JoinCommand{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, _ := json.Marshal(machineRecord{Name: m.Name, Address: m.Address, UnderlayIP: m.UnderlayIP, First: true})
	if _, err := cli.Put(ctx, MachinesPrefix+m.Name, string(rec)); err != nil {
		return JoinCommand{}, fmt.Errorf("register this machine in etcd: %w", err)
	}
	if err := c.registerUnderlay(ctx, cli, l.ControlPlane.IP, "control-plane", 0); err != nil {
		return JoinCommand{}, err
	}
	// The Services made before the lab spanned machines claim their
	// ClusterIPs and NodePorts (serviceclaims.go).
	for _, s := range l.Services {
		_, puts, _ := claimOps(s)
		if len(puts) > 0 {
			if _, err := cli.Txn(ctx).Then(puts...).Commit(); err != nil {
				return JoinCommand{}, err
			}
		}
	}
	// The nodes built before the lab spanned machines get this machine's
	// name on their Node objects.
	for _, n := range l.Nodes {
		obj, _ := json.Marshal(c.nodeObject(n))
		if _, err := cli.Put(ctx, NodesPrefix+n.Name, string(obj)); err != nil {
			return JoinCommand{}, err
		}
	}
	if _, err := c.ensureFirstMachineServers(); err != nil {
		return JoinCommand{}, err
	}
	// The token: its address on the underlay reserved, both under one
	// lease of the token's TTL.
	lease, err := cli.Grant(ctx, int64(o.TTL/time.Second))
	if err != nil {
		return JoinCommand{}, err
	}
	ip, err := c.allocUnderlay(ctx, cli, "token", lease.ID)
	if err != nil {
		return JoinCommand{}, err
	}
	tok := randomToken()
	id, secret, _ := strings.Cut(tok, ".")
	tr, _ := json.Marshal(tokenRecord{SecretSHA256: secretHash(secret), UnderlayIP: ip, Expires: time.Now().Add(o.TTL).UTC().Truncate(time.Second)})
	if _, err := cli.Put(ctx, TokensPrefix+id, string(tr), clientv3.WithLease(lease.ID)); err != nil {
		return JoinCommand{}, err
	}
	ca, err := pki.LoadCA(c.pkiDir())
	if err != nil {
		return JoinCommand{}, err
	}
	return JoinCommand{Address: m.Address, Lab: l.Name, Token: tok, CAHash: pki.Hash(ca.Cert),
		UnderlayIP: netip.PrefixFrom(ip, l.UnderlayCIDR.Bits()), MTU: l.UnderlayMTU}, nil
}

// ensureFirstMachineServers starts, on the first machine of a lab that
// spans machines, the join endpoint and the machine agent where they do
// not run (token create; repair after a crash), and names those started.
func (c *Cluster) ensureFirstMachineServers() ([]string, error) {
	var started []string
	for _, proto := range []string{"join", "machine"} {
		if c.serving(ControlPlaneName, proto) {
			continue
		}
		c.forgetDead(ControlPlaneName, proto)
		port := 0
		if proto == "join" {
			port = JoinPort
		}
		if _, err := c.StartServer(ControlPlaneName, proto, port, c.Serve(ControlPlaneName, proto, port)); err != nil {
			return started, fmt.Errorf("the %s server on the control-plane node: %w", proto, err)
		}
		started = append(started, map[string]string{"join": "the join endpoint", "machine": "the machine agent"}[proto]+" on "+ControlPlaneName)
	}
	return started, nil
}

// registerUnderlay claims an underlay address for owner in a transaction
// (create if absent, or already owner's); lease 0 keeps it.
func (c *Cluster) registerUnderlay(ctx context.Context, cli *clientv3.Client, ip netip.Addr, owner string, lease clientv3.LeaseID) error {
	key := UnderlayPrefix + ip.String()
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(lease))
	}
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner, opts...)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("claim underlay address %s in etcd: %w", ip, err)
	}
	if !r.Succeeded {
		if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && string(kvs[0].Value) != owner {
			return fmt.Errorf("underlay address %s is taken by %s (etcd key %s): pick another", ip, kvs[0].Value, key)
		}
	}
	return nil
}

// underlayTaken lists the underlay addresses claimed in etcd.
func underlayTaken(ctx context.Context, cli *clientv3.Client) (map[netip.Addr]string, error) {
	r, err := cli.Get(ctx, UnderlayPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]string{}
	for _, kv := range r.Kvs {
		if ip, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), UnderlayPrefix)); err == nil {
			m[ip] = string(kv.Value)
		}
	}
	return m, nil
}

// allocUnderlay claims a free underlay address for a machine, from the
// top of the network down (nodes are numbered from the bottom up).
func (c *Cluster) allocUnderlay(ctx context.Context, cli *clientv3.Client, owner string, lease clientv3.LeaseID) (netip.Addr, error) {
	taken, err := underlayTaken(ctx, cli)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, n := range c.Lab.Nodes {
		taken[n.IP] = "node " + n.Name
	}
	taken[c.Lab.UnderlayGateway] = "gateway"
	size := 1 << (32 - c.Lab.UnderlayCIDR.Bits())
	for i := size - 2; i > 100; i-- {
		ip, _ := ipam.Nth(c.Lab.UnderlayCIDR, i)
		if _, ok := taken[ip]; ok {
			continue
		}
		if err := c.registerUnderlay(ctx, cli, ip, owner, lease); err == nil {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("underlay network %s has no free address for another machine", c.Lab.UnderlayCIDR)
}

// ---- join

// JoinOptions are 'klab join's.
type JoinOptions struct {
	First      netip.Addr // the first machine's address
	Token      string
	CAHash     string
	UnderlayIP netip.Prefix
	MTU        int
	Name       string // this machine's name (default: its hostname)
	Timeout    time.Duration
}

// joinRequest and joinResponse are the join endpoint's (POST /join).
type joinRequest struct {
	Token   string     `json:"token"`
	Name    string     `json:"name"`
	Address netip.Addr `json:"address"`
}

type joinResponse struct {
	Lab        *Lab   `json:"lab"` // the cluster-wide settings; no nodes, pods or servers
	CACert     string `json:"caCert"`
	ClientCert string `json:"clientCert"`
	ClientKey  string `json:"clientKey"`
	Error      string `json:"error,omitempty"`
}

// ValidateJoin checks a join command's arguments before anything is
// built.
func (o JoinOptions) Validate() error {
	switch {
	case !o.First.Is4():
		return fmt.Errorf("the first machine's address %q is not an IPv4 address: copy the 'klab join' line 'klab token create' printed", o.First)
	case !tokenRE.MatchString(o.Token):
		return fmt.Errorf("--token %q is not a join token (six and sixteen lowercase letters or digits, joined by a dot): copy it from 'klab token create'", o.Token)
	case !o.UnderlayIP.IsValid() || !o.UnderlayIP.Addr().Is4():
		return errors.New("--underlay-address is missing or not an IPv4 CIDR: copy the 'klab join' line 'klab token create' printed")
	case o.MTU < 576 || o.MTU > 9000:
		return fmt.Errorf("--underlay-mtu %d is not an MTU (576 to 9000): copy the 'klab join' line 'klab token create' printed", o.MTU)
	}
	return pki.ValidHash(o.CAHash)
}

// Join makes this machine part of a lab whose first machine is
// o.First: it builds the lab's underlay here (a bridge without the
// gateway, which is on the first machine), the stitch toward the first
// machine and a port on the underlay at the reserved address, asks the
// join endpoint (TLS, pinned to the CA) to admit it with the token,
// stores the lab's settings and this machine's certificate, and starts
// its machine agent. On any failure the lab is removed from this machine
// again: nothing is left half-built.
func Join(stateDir, lab string, o JoinOptions, serve ServerArgv, wait io.Writer) (err error) {
	if err := o.Validate(); err != nil {
		return err
	}
	if err := netns.ValidateLab(lab); err != nil {
		return err
	}
	if _, err := Load(stateDir, lab); err == nil {
		return fmt.Errorf("lab %s already exists on this machine: destroy it first (klab destroy --lab %s)", lab, lab)
	}
	if nss, _ := netns.List(lab); len(nss) > 0 {
		return fmt.Errorf("lab %s has namespaces on this machine (%s): destroy it first (klab destroy --lab %s)", lab, nss[0], lab)
	}
	if err := checkStitchMTU(o.MTU, o.First); err != nil {
		return err
	}
	self, err := advertiseToward(o.First)
	if err != nil {
		return err
	}
	name := o.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	if err := netns.ValidateObject("machine", name); err != nil {
		return err
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	lock, err := Lock(stateDir, lab, wait)
	if err != nil {
		return err
	}
	c := &Cluster{StateDir: stateDir, lock: lock, A: &plan.Applier{}, Serve: serve, Lab: &Lab{
		Name: lab, UnderlayCIDR: o.UnderlayIP.Masked(), UnderlayMTU: o.MTU, Created: time.Now().UTC(),
		ControlPlane: &ControlPlane{Kind: ControlPlaneEtcd, Machine: &MachineInfo{Name: name, Address: self, UnderlayIP: o.UnderlayIP.Addr(), First: o.First}},
	}}
	defer func() {
		c.A.Close() // its netlink sockets hold the namespaces
		if err != nil {
			destroyLocked(stateDir, lab, &plan.Applier{})
		}
		c.Close()
	}()
	if err := c.buildMachinePort(); err != nil {
		return err
	}
	resp, err := c.askToJoin(o, name, self)
	if err != nil {
		return err
	}
	l := resp.Lab
	l.Name, l.Created, l.Nodes, l.Pods, l.Servers = lab, c.Lab.Created, nil, nil, nil
	if l.UnderlayCIDR != c.Lab.UnderlayCIDR || l.UnderlayMTU != o.MTU || l.ControlPlane == nil {
		return fmt.Errorf("the first machine's lab %s has underlay %s (MTU %d), not the join command's %s (MTU %d): copy the 'klab join' line again", lab, l.UnderlayCIDR, l.UnderlayMTU, c.Lab.UnderlayCIDR, o.MTU)
	}
	l.ControlPlane.Machine = c.Lab.ControlPlane.Machine
	dir := c.pkiDir()
	// This machine's etcd clients (its CLI, machine agent, node agents)
	// use etcd's TLS port with its certificate, as flanneld's
	// --etcd-cafile/--etcd-certfile/--etcd-keyfile would.
	l.ControlPlane.EtcdConfig = agent.EtcdConfig{Endpoints: []string{EtcdTLSURL(l.ControlPlane.IP)},
		CAFile: filepath.Join(dir, pki.CACert), CertFile: filepath.Join(dir, pki.ClientCert), KeyFile: filepath.Join(dir, pki.ClientKey),
		Prefix: l.ControlPlane.Prefix}
	c.Lab = l
	for _, f := range [][2]string{{pki.CACert, resp.CACert}, {pki.ClientCert, resp.ClientCert}, {pki.ClientKey, resp.ClientKey}} {
		if err := pki.Write(dir, f[0], []byte(f[1])); err != nil {
			return err
		}
	}
	if err := c.Save(); err != nil {
		return err
	}
	// The machine agent adds the stitches to the other machines.
	if _, err := c.StartServer(MachinePortName, "machine", 0, c.Serve(MachinePortName, "machine", 0)); err != nil {
		return fmt.Errorf("the machine agent: %w", err)
	}
	return nil
}

// advertiseToward is this machine's source address toward dst.
func advertiseToward(dst netip.Addr) (netip.Addr, error) {
	rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 || rs[0].Src == nil {
		return netip.Addr{}, fmt.Errorf("this machine has no route to the first machine %s: check the address and the network between them", dst)
	}
	ip, _ := netip.AddrFromSlice(rs[0].Src.To4())
	return ip, nil
}

// buildMachinePort builds a joined machine's share of the underlay: the
// bridge (no gateway address: that is on the first machine; its own MAC
// address, since bridges on one segment must not share one), the stitch
// toward the first machine, and the "machine" port at the reserved
// address.
func (c *Cluster) buildMachinePort() error {
	l, m := c.Lab, c.Lab.ControlPlane.Machine
	u, err := c.read(UnderlayName)
	if err != nil {
		return err
	}
	mp, err := c.read(MachinePortName)
	if err != nil {
		return err
	}
	var p plan.Plan
	un := c.NS(UnderlayName)
	if !u.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: un, New: true})
	}
	bp, err := bridge.Plan(c.underlayBridgeConfig(), u)
	if err != nil {
		return err
	}
	p.Add(bp...)
	if err := c.apply(p); err != nil {
		return err
	}
	if u, err = c.read(UnderlayName); err != nil {
		return err
	}
	p = c.planStitch(u, []netip.Addr{m.First})
	ns := c.NS(MachinePortName)
	if !mp.Exists {
		p.Add(plan.Op{Verb: plan.NetnsAdd, NS: ns, New: true})
	}
	vp, err := veth.Plan(veth.Attachment{
		OuterNS: un, OuterIface: MachinePortName, Bridge: UnderlayBridge,
		InnerNS: ns, InnerIface: NodeUplink, Addr: netip.PrefixFrom(m.UnderlayIP, l.UnderlayCIDR.Bits()),
		MTU: l.UnderlayMTU, MAC: MAC(l.Name, MachinePortName+"@"+m.Name, "eth0"),
	}, u, mp)
	if err != nil {
		return err
	}
	p.Add(vp...)
	return c.apply(p)
}

// askToJoin posts the join request to the first machine's join endpoint,
// from the machine port, trusting only a server whose CA has the pin.
func (c *Cluster) askToJoin(o JoinOptions, name string, self netip.Addr) (*joinResponse, error) {
	// The control-plane address is .100 of the underlay, as on every lab.
	cp, _ := ipam.Nth(c.Lab.UnderlayCIDR, 100)
	var ca *x509.Certificate
	tlsc := pki.Pinned(o.CAHash, &ca)
	tlsc.ServerName = cp.String()
	ns := c.NS(MachinePortName)
	hc := &http.Client{Timeout: o.Timeout, Transport: &http.Transport{TLSClientConfig: tlsc,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = netns.Do(ns, func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}}
	defer hc.CloseIdleConnections()
	body, _ := json.Marshal(joinRequest{Token: o.Token, Name: name, Address: self})
	url := fmt.Sprintf("https://%s:%d/join", cp, JoinPort)
	var resp *http.Response
	var err error
	// The first frames wait for the stitch and ARP: retry briefly.
	deadline := time.Now().Add(o.Timeout)
	for {
		resp, err = hc.Post(url, "application/json", bytes.NewReader(body))
		var pe *pki.PinError
		if err == nil || time.Now().After(deadline) || errors.As(err, &pe) || strings.Contains(err.Error(), "certificate") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		var pe *pki.PinError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("the first machine's join endpoint %s is not lab %s's: %v: check --discovery-token-ca-cert-hash", url, c.Lab.Name, pe)
		}
		if strings.Contains(err.Error(), "certificate") {
			return nil, fmt.Errorf("the first machine's join endpoint %s is not lab %s's (%v): check --discovery-token-ca-cert-hash", url, c.Lab.Name, err)
		}
		return nil, fmt.Errorf("the first machine's join endpoint %s is unreachable through the stitch to %s (%v): check the address, that UDP port %d is open between the machines, and that lab %s has a token there", url, o.First, err, StitchPort, c.Lab.Name)
	}
	defer resp.Body.Close()
	var jr joinResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&jr); err != nil {
		return nil, fmt.Errorf("the join endpoint answered %s with no join response", resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(jr.Error)
	}
	if jr.Lab == nil || jr.CACert == "" || jr.ClientCert == "" {
		return nil, errors.New("the join endpoint's response lacks the lab or the certificates")
	}
	if got, err := pki.ParseCert([]byte(jr.CACert)); err != nil || pki.Hash(got) != o.CAHash {
		return nil, errors.New("the join endpoint sent a CA that is not the pinned one: check --discovery-token-ca-cert-hash")
	}
	return &jr, nil
}

// ---- the join endpoint (on the first machine's control-plane node)

// ServeJoin is the join endpoint ('klab __serve --proto join', on the
// control-plane node, port 6443): it admits a machine that presents a
// valid token, records it in etcd in one transaction (token used up,
// machine and its underlay address registered), and returns the lab's
// settings, the CA and a client certificate signed for the machine.
func ServeJoin(ctx context.Context, stateDir, lab string, log io.Writer) error {
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	if l.ControlPlane == nil {
		return fmt.Errorf("lab %s has no control plane", lab)
	}
	dir := PKIDir(stateDir, lab)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.ServerCert), filepath.Join(dir, pki.ServerKey))
	if err != nil {
		return err
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return err
	}
	cli, err := agent.Dial(l.ControlPlane.Endpoints, "", 3*time.Second)
	if err != nil {
		return err
	}
	defer cli.Close()
	logf := func(format string, args ...any) {
		fmt.Fprintf(log, time.Now().Format("15:04:05.000")+" join: "+format+"\n", args...)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /join", func(w http.ResponseWriter, r *http.Request) {
		var req joinRequest
		reply := func(code int, jr joinResponse) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(jr)
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			reply(http.StatusBadRequest, joinResponse{Error: "the join request is not JSON: use klab join"})
			return
		}
		jr, code, err := admit(r.Context(), cli, stateDir, lab, ca, req)
		if err != nil {
			logf("refused %s (%s): %v", req.Name, req.Address, err)
			reply(code, joinResponse{Error: err.Error()})
			return
		}
		logf("admitted machine %s (%s) at %s", req.Name, req.Address, jr.Lab.UnderlayCIDR)
		reply(http.StatusOK, *jr)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: stdlog.New(timestamped{log, "join: "}, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", l.ControlPlane.IP, JoinPort))
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "join endpoint listening on https://%s:%d (CA %s)\n", l.ControlPlane.IP, JoinPort, pki.Hash(ca.Cert))
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// timestamped writes each line with klab's log timestamp and a prefix.
type timestamped struct {
	w      io.Writer
	prefix string
}

func (t timestamped) Write(b []byte) (int, error) {
	_, err := fmt.Fprintf(t.w, "%s %s%s", time.Now().Format("15:04:05.000"), t.prefix, b)
	return len(b), err
}

// admit checks a join request's token and registers the machine.
func admit(ctx context.Context, cli *clientv3.Client, stateDir, lab string, ca *pki.CA, req joinRequest) (*joinResponse, int, error) {
	refused := fmt.Errorf("the join token was refused by lab %s (unknown, expired or already used): create a new one with 'klab token create --lab %s' on the first machine", lab, lab)
	m := tokenRE.FindStringSubmatch(req.Token)
	if m == nil {
		return nil, http.StatusForbidden, refused
	}
	if err := netns.ValidateObject("machine", req.Name); err != nil {
		return nil, http.StatusBadRequest, err
	}
	tkey := TokensPrefix + m[1]
	r, err := cli.Get(ctx, tkey)
	if err != nil {
		return nil, http.StatusServiceUnavailable, fmt.Errorf("the first machine's etcd: %v", err)
	}
	if len(r.Kvs) != 1 {
		return nil, http.StatusForbidden, refused
	}
	var tr tokenRecord
	if json.Unmarshal(r.Kvs[0].Value, &tr) != nil || subtle.ConstantTimeCompare([]byte(tr.SecretSHA256), []byte(secretHash(m[2]))) != 1 {
		return nil, http.StatusForbidden, refused
	}
	l, err := Load(stateDir, lab)
	if err != nil {
		return nil, http.StatusServiceUnavailable, err
	}
	rec, _ := json.Marshal(machineRecord{Name: req.Name, Address: req.Address, UnderlayIP: tr.UnderlayIP})
	mkey, ukey := MachinesPrefix+req.Name, UnderlayPrefix+tr.UnderlayIP.String()
	// One transaction: the token is used up (still the one read), the
	// machine's name is new, its address is its own for good (no lease).
	t, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(tkey), "=", r.Kvs[0].ModRevision),
		clientv3.Compare(clientv3.CreateRevision(mkey), "=", 0),
	).Then(
		clientv3.OpDelete(tkey),
		clientv3.OpPut(mkey, string(rec)),
		clientv3.OpPut(ukey, "machine "+req.Name),
	).Commit()
	if err != nil {
		return nil, http.StatusServiceUnavailable, fmt.Errorf("the first machine's etcd: %v", err)
	}
	if !t.Succeeded {
		if g, _ := cli.Get(ctx, mkey); g != nil && len(g.Kvs) > 0 {
			return nil, http.StatusConflict, fmt.Errorf("a machine named %s is already part of lab %s: give this one another name with --name", req.Name, lab)
		}
		return nil, http.StatusForbidden, refused
	}
	pair, err := ca.Client("klab-machine:" + req.Name)
	if err != nil {
		return nil, http.StatusInternalServerError, err
	}
	settings := *l
	settings.Nodes, settings.Pods, settings.Servers, settings.Policies = nil, nil, nil, nil
	cp := *l.ControlPlane
	cp.Machine = nil
	settings.ControlPlane = &cp
	return &joinResponse{Lab: &settings, CACert: string(ca.PEM.Cert), ClientCert: string(pair.Cert), ClientKey: string(pair.Key)}, http.StatusOK, nil
}

// onFirstMachine refuses a change of NetworkPolicies on a machine that
// joined: they are kept in the first machine's state and published from
// there to etcd, where every machine's agents read them. (Services are
// created on any machine: serviceclaims.go.)
func (c *Cluster) onFirstMachine(what string) error {
	if !c.Lab.Joined() {
		return nil
	}
	return fmt.Errorf("this machine joined lab %s: %s are changed on its first machine (%s), whose agents and this machine's read them from etcd", c.Lab.Name, what, c.Lab.ControlPlane.Machine.First)
}

// ---- nodes across machines

// cpRegisterNode claims the node's name and underlay address in etcd
// (one transaction: a Node object at /registry/minions/NAME, the address
// at /klab/underlay/IP), moving an address another machine holds to the
// next free one unless it was asked for.
func (c *Cluster) cpRegisterNode(ctx context.Context, cli *clientv3.Client, n *Node, fixedIP bool) error {
	taken, err := underlayTaken(ctx, cli)
	if err != nil {
		return fmt.Errorf("list underlay addresses in etcd: %w", err)
	}
	owner := "node " + n.Name
	for {
		if who, ok := taken[n.IP]; ok && who != owner {
			if fixedIP {
				return fmt.Errorf("node IP %s is taken by %s (etcd key %s%s): pick another or leave --ip out", n.IP, who, UnderlayPrefix, n.IP)
			}
			used := map[netip.Addr]bool{c.Lab.UnderlayGateway: true, c.Lab.ControlPlane.IP: true}
			for ip := range taken {
				used[ip] = true
			}
			for _, o := range c.Lab.Nodes {
				used[o.IP] = true
			}
			ip, ok := nextNodeIP(c.Lab.UnderlayCIDR, used)
			if !ok {
				return fmt.Errorf("underlay network %s is full: create the lab with a larger --underlay-cidr", c.Lab.UnderlayCIDR)
			}
			n.IP = ip
		}
		obj, _ := json.Marshal(c.nodeObject(n))
		nkey, ukey := NodesPrefix+n.Name, UnderlayPrefix+n.IP.String()
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(nkey), "=", 0), clientv3.Compare(clientv3.CreateRevision(ukey), "=", 0)).
			Then(clientv3.OpPut(nkey, string(obj)), clientv3.OpPut(ukey, owner)).
			Else(clientv3.OpGet(nkey), clientv3.OpGet(ukey)).Commit()
		if err != nil {
			return fmt.Errorf("register node %s in etcd: %w", n.Name, err)
		}
		if r.Succeeded {
			return nil
		}
		if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			var o corev1.Node
			json.Unmarshal(kvs[0].Value, &o)
			if o.Labels[MachineLabel] == obj0(c).Labels[MachineLabel] && c.Lab.Node(n.Name) == nil {
				// This machine's own leftover (a node add that failed
				// after registering): take it over.
				old, _ := netip.ParseAddr(o.Annotations["flannel.alpha.coreos.com/public-ip"])
				cpUnregisterNode(ctx, cli, &Node{Name: n.Name, IP: old})
				delete(taken, old)
				continue
			}
			return fmt.Errorf("node name %q is taken in lab %s by a node of machine %s (etcd key %s): choose another name", n.Name, c.Lab.Name, o.Labels[MachineLabel], nkey)
		}
		if kvs := r.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
			taken[n.IP] = string(kvs[0].Value)
		}
	}
}

// obj0 is the Node object of no node: its labels name this machine.
func obj0(c *Cluster) *corev1.Node { return c.nodeObject(&Node{}) }

// nodeObject is the node as a Kubernetes Node.
func (c *Cluster) nodeObject(n *Node) *corev1.Node {
	machine := ""
	if m := c.Lab.ControlPlane.Machine; m != nil {
		machine = m.Name
	}
	return &corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name, MachineLabel: machine},
			Annotations: map[string]string{"flannel.alpha.coreos.com/public-ip": n.IP.String()}},
		Spec:   corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}, {Type: corev1.NodeHostName, Address: n.Name}}},
	}
}

// cpUnregisterNode removes a node's Node object and underlay address.
func cpUnregisterNode(ctx context.Context, cli *clientv3.Client, n *Node) {
	cli.Txn(ctx).Then(clientv3.OpDelete(NodesPrefix+n.Name), clientv3.OpDelete(UnderlayPrefix+n.IP.String())).Commit()
}

// RemoteNode is a node of another machine, as etcd has it.
type RemoteNode struct {
	Name, Machine string
	IP            netip.Addr
	PodCIDR       netip.Prefix
}

// RemoteNodes lists the nodes other machines hold (klab list on a lab
// that spans machines).
func (c *Cluster) RemoteNodes() ([]RemoteNode, error) {
	if !c.Lab.spansMachines() {
		return nil, nil
	}
	r, err := c.etcdPrefix(NodesPrefix)
	if err != nil {
		return nil, err
	}
	var out []RemoteNode
	for _, kv := range r.Kvs {
		var o corev1.Node
		if json.Unmarshal(kv.Value, &o) != nil || c.Lab.Node(o.Name) != nil {
			continue
		}
		rn := RemoteNode{Name: o.Name, Machine: o.Labels[MachineLabel]}
		rn.IP, _ = netip.ParseAddr(o.Annotations["flannel.alpha.coreos.com/public-ip"])
		rn.PodCIDR, _ = netip.ParsePrefix(o.Spec.PodCIDR)
		out = append(out, rn)
	}
	return out, nil
}

// leaveCluster is a joined machine's goodbye, before its lab is
// destroyed here: its nodes' leases, Node objects and addresses, and its
// machine record leave etcd, so the other machines remove their entries
// and flood destinations. Best effort: with the first machine gone, the
// lab is removed here all the same.
func leaveCluster(stateDir, lab string) {
	l, err := Load(stateDir, lab)
	if err != nil || !l.Joined() {
		return
	}
	c := &Cluster{StateDir: stateDir, Lab: l, A: &plan.Applier{}}
	defer c.A.Close()
	// The agents go first: an agent whose lease is deleted takes it again.
	for _, s := range l.Servers {
		if s.Proto == "agent" || s.Proto == "machine" {
			stopPID(s.PID, c.NS(s.Target))
		}
	}
	cli, err := c.etcd()
	if err != nil {
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reg := &agent.Registry{Cli: cli, Prefix: agent.DefaultPrefix}
	for _, n := range l.Nodes {
		reg.Delete(ctx, n.PodCIDR)
		cpUnregisterNode(ctx, cli, n)
		cli.Delete(ctx, ProxyAckPrefix+n.Name)
	}
	// Its Services, their slices and claims (serviceclaims.go).
	for _, s := range l.Services {
		_, _, dels := claimOps(s)
		cli.Txn(ctx).Then(append(dels, clientv3.OpDelete(ServiceKey(s)), clientv3.OpDelete(EndpointSliceKey(s)))...).Commit()
	}
	m := l.ControlPlane.Machine
	cli.Txn(ctx).Then(clientv3.OpDelete(MachinesPrefix+m.Name), clientv3.OpDelete(UnderlayPrefix+m.UnderlayIP.String())).Commit()
}
