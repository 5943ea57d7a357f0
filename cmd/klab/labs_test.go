package main

import (
	"strings"
	"testing"
)

func TestValidateKlabArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" = valid
	}{
		{[]string{"labs"}, ""},
		{[]string{"labs", "-o", "json"}, ""},
		{[]string{"lab", "lint", "a.md", "b.md"}, ""},
		{[]string{"run", "pod-netns", "--yes"}, ""},
		{[]string{"--explain", "labs"}, ""},
		{[]string{"nodez", "add", "n"}, `unknown command "nodez"`},
		{[]string{"lbs"}, `unknown command "lbs" for "klab" (did you mean`},
		{[]string{"labs", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"run", "x", "--step=maybe"}, "invalid argument"},
		{[]string{"run"}, "takes a lab name"},
		{[]string{"lab"}, "needs a subcommand: one of check, lint, show"},
		{[]string{"lab", "grade", "x"}, `"grade" is not a subcommand of "klab lab"`},
		{[]string{"labs", "extra"}, "unknown command"},
	} {
		err := validateKlabArgs(tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: unexpected error %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestValidateKlabArgsKeepsGlobals(t *testing.T) {
	saved := globals
	defer func() { globals = saved }()
	globals.lab, globals.output, globals.explain = "mine", "text", false
	if err := validateKlabArgs([]string{"--lab", "other", "--explain", "labs", "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	if globals.lab != "mine" || globals.output != "text" || globals.explain {
		t.Errorf("validation changed the globals: %+v", globals)
	}
}

func TestCompleteLabNames(t *testing.T) {
	got, _ := completeLabNames(nil, nil, "flannel-cr")
	if len(got) != 1 || !strings.HasPrefix(got[0], "flannel-crossnode\t") {
		t.Errorf("completion of flannel-cr: %q", got)
	}
	got, _ = completeLabNames(nil, nil, "./")
	if len(got) != 1 || got[0] != "md" {
		t.Errorf("completion of a path: %q", got)
	}
}
