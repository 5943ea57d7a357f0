package bridge

import (
	"errors"
	"fmt"
	"net"

	"github.com/klab-dev/klab/pkg/explain"
	"github.com/vishvananda/netlink"
)

// DefaultName is the bridge name the CNI bridge plugin uses in flannel's
// default configuration (cbr0 network, bridge cni0).
const DefaultName = "cni0"

// Config describes one bridge in one namespace.
type Config struct {
	NS      string           // namespace name, for messages and --explain
	Name    string           // bridge name, e.g. cni0
	Gateway *net.IPNet       // address of the bridge, e.g. 10.244.1.1/24; nil for none
	MTU     int              // 0 leaves the kernel default
	MAC     net.HardwareAddr // pinned MAC; nil lets the kernel choose
}

// Ensure creates or updates the bridge described by cfg through h (a handle
// in the namespace) and brings it up. It is idempotent. A link that holds
// the name but is not a bridge is an error: klab never deletes what it does
// not recognise.
func Ensure(h *netlink.Handle, cfg Config, log *explain.Log) (*netlink.Bridge, error) {
	link, err := h.LinkByName(cfg.Name)
	var br *netlink.Bridge
	switch {
	case err == nil:
		b, ok := link.(*netlink.Bridge)
		if !ok {
			return nil, fmt.Errorf("%s in namespace %s is a %s, not a bridge: delete it (ip -n %s link del %s) and try again", cfg.Name, cfg.NS, link.Type(), cfg.NS, cfg.Name)
		}
		br = b
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Name
		attrs.MTU = cfg.MTU
		attrs.HardwareAddr = cfg.MAC
		// STP stays off (the kernel default), as the CNI bridge plugin
		// leaves it: a pod bridge has no loops, and STP would hold new ports
		// in the listening state for 30 seconds.
		br = &netlink.Bridge{LinkAttrs: attrs}
		if err := h.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("create bridge %s in %s: %w", cfg.Name, cfg.NS, err)
		}
		log.IP(cfg.NS, "link add %s%s type bridge", cfg.Name, mtuArg(cfg.MTU))
		if cfg.MAC != nil {
			log.IP(cfg.NS, "link set %s address %s", cfg.Name, cfg.MAC)
		}
	default:
		return nil, fmt.Errorf("look up %s in %s: %w", cfg.Name, cfg.NS, err)
	}
	if cfg.MTU != 0 && br.MTU != cfg.MTU {
		if err := h.LinkSetMTU(br, cfg.MTU); err != nil {
			return nil, fmt.Errorf("set MTU of %s in %s: %w", cfg.Name, cfg.NS, err)
		}
		log.IP(cfg.NS, "link set %s mtu %d", cfg.Name, cfg.MTU)
	}
	if cfg.MAC != nil && br.HardwareAddr.String() != cfg.MAC.String() && br.Attrs().Index != 0 {
		if err := h.LinkSetHardwareAddr(br, cfg.MAC); err != nil {
			return nil, fmt.Errorf("pin MAC of %s in %s: %w", cfg.Name, cfg.NS, err)
		}
	}
	if cfg.Gateway != nil {
		if err := h.AddrReplace(br, &netlink.Addr{IPNet: cfg.Gateway}); err != nil {
			return nil, fmt.Errorf("add address %s to %s in %s: %w", cfg.Gateway, cfg.Name, cfg.NS, err)
		}
		log.IP(cfg.NS, "addr add %s dev %s", cfg.Gateway, cfg.Name)
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set %s up in %s: %w", cfg.Name, cfg.NS, err)
	}
	log.IP(cfg.NS, "link set %s up", cfg.Name)
	return br, nil
}

// Delete removes the bridge if it exists (ports are released, not deleted).
func Delete(h *netlink.Handle, ns, name string, log *explain.Log) error {
	link, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", name, ns, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s in namespace %s is a %s, not a bridge: not deleting it", name, ns, link.Type())
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("delete bridge %s in %s: %w", name, ns, err)
	}
	log.IP(ns, "link del %s", name)
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
