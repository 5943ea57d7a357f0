package vxlan

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/vishvananda/netlink"
)

const (
	// DefaultPort is the Linux kernel's VXLAN port, flannel's default.
	DefaultPort = 8472
	// DefaultVNI is flannel's default VXLAN network identifier.
	DefaultVNI = 1
	// Overhead is the encapsulation cost in bytes: outer Ethernet, IPv4,
	// UDP and VXLAN headers.
	Overhead = 50
)

// DeviceName returns flannel's device name for a VNI: flannel.<VNI>.
func DeviceName(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// Config describes a node's VTEP.
type Config struct {
	NS       string // namespace name, for messages and --explain
	VNI      int
	Port     int
	Local    net.IP // the node's underlay address
	Underlay string // the underlay device name, e.g. eth0
	MTU      int
	MAC      net.HardwareAddr // VtepMAC, fixed at creation
}

// Device is a node's flannel.<VNI> device.
type Device struct {
	h    *netlink.Handle
	ns   string
	link *netlink.Vxlan
	log  *explain.Log
}

// Peer is what a node learns about another node from its lease.
type Peer struct {
	Subnet   *net.IPNet       // the peer's pod subnet, 10.244.M.0/24
	VtepMAC  net.HardwareAddr // MAC of the peer's flannel.1
	PublicIP net.IP           // the peer's underlay address
}

// Gateway is the peer subnet's .0, the address of its flannel.1.
func (p Peer) Gateway() net.IP { return p.Subnet.IP.Mask(p.Subnet.Mask) }

// EnsureDevice creates flannel.<VNI> in the namespace behind h, or reuses a
// compatible existing one, and brings it up.
func EnsureDevice(h *netlink.Handle, cfg Config, log *explain.Log) (*Device, error) {
	name := DeviceName(cfg.VNI)
	under, err := h.LinkByName(cfg.Underlay)
	if err != nil {
		return nil, fmt.Errorf("find underlay device %s in %s: %w", cfg.Underlay, cfg.NS, err)
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: cfg.MTU, HardwareAddr: cfg.MAC, TxQLen: -1},
		VxlanId:      cfg.VNI,
		VtepDevIndex: under.Attrs().Index,
		SrcAddr:      cfg.Local,
		Port:         cfg.Port,
		Learning:     false,
	}
	link, err := h.LinkByName(name)
	switch {
	case err == nil:
		old, ok := link.(*netlink.Vxlan)
		if !ok || incompatible(old, want) != "" {
			// Like flannel's ensureLink: an incompatible device is
			// replaced, not patched, so no stale attribute survives.
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("replace incompatible %s in %s: %w", name, cfg.NS, err)
			}
			log.IP(cfg.NS, "link del %s", name)
			return EnsureDevice(h, cfg, log)
		}
		want = old
	case isNotFound(err):
		if err := h.LinkAdd(want); err != nil {
			if errors.Is(err, syscall.EEXIST) {
				return nil, fmt.Errorf("create %s in %s: another VXLAN device already uses VNI %d and port %d there: %w", name, cfg.NS, cfg.VNI, cfg.Port, err)
			}
			return nil, fmt.Errorf("create %s in %s: %w", name, cfg.NS, err)
		}
		log.IP(cfg.NS, "link add %s type vxlan id %d local %s dev %s dstport %d nolearning", name, cfg.VNI, cfg.Local, cfg.Underlay, cfg.Port)
		if cfg.MTU != 0 {
			log.IP(cfg.NS, "link set %s mtu %d", name, cfg.MTU)
		}
		if cfg.MAC != nil {
			log.IP(cfg.NS, "link set %s address %s", name, cfg.MAC)
		}
	default:
		return nil, fmt.Errorf("look up %s in %s: %w", name, cfg.NS, err)
	}
	if err := h.LinkSetUp(want); err != nil {
		return nil, fmt.Errorf("set %s up in %s: %w", name, cfg.NS, err)
	}
	log.IP(cfg.NS, "link set %s up", name)
	// Check the MAC after link up, as flannel does: the VtepMAC is
	// published to other nodes, so it must be the one we chose.
	got, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", name, cfg.NS, err)
	}
	if cfg.MAC != nil && got.Attrs().HardwareAddr.String() != cfg.MAC.String() {
		if err := h.LinkSetHardwareAddr(got, cfg.MAC); err != nil {
			return nil, fmt.Errorf("set MAC of %s in %s: %w", name, cfg.NS, err)
		}
	}
	vx, _ := got.(*netlink.Vxlan)
	if vx == nil {
		vx = want
	}
	return &Device{h: h, ns: cfg.NS, link: vx, log: log}, nil
}

// incompatible names the first attribute that differs, or "".
func incompatible(old, want *netlink.Vxlan) string {
	switch {
	case old.VxlanId != want.VxlanId:
		return "vni"
	case want.Port > 0 && old.Port != want.Port:
		return "port"
	case want.SrcAddr != nil && !old.SrcAddr.Equal(want.SrcAddr):
		return "local address"
	case want.VtepDevIndex > 0 && old.VtepDevIndex != want.VtepDevIndex:
		return "underlay device"
	case old.Learning != want.Learning:
		return "learning"
	case want.MTU != 0 && old.MTU != want.MTU:
		return "mtu"
	case want.HardwareAddr != nil && old.HardwareAddr.String() != want.HardwareAddr.String():
		return "mac"
	}
	return ""
}

// Link is the underlying netlink device.
func (d *Device) Link() *netlink.Vxlan { return d.link }

// Name of the device, flannel.<VNI>.
func (d *Device) Name() string { return d.link.Name }

// EnsureAddress gives the device the node subnet's .0 as a /32, as flannel
// does: a /32 keeps the kernel from adding a connected route for the whole
// cluster network through the tunnel.
func (d *Device) EnsureAddress(subnet *net.IPNet) error {
	a := &net.IPNet{IP: subnet.IP.Mask(subnet.Mask), Mask: net.CIDRMask(32, 32)}
	if err := d.h.AddrReplace(d.link, &netlink.Addr{IPNet: a}); err != nil {
		return fmt.Errorf("add address %s to %s in %s: %w", a, d.Name(), d.ns, err)
	}
	d.log.IP(d.ns, "addr add %s dev %s", a, d.Name())
	return nil
}

// AddARP installs the permanent neighbour entry for a peer's VTEP.
func (d *Device) AddARP(p Peer) error {
	n := &netlink.Neigh{LinkIndex: d.link.Index, State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: p.Gateway(), HardwareAddr: p.VtepMAC, Family: netlink.FAMILY_V4}
	if err := d.h.NeighSet(n); err != nil {
		return fmt.Errorf("add ARP entry %s lladdr %s dev %s in %s: %w", p.Gateway(), p.VtepMAC, d.Name(), d.ns, err)
	}
	d.log.IP(d.ns, "neigh replace %s lladdr %s dev %s nud permanent", p.Gateway(), p.VtepMAC, d.Name())
	return nil
}

// AddFDB tells the device which underlay host a VTEP MAC lives behind.
func (d *Device) AddFDB(p Peer) error {
	n := fdbEntry(d.link.Index, p)
	if err := d.h.NeighSet(n); err != nil {
		return fmt.Errorf("add FDB entry %s dst %s dev %s in %s: %w", p.VtepMAC, p.PublicIP, d.Name(), d.ns, err)
	}
	d.log.Add("bridge -n %s fdb replace %s dev %s dst %s self permanent", d.ns, p.VtepMAC, d.Name(), p.PublicIP)
	return nil
}

func fdbEntry(idx int, p Peer) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: p.PublicIP, HardwareAddr: p.VtepMAC}
}

func (d *Device) route(p Peer) *netlink.Route {
	return &netlink.Route{LinkIndex: d.link.Index, Dst: p.Subnet, Gw: p.Gateway(), Flags: int(netlink.FLAG_ONLINK), Scope: netlink.SCOPE_UNIVERSE}
}

// AddRoute routes the peer's subnet through the tunnel, onlink via its .0.
func (d *Device) AddRoute(p Peer) error {
	if err := d.h.RouteReplace(d.route(p)); err != nil {
		return fmt.Errorf("add route %s via %s dev %s onlink in %s: %w", p.Subnet, p.Gateway(), d.Name(), d.ns, err)
	}
	d.log.IP(d.ns, "route replace %s via %s dev %s onlink", p.Subnet, p.Gateway(), d.Name())
	return nil
}

// AddPeer programs the three entries for a peer in flannel's order: ARP,
// FDB, then the route (see the package comment for why).
func (d *Device) AddPeer(p Peer) error {
	if err := d.AddARP(p); err != nil {
		return err
	}
	if err := d.AddFDB(p); err != nil {
		return err
	}
	return d.AddRoute(p)
}

// DelPeer removes a peer's entries, route first, so no packet is routed
// into the tunnel towards a VTEP whose entries are half gone. Missing
// entries are not an error.
func (d *Device) DelPeer(p Peer) error {
	if err := d.h.RouteDel(d.route(p)); err != nil && !gone(err) {
		return fmt.Errorf("delete route %s in %s: %w", p.Subnet, d.ns, err)
	}
	d.log.IP(d.ns, "route del %s via %s dev %s onlink", p.Subnet, p.Gateway(), d.Name())
	if err := d.h.NeighDel(fdbEntry(d.link.Index, p)); err != nil && !gone(err) {
		return fmt.Errorf("delete FDB entry %s in %s: %w", p.VtepMAC, d.ns, err)
	}
	d.log.Add("bridge -n %s fdb del %s dev %s dst %s self", d.ns, p.VtepMAC, d.Name(), p.PublicIP)
	n := &netlink.Neigh{LinkIndex: d.link.Index, IP: p.Gateway(), Family: netlink.FAMILY_V4}
	if err := d.h.NeighDel(n); err != nil && !gone(err) {
		return fmt.Errorf("delete ARP entry %s in %s: %w", p.Gateway(), d.ns, err)
	}
	d.log.IP(d.ns, "neigh del %s dev %s", p.Gateway(), d.Name())
	return nil
}

// HostGWRoute is the host-gw backend's only entry per peer: the peer's pod
// subnet via its underlay address, on the underlay device.
func HostGWRoute(underlayIndex int, p Peer) *netlink.Route {
	return &netlink.Route{LinkIndex: underlayIndex, Dst: p.Subnet, Gw: p.PublicIP}
}

// EnsureHostGW installs the host-gw route for a peer.
func EnsureHostGW(h *netlink.Handle, ns, underlay string, p Peer, log *explain.Log) error {
	dev, err := h.LinkByName(underlay)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", underlay, ns, err)
	}
	if err := h.RouteReplace(HostGWRoute(dev.Attrs().Index, p)); err != nil {
		return fmt.Errorf("add route %s via %s dev %s in %s: %w", p.Subnet, p.PublicIP, underlay, ns, err)
	}
	log.IP(ns, "route replace %s via %s dev %s", p.Subnet, p.PublicIP, underlay)
	return nil
}

// DeleteHostGW removes the host-gw route for a peer; a missing route is
// not an error.
func DeleteHostGW(h *netlink.Handle, ns, underlay string, p Peer, log *explain.Log) error {
	dev, err := h.LinkByName(underlay)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", underlay, ns, err)
	}
	if err := h.RouteDel(HostGWRoute(dev.Attrs().Index, p)); err != nil && !gone(err) {
		return fmt.Errorf("delete route %s in %s: %w", p.Subnet, ns, err)
	}
	log.IP(ns, "route del %s via %s dev %s", p.Subnet, p.PublicIP, underlay)
	return nil
}

// SubnetEnv renders flannel's /run/flannel/subnet.env for a node.
func SubnetEnv(network, subnet *net.IPNet, mtu int, ipMasq bool) string {
	gw := make(net.IP, 4)
	copy(gw, subnet.IP.To4())
	gw[3]++
	ones, _ := subnet.Mask.Size()
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", network, gw, ones, mtu, ipMasq)
}

// WriteSubnetEnv writes subnet.env atomically (write, then rename).
func WriteSubnetEnv(path string, network, subnet *net.IPNet, mtu int, ipMasq bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(SubnetEnv(network, subnet, mtu, ipMasq)), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	explain.CrashPoint()
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// gone reports errors meaning "that entry is not there".
func gone(err error) bool {
	return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV)
}

// LookupDevice opens the existing flannel.<VNI> device in the namespace
// behind h, without changing it.
func LookupDevice(h *netlink.Handle, ns string, vni int, log *explain.Log) (*Device, error) {
	name := DeviceName(vni)
	link, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, ns, err)
	}
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		return nil, fmt.Errorf("%s in %s is a %s, not a vxlan device", name, ns, link.Type())
	}
	return &Device{h: h, ns: ns, link: vx, log: log}, nil
}
