package cluster

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/plan"
)

func TestJoinOptionsValidate(t *testing.T) {
	good := JoinOptions{First: netip.MustParseAddr("10.0.0.5"), Token: "abcdef.0123456789abcdef",
		CAHash: "sha256:" + strings.Repeat("0a", 32), UnderlayIP: netip.MustParsePrefix("192.168.1.254/24"), MTU: 1450}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		change func(*JoinOptions)
		want   string
	}{
		"ipv6 first":      {func(o *JoinOptions) { o.First = netip.MustParseAddr("::1") }, "not an IPv4 address"},
		"short token":     {func(o *JoinOptions) { o.Token = "abcdef.0123" }, "not a join token"},
		"uppercase token": {func(o *JoinOptions) { o.Token = "ABCDEF.0123456789abcdef" }, "not a join token"},
		"no address":      {func(o *JoinOptions) { o.UnderlayIP = netip.Prefix{} }, "--underlay-address"},
		"mtu":             {func(o *JoinOptions) { o.MTU = 100 }, "--underlay-mtu"},
		"hash":            {func(o *JoinOptions) { o.CAHash = "md5:00" }, "--discovery-token-ca-cert-hash"},
	} {
		o := good
		tc.change(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func TestTokens(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok := randomToken()
		if !tokenRE.MatchString(tok) || seen[tok] {
			t.Fatalf("token %q (seen %v)", tok, seen[tok])
		}
		seen[tok] = true
	}
	if StitchVNI("a") == StitchVNI("b") || StitchVNI("a") != StitchVNI("a") {
		t.Fatal("stitch VNIs")
	}
	for _, l := range []string{"", "x", "demo", strings.Repeat("z", 40)} {
		if v := StitchVNI(l); v < 2 || v >= 1<<24 {
			t.Fatalf("StitchVNI(%q) = %d", l, v)
		}
	}
}

// TestPlanStitch checks the stitch's plan against kernel states: the
// device with its socket in the machine's namespace, then only the flood
// entries that differ.
func TestPlanStitch(t *testing.T) {
	c := &Cluster{Lab: &Lab{Name: "demo", UnderlayMTU: 1450, ControlPlane: &ControlPlane{Machine: &MachineInfo{Name: "m1"}}}}
	zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	a, b, x := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.9")
	cmds := func(p plan.Plan) string {
		var s []string
		for _, op := range p {
			s = append(s, op.Command())
		}
		return strings.Join(s, "\n")
	}
	got := cmds(c.planStitch(plan.Empty("klab.demo.underlay"), []netip.Addr{a}))
	for _, want := range []string{
		"ip link add stitch netns klab.demo.underlay address ", " mtu 1450 type vxlan id ", " dstport 4789",
		"ip -n klab.demo.underlay link set stitch master underlay0",
		"bridge -n klab.demo.underlay fdb append 00:00:00:00:00:00 dev stitch dst 10.0.0.2 self permanent",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("new stitch: no %q in\n%s", want, got)
		}
	}
	st := plan.Empty("klab.demo.underlay")
	st.Links[StitchDev] = &plan.LinkState{Link: plan.Link{Name: StitchDev, Type: "vxlan"}}
	st.FDB = []plan.Neigh{{Dev: StitchDev, MAC: zero, IP: a}, {Dev: StitchDev, MAC: zero, IP: x}, {Dev: StitchDev, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, IP: b}}
	got = cmds(c.planStitch(st, []netip.Addr{a, b}))
	want := "bridge -n klab.demo.underlay fdb append 00:00:00:00:00:00 dev stitch dst 10.0.0.3 self permanent   # flood to that machine\nbridge -n klab.demo.underlay fdb del 00:00:00:00:00:00 dev stitch dst 10.0.0.9 self   # that machine left"
	if got != want {
		t.Errorf("stitch update:\n%s\nwant:\n%s", got, want)
	}
}

// TestStitchFilterText checks the filter's nft text with nft itself
// (nft -c parses and checks without changing anything; skipped without
// nft or the privilege to open its netlink socket).
func TestStitchFilterText(t *testing.T) {
	text := stitchFilter{CP: netip.MustParseAddr("192.168.1.100"), Port: 2379}.Text()
	if !strings.Contains(text, `iifname "stitch" ether type ip ip daddr 192.168.1.100 tcp dport 2379 counter drop`) {
		t.Fatal(text)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("no nft")
	}
	cmd := exec.Command("unshare", "--net", "nft", "-c", "-f", "-")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "Operation not permitted") || strings.Contains(string(out), "unshare failed") {
			t.Skip("nft -c needs root here")
		}
		t.Fatalf("nft -c: %v\n%s", err, out)
	}
}
