package labs

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeVerbs accepts the planned klab verbs, like the cmd layer's validator
// would, without the command tree.
func fakeVerbs(args []string) error {
	switch args[0] {
	case "node", "pod", "service":
		if len(args) < 2 || (args[1] != "add" && args[1] != "del" && args[1] != "list" && args[1] != "show") {
			return fmt.Errorf("%q needs a subcommand", args[0])
		}
	case "exec", "show", "ping", "serve", "curl", "trace", "destroy":
	default:
		return fmt.Errorf("unknown command %q for \"klab\"", args[0])
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--bogus" {
			return errors.New("unknown flag: --bogus")
		}
	}
	return nil
}

func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra string // front matter lines
		body  string
		want  []string // "line: substring"; empty = no error
	}{
		{"ok", "", "```klab\nklab node add node1\n```\n", nil},
		{"unknown verb", "", "```klab\nklab nodes add node1\n```\n", []string{`9: klab nodes add node1: unknown command "nodes"`}},
		{"unknown flag", "", "```check\nklab ping a b --bogus\n```\n", []string{"9: klab ping a b --bogus: unknown flag: --bogus"}},
		{"flag after -- is the command's", "", "```check\nklab exec n -- ip --bogus\n```\n", nil},
		{"lab flag", "", "```klab\nklab --lab other node add n\n```\n", []string{"9: --lab in a lab command"}},
		{"lab flag with =", "", "```klab\nklab node add n --lab=x\n```\n", []string{"9: --lab in a lab command"}},
		{"state dir", "", "```klab\nklab node add n --state-dir /tmp\n```\n", []string{"9: --state-dir"}},
		{"recursion", "", "```klab\nklab run pod-netns\n```\n", []string{`9: a lab cannot run "klab run"`}},
		{"backend mismatch", "backend: vxlan\n", "```klab\nklab node add n --backend host-gw\n```\n", []string{"10: this node uses --backend host-gw but the front matter says backend: vxlan"}},
		{"default backend mismatch", "", "```klab\nklab node add n --backend=host-gw\n```\n", []string{"9: this node uses --backend host-gw"}},
		{"host-gw never built", "backend: host-gw\n", "```klab\nklab node add n\n```\n", []string{"1: backend: host-gw, but no"}},
		{"host-gw ok", "backend: host-gw\n", "```klab\nklab node add n --backend host-gw\nklab node add m\n```\n", nil},
		{"nftables ok", "proxy-mode: nftables\n", "```klab\nklab node add n --proxy-mode nftables\nklab node add m\n```\n", nil},
		{"nftables never chosen", "proxy-mode: nftables\n", "```klab\nklab node add n\n```\n", []string{`10: this node add has --proxy-mode "" but the front matter says proxy-mode: "nftables"`}},
		{"nftables not in front matter", "", "```klab\nklab node add n --proxy-mode nftables\n```\n", []string{`9: this node add has --proxy-mode "nftables"`}},
		{"iptables is the default", "proxy-mode: iptables\n", "```klab\nklab node add n\n```\n", nil},
		{"external etcd is the etcd control plane", "control-plane: etcd\n", "```klab\nklab node add n --etcd-endpoints http://10.0.0.5:2379\nklab node add m\n```\n", nil},
		{"external etcd not in front matter", "", "```klab\nklab node add n --etcd-endpoints=http://10.0.0.5:2379\n```\n", []string{"9: this node add has --control-plane etcd but the front matter does not say control-plane: etcd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "---\nname: t-labs-lint\ntitle: T\nsummary: S\ntime: 5m\n" + tc.extra + "---\n## S\n" + tc.body
			l, err := Parse("l.md", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			err = Lint(l, fakeVerbs)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), "l.md:"+w) {
					t.Errorf("want l.md:%s in\n%v", w, err)
				}
			}
		})
	}
}

func TestLintNilValidator(t *testing.T) {
	l, err := Parse("l.md", []byte(front+"## S\n```klab\nklab anything at all\n```\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Lint(l, nil); err != nil {
		t.Fatal(err)
	}
}

// dns: true in the front matter and --dns on the first node add go
// together.
func TestLintDNS(t *testing.T) {
	lab := func(front, nodes string) string {
		return "---\nname: l\ntitle: T\nsummary: S\ntime: 5m\n" + front + "---\n# T\n\n## S\n```klab\n" + nodes + "```\n\n```check\nklab ping n1 n1\n```\n"
	}
	for _, tc := range []struct{ src, want string }{
		{lab("dns: true\n", "klab node add n1 --dns\nklab node add n2\n"), ""},
		{lab("", "klab node add n1\n"), ""},
		{lab("dns: true\n", "klab node add n1\n"), "lacks --dns"},
		{lab("", "klab node add n1 --dns\n"), "does not say dns: true"},
		{lab("dns: maybe\n", "klab node add n1\n"), "neither true nor false"},
	} {
		l, err := Parse("l.md", []byte(tc.src))
		if err == nil {
			err = Lint(l, nil)
		}
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("lab:\n%s\nerr = %v, want %q", tc.src, err, tc.want)
		}
	}
}
