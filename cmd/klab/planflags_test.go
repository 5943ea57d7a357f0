package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every verb in the mutating list has --dry-run and --script (default
// $KLAB_SCRIPT), so does 'klab run' (a whole lab), and no other verb has
// either: a read-only verb offering --dry-run would promise something it
// cannot mean.
func TestPlanFlagsOnMutatingVerbsOnly(t *testing.T) {
	t.Setenv("KLAB_SCRIPT", "/tmp/from-env.sh")
	saved := globals
	defer func() { globals = saved }()
	root := newRoot()
	want := append(slices.Clone(mutating), "run")
	seen := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		path := strings.TrimPrefix(c.CommandPath(), "klab ")
		dry, script := c.LocalFlags().Lookup("dry-run"), c.LocalFlags().Lookup("script")
		if c.InheritedFlags().Lookup("dry-run") != nil || c.InheritedFlags().Lookup("script") != nil {
			t.Errorf("klab %s inherits --dry-run or --script from a parent", path)
		}
		switch {
		case slices.Contains(want, path):
			seen[path] = true
			if dry == nil || dry.Value.Type() != "bool" {
				t.Errorf("mutating verb 'klab %s' has no --dry-run flag", path)
			}
			if script == nil {
				t.Errorf("mutating verb 'klab %s' has no --script flag", path)
			} else if script.DefValue != "/tmp/from-env.sh" {
				t.Errorf("klab %s --script defaults to %q, want $KLAB_SCRIPT", path, script.DefValue)
			}
		case dry != nil || script != nil:
			t.Errorf("'klab %s' is not in the mutating list but has --dry-run or --script", path)
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	for _, p := range want {
		if !seen[p] {
			t.Errorf("mutating verb %q is not in the command tree", p)
		}
	}
	if len(seen) < 11 {
		t.Errorf("walked only %d mutating verbs", len(seen))
	}
}
