package agent

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestSubnetKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want string // "" for not a subnet key
	}{
		{"/coreos.com/network/subnets/10.244.1.0-24", "10.244.1.0/24"},
		{"10.244.77.0-24", "10.244.77.0/24"},
		{"/coreos.com/network/subnets/10.244.1.0-24&fd00::-64", "10.244.1.0/24"}, // dual stack: the v4 part
		{"/coreos.com/network/subnets/10.244.1.1-24", ""},                        // host bits
		{"/coreos.com/network/config", ""},
		{"/coreos.com/network/subnets/fd00::-64", ""},
	} {
		p, ok := ParseSubnetKey(tc.key)
		if got := ""; ok {
			got = p.String()
			if got != tc.want {
				t.Errorf("ParseSubnetKey(%q) = %s, want %q", tc.key, got, tc.want)
			}
			if back, _ := ParseSubnetKey(SubnetKey(p)); back != p {
				t.Errorf("SubnetKey(%s) = %s does not parse back", p, SubnetKey(p))
			}
		} else if tc.want != "" {
			t.Errorf("ParseSubnetKey(%q) failed, want %s", tc.key, tc.want)
		}
	}
}

func TestAttrsAreFlannels(t *testing.T) {
	mac, _ := net.ParseMAC("0a:6e:8a:fa:ac:83")
	got := string(Attrs(netip.MustParseAddr("192.168.1.102"), "vxlan", 1, mac))
	want := `{"PublicIP":"192.168.1.102","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:6e:8a:fa:ac:83"}}`
	if got != want {
		t.Errorf("Attrs = %s\nwant    %s", got, want)
	}
	l, err := parseLease("/coreos.com/network/subnets/10.244.2.0-24", []byte(want))
	if err != nil || l.PublicIP.String() != "192.168.1.102" || l.VtepMAC.String() != mac.String() || l.Subnet.String() != "10.244.2.0/24" {
		t.Errorf("parseLease = %+v, %v", l, err)
	}
	if hg := string(Attrs(netip.MustParseAddr("192.168.1.101"), "host-gw", 1, nil)); hg != `{"PublicIP":"192.168.1.101","PublicIPv6":null,"BackendType":"host-gw"}` {
		t.Errorf("host-gw Attrs = %s", hg)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(got), &v); err != nil {
		t.Fatal(err)
	}
}

func TestFreeSubnet(t *testing.T) {
	n := netip.MustParsePrefix("10.244.0.0/16")
	taken := map[netip.Prefix]bool{}
	p, ok := freeSubnet(n, taken)
	if !ok || p.String() != "10.244.1.0/24" {
		t.Fatalf("first free = %s %v; want 10.244.1.0/24 (the first /24 is never leased)", p, ok)
	}
	taken[p] = true
	taken[netip.MustParsePrefix("10.244.2.0/24")] = true
	if p, _ := freeSubnet(n, taken); p.String() != "10.244.3.0/24" {
		t.Errorf("next free = %s, want 10.244.3.0/24", p)
	}
	small := netip.MustParsePrefix("10.9.0.0/23")
	if _, ok := freeSubnet(small, map[netip.Prefix]bool{netip.MustParsePrefix("10.9.1.0/24"): true}); ok {
		t.Error("a full /23 has a free subnet")
	}
}

func TestRenewInterval(t *testing.T) {
	for ttl, want := range map[time.Duration]time.Duration{
		24 * time.Hour:  23 * time.Hour, // flannel: 60 min before expiry
		3 * time.Second: 2 * time.Second,
		time.Minute:     40 * time.Second,
	} {
		if got := renewInterval(ttl); got != want {
			t.Errorf("renewInterval(%v) = %v, want %v", ttl, got, want)
		}
	}
}
