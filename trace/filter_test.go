package trace

import (
	"errors"
	"testing"

	"golang.org/x/net/bpf"
)

// samples returns named decoded packets the filter tests run against.
func samples(t testing.TB) map[string][]byte {
	return map[string][]byte{
		"vxlan-ping": crossNodePing(t),
		"vxlan-4789-vni7": vxlanWrap(t, l3spec{"192.168.1.102", "192.168.1.101", 64, 1}, 1000, 4789, 7,
			icmpFrame(t, macVtep2, macVtep1, l3spec{"10.244.2.2", "10.244.1.2", 63, 1}, false, 1, 1)),
		"vxlan-tcp": vxlanWrap(t, l3spec{"192.168.1.101", "192.168.1.102", 64, 2}, 1001, 8472, 1,
			tcpFrame(t, macVtep1, macVtep2, l3spec{"10.244.1.2", "10.244.2.3", 63, 9}, 40000, 8080, 1, 0, true, false)),
		"pod-ping": icmpFrame(t, macPodA, macCni1, l3spec{"10.244.1.2", "10.244.2.2", 64, 4242}, true, 1, 1),
		"tcp-svc":  tcpFrame(t, macPodA, macCni1, l3spec{"10.244.1.2", "10.96.0.10", 64, 5}, 40000, 80, 1000, 0, true, false),
		"udp-dns":  udpFrame(t, l3spec{"10.244.1.2", "10.96.0.10", 64, 1}, 5353, 53, []byte("q")),
		"arp":      arpFrame(t, 1, "10.244.1.2", "10.244.1.1"),
		"ipv6-udp": ipv6UDPFrame(t, "fd00::1", "fd00::2", 1234, 53),
		"ipv6-vxln": ipv6UDPFrame(t, "fd00::1", "fd00::2", 1234, 8472, append([]byte{8, 0, 0, 0, 0, 0, 3, 0},
			icmpFrame(t, macVtep1, macVtep2, l3spec{"10.244.3.2", "10.244.4.2", 63, 1}, true, 1, 1)...)...),
	}
}

func TestFilterMatch(t *testing.T) {
	tests := []struct {
		expr string
		want []string // names of matching samples
	}{
		{"host 10.244.2.2", []string{"vxlan-ping", "vxlan-4789-vni7", "pod-ping"}},
		{"outer host 10.244.2.2", []string{"pod-ping"}},
		{"inner host 10.244.2.2", []string{"vxlan-ping", "vxlan-4789-vni7"}},
		{"src host 10.244.1.2", []string{"vxlan-ping", "vxlan-tcp", "pod-ping", "tcp-svc", "udp-dns", "arp"}},
		{"dst 10.96.0.10", []string{"tcp-svc", "udp-dns"}},
		{"10.244.1.1", []string{"arp"}},
		{"net 192.168.1.0/24", []string{"vxlan-ping", "vxlan-4789-vni7", "vxlan-tcp"}},
		{"dst net 192.168.1.101/32", []string{"vxlan-4789-vni7"}},
		{"port 8472", []string{"vxlan-ping", "vxlan-tcp", "ipv6-vxln"}},
		{"outer port 8472", []string{"vxlan-ping", "vxlan-tcp", "ipv6-vxln"}},
		{"dst port 53", []string{"udp-dns", "ipv6-udp"}},
		{"src port 53", nil},
		{"port 8080", []string{"vxlan-tcp"}},
		{"inner port 8080", []string{"vxlan-tcp"}},
		{"outer port 8080", nil},
		{"proto icmp", []string{"vxlan-ping", "vxlan-4789-vni7", "pod-ping", "ipv6-vxln"}},
		{"outer icmp", []string{"pod-ping"}},
		{"tcp", []string{"vxlan-tcp", "tcp-svc"}},
		{"udp", []string{"vxlan-ping", "vxlan-4789-vni7", "vxlan-tcp", "udp-dns", "ipv6-udp", "ipv6-vxln"}},
		{"arp", []string{"arp"}},
		{"ip6", []string{"ipv6-udp", "ipv6-vxln"}},
		{"vxlan", []string{"vxlan-ping", "vxlan-4789-vni7", "vxlan-tcp", "ipv6-vxln"}},
		{"vni 7", []string{"vxlan-4789-vni7"}},
		{"vni 1 and inner icmp", []string{"vxlan-ping"}},
		{"not vxlan and not arp and not ip6", []string{"pod-ping", "tcp-svc", "udp-dns"}},
		{"! (tcp || udp) && !arp", []string{"pod-ping"}},
		{"inner (host 10.244.1.2 and port 8080)", []string{"vxlan-tcp"}},
		{"outer (udp and not port 8472) or tcp and port 80", []string{"vxlan-4789-vni7", "tcp-svc", "udp-dns", "ipv6-udp"}},
		{"host fd00::2", []string{"ipv6-udp", "ipv6-vxln"}},
	}
	frames := samples(t)
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			f, err := ParseFilter(tt.expr)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, n := range tt.want {
				want[n] = true
			}
			// The canonical form parses to the same meaning.
			f2, err := ParseFilter(f.String())
			if err != nil {
				t.Fatalf("reparse %q: %v", f.String(), err)
			}
			prog, exact := f.BPF(0)
			vm, err := bpf.NewVM(prog)
			if err != nil {
				t.Fatalf("bpf %q: %v\n%v", tt.expr, err, prog)
			}
			for name, data := range frames {
				p := decode(t, data)
				got := f.Match(&p)
				if got != want[name] {
					t.Errorf("%q on %s = %v, want %v", tt.expr, name, got, want[name])
				}
				if f2.Match(&p) != got {
					t.Errorf("canonical %q disagrees on %s", f.String(), name)
				}
				n, err := vm.Run(data)
				if err != nil {
					t.Fatal(err)
				}
				if got && n == 0 {
					t.Errorf("kernel filter of %q drops matching %s", tt.expr, name)
				}
				if exact && !got && n != 0 {
					t.Errorf("exact kernel filter of %q accepts non-matching %s", tt.expr, name)
				}
			}
		})
	}
}

func TestFilterBPFExactness(t *testing.T) {
	for expr, want := range map[string]bool{
		"outer host 1.2.3.4":              true,
		"outer port 80 and not outer tcp": true,
		"vni 1 or vxlan":                  true,
		"host 1.2.3.4":                    false,
		"inner icmp":                      false,
		"not host 1.2.3.4":                false,
		"outer net fd00::/8":              false,
	} {
		_, exact := MustParseFilter(expr).BPF(0)
		if exact != want {
			t.Errorf("%q exact=%v want %v", expr, exact, want)
		}
	}
	prog, _ := MustParseFilter("not host 1.2.3.4").BPF(0)
	vm, _ := bpf.NewVM(prog)
	if n, _ := vm.Run(crossNodePing(t)); n == 0 {
		t.Error("inexact not must accept")
	}
	prog, exact := (*Filter)(nil).BPF(100)
	if len(prog) != 1 || !exact || prog[0].(bpf.RetConstant).Val != 100 {
		t.Errorf("nil filter program = %v", prog)
	}
}

func TestFilterErrors(t *testing.T) {
	tests := []struct {
		expr string
		want string
	}{
		{"host 10.0.0.1 or port x", "filter: at column 23: expected a port number after 'port', got 'x'"},
		{"port", "filter: at column 5: expected a port number after 'port', got end of filter"},
		{"port 70000", "filter: at column 6: expected a port number after 'port', got '70000'"},
		{"hots 1.2.3.4", "filter: at column 1: unknown word 'hots'; expected host, net, port, proto, icmp, tcp, udp, arp, vni, vxlan, inner, outer, src, dst, not or '('"},
		{"(host 1.2.3.4", "filter: at column 14: expected ')' to close the '(' at column 1, got end of filter"},
		{"host 1.2.3.4)", "filter: at column 13: unexpected ')' without a matching '('"},
		{"host 1.2.3.4 port 80", "filter: at column 14: expected 'and' or 'or' before 'port'"},
		{"net 10.0.0.0", "filter: at column 5: expected a network like 10.244.0.0/16 after 'net', got '10.0.0.0'"},
		{"inner vni 1", "filter: at column 7: 'vni' describes the outer packet; drop the 'inner' qualifier"},
		{"inner outer tcp", "filter: at column 7: 'outer' cannot be used inside an 'inner' qualifier"},
		{"vni 99999999", "filter: at column 5: expected a VXLAN network identifier (0-16777215) after 'vni', got '99999999'"},
		{"proto sctp", "filter: at column 7: expected icmp, tcp, udp, arp, ip, ip6 or icmp6 after 'proto', got 'sctp'"},
		{"src vxlan", "filter: at column 5: expected host, net, port or an address after 'src', got 'vxlan'"},
		{"tcp and", "filter: at column 8: expected host, net, port, proto, icmp, tcp, udp, arp, vni, vxlan, inner, outer, src, dst, not or '(', got end of filter"},
		{"tcp & udp", "filter: at column 5: expected 'and' or 'or' before '&'"},
	}
	for _, tt := range tests {
		_, err := ParseFilter(tt.expr)
		if err == nil || err.Error() != tt.want {
			t.Errorf("ParseFilter(%q)\n got %v\nwant %s", tt.expr, err, tt.want)
			continue
		}
		var fe *FilterError
		if !errors.As(err, &fe) || fe.Column < 1 {
			t.Errorf("%q: not a *FilterError with a column", tt.expr)
		}
	}
	if f, err := ParseFilter("   "); f != nil || err != nil {
		t.Errorf("blank filter = %v, %v; want nil, nil", f, err)
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"host 10.244.2.2", "inner (host 10.244.1.2 and port 8080)", "not vxlan || !arp && (tcp)",
		"outer port 8472 and vni 1", "src net 10.0.0.0/8 or dst fd00::1", "((", "port x", "!!!", "&&|"} {
		f.Add(s)
	}
	frames := [][]byte{crossNodePing(f), arpFrame(f, 1, "10.244.1.2", "10.244.1.1"), ipv6UDPFrame(f, "fd00::1", "fd00::2", 1, 8472)}
	pkts := make([]Packet, len(frames))
	vms := make([]*bpf.VM, 0)
	_ = vms
	for i, d := range frames {
		_ = NewDecoder().Decode(d, &pkts[i])
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFilter(s)
		if err != nil {
			var fe *FilterError
			if !errors.As(err, &fe) || fe.Column < 1 || fe.Column > len(s)+1 {
				t.Fatalf("%q: bad error %v", s, err)
			}
			return
		}
		again, err := ParseFilter(flt.String())
		if err != nil && flt != nil {
			t.Fatalf("canonical %q of %q does not parse: %v", flt.String(), s, err)
		}
		prog, exact := flt.BPF(0)
		vm, err := bpf.NewVM(prog)
		if err != nil {
			t.Fatalf("%q: invalid bpf: %v", s, err)
		}
		for i := range pkts {
			m := flt.Match(&pkts[i])
			if flt != nil && again.Match(&pkts[i]) != m {
				t.Fatalf("%q and canonical %q disagree", s, flt.String())
			}
			n, _ := vm.Run(frames[i])
			if m && n == 0 || exact && !m && n != 0 {
				t.Fatalf("%q: bpf (exact=%v) accepts %d, match=%v on frame %d", s, exact, n, m, i)
			}
		}
	})
}
