package calico

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestVethName(t *testing.T) {
	for _, tc := range []struct{ ns, pod, want string }{
		// sha1sum of "default.pod-a" is 5e1c4d6c68c9402d...
		{"default", "pod-a", "cali5e1c4d6c68c"},
		{"kube-system", "coredns-abc", "cali3d5d6ab04b5"},
	} {
		if got := VethName(tc.ns, tc.pod); got != tc.want || len(got) != 15 {
			t.Errorf("VethName(%q, %q) = %q, want %q", tc.ns, tc.pod, got, tc.want)
		}
	}
}

func TestPassive(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	for _, tc := range []struct {
		self, peer string
		want       bool
	}{
		{"192.168.1.101", "192.168.1.102", true},
		{"192.168.1.102", "192.168.1.101", false},
		// Lexical, as the template's gt: "192.168.1.9" > "192.168.1.10".
		{"192.168.1.10", "192.168.1.9", true},
		{"192.168.1.9", "192.168.1.10", false},
	} {
		if got := Passive(a(tc.self), a(tc.peer)); got != tc.want {
			t.Errorf("Passive(%s, %s) = %v, want %v", tc.self, tc.peer, got, tc.want)
		}
	}
	if got := ProtocolName(a("192.168.1.102")); got != "Mesh_192_168_1_102" {
		t.Errorf("ProtocolName = %q", got)
	}
}

func TestBlocks(t *testing.T) {
	pool := netip.MustParsePrefix("10.244.0.0/16")
	p := netip.MustParsePrefix
	b, err := NextBlock(pool, 26, nil)
	if err != nil || b != p("10.244.0.0/26") {
		t.Fatalf("first block %s, %v", b, err)
	}
	b, err = NextBlock(pool, 26, []netip.Prefix{p("10.244.0.0/26"), p("10.244.0.128/26")})
	if err != nil || b != p("10.244.0.64/26") {
		t.Errorf("next block %s, %v (a freed block is reused)", b, err)
	}
	small := netip.MustParsePrefix("10.0.0.0/30")
	if _, err := NextBlock(small, 31, []netip.Prefix{p("10.0.0.0/31"), p("10.0.0.2/31")}); !errors.Is(err, ErrPoolFull) {
		t.Errorf("full pool: %v", err)
	}
	for _, tc := range []struct {
		size int
		want string
	}{{22, "does not fit the pool"}, {8, "out of range"}, {33, "out of range"}} {
		if err := ValidateBlockSize(netip.MustParsePrefix("10.244.0.0/24"), tc.size); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("block size %d: %v, want %q", tc.size, err, tc.want)
		}
	}
	blocks := []netip.Prefix{p("10.244.0.0/30"), p("10.244.0.8/30")}
	used := map[netip.Addr]bool{}
	var got []string
	for {
		a, ok := NextIP(blocks, used)
		if !ok {
			break
		}
		used[a] = true
		got = append(got, a.String())
	}
	want := "10.244.0.0 10.244.0.1 10.244.0.2 10.244.0.3 10.244.0.8 10.244.0.9 10.244.0.10 10.244.0.11"
	if strings.Join(got, " ") != want {
		t.Errorf("allocation order %v, want %s (every address, .0 included, blocks in claim order)", got, want)
	}
	if b, ok := BlockOf(blocks, netip.MustParseAddr("10.244.0.9")); !ok || b != blocks[1] {
		t.Errorf("BlockOf = %s %v", b, ok)
	}
}

const showProtocols = `BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
static_blocks Static     master4    up     10:21:20      
kernel1    Kernel     master4    up     10:21:20      
device1    Device     ---        up     10:21:20      
direct1    Direct     ---        up     10:21:20      
Mesh_192_168_1_102 BGP        ---        up     10:21:21      Established   
Mesh_192_168_1_103 BGP        ---        start  10:22:00      Passive       Socket: Connection closed
Global_192_168_1_250 BGP        ---        up     10:23:00      Established   
`

func TestStatus(t *testing.T) {
	peers := ParseProtocols(showProtocols)
	if len(peers) != 3 {
		t.Fatalf("peers %+v", peers)
	}
	if p := peers[1]; p.Address.String() != "192.168.1.103" || p.Type != "node-to-node mesh" || p.State != "start" || p.Info != "Passive Socket: Connection closed" {
		t.Errorf("peer 2 %+v", p)
	}
	if peers[2].Type != "global" {
		t.Errorf("Global_ peer type %q", peers[2].Type)
	}
	out := RenderStatus(true, peers[:1])
	for _, want := range []string{
		"Calico process is running.",
		"| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |",
		"| 192.168.1.102 | node-to-node mesh | up    | 10:21:21 | Established |",
		"No IPv6 peers found.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if RenderStatus(false, nil) != "Calico process is not running.\n" {
		t.Errorf("not running: %q", RenderStatus(false, nil))
	}
}

func TestRender(t *testing.T) {
	a := netip.MustParseAddr
	cfg := BirdConfig{
		Node: "node1", RouterID: a("192.168.1.101"), Pool: netip.MustParsePrefix("10.244.0.0/16"),
		Blocks: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/26"), netip.MustParsePrefix("10.244.1.0/26")},
		Mesh:   []netip.Addr{a("192.168.1.102"), a("192.168.1.100")}, Peers: []Peer{{IP: a("192.168.1.1"), AS: 64513}},
		GracefulRestart: 5,
	}
	out := cfg.Render()
	for _, want := range []string{
		"router id 192.168.1.101;",
		"route 10.244.0.0/26 blackhole;", "route 10.244.1.0/26 blackhole;",
		"if ( net = 10.244.1.0/26 ) then { accept; }",
		"local as 64512;", "metric 0;", "merge paths on;", "learn;", `interface -"cali*", -"kube-ipvs*", "*";`,
		"protocol bgp Mesh_192_168_1_102 from bgp_template {\n  neighbor 192.168.1.102 as 64512;\n  source address 192.168.1.101;\n  passive on;",
		"protocol bgp Global_192_168_1_1 from bgp_template {\n  neighbor 192.168.1.1 as 64513;",
		"graceful restart time 5;",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("bird.conf lacks %q", want)
		}
	}
	// 192.168.1.100 < 192.168.1.101: node1 connects, not passive.
	if strings.Contains(out, "neighbor 192.168.1.100 as 64512;\n  source address 192.168.1.101;\n  passive on;") {
		t.Error("session to the smaller address is passive")
	}
	// BIRD itself parses it, when installed.
	if _, err := os.Stat("/usr/sbin/bird"); err != nil {
		t.Skip("bird2 not installed: apt-get install bird2")
	}
	path := filepath.Join(t.TempDir(), "bird.conf")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("/usr/sbin/bird", "-p", "-c", path).CombinedOutput(); err != nil {
		t.Errorf("bird -p: %v: %s", err, b)
	}
}
