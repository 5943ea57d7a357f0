package plan

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// Every verb renders as the command that makes the same change.
func TestCommand(t *testing.T) {
	ns := "klab.demo.node1"
	mac := net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{Op{Verb: NetnsAdd, NS: ns}, "ip netns add klab.demo.node1"},
		{Op{Verb: NetnsDel, NS: ns}, "ip netns del klab.demo.node1"},
		{Op{Verb: LinkAdd, NS: ns, Link: &Link{Name: "cni0", Type: "bridge", MTU: 1450, MAC: mac, Up: true}}, "ip -n klab.demo.node1 link add cni0 address 0a:00:00:00:00:01 mtu 1450 up type bridge"},
		{Op{Verb: LinkAdd, NS: ns, Link: &Link{Name: "veth1", Type: "veth", MTU: 1450, Master: "cni0", Up: true, PeerName: "eth0", PeerNS: "klab.demo.pod-a", PeerMTU: 1450, PeerMAC: mac}},
			"ip -n klab.demo.node1 link add veth1 mtu 1450 master cni0 up type veth peer name eth0 txqueuelen 0 address 0a:00:00:00:00:01 mtu 1450 netns klab.demo.pod-a"},
		{Op{Verb: LinkAdd, NS: ns, Link: &Link{Name: "flannel.1", Type: "vxlan", VNI: 1, Local: netip.MustParseAddr("192.168.1.101"), Dev: "eth0", Port: 8472}},
			"ip -n klab.demo.node1 link add flannel.1 type vxlan id 1 local 192.168.1.101 dev eth0 dstport 8472 nolearning"},
		{Op{Verb: LinkSetHairpin, NS: ns, Link: &Link{Name: "veth1"}}, "bridge -n klab.demo.node1 link set dev veth1 hairpin on"},
		{Op{Verb: LinkSetMaster, NS: ns, Link: &Link{Name: "veth1", Master: "cni0"}}, "ip -n klab.demo.node1 link set veth1 master cni0"},
		{Op{Verb: AddrAdd, NS: ns, Addr: &Addr{Dev: "cni0", Prefix: netip.MustParsePrefix("10.244.1.1/24")}}, "ip -n klab.demo.node1 addr add 10.244.1.1/24 brd + dev cni0"},
		{Op{Verb: RouteReplace, NS: ns, Route: &Route{Gw: netip.MustParseAddr("192.168.1.1"), Dev: "eth0"}}, "ip -n klab.demo.node1 route replace default via 192.168.1.1 dev eth0"},
		{Op{Verb: RouteDel, NS: ns, Route: &Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("10.244.2.0"), Dev: "flannel.1", Onlink: true}}, "ip -n klab.demo.node1 route del 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"},
		{Op{Verb: RouteReplace, NS: ns, Route: &Route{Dst: netip.MustParsePrefix("10.244.0.0/26"), Blackhole: true}}, "ip -n klab.demo.node1 route replace blackhole 10.244.0.0/26"},
		{Op{Verb: RouteReplace, NS: ns, Route: &Route{Dst: netip.MustParsePrefix("10.244.0.5/32"), Dev: "cali5e1c4d6c68c"}}, "ip -n klab.demo.node1 route replace 10.244.0.5/32 dev cali5e1c4d6c68c"},
		{Op{Verb: NeighReplace, NS: ns, Neigh: &Neigh{Dev: "flannel.1", IP: netip.MustParseAddr("10.244.2.0"), MAC: mac}}, "ip -n klab.demo.node1 neigh replace 10.244.2.0 lladdr 0a:00:00:00:00:01 dev flannel.1 nud permanent"},
		{Op{Verb: FDBReplace, NS: ns, Neigh: &Neigh{Dev: "flannel.1", IP: netip.MustParseAddr("192.168.1.102"), MAC: mac}}, "bridge -n klab.demo.node1 fdb replace 0a:00:00:00:00:01 dev flannel.1 dst 192.168.1.102 self permanent"},
		{Op{Verb: Sysctl, NS: ns, Key: "net/ipv4/ip_forward", Value: "1"}, "ip netns exec klab.demo.node1 sysctl -qw net.ipv4.ip_forward=1"},
		{Op{Verb: Restore, NS: ns, Rules: &Rules{Input: "*nat\nCOMMIT\n", NoFlush: true}}, "ip netns exec klab.demo.node1 iptables-restore --noflush --wait <<'EOF'\n*nat\nCOMMIT\nEOF"},
		{Op{Verb: IPSet, NS: ns, Sets: "create KLAB-P-X hash:ip family inet -exist\nadd KLAB-P-X 10.244.1.2"}, "ip netns exec klab.demo.node1 ipset restore <<'EOF'\ncreate KLAB-P-X hash:ip family inet -exist\nadd KLAB-P-X 10.244.1.2\nEOF"},
		{Op{Verb: IPTables, NS: ns, Rules: &Rules{Table: "nat", Chain: "POSTROUTING", Action: "-A", Rule: []string{"-m", "comment", "--comment", "klab:demo flanneld masq", "-j", "FLANNEL-POSTRTG"}}},
			"ip netns exec klab.demo.node1 iptables --wait -t nat -C POSTROUTING -m comment --comment 'klab:demo flanneld masq' -j FLANNEL-POSTRTG 2>/dev/null || ip netns exec klab.demo.node1 iptables --wait -t nat -A POSTROUTING -m comment --comment 'klab:demo flanneld masq' -j FLANNEL-POSTRTG"},
		{Op{Verb: WriteFile, File: &File{Path: "/run/klab/demo/ipam/node1/10.244.1.2", Data: []byte("pod-a\neth0")}}, "mkdir -p /run/klab/demo/ipam/node1 && printf '%s' 'pod-a\neth0' > /run/klab/demo/ipam/node1/10.244.1.2"},
		{Op{Verb: WriteFile, File: &File{Path: "/run/klab/demo/state.json", State: true}}, "# klab saves the lab's state: /run/klab/demo/state.json"},
		{Op{Verb: LinkDel, NS: ns, Link: &Link{Name: "flannel.1"}, Why: "incompatible port: replaced"}, "ip -n klab.demo.node1 link del flannel.1   # incompatible port: replaced"},
	} {
		if got := tc.op.Command(); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.op.Verb, got, tc.want)
		}
	}
}

// What a plan creates is undone by deleting it; what it changes is not.
func TestUndo(t *testing.T) {
	add := Op{Verb: LinkAdd, NS: "n", New: true, Link: &Link{Name: "cni0", Type: "bridge"}}
	if u, ok := add.Undo(); !ok || u.Command() != "ip -n n link del cni0" {
		t.Errorf("undo of link add: %v %q", ok, u.Command())
	}
	if u, ok := (Op{Verb: NetnsAdd, NS: "n", New: true}).Undo(); !ok || u.Command() != "ip netns del n" {
		t.Errorf("undo of netns add: %v %q", ok, u.Command())
	}
	if _, ok := (Op{Verb: NeighReplace, NS: "n", Neigh: &Neigh{}}).Undo(); ok {
		t.Error("a replaced (not new) entry must not be deleted on rollback")
	}
}

// A script of every kind of operation is valid POSIX sh, heredocs intact.
func TestScriptParses(t *testing.T) {
	p := Plan{
		{Verb: NetnsAdd, NS: "klab.demo.node1"},
		{Verb: Restore, NS: "klab.demo.node1", Rules: &Rules{Input: "*nat\n-A X -m comment --comment \"it's\" -j RETURN\nCOMMIT\n"}},
		{Verb: IPSet, NS: "klab.demo.node1", Sets: "create S hash:net family inet -exist\nadd S 10.0.0.0/8\nadd S 10.1.0.0/16 nomatch\n"},
		{Verb: WriteFile, File: &File{Path: "/tmp/x y/it's", Data: []byte("a'b\n")}},
		{Verb: IPTables, NS: "klab.demo.node1", Rules: &Rules{Table: "nat", Chain: "PREROUTING", Action: "-I", Rule: []string{"-m", "comment", "--comment", "a b", "-j", "KUBE-SERVICES"}}},
	}
	var b bytes.Buffer
	b.WriteString(ScriptHeader)
	if err := WriteScript(&b, "klab node add node1", p); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "\n# klab node add node1\n") {
		t.Errorf("no title:\n%s", b.String())
	}
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{"eth0": "eth0", "a b": "'a b'", "it's": `'it'\''s'`, "": "''", "10.244.1.0/24": "10.244.1.0/24"} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}
