package policy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/policy"
	"github.com/klab-dev/klab/pkg/policy/e2e"
)

func compileCase(t *testing.T, name, node string) *policy.Plan {
	t.Helper()
	for _, k := range e2e.Cases() {
		if k.Name == name {
			ev, err := policy.NewEvaluator(e2e.State(k))
			if err != nil {
				t.Fatal(err)
			}
			return ev.Compile(policy.CompileOptions{Lab: "l", Node: node})
		}
	}
	t.Fatalf("no case %s in pkg/policy/e2e", name)
	return nil
}

// The rendering has kube-network-policies' shape: one table, a forward
// base chain, dispatch chains, per-pod chains ending in log + counted drop,
// peer pods in named ipv4_addr sets, ipBlocks as inline interval sets.
func TestRenderNFTShape(t *testing.T) {
	p := compileCase(t, "egress-cidr-except", "node1")
	tb, err := policy.RenderNFT(p)
	if err != nil {
		t.Fatal(err)
	}
	text := tb.Text()
	for _, want := range []string{
		"add table ip klab-policy",
		"add chain ip klab-policy forward { type filter hook forward priority -5 ; }",
		"ct state established,related accept",
		"jump egress", "jump ingress",
		`counter drop comment "klab l drop egress x/a"`,
		`log prefix "klab l E x/a" group 100`,
		"ip daddr {",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rendering lacks %q:\n%s", want, text)
		}
	}
	q := compileCase(t, "allow-from-x-b-by-podSelector", "node1")
	tq, err := policy.RenderNFT(q)
	if err != nil {
		t.Fatal(err)
	}
	if len(tq.Sets) == 0 || !strings.Contains(tq.Text(), "ip saddr @KLAB-") {
		t.Errorf("pod peers are not a named set:\n%s", tq.Text())
	}
}

// A namespace label change changes set membership only: the diff of the
// two renderings is element changes, no chain touched.
func TestRenderNFTLabelChangeIsElements(t *testing.T) {
	a := compileCase(t, "updated-namespace-before", "node1")
	b := compileCase(t, "updated-namespace-after", "node1")
	ta, _ := policy.RenderNFT(a)
	tb, _ := policy.RenderNFT(b)
	ch := nft.Diff(ta, tb)
	if ch.Full != nil || len(ch.AddChains)+len(ch.RewriteChains)+len(ch.DelChains) != 0 {
		t.Logf("change:\n%s", ch.Text())
		if ch.Full != nil || len(ch.RewriteChains) > 0 {
			t.Errorf("a label change rewrote chains: full=%v rewrite=%d", ch.Full != nil, len(ch.RewriteChains))
		}
	}
	if len(ch.AddElements)+len(ch.DelElements)+len(ch.AddSets)+len(ch.DelSets) == 0 {
		t.Errorf("a label change changed no set:\n%s", ch.Text())
	}
	t.Logf("change:\n%s", ch.Text())
}

func TestNetRanges(t *testing.T) {
	for _, c := range []struct {
		in   []policy.Entry
		want string
	}{
		{[]policy.Entry{{Addr: "10.0.0.0/8"}}, "10.0.0.0-10.255.255.255"},
		{[]policy.Entry{{Addr: "0.0.0.0/0"}, {Addr: "203.0.113.0/24", NoMatch: true}}, "0.0.0.0-203.0.112.255 203.0.114.0-255.255.255.255"},
		{[]policy.Entry{{Addr: "10.0.0.0/8"}, {Addr: "10.1.0.0/16", NoMatch: true}, {Addr: "10.1.2.0/24"}}, "10.0.0.0-10.0.255.255 10.1.2.0-10.1.2.255 10.2.0.0-10.255.255.255"},
		{[]policy.Entry{{Addr: "10.0.0.0/8"}, {Addr: "10.0.0.0/8", NoMatch: true}}, ""},
		{[]policy.Entry{{Addr: "10.0.0.0/24"}, {Addr: "10.0.1.0/24"}}, "10.0.0.0-10.0.1.255"},
		{[]policy.Entry{{Addr: "192.168.1.5"}}, "192.168.1.5-192.168.1.5"},
	} {
		rs, err := policy.NetRanges(c.in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rs {
			got = append(got, fmt.Sprintf("%v-%v", r.From, r.To))
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("%v: got %q, want %q", c.in, g, c.want)
		}
	}
}

// Every conformance case renders on both nodes (every peer, port and
// protocol kind the compiler produces has an nftables form).
func TestRenderNFTAllCases(t *testing.T) {
	for _, k := range e2e.Cases() {
		for _, node := range e2e.Nodes {
			p := compileCase(t, k.Name, node)
			tb, err := policy.RenderNFT(p)
			if err != nil {
				t.Errorf("%s on %s: %v", k.Name, node, err)
				continue
			}
			if tb.Chain("forward") == nil {
				t.Errorf("%s on %s: no forward chain", k.Name, node)
			}
		}
	}
}

// Two renderings of the same plan diff to nothing, ipBlock range lists
// included (compared by content).
func TestRenderNFTSameIsEmptyDiff(t *testing.T) {
	for _, name := range []string{"egress-cidr-except", "cidr-and-except-two-policies", "ingress-ipblock-except-node2"} {
		a, _ := policy.RenderNFT(compileCase(t, name, "node1"))
		b, _ := policy.RenderNFT(compileCase(t, name, "node1"))
		if ch := nft.Diff(a, b); !ch.Empty() {
			t.Errorf("%s: a rendering differs from itself:\n%s", name, ch.Text())
		}
	}
}
