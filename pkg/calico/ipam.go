package calico

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrPoolFull is returned when the pool has no unclaimed block left.
var ErrPoolFull = errors.New("IP pool exhausted")

// ValidateBlockSize checks that blocks of that prefix length fit the pool.
func ValidateBlockSize(pool netip.Prefix, size int) error {
	if size < 20 || size > 32 {
		return fmt.Errorf("block size /%d is out of range: use 20-32 (Calico's default is /26)", size)
	}
	if size < pool.Bits() {
		return fmt.Errorf("block size /%d does not fit the pool %s: use a block size of /%d or longer", size, pool, pool.Bits())
	}
	return nil
}

// NextBlock returns the first block of pool not in claimed. Calico's IPAM
// starts its search at a random block; klab takes them in order so that a
// lab is the same every time it is built.
func NextBlock(pool netip.Prefix, size int, claimed []netip.Prefix) (netip.Prefix, error) {
	if err := ValidateBlockSize(pool, size); err != nil {
		return netip.Prefix{}, err
	}
	taken := map[netip.Prefix]bool{}
	for _, b := range claimed {
		taken[b] = true
	}
	n := uint64(1) << uint(size-pool.Bits())
	base := u32(pool.Addr())
	step := uint32(1) << uint(32-size)
	for i := uint64(0); i < n; i++ {
		b := netip.PrefixFrom(addr(base+uint32(i)*step), size)
		if !taken[b] {
			return b, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("pool %s has no unclaimed /%d block left: %w", pool, size, ErrPoolFull)
}

// NextIP returns the lowest free address of the node's blocks, in the
// order the blocks were claimed, as Calico's IPAM assigns the lowest free
// ordinal of an affine block. Every address of a block is assignable
// (.0 included): pods hold /32s, so no network or broadcast address is
// needed. ok is false when every block is full: the node claims another.
func NextIP(blocks []netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	for _, b := range blocks {
		for a := b.Addr(); b.Contains(a); a = a.Next() {
			if !used[a] {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// BlockOf returns the block of blocks that holds a.
func BlockOf(blocks []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	for _, b := range blocks {
		if b.Contains(a) {
			return b, true
		}
	}
	return netip.Prefix{}, false
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
