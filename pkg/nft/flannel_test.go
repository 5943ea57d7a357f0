package nft

import (
	"net/netip"
	"strings"
	"testing"
)

// flannel's rules as flannel-io/flannel pkg/trafficmngr/nftables writes
// them (addMasqRules, SetupAndEnsureForwardRules) for lease 10.244.1.0/24.
func TestRenderFlannelIsFlannelsTable(t *testing.T) {
	got := RenderFlannel(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24"), false).Text()
	want := `add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }
add chain ip flannel-ipv4 forward { type filter hook forward priority 0 ; comment "chain to accept flannel traffic" ; }
add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority 100 ; comment "chain to manage traffic masquerading by flannel" ; }
add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept
add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept
add rule ip flannel-ipv4 postrtg meta mark 0x00004000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
`
	if got != want {
		t.Errorf("flannel table:\n%s\nwant:\n%s", got, want)
	}
	tcp := RenderFlannel(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24"), true).Text()
	if strings.Count(tcp, "meta l4proto tcp masquerade") != 2 {
		t.Errorf("TCP-only masquerade (seed 003's puzzle) not on both masquerade rules:\n%s", tcp)
	}
}

func TestBatchTextAndDrift(t *testing.T) {
	fl := RenderFlannel(netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.2.0/24"), false)
	b := &Batch{Changes: []*Change{Diff(nil, fl)}, DelTables: []string{TableName}}
	text := b.Text()
	for _, l := range []string{"add table ip kube-proxy\ndelete table ip kube-proxy\n", "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\nadd table ip flannel-ipv4 {"} {
		if !strings.Contains(text, l) {
			t.Errorf("batch text lacks %q:\n%s", l, text)
		}
	}
	if (&Batch{Changes: []*Change{Diff(fl, fl)}}).Empty() != true {
		t.Error("a batch of an unchanged table is not empty")
	}
	want := fl.Summarize()
	if d := Drift(want, fl.Summarize(), nil); d != nil {
		t.Errorf("drift of equal summaries: %v", d)
	}
	have := fl.Summarize()
	have["chain postrtg"] = 0
	delete(have, "chain forward")
	have["chain stray"] = 1
	d := Drift(want, have, nil)
	if strings.Join(d, "; ") != "chain forward missing; chain postrtg has 0 rules, not 6; chain stray is not the lab's" {
		t.Errorf("drift = %q", d)
	}
}
