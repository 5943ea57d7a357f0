package veth

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// MaxNameLen is the kernel's limit for interface names (IFNAMSIZ - 1).
const MaxNameLen = 15

// HostName returns the outer-end name for an attachment identified by key,
// "veth" + 8 hex digits, like the CNI plugins' generated names. It is
// deterministic so that klab finds the same link again after a crash.
func HostName(key string) string {
	sum := sha1.Sum([]byte(key))
	return "veth" + hex.EncodeToString(sum[:4])
}

// Route is a route installed inside the namespace through its eth0.
type Route struct {
	Dst *net.IPNet // nil means the default route
	Gw  net.IP
}

func (r Route) String() string {
	dst := "default"
	if r.Dst != nil {
		dst = r.Dst.String()
	}
	return fmt.Sprintf("%s via %s", dst, r.Gw)
}

// Attachment describes one veth pair between an outer namespace (holding
// a bridge) and an inner one (a pod or a node).
type Attachment struct {
	OuterNS    string // namespace name of the bridge side
	OuterIface string // outer end name, e.g. veth1a2b3c4d or node1
	Bridge     string // bridge to enslave the outer end to ("" for none)
	Hairpin    bool   // hairpin mode on the bridge port
	// OuterAddr is an address on the outer end, for a routed link (no
	// Bridge): the outer namespace is then the inner one's gateway.
	OuterAddr  *net.IPNet
	InnerNS    string // namespace name of the inner side
	InnerIface string // inner end name, usually eth0
	Addr       *net.IPNet
	MTU        int
	MAC        net.HardwareAddr // inner end MAC; nil lets the kernel choose
	Routes     []Route
}

// Validate checks names against the kernel's limit.
func (a Attachment) Validate() error {
	for _, n := range []string{a.OuterIface, a.InnerIface} {
		if len(n) == 0 || len(n) > MaxNameLen {
			return fmt.Errorf("interface name %q must be 1-%d bytes long (the kernel's limit): choose a shorter name", n, MaxNameLen)
		}
	}
	return nil
}

// Ensure creates the pair if the outer end does not exist yet and
// configures both ends. outer and inner are netlink handles in OuterNS and
// InnerNS; innerNS is an open handle of the inner namespace (the peer is
// created directly inside it).
func Ensure(outer, inner *netlink.Handle, innerNS vnetns.NsHandle, a Attachment, log *explain.Log) error {
	if err := a.Validate(); err != nil {
		return err
	}
	var masterIdx int
	if a.Bridge != "" {
		br, err := outer.LinkByName(a.Bridge)
		if err != nil {
			return fmt.Errorf("find bridge %s in %s: %w", a.Bridge, a.OuterNS, err)
		}
		masterIdx = br.Attrs().Index
	}
	link, err := outer.LinkByName(a.OuterIface)
	if err == nil {
		if _, ok := link.(*netlink.Veth); ok {
			if _, ierr := inner.LinkByName(a.InnerIface); isNotFound(ierr) {
				// A leftover outer end whose peer is not in the inner
				// namespace: the inner namespace was deleted and the kernel
				// has not freed the pair yet (it does so asynchronously),
				// or the peer went elsewhere. Replace the pair.
				if err := outer.LinkDel(link); err != nil && !isNotFound(err) {
					return fmt.Errorf("delete stale veth %s in %s: %w", a.OuterIface, a.OuterNS, err)
				}
				log.IP(a.OuterNS, "link del %s", a.OuterIface)
				link, err = nil, netlink.LinkNotFoundError{}
			}
		}
	}
	if err != nil {
		if !isNotFound(err) {
			return fmt.Errorf("look up %s in %s: %w", a.OuterIface, a.OuterNS, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = a.OuterIface
		attrs.MTU = a.MTU
		attrs.MasterIndex = masterIdx
		attrs.Flags = net.FlagUp // created up: one round trip fewer
		v := &netlink.Veth{LinkAttrs: attrs, PeerName: a.InnerIface, PeerNamespace: netlink.NsFd(innerNS), PeerMTU: uint32(a.MTU), PeerHardwareAddr: a.MAC}
		if err := outer.LinkAdd(v); err != nil {
			if errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("create veth %s in %s: an interface named %s already exists in %s: %w", a.OuterIface, a.OuterNS, a.InnerIface, a.InnerNS, err)
			}
			return fmt.Errorf("create veth %s in %s (peer %s in %s): %w", a.OuterIface, a.OuterNS, a.InnerIface, a.InnerNS, err)
		}
		log.IP(a.OuterNS, "link add %s%s type veth peer name %s netns %s", a.OuterIface, mtuArg(a.MTU), a.InnerIface, a.InnerNS)
		if a.Bridge != "" {
			log.IP(a.OuterNS, "link set %s master %s", a.OuterIface, a.Bridge)
		}
		link = v
	} else if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("%s in namespace %s is a %s, not a veth: delete it and try again", a.OuterIface, a.OuterNS, link.Type())
	} else if masterIdx != 0 && link.Attrs().MasterIndex != masterIdx {
		if err := outer.LinkSetMasterByIndex(link, masterIdx); err != nil {
			return fmt.Errorf("enslave %s to %s in %s: %w", a.OuterIface, a.Bridge, a.OuterNS, err)
		}
		log.IP(a.OuterNS, "link set %s master %s", a.OuterIface, a.Bridge)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := outer.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in %s: %w", a.OuterIface, a.OuterNS, err)
		}
	}
	log.IP(a.OuterNS, "link set %s up", a.OuterIface)
	if a.OuterAddr != nil {
		if err := outer.AddrReplace(link, &netlink.Addr{IPNet: a.OuterAddr}); err != nil {
			return fmt.Errorf("add address %s to %s in %s: %w", a.OuterAddr, a.OuterIface, a.OuterNS, err)
		}
		log.IP(a.OuterNS, "addr add %s dev %s", a.OuterAddr, a.OuterIface)
	}
	if a.Hairpin {
		if err := outer.LinkSetHairpin(link, true); err != nil {
			return fmt.Errorf("hairpin on %s in %s: %w", a.OuterIface, a.OuterNS, err)
		}
		log.Add("bridge -n %s link set dev %s hairpin on", a.OuterNS, a.OuterIface)
	}
	return configureInner(inner, a, log)
}

func configureInner(h *netlink.Handle, a Attachment, log *explain.Log) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", a.InnerNS, err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in %s: %w", a.InnerNS, err)
		}
		log.IP(a.InnerNS, "link set lo up")
	}
	eth, err := h.LinkByName(a.InnerIface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", a.InnerIface, a.InnerNS, err)
	}
	if a.Addr != nil {
		if err := h.AddrReplace(eth, &netlink.Addr{IPNet: a.Addr}); err != nil {
			return fmt.Errorf("add address %s to %s in %s: %w", a.Addr, a.InnerIface, a.InnerNS, err)
		}
		log.IP(a.InnerNS, "addr add %s dev %s", a.Addr, a.InnerIface)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in %s: %w", a.InnerIface, a.InnerNS, err)
	}
	log.IP(a.InnerNS, "link set %s up", a.InnerIface)
	for _, r := range a.Routes {
		rt := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: r.Dst, Gw: r.Gw}
		if err := h.RouteReplace(rt); err != nil {
			return fmt.Errorf("add route %s dev %s in %s: %w", r, a.InnerIface, a.InnerNS, err)
		}
		log.IP(a.InnerNS, "route add %s dev %s", r, a.InnerIface)
	}
	return nil
}

// Delete removes the pair by deleting its outer end; the kernel deletes
// the peer with it. Deleting a pair that is already gone is not an error.
func Delete(outer *netlink.Handle, ns, iface string, log *explain.Log) error {
	link, err := outer.LinkByName(iface)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", iface, ns, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("%s in namespace %s is a %s, not a veth: not deleting it", iface, ns, link.Type())
	}
	if err := outer.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s in %s: %w", iface, ns, err)
	}
	log.IP(ns, "link del %s", iface)
	return nil
}

func mtuArg(mtu int) string {
	if mtu == 0 {
		return ""
	}
	return fmt.Sprintf(" mtu %d", mtu)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
