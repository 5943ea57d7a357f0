package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/doctor"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/spf13/cobra"
)

// labName resolves which lab a command acts on: --lab, then $KLAB_LAB,
// then the only lab that is up, then "default".
func labName() (string, error) {
	if globals.lab != "" {
		return globals.lab, netns.ValidateLab(globals.lab)
	}
	labs, err := cluster.Labs(globals.stateDir)
	if err != nil {
		return "", err
	}
	switch len(labs) {
	case 0:
		return "default", nil
	case 1:
		return labs[0], nil
	}
	for _, l := range labs {
		if l == "default" {
			return l, nil
		}
	}
	return "", fmt.Errorf("several labs are up (%v): choose one with --lab or KLAB_LAB", labs)
}

// needRoot fails early, with the fix, when not running as root.
func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("klab needs root to create network namespaces and links: run it with sudo")
	}
	return doctor.MissingCapability() // root in a container, or capabilities dropped

}

// openLab locks and opens the current lab; create, if not nil, creates it
// when missing. The returned cluster records equivalent commands when
// --explain is set.
func openLab(create *cluster.Options) (*cluster.Cluster, error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	name, err := labName()
	if err != nil {
		return nil, err
	}
	c, err := cluster.Open(globals.stateDir, name, create, os.Stderr)
	if err != nil {
		return nil, err
	}
	c.A.DryRun = globals.dryRun
	c.A.Simulate = simulate()
	c.A.Discard = false
	if serve, err := serverArgv(c.Lab.Name, globals.stateDir); err == nil {
		c.Serve = serve
	}
	return c, nil
}

// serverArgv is the command line of this klab's server worker (klab
// __serve) for a lab's servers.
func serverArgv(lab, stateDir string) (cluster.ServerArgv, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return func(target, proto string, port int) []string {
		return []string{self, "__serve", "--name", target, "--port", strconv.Itoa(port), "--proto", proto, "--lab", lab, "--state-dir", stateDir}
	}, nil
}

// planFlags gives a mutating verb --dry-run and --script.
func planFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&globals.dryRun, "dry-run", false, "change nothing: print what would change as a runnable sh script")
	f.StringVar(&globals.script, "script", os.Getenv("KLAB_SCRIPT"), "append the commands that ran to `FILE`, as a runnable sh script (default $KLAB_SCRIPT)")
}

// newApplier is the applier of a verb that opens no lab (destroy).
func newApplier() *plan.Applier { return &plan.Applier{DryRun: globals.dryRun, Simulate: simulate()} }

// simulateEnv, with --dry-run, plans against an empty machine and keeps
// the state in the (scratch) state directory: how 'klab run --dry-run'
// runs a lab's commands one after the other (see plan.Applier.Simulate).
const simulateEnv = "KLAB_SIMULATE"

func simulate() bool { return globals.dryRun && os.Getenv(simulateEnv) == "1" }

// out is where a mutating verb's messages go: stdout, or stderr under
// --dry-run (stdout is the script then).
func out() io.Writer {
	if globals.dryRun {
		return os.Stderr
	}
	return os.Stdout
}

// finish shows what the applier ran: under --dry-run the plan as a script
// on stdout; with --explain the commands that ran, exactly and in order
// (nothing for a no-op); with --script FILE they are appended to FILE.
func finish(a *plan.Applier) error {
	ran := a.Ran()
	title := "klab " + strings.Join(scriptArgs(os.Args[1:]), " ")
	switch {
	case globals.dryRun:
		fmt.Print(plan.ScriptHeader)
		if err := plan.WriteScript(os.Stdout, title, ran); err != nil {
			return err
		}
	case globals.explain && len(ran) > 0:
		fmt.Println("# equivalent commands:")
		if err := plan.WriteScript(os.Stdout, "", ran); err != nil {
			return err
		}
	}
	if globals.script != "" && !globals.dryRun {
		return plan.AppendScript(globals.script, title, ran)
	}
	return nil
}

// failed shows what a verb that failed ran before it failed (and what the
// rollback undid), for --explain and --script; a failed --dry-run prints no
// script, only the error.
func failed(a *plan.Applier) {
	if globals.dryRun {
		return
	}
	finish(a)
}

// scriptArgs drops the output flags from a command line for a script's
// title comment.
func scriptArgs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--script":
			i++
		case strings.HasPrefix(a, "--script=") || a == "--explain" || a == "--dry-run":
		default:
			out = append(out, a)
		}
	}
	return out
}

func jsonOutput() bool { return globals.output == "json" }

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkOutput() error {
	if globals.output != "text" && globals.output != "json" {
		return fmt.Errorf("output format %q is not known: use -o text or -o json", globals.output)
	}
	return nil
}

// deleteEach is the body of 'klab node|pod|service del NAME...': every name
// is checked first (a typo deletes nothing), then each object is deleted in
// turn; Ctrl-C stops between two objects, saying what is left.
func deleteEach(kind string, names []string, exists func(*cluster.Cluster, string) bool, del func(*cluster.Cluster, string) error) error {
	c, err := openLab(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, n := range names {
		if !exists(c, n) {
			return fmt.Errorf("%s %q does not exist in lab %s: see 'klab %s list'", kind, n, c.Lab.Name, kind)
		}
	}
	defer guardBuild(c)()
	for i, n := range names {
		if wasInterrupted(c) {
			return exitError{code: 130, msg: fmt.Sprintf("interrupted before deleting %s(s) %s. %s", kind, strings.Join(names[i:], " "), labSummary(c))}
		}
		if err := del(c, n); err != nil {
			failed(c.A)
			return err
		}
		fmt.Fprintf(out(), "%s %s deleted\n", kind, n)
	}
	return finish(c.A)
}
