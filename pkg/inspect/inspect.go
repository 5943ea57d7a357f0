package inspect

import (
	"fmt"
	"github.com/klab-dev/klab/pkg/plan"
	"net"
	"sort"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is one network device.
type Link struct {
	Index   int    `json:"index"`
	Name    string `json:"name"`
	Type    string `json:"type"`
	MTU     int    `json:"mtu"`
	MAC     string `json:"mac,omitempty"`
	Master  string `json:"master,omitempty"`
	Up      bool   `json:"up"`
	Hairpin bool   `json:"hairpin,omitempty"`
	// VXLAN attributes, for vxlan devices.
	VNI      int    `json:"vni,omitempty"`
	Port     int    `json:"port,omitempty"`
	Local    string `json:"local,omitempty"`
	Dev      string `json:"dev,omitempty"`
	Learning *bool  `json:"learning,omitempty"`
}

// Addr is one IPv4 address.
type Addr struct {
	Dev  string `json:"dev"`
	CIDR string `json:"cidr"`
}

// Route is one IPv4 route of the main table.
type Route struct {
	Dst    string `json:"dst"`
	Gw     string `json:"gw,omitempty"`
	Dev    string `json:"dev"`
	Src    string `json:"src,omitempty"`
	Proto  string `json:"proto,omitempty"`
	Scope  string `json:"scope,omitempty"`
	Onlink bool   `json:"onlink,omitempty"`
	// Type is "blackhole" for a blackhole route (Calico's blocks), empty
	// for a unicast one.
	Type string `json:"type,omitempty"`
}

// Neigh is one IPv4 neighbour (ARP) entry.
type Neigh struct {
	IP    string `json:"ip"`
	MAC   string `json:"mac,omitempty"`
	Dev   string `json:"dev"`
	State string `json:"state"`
}

// FDB is one forwarding database entry (bridge fdb).
type FDB struct {
	MAC   string `json:"mac"`
	Dev   string `json:"dev"`
	Dst   string `json:"dst,omitempty"`
	Self  bool   `json:"self,omitempty"`
	State string `json:"state"`
}

// Snapshot is a namespace's network state.
type Snapshot struct {
	Links  []Link  `json:"links"`
	Addrs  []Addr  `json:"addresses"`
	Routes []Route `json:"routes"`
	Neighs []Neigh `json:"neighbours"`
	FDB    []FDB   `json:"fdb"`
}

// retry is plan.Dump: a dump interrupted by a concurrent change
// (NLM_F_DUMP_INTR) is repeated, as iproute2 users are told to.
func retry[T any](f func() (T, error)) (T, error) { return plan.Dump(f) }

// Take reads a snapshot through h (a netlink handle in the namespace).
func Take(h *netlink.Handle) (*Snapshot, error) {
	links, err := retry(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	s := &Snapshot{}
	for _, l := range links {
		a := l.Attrs()
		lk := Link{Index: a.Index, Name: a.Name, Type: l.Type(), MTU: a.MTU, Master: names[a.MasterIndex], Up: a.Flags&net.FlagUp != 0}
		if len(a.HardwareAddr) > 0 && a.Name != "lo" {
			lk.MAC = a.HardwareAddr.String()
		}
		if a.MasterIndex != 0 {
			if pi, err := h.LinkGetProtinfo(l); err == nil {
				lk.Hairpin = pi.Hairpin
			}
		}
		if vx, ok := l.(*netlink.Vxlan); ok {
			lk.VNI, lk.Port, lk.Dev = vx.VxlanId, vx.Port, names[vx.VtepDevIndex]
			if vx.SrcAddr != nil {
				lk.Local = vx.SrcAddr.String()
			}
			learning := vx.Learning
			lk.Learning = &learning
		}
		s.Links = append(s.Links, lk)
	}
	addrs, err := retry(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, Addr{Dev: names[a.LinkIndex], CIDR: a.IPNet.String()})
	}
	routes, err := retry(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		rt := Route{Dst: "default", Dev: names[r.LinkIndex], Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				rt.Dst = r.Dst.String()
			}
		}
		if r.Gw != nil {
			rt.Gw = r.Gw.String()
		}
		if r.Src != nil {
			rt.Src = r.Src.String()
		}
		if r.Protocol == 2 {
			rt.Proto = "kernel"
		}
		if r.Protocol == unix.RTPROT_BIRD {
			rt.Proto = "bird" // BIRD's routes (the calico backend)
		}
		if r.Type == unix.RTN_BLACKHOLE {
			rt.Type = "blackhole"
		}
		if r.Scope == netlink.SCOPE_LINK {
			rt.Scope = "link"
		}
		s.Routes = append(s.Routes, rt)
	}
	neighs, err := retry(func() ([]netlink.Neigh, error) { return h.NeighList(0, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range neighs {
		ne := Neigh{IP: n.IP.String(), Dev: names[n.LinkIndex], State: neighState(n.State)}
		if len(n.HardwareAddr) > 0 {
			ne.MAC = n.HardwareAddr.String()
		}
		s.Neighs = append(s.Neighs, ne)
	}
	fdb, err := retry(func() ([]netlink.Neigh, error) { return h.NeighList(0, syscall.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list fdb: %w", err)
	}
	for _, n := range fdb {
		mac := n.HardwareAddr.String()
		// Skip the multicast/broadcast entries every port has.
		if len(n.HardwareAddr) == 0 || n.HardwareAddr[0]&1 == 1 {
			continue
		}
		f := FDB{MAC: mac, Dev: names[n.LinkIndex], Self: n.Flags&netlink.NTF_SELF != 0, State: fdbState(n.State)}
		if n.IP != nil {
			f.Dst = n.IP.String()
		}
		s.FDB = append(s.FDB, f)
	}
	sortSnapshot(s)
	return s, nil
}

func sortSnapshot(s *Snapshot) {
	sort.Slice(s.Links, func(i, j int) bool { return s.Links[i].Index < s.Links[j].Index })
	sort.SliceStable(s.Routes, func(i, j int) bool {
		if (s.Routes[i].Dst == "default") != (s.Routes[j].Dst == "default") {
			return s.Routes[i].Dst == "default"
		}
		return s.Routes[i].Dst < s.Routes[j].Dst
	})
	sort.Slice(s.Neighs, func(i, j int) bool { return s.Neighs[i].IP < s.Neighs[j].IP })
	sort.Slice(s.FDB, func(i, j int) bool { return s.FDB[i].Dev+s.FDB[i].MAC < s.FDB[j].Dev+s.FDB[j].MAC })
}

func neighState(st int) string {
	var out []string
	for _, x := range []struct {
		bit  int
		name string
	}{{netlink.NUD_PERMANENT, "PERMANENT"}, {netlink.NUD_REACHABLE, "REACHABLE"}, {netlink.NUD_STALE, "STALE"}, {netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"}, {netlink.NUD_FAILED, "FAILED"}, {netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_NOARP, "NOARP"}} {
		if st&x.bit != 0 {
			out = append(out, x.name)
		}
	}
	if len(out) == 0 {
		return "NONE"
	}
	return strings.Join(out, ",")
}

func fdbState(st int) string {
	switch {
	case st&netlink.NUD_PERMANENT != 0:
		return "permanent"
	case st&netlink.NUD_NOARP != 0:
		return "static"
	}
	return ""
}

// Lines renders the snapshot as iproute2-style lines, grouped by kind.
func (s *Snapshot) Lines() map[string][]string {
	out := map[string][]string{}
	for _, l := range s.Links {
		out["links"] = append(out["links"], l.String())
	}
	for _, a := range s.Addrs {
		out["addresses"] = append(out["addresses"], fmt.Sprintf("%s dev %s", a.CIDR, a.Dev))
	}
	for _, r := range s.Routes {
		out["routes"] = append(out["routes"], r.String())
	}
	for _, n := range s.Neighs {
		out["neighbours"] = append(out["neighbours"], n.String())
	}
	for _, f := range s.FDB {
		out["fdb"] = append(out["fdb"], f.String())
	}
	return out
}

// Kinds is the order in which snapshot sections are printed.
var Kinds = []string{"links", "addresses", "routes", "neighbours", "fdb"}

func (l Link) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s mtu %d", l.Name, l.Type, l.MTU)
	if l.MAC != "" {
		fmt.Fprintf(&b, " link/ether %s", l.MAC)
	}
	if l.Master != "" {
		fmt.Fprintf(&b, " master %s", l.Master)
	}
	if l.Up {
		b.WriteString(" UP")
	} else {
		b.WriteString(" DOWN")
	}
	if l.Hairpin {
		b.WriteString(" hairpin on")
	}
	if l.Type == "vxlan" {
		fmt.Fprintf(&b, " (vxlan id %d local %s dev %s dstport %d", l.VNI, l.Local, l.Dev, l.Port)
		if l.Learning != nil && !*l.Learning {
			b.WriteString(" nolearning")
		}
		b.WriteString(")")
	}
	return b.String()
}

func (r Route) String() string {
	var b strings.Builder
	if r.Type != "" {
		b.WriteString(r.Type + " ")
	}
	b.WriteString(r.Dst)
	if r.Gw != "" {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.Dev != "" || r.Type == "" {
		fmt.Fprintf(&b, " dev %s", r.Dev)
	}
	if r.Proto != "" {
		fmt.Fprintf(&b, " proto %s", r.Proto)
	}
	if r.Scope != "" {
		fmt.Fprintf(&b, " scope %s", r.Scope)
	}
	if r.Src != "" {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	if r.Onlink {
		b.WriteString(" onlink")
	}
	return b.String()
}

func (n Neigh) String() string {
	if n.MAC == "" {
		return fmt.Sprintf("%s dev %s %s", n.IP, n.Dev, n.State)
	}
	return fmt.Sprintf("%s dev %s lladdr %s %s", n.IP, n.Dev, n.MAC, n.State)
}

func (f FDB) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s dev %s", f.MAC, f.Dev)
	if f.Dst != "" {
		fmt.Fprintf(&b, " dst %s", f.Dst)
	}
	if f.Self {
		b.WriteString(" self")
	} else {
		b.WriteString(" master")
	}
	if f.State != "" {
		fmt.Fprintf(&b, " %s", f.State)
	}
	return b.String()
}

// Diff returns, per kind, the lines present in after but not in before
// (added) and the other way round (removed).
func Diff(before, after *Snapshot) (added, removed map[string][]string) {
	added, removed = map[string][]string{}, map[string][]string{}
	b, a := before.Lines(), after.Lines()
	for _, k := range Kinds {
		bs := toSet(b[k])
		as := toSet(a[k])
		for _, l := range a[k] {
			if !bs[l] {
				added[k] = append(added[k], l)
			}
		}
		for _, l := range b[k] {
			if !as[l] {
				removed[k] = append(removed[k], l)
			}
		}
	}
	return added, removed
}

func toSet(ls []string) map[string]bool {
	m := make(map[string]bool, len(ls))
	for _, l := range ls {
		m[l] = true
	}
	return m
}
