package labs

import (
	"strings"
	"testing"
)

// Front matter "cni": true and false parse; anything else is one clear
// error.
func TestFrontMatterCNI(t *testing.T) {
	lab := func(v string) string {
		return "---\nname: x\ntitle: X\nsummary: S.\ntime: 5m\ncni: " + v + "\n---\n\n# X\n\n## One\n\n```klab\nklab node add node1\n```\n"
	}
	for _, tc := range []struct {
		val     string
		want    bool
		wantErr string
	}{{"true", true, ""}, {"false", false, ""}, {"yes", false, `cni "yes" is neither true nor false`}} {
		l, err := Parse("x.md", []byte(lab(tc.val)))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("cni: %s: error %v, want %q", tc.val, err, tc.wantErr)
			}
			continue
		}
		if err != nil || l.CNI != tc.want {
			t.Errorf("cni: %s: CNI=%v, %v; want %v", tc.val, l != nil && l.CNI, err, tc.want)
		}
	}
}
