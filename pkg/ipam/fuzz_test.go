package ipam

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzParseCIDR: user input for --cluster-cidr, --underlay-cidr,
// --service-cidr. Never panics; an accepted network is IPv4, is its own
// network address and prints back to itself; a rejection is one sentence
// naming the flag.
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.244.0.0/16", "10.244.1.7/24", "::/0", "1.2.3.4", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/33", " 10.0.0.0/8", "010.0.0.0/8", "::ffff:10.0.0.0/104"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR("--cluster-cidr", s)
		if err != nil {
			if !strings.Contains(err.Error(), "--cluster-cidr") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%q: error %q", s, err)
			}
			return
		}
		if !p.Addr().Is4() || p.Masked() != p {
			t.Fatalf("%q accepted as %v", s, p)
		}
		if back, err := netip.ParsePrefix(p.String()); err != nil || back != p {
			t.Fatalf("%q -> %v does not print back (%v)", s, p, err)
		}
		// The allocators stay inside it.
		if sub, err := NextSubnet(p, 24, nil); err == nil && (!p.Contains(sub.Addr()) || sub.Bits() != 24) {
			t.Fatalf("NextSubnet(%v) = %v", p, sub)
		}
		if p.Bits() <= 30 {
			a, err := NextIP(p, netip.Addr{}, nil)
			if err != nil || !p.Contains(a) || a == p.Addr() || a == Gateway(p) {
				t.Fatalf("NextIP(%v) = %v, %v", p, a, err)
			}
		}
	})
}
