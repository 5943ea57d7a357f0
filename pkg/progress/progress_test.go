package progress

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestBarDrawsAndErases(t *testing.T) {
	var b bytes.Buffer
	bar := NewOn(&b, "build")
	bar.Set(0, 4)
	bar.Set(4, 4)
	bar.Done()
	out := b.String()
	for _, want := range []string{"\rbuild [", "4/4", "##############################]", "\r\033[K"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar output %q lacks %q", out, want)
		}
	}
}

func TestNoBarOffTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Fatal("a file is not a terminal")
	}
	bar := New(f, "x", true)
	if bar != nil {
		t.Fatal("a bar on a file")
	}
	bar.Set(1, 2) // a nil bar draws nothing and does not panic
	bar.Done()
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("%d bytes written to a file", st.Size())
	}
	if New(os.Stderr, "x", false) != nil {
		t.Error("a disabled bar (-o json) draws")
	}
}
