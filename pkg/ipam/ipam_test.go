package ipam

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCIDR(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{"10.244.0.0/16", ""},
		{"192.168.128.0/18", ""},
		{"10.244.0.0/33", "not a valid CIDR"},
		{"10.244.1.7/24", "did you mean 10.244.1.0/24"},
		{"fd00::/64", "not IPv4"},
		{"banana", "not a valid CIDR"},
	} {
		_, err := ParseCIDR("cluster CIDR", tc.in)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseCIDR(%q) = %v, want error containing %q", tc.in, err, tc.err)
		}
	}
}

func TestNextSubnet(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		network string
		used    []netip.Prefix
		want    string
	}{
		{"10.244.0.0/16", nil, "10.244.1.0/24"},
		{"10.244.0.0/16", []netip.Prefix{p("10.244.1.0/24")}, "10.244.2.0/24"},
		{"10.244.0.0/16", []netip.Prefix{p("10.244.1.0/24"), p("10.244.3.0/24")}, "10.244.2.0/24"},
		{"192.168.128.0/18", nil, "192.168.129.0/24"},
		{"10.244.0.0/23", []netip.Prefix{p("10.244.1.0/24")}, "exhausted"},
	} {
		got, err := NextSubnet(p(tc.network), 24, tc.used)
		if tc.want == "exhausted" {
			if err == nil {
				t.Errorf("%s: want exhaustion, got %s", tc.network, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("NextSubnet(%s, %v) = %v, %v; want %s", tc.network, tc.used, got, err, tc.want)
		}
	}
}

func TestNextIP(t *testing.T) {
	sub := netip.MustParsePrefix("10.244.1.0/24")
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		last netip.Addr
		used []string
		want string
	}{
		{"first", netip.Addr{}, nil, "10.244.1.2"},
		{"after last", a("10.244.1.7"), nil, "10.244.1.8"},
		{"skip used", netip.Addr{}, []string{"10.244.1.2", "10.244.1.3"}, "10.244.1.4"},
		{"wrap", a("10.244.1.254"), nil, "10.244.1.2"},
		{"last outside", a("10.9.9.9"), nil, "10.244.1.2"},
	} {
		used := map[netip.Addr]bool{}
		for _, u := range tc.used {
			used[a(u)] = true
		}
		got, err := NextIP(sub, tc.last, used)
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: got %v, %v; want %s", tc.name, got, err, tc.want)
		}
	}
	full := map[netip.Addr]bool{}
	for i := 2; i <= 254; i++ {
		x, _ := Nth(sub, i)
		full[x] = true
	}
	if _, err := NextIP(sub, netip.Addr{}, full); err == nil {
		t.Error("full subnet: want error")
	}
}

func TestStore(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "node1"), Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	a1, err := s.Allocate("pod-a", "eth0", netip.Addr{})
	if err != nil || a1.String() != "10.244.1.2" {
		t.Fatalf("first: %v %v", a1, err)
	}
	a2, _ := s.Allocate("pod-b", "eth0", netip.Addr{})
	if a2.String() != "10.244.1.3" {
		t.Fatalf("second: %v", a2)
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir, "10.244.1.2"))
	if string(b) != "pod-a\neth0" {
		t.Fatalf("file content %q", b)
	}
	if err := s.Release("pod-a"); err != nil {
		t.Fatal(err)
	}
	// Round-robin: the freed .2 is not reused right away.
	a3, _ := s.Allocate("pod-c", "eth0", netip.Addr{})
	if a3.String() != "10.244.1.4" {
		t.Fatalf("round robin: got %v", a3)
	}
	for _, tc := range []struct{ ip, err string }{
		{"10.244.1.3", "already used by pod-b"},
		{"10.244.2.3", "outside the node's pod subnet"},
		{"10.244.1.1", "gateway"},
		{"10.244.1.255", "broadcast"},
	} {
		if _, err := s.Allocate("pod-x", "eth0", netip.MustParseAddr(tc.ip)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Allocate(%s): %v, want %q", tc.ip, err, tc.err)
		}
	}
	if err := s.Release("nobody"); err != nil {
		t.Fatal(err)
	}
}

// AllocateMany gives the same addresses and leaves the same files as
// Allocate called once per request.
func TestAllocateManyMatchesAllocate(t *testing.T) {
	sub := netip.MustParsePrefix("10.244.1.0/28")
	one, many := Store{Dir: t.TempDir(), Subnet: sub}, Store{Dir: t.TempDir(), Subnet: sub}
	for _, s := range []Store{one, many} {
		if _, err := s.Allocate("old", "eth0", netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	}
	reqs := []Request{{ID: "a", IfName: "eth0"}, {ID: "b", IfName: "eth0", Want: netip.MustParseAddr("10.244.1.9")}, {ID: "c", IfName: "eth0"}, {ID: "d", IfName: "eth0"}}
	var want []netip.Addr
	for _, r := range reqs {
		a, err := one.Allocate(r.ID, r.IfName, r.Want)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, a)
	}
	got, err := many.AllocateMany(reqs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("request %d: got %s, want %s", i, got[i], want[i])
		}
	}
	for _, name := range []string{lastFile, "10.244.1.2", "10.244.1.3", "10.244.1.9", "10.244.1.10", "10.244.1.11"} {
		a, errA := os.ReadFile(filepath.Join(one.Dir, name))
		b, errB := os.ReadFile(filepath.Join(many.Dir, name))
		if errA != nil || errB != nil || string(a) != string(b) {
			t.Errorf("%s: %q (%v) vs %q (%v)", name, a, errA, b, errB)
		}
	}
}

// A bad request in the batch reserves nothing.
func TestAllocateManyAllOrNothing(t *testing.T) {
	s := Store{Dir: t.TempDir(), Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	_, err := s.AllocateMany([]Request{{ID: "a"}, {ID: "b", Want: netip.MustParseAddr("10.244.2.5")}})
	if err == nil || !strings.Contains(err.Error(), "outside the node's pod subnet") {
		t.Fatalf("got %v", err)
	}
	if used, _ := s.Used(); len(used) != 0 {
		t.Errorf("addresses reserved: %v", used)
	}
	_, err = s.AllocateMany([]Request{{ID: "a", Want: netip.MustParseAddr("10.244.1.7")}, {ID: "b", Want: netip.MustParseAddr("10.244.1.7")}})
	if err == nil || !strings.Contains(err.Error(), "already used by a") {
		t.Fatalf("duplicate in batch: got %v", err)
	}
}
