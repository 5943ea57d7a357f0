package labs

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMarkdownPlain(t *testing.T) {
	var b bytes.Buffer
	r := &Renderer{W: &b, Width: 40}
	r.Markdown("### Sub\n\nThe route `10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink` is **last**, see [seed](https://x.org).\n\n- one\n- two `x`\n\n> quoted\n> text\n\n| a | b |\n|---|---|")
	s := b.String()
	if strings.Contains(s, "\x1b[") {
		t.Errorf("escapes without colour: %q", s)
	}
	for _, w := range []string{"Sub\n\n", "10.244.2.0/24 via", "last", "(https://x.org)", "  • one\n  • two x\n", "  │ quoted text", "  | a | b |"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	for _, line := range strings.Split(s, "\n") {
		if n := utf8.RuneCountInString(line); n > 40 && !strings.Contains(line, "|") {
			t.Errorf("line longer than 40 (%d): %q", n, line)
		}
	}
	if strings.Contains(s, "`") || strings.Contains(s, "**") {
		t.Errorf("markup left in: %s", s)
	}
}

func TestMarkdownColour(t *testing.T) {
	var b bytes.Buffer
	r := &Renderer{W: &b, Color: true, Width: 20}
	r.Markdown("a `ip route show table main` b")
	s := b.String()
	// a code span broken across lines stays highlighted on both
	if strings.Count(s, ansiCyan) < 2 || !strings.Contains(s, ansiCyan+"ip"+ansiReset) {
		t.Errorf("code not highlighted piecewise: %q", s)
	}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		vis := strings.NewReplacer(ansiCyan, "", ansiReset, "").Replace(line)
		if utf8.RuneCountInString(vis) > 20 {
			t.Errorf("visible line longer than 20: %q", vis)
		}
	}
}

func TestCheckResultRendering(t *testing.T) {
	var b bytes.Buffer
	r := &Renderer{W: &b, Width: 60}
	r.CheckResult(CheckResult{Command: "klab ping a b", Passed: true, Output: "ok\n"}, false)
	r.CheckResult(CheckResult{Command: "klab ping a c", Reason: "exit status 1 (want 0)", Output: "100% loss\n", Hint: "look at `ip neigh`"}, false)
	s := b.String()
	for _, w := range []string{"✓ klab ping a b\n", "✗ klab ping a c\n", "failed: exit status 1 (want 0)", "    100% loss", "Hint: look at ip neigh"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	if strings.Contains(s, "ok\n") {
		t.Errorf("passed check's output shown without verbose")
	}
}

func TestRenderWholeLab(t *testing.T) {
	for _, n := range Names() {
		l, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		(&Renderer{W: &b}).Lab(l)
		if !strings.Contains(b.String(), "Step 1/") || strings.Contains(b.String(), "```") {
			t.Errorf("%s rendered oddly:\n%s", n, b.String())
		}
	}
}
