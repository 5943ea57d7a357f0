package plan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// State is what the kernel holds in one namespace, read back once, for
// building blocks to diff their desired objects against. A namespace that
// does not exist has an empty State (Exists false): everything in it is to
// be created.
type State struct {
	NS     string
	Exists bool
	Links  map[string]*LinkState
	Routes []Route // main table, IPv4
	Neighs []Neigh // permanent IPv4 neighbours
	FDB    []Neigh // FDB entries of VXLAN devices (self, with a dst)
	// Sysctls holds the keys asked for when the state was read.
	Sysctls map[string]string
}

// LinkState is a device as the kernel has it.
type LinkState struct {
	Link        // Name, Type, MTU, MAC, Master, Up and the vxlan attributes
	Index   int // ifindex
	Addrs   []netip.Prefix
	Hairpin bool // a bridge port in hairpin mode
}

// Empty returns the State of a namespace that does not exist yet.
func Empty(ns string) *State {
	return &State{NS: ns, Links: map[string]*LinkState{}, Sysctls: map[string]string{}}
}

// Link returns the named device, or nil.
func (s *State) Link(name string) *LinkState {
	if s == nil {
		return nil
	}
	return s.Links[name]
}

// HasAddr reports whether device dev holds address p.
func (s *State) HasAddr(dev string, p netip.Prefix) bool {
	l := s.Link(dev)
	return l != nil && slices.Contains(l.Addrs, p)
}

// HasRoute reports whether the main table has route r exactly.
func (s *State) HasRoute(r Route) bool {
	return s != nil && slices.ContainsFunc(s.Routes, func(o Route) bool { return sameRoute(o, r) })
}

// RouteTo returns the route to dst (the default route for an invalid dst),
// or nil.
func (s *State) RouteTo(dst netip.Prefix) *Route {
	if s == nil {
		return nil
	}
	def := !dst.IsValid() || dst.Bits() == 0
	for i, o := range s.Routes {
		if def && o.IsDefault() || !def && !o.IsDefault() && o.Dst == dst {
			return &s.Routes[i]
		}
	}
	return nil
}

func sameRoute(a, b Route) bool {
	return a.IsDefault() == b.IsDefault() && (a.IsDefault() || a.Dst == b.Dst) && a.Gw == b.Gw && a.Dev == b.Dev && a.Onlink == b.Onlink && a.Blackhole == b.Blackhole
}

// HasNeigh reports whether a permanent neighbour entry n exists.
func (s *State) HasNeigh(n Neigh) bool {
	return s != nil && slices.ContainsFunc(s.Neighs, func(o Neigh) bool { return sameNeigh(o, n) })
}

// HasFDB reports whether FDB entry n exists.
func (s *State) HasFDB(n Neigh) bool {
	return s != nil && slices.ContainsFunc(s.FDB, func(o Neigh) bool { return sameNeigh(o, n) })
}

// NeighOf returns the neighbour entry for ip on dev, or nil.
func (s *State) NeighOf(dev string, ip netip.Addr) *Neigh {
	if s == nil {
		return nil
	}
	for i, o := range s.Neighs {
		if o.Dev == dev && o.IP == ip {
			return &s.Neighs[i]
		}
	}
	return nil
}

func sameNeigh(a, b Neigh) bool {
	return a.Dev == b.Dev && a.IP == b.IP && a.MAC.String() == b.MAC.String()
}

// Read reads the state of namespace ns: devices with their addresses, the
// main IPv4 routing table, permanent neighbours, VXLAN FDB entries and the
// sysctls named. A namespace that does not exist gives Empty(ns).
func (a *Applier) Read(ns string, sysctls ...string) (*State, error) {
	if a.Simulate || !netns.Exists(ns) {
		return Empty(ns), nil
	}
	h, err := a.handle(ns)
	if err != nil {
		return nil, err
	}
	st := Empty(ns)
	st.Exists = true
	links, err := Dump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", ns, err)
	}
	byIndex := map[int]*LinkState{}
	for _, l := range links {
		ls := linkState(l)
		st.Links[ls.Name] = ls
		byIndex[ls.Index] = ls
	}
	for _, l := range links {
		if m := l.Attrs().MasterIndex; m != 0 && byIndex[m] != nil {
			st.Links[l.Attrs().Name].Master = byIndex[m].Name
		}
		if vx, ok := l.(*netlink.Vxlan); ok && byIndex[vx.VtepDevIndex] != nil {
			st.Links[vx.Name].Dev = byIndex[vx.VtepDevIndex].Name
		}
	}
	a.remember(ns, byIndex)
	addrs, err := Dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", ns, err)
	}
	for _, ad := range addrs {
		if l := byIndex[ad.LinkIndex]; l != nil {
			if p, ok := prefixOf(ad.IPNet); ok {
				l.Addrs = append(l.Addrs, p)
			}
		}
	}
	routes, err := Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", ns, err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_BLACKHOLE && r.Dst != nil {
			dst, _ := prefixOf(r.Dst)
			st.Routes = append(st.Routes, Route{Dst: dst.Masked(), Blackhole: true})
			continue
		}
		if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue // connected routes come with addresses
		}
		l := byIndex[r.LinkIndex]
		if l == nil {
			continue
		}
		rt := Route{Dev: l.Name, Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		if r.Dst != nil {
			rt.Dst, _ = prefixOf(r.Dst)
			rt.Dst = rt.Dst.Masked()
		}
		if r.Gw != nil {
			rt.Gw, _ = netip.AddrFromSlice(r.Gw.To4())
		}
		st.Routes = append(st.Routes, rt)
	}
	neighs, err := Dump(func() ([]netlink.Neigh, error) { return h.NeighList(0, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list neighbours in %s: %w", ns, err)
	}
	for _, n := range neighs {
		if l := byIndex[n.LinkIndex]; l != nil && n.State&netlink.NUD_PERMANENT != 0 {
			ip, _ := netip.AddrFromSlice(n.IP.To4())
			st.Neighs = append(st.Neighs, Neigh{Dev: l.Name, IP: ip, MAC: n.HardwareAddr})
		}
	}
	if hasType(st, "bridge") {
		if err := readPorts(ns, byIndex); err != nil {
			return nil, fmt.Errorf("list bridge ports in %s: %w", ns, err)
		}
	}
	if hasType(st, "vxlan") {
		fdb, err := Dump(func() ([]netlink.Neigh, error) { return h.NeighList(0, unix.AF_BRIDGE) })
		if err != nil {
			return nil, fmt.Errorf("list FDB entries in %s: %w", ns, err)
		}
		for _, n := range fdb {
			l := byIndex[n.LinkIndex]
			if l == nil || l.Type != "vxlan" || n.IP == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(n.IP.To4())
			st.FDB = append(st.FDB, Neigh{Dev: l.Name, IP: ip, MAC: n.HardwareAddr})
		}
	}
	for _, k := range sysctls {
		v, err := netns.ReadSysctl(ns, k)
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s in %s: %w", k, ns, err)
		}
		st.Sysctls[k] = v
	}
	return st, nil
}

func hasType(s *State, typ string) bool {
	for _, l := range s.Links {
		if l.Type == typ {
			return true
		}
	}
	return false
}

// readPorts reads the bridge ports' settings (hairpin mode) with one
// AF_BRIDGE link dump, the request 'bridge link show' makes.
func readPorts(ns string, byIndex map[int]*LinkState) error {
	s, err := socketIn(ns)
	if err != nil {
		return err
	}
	defer s.Close()
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
	if err := s.Send(req); err != nil {
		return err
	}
	for {
		msgs, from, err := s.Receive()
		if err != nil {
			return err
		}
		if from.Pid != 0 {
			continue
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
						return syscall.Errno(-code)
					}
				}
				return nil
			}
			hdr := unix.NlMsghdr{Len: m.Header.Len, Type: m.Header.Type, Flags: m.Header.Flags, Seq: m.Header.Seq, Pid: m.Header.Pid}
			l, err := netlink.LinkDeserialize(&hdr, m.Data)
			if err != nil {
				return err
			}
			if ls := byIndex[l.Attrs().Index]; ls != nil && l.Attrs().Protinfo != nil {
				ls.Hairpin = l.Attrs().Protinfo.Hairpin
			}
		}
	}
}

func linkState(l netlink.Link) *LinkState {
	at := l.Attrs()
	ls := &LinkState{Link: Link{Name: at.Name, Type: l.Type(), MTU: at.MTU, MAC: at.HardwareAddr, Up: at.Flags&net.FlagUp != 0}, Index: at.Index}
	if vx, ok := l.(*netlink.Vxlan); ok {
		ls.VNI, ls.Port, ls.Learning = vx.VxlanId, vx.Port, vx.Learning
		ls.Proxy, ls.L2Miss, ls.L3Miss = vx.Proxy, vx.L2miss, vx.L3miss
		ls.Local, _ = netip.AddrFromSlice(vx.SrcAddr.To4())
	}
	return ls
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// Dump runs a netlink dump, again when the kernel reports that the dump was
// interrupted by a concurrent change (netlink.ErrDumpInterrupted: the
// result may be inconsistent), up to a few times.
func Dump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
		time.Sleep(time.Millisecond)
	}
	return v, err
}

// IsNotFound reports errors meaning "that object is not there": a missing
// link, route, neighbour or namespace.
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV)
}

// Drop removes device dev, and the addresses, routes and entries on it,
// from the state: a planner that plans the device's deletion calls it, so
// that what it plans next sees the namespace as it will be.
func (s *State) Drop(dev string) {
	if s == nil {
		return
	}
	delete(s.Links, dev)
	s.Routes = slices.DeleteFunc(s.Routes, func(r Route) bool { return r.Dev == dev })
	s.Neighs = slices.DeleteFunc(s.Neighs, func(n Neigh) bool { return n.Dev == dev })
	s.FDB = slices.DeleteFunc(s.FDB, func(n Neigh) bool { return n.Dev == dev })
}
