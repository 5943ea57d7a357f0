package plan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/coreos/go-iptables/iptables"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lockWait is how long iptables commands wait for the xtables lock
// (--wait), in seconds.
const lockWait = 10

// loopbackIndex is lo's ifindex in every network namespace.
const loopbackIndex = 1

// exec carries out one operation. Errors name the object and namespace.
func (a *Applier) exec(op Op) error {
	if err := a.do(op); err != nil {
		return fmt.Errorf("%s: %w", strings.SplitN(op.command(), "\n", 2)[0], err)
	}
	return nil
}

func (a *Applier) do(op Op) error {
	switch op.Verb {
	case NetnsAdd:
		if _, err := netns.Ensure(op.NS); err != nil {
			return err
		}
		a.setIndex(op.NS, "lo", loopbackIndex)
		return nil
	case NetnsDel:
		a.Forget(op.NS)
		return netns.Delete(op.NS)
	case WriteFile:
		return writeFile(op.File)
	case RemoveFile:
		if op.File.Recurse {
			return os.RemoveAll(op.File.Path)
		}
		if err := os.Remove(op.File.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	case Exec:
		return op.Proc.Run()
	case Sysctl:
		return netns.Sysctl(op.NS, op.Key, op.Value)
	case Restore:
		return restore(op.NS, op.Rules)
	case IPTables:
		return iptablesRule(op.NS, op.Rules)
	case IPSet:
		return ipsetRestore(op.NS, op.Sets)
	case NFT:
		return op.NFT.Apply(op.NS)
	}
	h, err := a.handle(op.NS)
	if err != nil {
		return err
	}
	switch op.Verb {
	case LinkAdd:
		if op.Link.HostSocket {
			return a.linkAddHostSocket(op)
		}
		return a.linkAdd(h, op)
	case LinkDel:
		// Deleting what is already gone is done: a veth whose peer's
		// namespace was deleted goes away on its own, asynchronously.
		a.setIndex(op.NS, op.Link.Name, 0)
		l, err := h.LinkByName(op.Link.Name)
		if err != nil {
			return ignoreGone(err)
		}
		return ignoreGone(h.LinkDel(l))
	}
	if op.Route != nil && op.Route.Blackhole {
		switch op.Verb {
		case RouteReplace:
			return h.RouteReplace(route(0, op.Route))
		case RouteDel:
			return ignoreGone(h.RouteDel(route(0, op.Route)))
		}
	}
	idx, err := a.ifindex(op.NS, devOf(op))
	if err != nil {
		return err
	}
	ref := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: devOf(op)}}
	switch op.Verb {
	case LinkSetUp:
		return h.LinkSetUp(ref)
	case LinkSetMaster:
		m, err := a.ifindex(op.NS, op.Link.Master)
		if err != nil {
			return err
		}
		return h.LinkSetMasterByIndex(ref, m)
	case LinkSetMTU:
		return h.LinkSetMTU(ref, op.Link.MTU)
	case LinkSetMAC:
		return h.LinkSetHardwareAddr(ref, op.Link.MAC)
	case LinkSetHairpin:
		return h.LinkSetHairpin(ref, true)
	case AddrAdd:
		return h.AddrAdd(ref, &netlink.Addr{IPNet: ipnet(op.Addr.Prefix.Addr(), op.Addr.Prefix.Bits())})
	case AddrDel:
		return h.AddrDel(ref, &netlink.Addr{IPNet: ipnet(op.Addr.Prefix.Addr(), op.Addr.Prefix.Bits())})
	case RouteReplace:
		return h.RouteReplace(route(idx, op.Route))
	case RouteDel:
		return ignoreGone(h.RouteDel(route(idx, op.Route)))
	case NeighReplace:
		return h.NeighSet(neigh(idx, op.Neigh))
	case NeighDel:
		return ignoreGone(h.NeighDel(neigh(idx, op.Neigh)))
	case FDBReplace:
		return h.NeighSet(fdb(idx, op.Neigh))
	case FDBDel:
		return ignoreGone(h.NeighDel(fdb(idx, op.Neigh)))
	case FDBAppend:
		return h.NeighAppend(fdb(idx, op.Neigh))
	}
	return fmt.Errorf("unknown operation %q", op.Verb)
}

func devOf(op Op) string {
	switch {
	case op.Link != nil:
		return op.Link.Name
	case op.Addr != nil:
		return op.Addr.Dev
	case op.Route != nil:
		return op.Route.Dev
	case op.Neigh != nil:
		return op.Neigh.Dev
	}
	return ""
}

func ignoreGone(err error) error {
	if IsNotFound(err) {
		return nil
	}
	return err
}

func (a *Applier) linkAdd(h *netlink.Handle, op Op) error {
	l := op.Link
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr = l.Name, l.MTU, l.MAC
	if l.Up {
		attrs.Flags = net.FlagUp
	}
	if l.Master != "" {
		m, err := a.ifindex(op.NS, l.Master)
		if err != nil {
			return err
		}
		attrs.MasterIndex = m
	}
	var link netlink.Link
	switch l.Type {
	case "bridge":
		// STP stays off (the kernel default), as the CNI bridge plugin
		// leaves it: a pod bridge has no loops, and STP would hold new
		// ports in the listening state for 30 seconds.
		link = &netlink.Bridge{LinkAttrs: attrs}
	case "vxlan":
		attrs.TxQLen = -1
		dev, err := a.ifindex(op.NS, l.Dev)
		if err != nil {
			return err
		}
		link = &netlink.Vxlan{LinkAttrs: attrs, VxlanId: l.VNI, VtepDevIndex: dev, SrcAddr: l.Local.AsSlice(), Port: l.Port, Learning: l.Learning, Proxy: l.Proxy, L2miss: l.L2Miss, L3miss: l.L3Miss}
	case "veth":
		v := &netlink.Veth{LinkAttrs: attrs, PeerName: l.PeerName, PeerMTU: uint32(l.PeerMTU), PeerHardwareAddr: l.PeerMAC}
		if l.PeerNS != "" {
			fd, err := netns.Open(l.PeerNS)
			if err != nil {
				return err
			}
			defer fd.Close()
			v.PeerNamespace = netlink.NsFd(fd)
		}
		link = v
	default:
		return fmt.Errorf("link type %q is not one klab creates", l.Type)
	}
	if err := h.LinkAdd(link); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("%w: a device by that name (or, for a vxlan device, with that VNI and port) already exists", err)
		}
		return err
	}
	a.setIndex(op.NS, l.Name, link.Attrs().Index)
	return nil
}

// linkAddHostSocket creates a vxlan device from the caller's own network
// namespace (the machine's: klab's CLI never leaves it but on locked
// threads) straight into op.NS, so its UDP socket stays in the machine's
// namespace. The master is set afterwards, inside op.NS, by its own
// operation: the device's index is only known there.
func (a *Applier) linkAddHostSocket(op Op) error {
	l := op.Link
	if l.Type != "vxlan" || l.Master != "" || l.Dev != "" {
		return fmt.Errorf("only a vxlan device without master or underlay device is created from the machine's namespace")
	}
	fd, err := netns.Open(op.NS)
	if err != nil {
		return err
	}
	defer fd.Close()
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr, attrs.TxQLen = l.Name, l.MTU, l.MAC, -1
	attrs.Namespace = netlink.NsFd(fd)
	if l.Up {
		attrs.Flags = net.FlagUp
	}
	v := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: l.VNI, SrcAddr: l.Local.AsSlice(), Port: l.Port, Learning: l.Learning}
	if err := h.LinkAdd(v); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("%w: a device by that name in %s, or a vxlan device of VNI %d on UDP port %d in this machine's namespace, already exists", err, op.NS, l.VNI, l.Port)
		}
		return err
	}
	a.setIndex(op.NS, l.Name, 0)
	return nil
}

func ipnet(ip interface{ AsSlice() []byte }, bits int) *net.IPNet {
	b := ip.AsSlice()
	return &net.IPNet{IP: net.IP(b), Mask: net.CIDRMask(bits, 8*len(b))}
}

func route(idx int, r *Route) *netlink.Route {
	rt := &netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_UNIVERSE}
	if !r.IsDefault() {
		rt.Dst = ipnet(r.Dst.Addr(), r.Dst.Bits())
	}
	if r.Gw.IsValid() {
		rt.Gw = r.Gw.AsSlice()
	} else {
		rt.Scope = netlink.SCOPE_LINK
	}
	if r.Onlink {
		rt.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.Blackhole {
		rt.LinkIndex, rt.Type, rt.Scope = 0, unix.RTN_BLACKHOLE, netlink.SCOPE_UNIVERSE
	}
	return rt
}

func neigh(idx int, n *Neigh) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: n.IP.AsSlice(), HardwareAddr: n.MAC, Family: netlink.FAMILY_V4}
}

func fdb(idx int, n *Neigh) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: n.IP.AsSlice(), HardwareAddr: n.MAC}
}

func writeFile(f *File) error {
	mode := os.FileMode(f.Mode)
	if mode == 0 {
		mode = 0o644
	}
	dirMode := os.FileMode(0o755)
	if mode&0o077 == 0 {
		dirMode = 0o700
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), dirMode); err != nil {
		return err
	}
	if f.State {
		// The directory may have been created by a file written earlier
		// (subnet.env, IPAM) with a wider mode: it is klab's own.
		if err := os.Chmod(filepath.Dir(f.Path), 0o700); err != nil {
			return err
		}
	}
	if !f.Atomic && !f.State {
		return os.WriteFile(f.Path, f.Data, mode)
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.Path), "."+filepath.Base(f.Path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(f.Data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if f.State {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.Path)
}

// restore runs iptables-restore [--noflush] --wait with the input inside ns.
func restore(ns string, r *Rules) error {
	args := []string{"--noflush", "--wait"}
	if !r.NoFlush {
		args = args[1:]
	}
	var stderr bytes.Buffer
	err := netns.Do(ns, func() error {
		// Exec'd from the locked thread, the child inherits the namespace.
		cmd := exec.Command("iptables-restore", args...)
		cmd.Stdin = strings.NewReader(r.Input)
		cmd.Stderr = &stderr
		return cmd.Run()
	})
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ipsetRestore runs `ipset restore` with the input inside ns: one command
// for every set change of a plan (ipset has no transaction; the input's
// order — build in a temporary set, then swap — is what makes it atomic).
func ipsetRestore(ns, input string) error {
	var stderr bytes.Buffer
	err := netns.Do(ns, func() error {
		cmd := exec.Command("ipset", "restore")
		cmd.Stdin = strings.NewReader(input)
		cmd.Stderr = &stderr
		return cmd.Run()
	})
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// iptablesRule checks and inserts, appends or deletes one rule of a
// built-in chain with go-iptables, inside ns.
func iptablesRule(ns string, r *Rules) error {
	return netns.Do(ns, func() error {
		ipt, err := iptables.New(iptables.Timeout(lockWait))
		if err != nil {
			return err
		}
		switch r.Action {
		case "-D":
			return ipt.DeleteIfExists(r.Table, r.Chain, r.Rule...)
		case "-I":
			return ipt.InsertUnique(r.Table, r.Chain, 1, r.Rule...)
		default:
			return ipt.AppendUnique(r.Table, r.Chain, r.Rule...)
		}
	})
}

// batchSize bounds the requests sent in one sendmsg: the acknowledgement of
// a failed request carries a copy of it, and the socket's receive buffer
// must hold them all.
const batchSize = 128

// batchable returns how many operations from the start of p can go to the
// kernel in one batch: neighbour, FDB and route replacements in one
// namespace. With crash points set, every operation runs on its own, so
// that each is a point.
func (a *Applier) batchable(p Plan) int {
	if crashEnabled() {
		return 0
	}
	n := 0
	for n < len(p) && n < batchSize && (p[n].Verb == NeighReplace || p[n].Verb == FDBReplace || p[n].Verb == RouteReplace && p[n].Route.Dst.IsValid() && p[n].Route.Gw.IsValid()) && p[n].NS == p[0].NS {
		n++
	}
	return n
}

// batch sends the requests of several operations in one sendmsg on a
// netlink socket in their namespace; only the last asks for an
// acknowledgement (the kernel reports failures anyway). The entries are the
// ones NeighSet and RouteReplace would make.
func (a *Applier) batch(ops Plan) error {
	ns := ops[0].NS
	reqs := make([]*nl.NetlinkRequest, len(ops))
	for i, op := range ops {
		idx, err := a.ifindex(ns, devOf(op))
		if err != nil {
			return a.exec(op) // the same error, named
		}
		switch op.Verb {
		case NeighReplace:
			reqs[i] = neighReq(neigh(idx, op.Neigh))
		case FDBReplace:
			reqs[i] = neighReq(fdb(idx, op.Neigh))
		default:
			reqs[i] = routeReq(route(idx, op.Route))
		}
	}
	s, err := socketIn(ns)
	if err != nil {
		return err
	}
	defer s.Close()
	if i, err := send(s, reqs); err != nil {
		return fmt.Errorf("%s: %w", ops[i].command(), err)
	}
	return nil
}

// socketIn opens a raw rtnetlink socket inside namespace ns, for batched
// requests and the dumps netlink.Handle does not offer.
func socketIn(ns string) (*nl.NetlinkSocket, error) {
	fd, err := netns.Open(ns)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	s, err := nl.GetNetlinkSocketAt(fd, vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", ns, err)
	}
	return s, nil
}

// neighReq is the request netlink.Handle.NeighSet sends for n (the
// attributes klab uses: destination and link-layer address).
func neighReq(n *netlink.Neigh) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	req.AddData(&netlink.Ndmsg{Family: uint8(n.Family), Index: uint32(n.LinkIndex), State: uint16(n.State), Type: uint8(n.Type), Flags: uint8(n.Flags)})
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, n.IP.To4()))
	req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, []byte(n.HardwareAddr)))
	return req
}

// routeReq is the request netlink.Handle.RouteReplace sends for r (IPv4
// destination, gateway, device, flags, scope; main table, protocol boot).
func routeReq(r *netlink.Route) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	msg := nl.NewRtMsg()
	ones, _ := r.Dst.Mask.Size()
	msg.Dst_len = uint8(ones)
	msg.Family = unix.AF_INET
	msg.Flags = uint32(r.Flags)
	msg.Scope = uint8(r.Scope)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, r.Dst.IP.To4()))
	req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, r.Gw.To4()))
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(r.LinkIndex))
	req.AddData(nl.NewRtAttr(unix.RTA_OIF, oif))
	return req
}

// send sends reqs in one sendmsg and returns the index and error of the
// first one the kernel refused.
func send(s *nl.NetlinkSocket, reqs []*nl.NetlinkRequest) (int, error) {
	var buf []byte
	for i, r := range reqs {
		r.Seq = uint32(i + 1)
		if i == len(reqs)-1 {
			r.Flags |= unix.NLM_F_ACK
		}
		buf = append(buf, r.Serialize()...)
	}
	last := uint32(len(reqs))
	if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	failed, at := error(nil), 0
	for {
		msgs, from, err := s.Receive()
		if err != nil {
			return 0, fmt.Errorf("receive: %w", err)
		}
		if from.Pid != 0 {
			continue // not from the kernel
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq < 1 || m.Header.Seq > last || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 && failed == nil {
				failed, at = syscall.Errno(-code), int(m.Header.Seq-1)
			}
			if m.Header.Seq == last {
				return at, failed
			}
		}
	}
}
