package labs

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

const front = "---\nname: t-labs-x\ntitle: T\nsummary: S\ntime: 5m\n---\n"

func TestParseMinimal(t *testing.T) {
	src, err := os.ReadFile("testdata/minimal.md")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Parse("minimal.md", src)
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "t-labs-minimal" || l.Title != "A minimal lab" || l.Time != 5*time.Minute {
		t.Errorf("front matter: %+v", l)
	}
	if len(l.Intro) != 1 || l.Intro[0].Text != "Intro." {
		t.Errorf("intro: %+v", l.Intro)
	}
	if len(l.Steps) != 1 || l.Steps[0].Title != "Build" || l.Steps[0].Line != 10 {
		t.Fatalf("steps: %+v", l.Steps)
	}
	cmds := l.Commands()
	if len(cmds) != 2 || !reflect.DeepEqual(cmds[0].Args, []string{"node", "add", "node1"}) || cmds[0].Line != 13 {
		t.Errorf("commands: %+v", cmds[0])
	}
	cs := l.Checks()
	if len(cs) != 1 {
		t.Fatalf("checks: %+v", cs)
	}
	c := cs[0]
	if c.Retry != 2*time.Second || c.Timeout != DefaultCheckTimeout || c.Hint != "look at the node." || c.Step != "Build" || c.Line != 17 {
		t.Errorf("check: %+v", c)
	}
	if len(c.Expect) != 1 || c.Expect[0].Kind != Contains || c.Expect[0].Text != "default via 192.168.1.1" || c.Expect[0].Line != 18 {
		t.Errorf("expect: %+v", c.Expect)
	}
}

func TestParseFull(t *testing.T) {
	src, err := os.ReadFile("testdata/full.md")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Parse("full.md", src)
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "t-labs-full" || l.Title != "Everything: all features" || l.Time != 90*time.Minute || l.Backend != "host-gw" {
		t.Errorf("front matter: %+v", l)
	}
	if !reflect.DeepEqual(l.Prerequisites, []string{"pod-netns", "pod-same-node"}) {
		t.Errorf("prerequisites: %q", l.Prerequisites)
	}
	if len(l.Steps) != 2 || l.Steps[0].Title != "Step one" {
		t.Fatalf("steps: %+v", l.Steps)
	}
	var kinds []BlockKind
	for _, b := range l.Steps[0].Blocks {
		kinds = append(kinds, b.Kind)
	}
	if want := []BlockKind{Prose, Display, Action, CheckBlock}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("block kinds %v, want %v", kinds, want)
	}
	act := l.Steps[0].Blocks[2]
	if act.Timeout != 30*time.Second || act.Settle != 500*time.Millisecond || len(act.Commands) != 3 {
		t.Fatalf("action block: %+v", act)
	}
	if bg := act.Commands[1]; !bg.Background || bg.Args[len(bg.Args)-1] != "icmp and host 10.244.2.2" || strings.HasSuffix(bg.Text, "&") {
		t.Errorf("background command: %+v", bg)
	}
	if want := []string{"exec", "node1", "--", "sh", "-c", `echo "quoted"`, "--extra"}; !reflect.DeepEqual(act.Commands[2].Args, want) {
		t.Errorf("continued command: %q, want %q", act.Commands[2].Args, want)
	}
	chk := l.Steps[0].Blocks[3]
	if chk.Hint != "The hint as a fenced block." || len(chk.Checks) != 2 {
		t.Fatalf("check block: %+v", chk)
	}
	c0, c1 := chk.Checks[0], chk.Checks[1]
	if !c0.NonZero || c0.Retry != 0 || c0.Timeout != 5*time.Second || c0.Expect[0].Kind != NotContains {
		t.Errorf("check 0: %+v", c0)
	}
	if c1.NonZero || c1.ExitCode != 0 || c1.Expect[0].Kind != Matches || c1.Hint != chk.Hint {
		t.Errorf("check 1: %+v", c1)
	}
	last := l.Steps[1].Blocks[0]
	if last.Kind != CheckBlock || last.Hint != "a bold hint\non two lines." {
		t.Errorf("step two: %+v", last)
	}
}

func TestParseErrors(t *testing.T) {
	step := front + "\n## Step\n\n"
	for _, tc := range []struct {
		name string
		src  string
		line int
		msg  string
	}{
		{"no front matter", "# Lab\n\n## Step\n", 1, "starts with front matter"},
		{"unclosed front matter", "---\nname: x\n", 1, "not closed"},
		{"missing title", "---\nname: t-labs-x\nsummary: S\ntime: 5m\n---\n## S\n", 1, "no title: field"},
		{"missing time", "---\nname: t-labs-x\ntitle: T\nsummary: S\n---\n## S\n", 1, "no time: field"},
		{"unknown field", "---\nname: t-labs-x\ntitle: T\nsummary: S\ntime: 5m\nauthor: me\n---\n## S\n", 6, `unknown front matter field "author"`},
		{"repeated field", "---\nname: t-labs-x\ntitle: T\ntitle: U\nsummary: S\ntime: 5m\n---\n## S\n", 4, "repeated"},
		{"bad name", "---\nname: Bad_Name\ntitle: T\nsummary: S\ntime: 5m\n---\n## S\n", 2, "not valid"},
		{"bad time", "---\nname: t-labs-x\ntitle: T\nsummary: S\ntime: soon\n---\n## S\n", 5, "not a duration"},
		{"bad backend", "---\nname: t-labs-x\ntitle: T\nsummary: S\ntime: 5m\nbackend: udp\n---\n## S\n", 6, "backend"},
		{"not key value", "---\nname: t-labs-x\ntitle: T\nsummary: S\ntime: 5m\njunk\n---\n## S\n", 6, "key: value"},
		{"no steps", front + "just prose\n", 8, "at least one step"},
		{"empty step title", front + "##\n", 7, "needs a title"},
		{"unclosed fence", step + "```klab\nklab node add node1\n", 10, "never closed"},
		{"unknown block type", step + "```chek\nklab ping a b\n```\n", 10, `unknown block type "chek"`},
		{"action before step", front + "```klab\nklab node add n\n```\n## S\n", 7, "belong in a step"},
		{"check with no command", step + "```check\n```\n", 10, "has no command"},
		{"empty action block", step + "```klab\n# nothing\n```\n", 10, "has no command"},
		{"expect before command", step + "```check\nexpect: x\nklab ping a b\n```\n", 11, "before any command"},
		{"empty expect", step + "```check\nklab ping a b\nexpect:\n```\n", 12, "needs the text"},
		{"bad regexp", step + "```check\nklab ping a b\nexpect-re: (\n```\n", 12, "not a valid regular expression"},
		{"bad exit", step + "```check\nklab ping a b\nexit: maybe\n```\n", 12, "not an exit status"},
		{"unknown check line", step + "```check\nklab ping a b\nwant: x\n```\n", 12, `unknown check option "want:"`},
		{"non-klab action", step + "```klab\nip route\n```\n", 11, `klab exec node1 -- ip route`},
		{"non-klab check", step + "```check\nping 10.0.0.1\n```\n", 11, "start the line with klab"},
		{"klab alone", step + "```klab\nklab\n```\n", 11, "not a command"},
		{"shell pipe", step + "```klab\nklab exec n -- ip route | grep x\n```\n", 11, "shell operator"},
		{"unclosed quote", step + "```klab\nklab exec n -- sh -c 'x\n```\n", 11, "not closed"},
		{"background check", step + "```check\nklab ping a b &\n```\n", 11, "background"},
		{"unknown option", step + "```check retries=3\nklab ping a b\n```\n", 10, `unknown option "retries=3"`},
		{"settle on check", step + "```check settle=1s\nklab ping a b\n```\n", 10, "unknown option"},
		{"bad duration", step + "```check retry=soon\nklab ping a b\n```\n", 10, "not a valid duration"},
		{"zero timeout", step + "```klab timeout=0s\nklab ping a b\n```\n", 10, "not a valid duration"},
		{"stray hint", step + "Prose.\n\n> Hint: where am I?\n", 12, "must directly follow a check block"},
		{"hint after prose", step + "```check\nklab ping a b\n```\n\nProse.\n> Hint: late\n", 15, "must directly follow"},
		{"empty hint", step + "```check\nklab ping a b\n```\n```hint\n```\n", 13, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Parse("x.md", []byte(tc.src))
			if err == nil {
				t.Fatalf("no error; lab %+v", l)
			}
			var el ErrorList
			if !errors.As(err, &el) {
				t.Fatalf("error %T is not an ErrorList: %v", err, err)
			}
			for _, e := range el {
				if e.Line == tc.line && strings.Contains(e.Msg, tc.msg) && e.File == "x.md" {
					return
				}
			}
			t.Errorf("want x.md:%d: ...%s...; got\n%v", tc.line, tc.msg, err)
		})
	}
}

func TestParseCollectsAllErrors(t *testing.T) {
	src := front + "## S\n```klab\nip a\nklab\n```\n```check\nping x\n```\n"
	_, err := Parse("x.md", []byte(src))
	var el ErrorList
	if !errors.As(err, &el) || len(el) != 3 {
		t.Fatalf("want 3 errors, got %v", err)
	}
	if got := el[0].Error(); got != `x.md:9: `+el[0].Msg {
		t.Errorf("error format %q", got)
	}
}

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`klab a b`, []string{"klab", "a", "b"}},
		{`klab  'a b'  "c d"`, []string{"klab", "a b", "c d"}},
		{`x "a\"b" 'it''s' a\ b`, []string{"x", `a"b`, "its", "a b"}},
		{`x ""`, []string{"x", ""}},
		{`x '!' -p`, []string{"x", "!", "-p"}},
	} {
		ws, err := splitWords(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		var got []string
		for _, w := range ws {
			got = append(got, w.s)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitWords(%s) = %q, want %q", tc.in, got, tc.want)
		}
		// joinWords round-trips
		back, _ := splitWords(joinWords(got))
		var again []string
		for _, w := range back {
			again = append(again, w.s)
		}
		if !reflect.DeepEqual(again, got) {
			t.Errorf("joinWords(%q) = %s does not split back", got, joinWords(got))
		}
	}
}
