package labs

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds the parser arbitrary files: it must never panic, and what
// it accepts must be well formed.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.md")
	for _, n := range Names() {
		seeds = append(seeds, n+".md")
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("---\nname: a\ntitle: t\nsummary: s\ntime: 1m\n---\n## s\n```check\nklab x \"\n```\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		l, err := Parse("fuzz.md", src)
		if err != nil {
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if l.Name == "" || l.Title == "" || len(l.Steps) == 0 {
			t.Fatalf("accepted a lab without name, title or steps: %+v", l)
		}
		for _, c := range l.Commands() {
			if len(c.Args) == 0 || c.Line <= 0 {
				t.Fatalf("command without args or line: %+v", c)
			}
		}
		for _, c := range l.Checks() {
			evaluate(c, 0, "some output\n") // expectations compile and evaluate
		}
		_ = Lint(l, nil)
	})
}
