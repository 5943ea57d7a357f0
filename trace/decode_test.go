package trace

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDecodeVXLAN(t *testing.T) {
	p := decode(t, crossNodePing(t))
	p.Time = time.Date(2024, 1, 1, 12, 0, 1, 123000, time.UTC)
	p.Point, p.Dir = "node1/eth0", DirOut
	if !p.VXLAN || p.VNI != 1 {
		t.Fatalf("VXLAN=%v VNI=%d, want VNI 1", p.VXLAN, p.VNI)
	}
	if p.Outer.DstPort != 8472 || p.Outer.Proto != ProtoUDP || p.Outer.SrcIP != netip.MustParseAddr("192.168.1.101") {
		t.Errorf("outer = %+v", p.Outer)
	}
	in := p.Inner
	if in.SrcIP != netip.MustParseAddr("10.244.1.2") || in.DstIP != netip.MustParseAddr("10.244.2.2") ||
		in.Proto != ProtoICMP || in.ICMPType != 8 || in.ICMPID != 1 || in.ICMPSeq != 1 || in.TTL != 63 || in.IPID != 4242 {
		t.Errorf("inner = %+v", in)
	}
	want := "12:00:01.000123 node1/eth0 out 192.168.1.101.40213 > 192.168.1.102.8472 udp | vxlan vni=1 | 10.244.1.2 > 10.244.2.2 icmp echo request id=1 seq=1 ttl=63 id=4242 len 84"
	if got := p.String(); got != want {
		t.Errorf("line\n got %s\nwant %s", got, want)
	}
	b, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "point", "dir", "pkttype", "len", "caplen", "outer", "vxlan", "vni", "inner", "truncated", "line"} {
		if _, ok := m[k]; !ok {
			t.Errorf("json lacks key %q: %s", k, b)
		}
	}
	inner := m["inner"].(map[string]any)
	if inner["src"] != "10.244.1.2" || inner["proto"] != "icmp" || inner["icmp_seq"].(float64) != 1 || m["vni"].(float64) != 1 {
		t.Errorf("json inner = %v", inner)
	}
}

func TestDecodeKinds(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want string // substring of the line
	}{
		{"iana vxlan port", vxlanWrap(t, l3spec{"192.168.1.101", "192.168.1.102", 64, 1}, 1000, 4789, 7,
			icmpFrame(t, macVtep1, macVtep2, l3spec{"10.244.1.2", "10.244.2.2", 63, 1}, false, 9, 3)),
			"udp | vxlan vni=7 | 10.244.1.2 > 10.244.2.2 icmp echo reply id=9 seq=3"},
		{"tcp syn", tcpFrame(t, macPodA, macCni1, l3spec{"10.244.1.2", "10.96.0.10", 64, 5}, 40000, 80, 1000, 0, true, false),
			"10.244.1.2.40000 > 10.96.0.10.80 tcp [S] seq=1000 win=64240 ttl=64"},
		{"plain udp", udpFrame(t, l3spec{"10.0.0.1", "10.0.0.2", 64, 1}, 53, 5353, []byte("x")), "10.0.0.1.53 > 10.0.0.2.5353 udp ttl=64"},
		{"arp request", arpFrame(t, 1, "10.244.1.2", "10.244.1.1"), "arp who-has 10.244.1.1 tell 10.244.1.2"},
		{"arp reply", arpFrame(t, 2, "10.244.1.1", "10.244.1.2"), "arp reply 10.244.1.1 is-at 0a:58:0a:f4:01:02"},
		{"ipv6 udp", ipv6UDPFrame(t, "fd00::1", "fd00::2", 1, 2), "fd00::1.1 > fd00::2.2 udp ttl=64 len 50"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := decode(t, tt.data)
			if got := p.String(); !strings.Contains(got, tt.want) {
				t.Errorf("line %q does not contain %q", got, tt.want)
			}
		})
	}
}

func TestDecodeTruncatedNeverPanics(t *testing.T) {
	frames := [][]byte{crossNodePing(t), tcpFrame(t, macPodA, macCni1, l3spec{"10.244.1.2", "10.96.0.10", 64, 5}, 1, 2, 3, 4, true, true),
		arpFrame(t, 1, "1.2.3.4", "1.2.3.5"), ipv6UDPFrame(t, "fd00::1", "fd00::2", 1, 2)}
	d := NewDecoder()
	var p Packet
	for _, f := range frames {
		for n := 0; n < len(f); n++ {
			err := d.Decode(f[:n], &p)
			if n < 14 && (err == nil || !p.Truncated) {
				t.Fatalf("len %d: want truncated error", n)
			}
			_ = p.String()
			if _, err := json.Marshal(&p); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A cut inside the inner frame keeps the outer decode and the VNI.
	f := crossNodePing(t)
	if err := d.Decode(f[:14+20+8+8+20], &p); err == nil || !p.VXLAN || p.VNI != 1 || !p.Truncated {
		t.Errorf("cut inner: err=%v vxlan=%v vni=%d truncated=%v", err, p.VXLAN, p.VNI, p.Truncated)
	}
	if !strings.HasSuffix(p.String(), "[truncated]") {
		t.Errorf("line %q lacks [truncated]", p.String())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(crossNodePing(f))
	f.Add(tcpFrame(f, macPodA, macCni1, l3spec{"10.244.1.2", "10.96.0.10", 64, 5}, 1, 2, 3, 4, true, true))
	f.Add(arpFrame(f, 1, "1.2.3.4", "1.2.3.5"))
	f.Add(ipv6UDPFrame(f, "fd00::1", "fd00::2", 1, 8472))
	d := NewDecoder()
	filters := []*Filter{
		MustParseFilter("inner host 10.244.2.2 and icmp"),
		MustParseFilter("port 8472 or (not vni 1 and net 10.0.0.0/8)"),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Packet
		_ = d.Decode(data, &p)
		_ = p.String()
		if _, err := json.Marshal(&p); err != nil {
			t.Fatal(err)
		}
		for _, fl := range filters {
			_ = fl.Match(&p)
		}
	})
}
