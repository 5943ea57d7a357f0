package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klab-dev/klab/pkg/plan"
)

// ErrExhausted is returned when a range has no free address or subnet left.
var ErrExhausted = errors.New("no free address left")

// ParseCIDR parses a network in CIDR form and insists that it is the network
// address itself (10.244.1.0/24, not 10.244.1.7/24), with a clear message.
func ParseCIDR(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s %q is not a valid CIDR: write it like 10.244.0.0/16", what, s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s %q is not IPv4: klab builds IPv4 networks, write it like 10.244.0.0/16", what, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s %q has host bits set: did you mean %s?", what, s, p.Masked())
	}
	return p, nil
}

// Overlaps reports whether two prefixes share any address.
func Overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

// NextSubnet returns the first subnet of length bits inside network that
// overlaps none of used, starting with the second one: like flannel's
// default SubnetMin, the subnet holding the network address is skipped, so
// in 10.244.0.0/16 the first node gets 10.244.1.0/24.
func NextSubnet(network netip.Prefix, bits int, used []netip.Prefix) (netip.Prefix, error) {
	if bits < network.Bits() || bits > 30 {
		return netip.Prefix{}, fmt.Errorf("subnet length /%d does not fit in %s", bits, network)
	}
	count := uint64(1) << uint(bits-network.Bits())
	base := u32(network.Addr())
	size := uint32(1) << uint(32-bits)
	for i := uint64(1); i < count; i++ {
		cand := netip.PrefixFrom(addr(base+uint32(i)*size), bits)
		free := true
		for _, u := range used {
			if u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("cluster network %s has no free /%d subnet left: %w", network, bits, ErrExhausted)
}

// Gateway is the first usable address of a subnet (10.244.1.1 in
// 10.244.1.0/24): cni0's address and the pods' default gateway.
func Gateway(subnet netip.Prefix) netip.Addr { return addr(u32(subnet.Addr()) + 1) }

// NextIP returns the first free address of subnet after last (round-robin,
// wrapping), skipping the network address, the gateway, the broadcast
// address and every address in used. An invalid last starts at the range.
func NextIP(subnet netip.Prefix, last netip.Addr, used map[netip.Addr]bool) (netip.Addr, error) {
	first := u32(subnet.Addr()) + 2 // .0 is the network, .1 the gateway
	lastAddr := u32(subnet.Addr()) + (uint32(1) << uint(32-subnet.Bits())) - 2
	if lastAddr < first {
		return netip.Addr{}, fmt.Errorf("subnet %s is too small for pods", subnet)
	}
	n := lastAddr - first + 1
	start := first
	if last.IsValid() && subnet.Contains(last) && u32(last) >= first && u32(last) <= lastAddr {
		start = u32(last) + 1
	}
	for i := uint32(0); i < n; i++ {
		c := start + i
		if c > lastAddr {
			c = first + (c - lastAddr - 1)
		}
		a := addr(c)
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s is full: %w", subnet, ErrExhausted)
}

// Nth returns the address at offset n from the start of p (p's network
// address + n), or false if it falls outside p.
func Nth(p netip.Prefix, n int) (netip.Addr, bool) {
	a := addr(u32(p.Addr()) + uint32(n))
	return a, n >= 0 && p.Contains(a)
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// IPNet converts a prefix with a host address into the *net.IPNet netlink
// wants (10.244.1.2/24 keeps its host part).
func IPNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// Store is a host-local style allocation directory for one subnet:
// <dir>/<ip> files holding "<id>\n<ifname>", and <dir>/last_reserved_ip.0.
type Store struct {
	Dir    string
	Subnet netip.Prefix
}

const lastFile = "last_reserved_ip.0"

// Allocate reserves an address for id: want if it is valid, else the next
// free one. It fails if want is outside the subnet, reserved for the
// gateway, or already held by another id.
func (s Store) Allocate(id, ifname string, want netip.Addr) (netip.Addr, error) {
	addrs, err := s.AllocateMany([]Request{{ID: id, IfName: ifname, Want: want}})
	if err != nil {
		return netip.Addr{}, err
	}
	return addrs[0], nil
}

// Request asks AllocateMany for one address: Want if valid, else the next
// free one.
type Request struct {
	ID, IfName string
	Want       netip.Addr
}

// AllocateMany reserves addresses for several ids, with exactly the result
// of calling Allocate for each request in order, but reading the directory
// once and writing last_reserved_ip.0 once. Every request is checked before
// anything is written, so a bad request reserves nothing. It is Plan, then
// Record.
func (s Store) AllocateMany(reqs []Request) ([]netip.Addr, error) {
	addrs, err := s.Plan(reqs)
	if err != nil {
		return nil, err
	}
	if err := s.Record(reqs, addrs); err != nil {
		return nil, err
	}
	return addrs, nil
}

// Plan chooses the addresses AllocateMany would reserve, and checks every
// request, without writing anything.
func (s Store) Plan(reqs []Request) ([]netip.Addr, error) { return s.PlanIgnoring(reqs, nil) }

// PlanIgnoring is Plan with the addresses held by the ids in stale taken
// as free: their release is planned before the new reservations.
func (s Store) PlanIgnoring(reqs []Request, stale map[string]bool) ([]netip.Addr, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	used, err := s.Used()
	if err != nil {
		return nil, err
	}
	for a, owner := range used {
		if stale[owner] {
			delete(used, a)
		}
	}
	last := s.last()
	taken := make(map[netip.Addr]bool, len(used)+len(reqs))
	for k := range used {
		taken[k] = true
	}
	out := make([]netip.Addr, len(reqs))
	for i, r := range reqs {
		var a netip.Addr
		if r.Want.IsValid() {
			switch {
			case !s.Subnet.Contains(r.Want):
				return nil, fmt.Errorf("address %s is outside the node's pod subnet %s: pick one inside it or leave --ip out", r.Want, s.Subnet)
			case r.Want == s.Subnet.Addr() || r.Want == Gateway(s.Subnet) || r.Want == s.broadcast():
				return nil, fmt.Errorf("address %s is the network, gateway or broadcast address of %s: pick another", r.Want, s.Subnet)
			case used[r.Want] != "" && used[r.Want] != r.ID:
				return nil, fmt.Errorf("address %s is already used by %s: pick another or leave --ip out", r.Want, used[r.Want])
			}
			a = r.Want
		} else if a, err = NextIP(s.Subnet, last, taken); err != nil {
			return nil, err
		}
		used[a], taken[a], last = r.ID, true, a
		out[i] = a
	}
	return out, nil
}

// Record writes the reservations Plan chose: one file per address and
// last_reserved_ip.0 (RecordOps, applied).
func (s Store) Record(reqs []Request, addrs []netip.Addr) error {
	return (&plan.Applier{}).Apply(s.RecordOps(reqs, addrs))
}

// RecordOps returns the file writes that record the reservations Plan
// chose, in host-local's layout: a file named by each address holding the
// owner's id and interface, then last_reserved_ip.0.
func (s Store) RecordOps(reqs []Request, addrs []netip.Addr) plan.Plan {
	if len(reqs) == 0 {
		return nil
	}
	var p plan.Plan
	for i, r := range reqs {
		p.Add(plan.Op{Verb: plan.WriteFile, New: true, File: &plan.File{Path: filepath.Join(s.Dir, addrs[i].String()), Data: []byte(r.ID + "\n" + r.IfName), Mode: 0o600}})
	}
	p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: filepath.Join(s.Dir, lastFile), Data: []byte(addrs[len(addrs)-1].String()), Mode: 0o600}})
	return p
}

// last is the address last_reserved_ip.0 holds, or the zero Addr.
func (s Store) last() netip.Addr {
	b, err := os.ReadFile(filepath.Join(s.Dir, lastFile))
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(strings.TrimSpace(string(b)))
	return a
}

// Release frees every address held by id. It is idempotent.
func (s Store) Release(id string) error {
	p, err := s.ReleaseOps(id)
	if err != nil {
		return err
	}
	return (&plan.Applier{}).Apply(p)
}

// ReleaseOps returns the file removals that free every address held by id.
func (s Store) ReleaseOps(id string) (plan.Plan, error) {
	used, err := s.Used()
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for a, owner := range used {
		if owner == id {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var p plan.Plan
	for _, a := range addrs {
		p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: filepath.Join(s.Dir, a.String())}})
	}
	return p, nil
}

// Used maps every allocated address to its owner id.
func (s Store) Used() (map[netip.Addr]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[netip.Addr]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	out := make(map[netip.Addr]string, len(ents))
	for _, e := range ents {
		a, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name()))
		if err != nil {
			continue
		}
		id, _, _ := strings.Cut(string(b), "\n")
		out[a] = strings.TrimSpace(id)
	}
	return out, nil
}

func (s Store) broadcast() netip.Addr {
	return addr(u32(s.Subnet.Addr()) + (uint32(1) << uint(32-s.Subnet.Bits())) - 1)
}
