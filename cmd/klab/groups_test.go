package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// ownRunE are the verbs that have subcommands and also run themselves
// ('klab trace POINT...' and 'klab trace journey', 'klab graph' and
// 'klab graph journey'): they are not groups.
var ownRunE = map[string]bool{"klab trace": true, "klab graph": true}

// TestGroupsRejectUnknownSubcommands walks the whole command tree and runs
// every command group (and the root) through run, the path main takes, with
// a bogus subcommand: each must fail with cobra's wording and a non-zero
// status, suggest the subcommand a typo is close to, and still print its
// help when called alone. Nothing here needs root or opens a lab.
func TestGroupsRejectUnknownSubcommands(t *testing.T) {
	t.Setenv("KLAB_STATE_DIR", t.TempDir())
	t.Setenv("KLAB_LAB", "")
	saved := globals
	defer func() { globals = saved }()

	var groups []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			switch {
			case !c.HasParent() || isGroup(c):
				groups = append(groups, c)
			case ownRunE[c.CommandPath()]:
			case !c.Runnable():
				t.Errorf("%q is a group that rejectUnknownSubcommands did not reach", c.CommandPath())
			default:
				t.Errorf("%q has subcommands and its own RunE: list it in ownRunE, or drop its RunE to make it a group", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if len(groups) < 5 { // klab, node, pod, service, lab, completion
		t.Fatalf("found %d groups, want the root, node, pod, service, lab and completion at least", len(groups))
	}

	klab := func(args ...string) (code int, stdout, stderr string) {
		var out, errb bytes.Buffer
		code = run(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, g := range groups {
		path := g.CommandPath()
		words := strings.Fields(path)[1:]
		t.Run(path, func(t *testing.T) {
			code, out, errs := klab(append(words, "frobnicate")...)
			want := `klab: unknown command "frobnicate" for "` + path + `"`
			if code == 0 || !strings.HasPrefix(errs, want) || strings.Contains(errs, "Did you mean") {
				t.Errorf("klab %s frobnicate: exit %d, stderr %q, stdout %q; want a non-zero exit and %q without suggestions", path, code, errs, out, want)
			}

			// A typo: an available subcommand without its last letter.
			var sub string
			for _, s := range g.Commands() {
				if s.IsAvailableCommand() && len(s.Name()) >= 3 {
					sub = s.Name()
					break
				}
			}
			if sub == "" {
				t.Fatalf("%s has no available subcommand of 3 letters or more", path)
			}
			typo := sub[:len(sub)-1]
			code, _, errs = klab(append(words, typo)...)
			want = `klab: unknown command "` + typo + `" for "` + path + `"`
			if code == 0 || !strings.HasPrefix(errs, want) || !strings.Contains(errs, "\n\nDid you mean this?\n") || !strings.Contains(errs, "\t"+sub+"\n") {
				t.Errorf("klab %s %s: exit %d, stderr %q; want a non-zero exit, %q and a suggestion of %q", path, typo, code, errs, want, sub)
			}

			if !g.HasParent() {
				return // the root alone prints its help too, but that is cobra's
			}
			code, out, errs = klab(words...)
			if code != 0 || !strings.Contains(out, "Available Commands:") || errs != "" {
				t.Errorf("klab %s alone: exit %d, stdout %q, stderr %q; want its help and exit 0", path, code, out, errs)
			}
		})
	}

	// The case from the issue, and flags do not hide the bogus word.
	code, _, errs := klab("pod", "ad", "--lab", "x")
	if code == 0 || !strings.HasPrefix(errs, "klab: unknown command \"ad\" for \"klab pod\"\n\nDid you mean this?\n\tadd\n") {
		t.Errorf("klab pod ad --lab x: exit %d, stderr %q", code, errs)
	}
}
