package labs

import (
	"strings"
	"testing"
)

func TestXtablesNoWait(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"exec", "node1", "--", "iptables", "-w", "-t", "nat", "-A", "X"}, ""},
		{[]string{"exec", "node1", "--", "iptables", "--wait", "-A", "X"}, ""},
		{[]string{"exec", "node1", "--", "iptables", "--wait=5", "-A", "X"}, ""},
		{[]string{"exec", "node1", "--", "iptables", "-w5", "-A", "X"}, ""},
		{[]string{"exec", "node1", "--", "iptables-save", "-t", "nat"}, ""},
		{[]string{"exec", "node1", "--", "iptables", "--version"}, ""},
		{[]string{"exec", "node1", "--", "iptables", "-t", "nat", "-A", "X"}, "iptables"},
		{[]string{"exec", "node1", "--", "/usr/sbin/ip6tables", "-D", "FORWARD", "1"}, "ip6tables"},
		{[]string{"exec", "node1", "--", "iptables-restore", "--noflush"}, "iptables-restore"},
		{[]string{"exec", "node1", "--", "sh", "-c", "iptables -w -F X; iptables -A X -j DROP"}, "iptables"},
		{[]string{"exec", "node1", "--", "sh", "-c", "iptables -w -F X && iptables-nft -w -A X"}, ""},
		{[]string{"node", "add", "node1"}, ""},
	} {
		if got := xtablesNoWait(tc.args); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.args, got, tc.want)
		}
	}
}

// Lint rejects an iptables command without -w, in actions and checks; every
// lab klab ships passes (TestEmbeddedLabsLint-style: each is linted).
func TestLintWantsIptablesWait(t *testing.T) {
	src := "---\nname: w\ntitle: t\nsummary: s\ntime: 1m\n---\n# T\n\n## Step\n\n```klab\nklab exec node1 -- iptables -t nat -F\n```\n\n```check\nklab exec node1 -- iptables -S\n```\n"
	l, err := Parse("w.md", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	err = Lint(l, nil)
	if err == nil || strings.Count(err.Error(), "iptables without -w") != 2 {
		t.Fatalf("lint: %v", err)
	}
	for _, n := range Names() {
		l, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range l.Commands() {
			if tool := xtablesNoWait(c.Args); tool != "" {
				t.Errorf("%s:%d: %s without -w", l.File, c.Line, tool)
			}
		}
	}
}
