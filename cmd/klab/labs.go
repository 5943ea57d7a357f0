package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/klab-dev/klab/labs"
	"github.com/klab-dev/klab/pkg/doctor"
	"github.com/spf13/cobra"
)

func newRunCmd() *cobra.Command {
	var step, yes bool
	var tf trustFlags
	cmd := &cobra.Command{
		Use:   "run LAB|FILE",
		Short: "Run a guided lab: prose, each command before it runs, what it changed in the kernel, and checks",
		Long: `Run a lab: one of the labs klab ships ('klab labs' lists them) or a lab file
you wrote (see docs/lab-format.md).

The lab is linted first, so a broken lab runs nothing. An earlier instance of
the lab is destroyed ('klab destroy LAB'), then each step is shown: its prose,
each command before it runs, the equivalent ip/bridge/iptables commands of
what it changed (--explain), and its checks (✓/✗, with a hint when one
fails). A failed check or command stops the lab and exits 1.

--step waits for Enter before each step (q stops); --yes runs straight
through. Without either, klab pauses when stdin is a terminal and runs
straight through otherwise. The lab stays up afterwards: explore it with
'klab exec' and 'klab show', grade it with 'klab lab check', remove it with
'klab destroy LAB'.

The lab instance is named after the lab; --lab NAME picks another name.
$KLAB_LAB is deliberately ignored here, so starting a lab never destroys the
lab you are exploring.

A lab's commands run sandboxed (docs/security.md): what 'klab exec' runs in
a node or pod, and its servers, see the host's files read-only (a private
/tmp apart), no other namespace and no host process, and keep only the
networking capabilities. Before a lab file that is not one of klab's own
runs, klab shows where it comes from and what it runs inside nodes and pods,
and asks (--yes skips the question, and still sandboxes). Blocks a lab marks
privileged run unsandboxed: klab names them and asks once; --yes does not
answer that, --allow-privileged does. --trust turns the sandbox off for a
lab you wrote yourself.`,
		Example: `  sudo klab run flannel-crossnode            # pauses between steps on a terminal
  sudo klab run flannel-crossnode --yes      # straight through (CI)
  sudo klab run ./my-lab.md --step
  sudo klab run pod-netns --lab alice        # a second instance, named alice
  sudo klab run ./shared-lab.md --yes        # a stranger's lab: sandboxed, no question
  sudo klab run ./my-lab.md --trust          # your own lab, with full root`,
		Args:              exactLabArgs(1, "a lab name or a lab file"),
		ValidArgsFunction: completeLabNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if step && yes {
				return exitError{code: 2, msg: "--step and --yes contradict each other: choose one"}
			}
			l, err := loadAndLint(args[0])
			if err != nil {
				return err
			}
			if err := labsRequireRoot("run a lab"); err != nil {
				return err
			}
			r, err := newLabRunner(cmd, l, tf)
			if err != nil {
				return err
			}
			if globals.dryRun {
				return dryRunLab(cmd, r, l)
			}
			if err := labFiles(r, args[0]); err != nil {
				return err
			}
			defer os.RemoveAll(labFilesDir)
			if err := confirmLab(args[0], l, tf, yes, os.Stdin, os.Stdout); err != nil {
				return err
			}
			if globals.script != "" {
				abs, err := filepath.Abs(globals.script)
				if err != nil {
					return err
				}
				r.Script = abs
				ex := r.Exec.(labs.ExecExecutor)
				ex.Env = append(ex.Env, "KLAB_SCRIPT="+abs)
				r.Exec = ex
			}
			r.Mode = labs.Straight
			if step || (!yes && labs.IsTerminal(os.Stdin)) {
				r.Mode = labs.Stepwise
			}
			// The first Ctrl-C stops the lab at a consistent point (see
			// labs.ExecExecutor); later ones are caught too, so the command
			// that is rolling back is never cut short.
			ctx, stop := signal.NotifyContext(cmd.Context(), interruptSignals...)
			defer stop()
			_, err = r.Run(ctx, l)
			var cf *labs.CheckFailedError
			var af *labs.CommandFailedError
			var ie *labs.InterruptedError
			switch {
			case errors.As(err, &ie):
				return exitError{code: 130, msg: err.Error()}
			case errors.As(err, &cf), errors.As(err, &af):
				return exitError{code: 1, msg: err.Error()}
			}
			return err
		},
	}
	planFlags(cmd)
	cmd.Flags().BoolVar(&step, "step", false, "wait for Enter before each step (q stops)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "run every step without pausing, and a lab file without asking (still sandboxed)")
	trustFlagSet(cmd, &tf)
	return cmd
}

func trustFlagSet(cmd *cobra.Command, tf *trustFlags) {
	cmd.Flags().BoolVar(&tf.trust, "trust", false, "run the lab's commands unsandboxed, with full root (a lab you wrote yourself)")
	cmd.Flags().BoolVar(&tf.allowPrivileged, "allow-privileged", false, "run the blocks the lab marks privileged unsandboxed, without asking")
}

// labFilesDir is where an embedded lab's files are written for its run.
var labFilesDir string

// labFiles points $KLAB_LAB_DIR, for the lab's commands, at the directory
// of the lab file, or at a temporary copy of an embedded lab's files.
func labFiles(r *labs.Runner, arg string) error {
	dir := ""
	if fi, err := os.Stat(arg); err == nil && !fi.IsDir() {
		dir = filepath.Dir(arg)
	} else {
		tmp, err := os.MkdirTemp("", "klab-lab-files-")
		if err != nil {
			return err
		}
		if ok, err := labs.WriteFiles(arg, tmp); err != nil || !ok {
			os.RemoveAll(tmp)
			return err
		}
		dir, labFilesDir = tmp, tmp
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	ex := r.Exec.(labs.ExecExecutor)
	ex.Env = append(ex.Env, "KLAB_LAB_DIR="+abs)
	r.Exec = ex
	return nil
}

// dryRunLab lists the lab's steps with the plan of each klab action that
// changes the lab, computed against an empty machine in a scratch state
// directory (removed afterwards): nothing in the kernel or in the real
// state directory changes.
func dryRunLab(cmd *cobra.Command, r *labs.Runner, l *labs.Lab) error {
	scratch, err := os.MkdirTemp("", "klab-dry-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	ex := r.Exec.(labs.ExecExecutor)
	ex.Env = append([]string{"KLAB_STATE_DIR=" + scratch, simulateEnv + "=1", "KLAB_SCRIPT="}, labEnv(l)...)
	r.Exec = ex
	return r.DryRun(cmd.Context(), l, isMutating)
}

// isMutating reports whether a klab command line (the words after "klab")
// is one of the mutating verbs.
func isMutating(args []string) bool {
	for _, m := range mutating {
		words := strings.Fields(m)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return true
		}
	}
	return false
}

// newLabRunner builds a runner that re-executes this binary for each command.
func newLabRunner(cmd *cobra.Command, l *labs.Lab, tf trustFlags) (*labs.Runner, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find the klab binary to run the lab's commands: %w", err)
	}
	inst := l.Name
	if f := cmd.Flags().Lookup("lab"); f != nil && f.Changed {
		inst = globals.lab
	}
	return &labs.Runner{
		Exec:     labs.ExecExecutor{Path: self, Env: append([]string{"KLAB_STATE_DIR=" + globals.stateDir}, labEnv(l)...), Sandbox: !tf.trust},
		R:        labs.NewRenderer(os.Stdout),
		In:       os.Stdin,
		Instance: inst,
	}, nil
}

func labsRequireRoot(what string) error {
	if os.Geteuid() != 0 {
		return exitError{code: 1, msg: fmt.Sprintf("klab needs root to %s (its commands create namespaces and links): run it with sudo", what)}
	}
	if err := doctor.MissingCapability(); err != nil {
		return exitError{code: 1, msg: err.Error()}
	}
	return nil
}

// loadAndLint reads a lab (embedded name or file), parses it and validates
// every command against the real verbs.
func loadAndLint(arg string) (*labs.Lab, error) {
	l, err := labs.Load(arg)
	if err == nil {
		err = labs.Lint(l, validateKlabArgs)
	}
	if err != nil {
		var el labs.ErrorList
		if errors.As(err, &el) {
			return nil, exitError{code: 1, msg: fmt.Sprintf("%s is not a valid lab (%d problem(s)):\n%v", arg, len(el), err)}
		}
		return nil, exitError{code: 1, msg: err.Error()}
	}
	return l, nil
}

// validateKlabArgs checks a lab command (the words after "klab") against a
// fresh copy of the command tree: the verb must exist, its flags must parse
// and its arguments must satisfy the verb's rules. Nothing runs. The global
// flags write into the shared globals, so they are saved and restored.
func validateKlabArgs(args []string) error {
	saved := globals
	defer func() { globals = saved }()
	root := newRoot()
	c, rest, err := root.Find(args)
	if err != nil {
		// cobra's "Did you mean this?" block, on one line
		msg, sugg, ok := strings.Cut(err.Error(), "\n\nDid you mean this?\n")
		if ok {
			return fmt.Errorf("%s (did you mean %s?)", msg, strings.Join(strings.Fields(sugg), " or "))
		}
		return err
	}
	if c == root {
		return fmt.Errorf("%q is not a klab verb: see 'klab --help'", args[0])
	}
	if isGroup(c) {
		var subs []string
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				subs = append(subs, s.Name())
			}
		}
		if pos := nonFlagArgs(rest); len(pos) > 0 {
			return fmt.Errorf("%q is not a subcommand of %q: use one of %s", pos[0], c.CommandPath(), strings.Join(subs, ", "))
		}
		return fmt.Errorf("%q needs a subcommand: one of %s", c.CommandPath(), strings.Join(subs, ", "))
	}
	if err := c.ParseFlags(rest); err != nil {
		return err
	}
	return c.ValidateArgs(c.Flags().Args())
}

func nonFlagArgs(args []string) []string {
	var out []string
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			out = append(out, a)
		}
	}
	return out
}

func newLabsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "labs",
		Short: "List the guided labs klab ships, with what each teaches",
		Long: `List the labs embedded in klab: name, time, title and summary. Run one with
'klab run NAME'; read one with 'klab lab show NAME'.`,
		Example: `  klab labs
  klab labs -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			all, err := labs.List()
			if err != nil {
				return err
			}
			switch globals.output {
			case "json":
				type entry struct {
					Name          string   `json:"name"`
					Title         string   `json:"title"`
					Summary       string   `json:"summary"`
					Prerequisites []string `json:"prerequisites"`
					Minutes       float64  `json:"minutes"`
					Backend       string   `json:"backend,omitempty"`
					Steps         int      `json:"steps"`
				}
				out := []entry{}
				for _, l := range all {
					pre := l.Prerequisites
					if pre == nil {
						pre = []string{}
					}
					out = append(out, entry{l.Name, l.Title, l.Summary, pre, l.Time.Minutes(), l.Backend, len(l.Steps)})
				}
				return labsPrintJSON(out)
			case "text":
			default:
				return exitError{code: 2, msg: fmt.Sprintf("output format %q is not known: use -o text or -o json", globals.output)}
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "LAB\tTIME\tTITLE")
			for _, l := range all {
				fmt.Fprintf(w, "%s\t%.0fm\t%s\n", l.Name, l.Time.Minutes(), l.Title)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Println()
			for _, l := range all {
				fmt.Printf("%s: %s\n", l.Name, l.Summary)
			}
			fmt.Printf("\nRun one with: %sklab run LAB   (read it first with: klab lab show LAB)\n", doctor.Sudo())
			return nil
		},
	}
}

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Work with lab files: lint, check (grade), show",
		Long: `Tools for lab authors and teachers. A lab is one Markdown file that is both a
walkthrough and a script (docs/lab-format.md). 'klab run' runs one.`,
		Example: `  klab lab lint my-lab.md
  sudo klab lab check flannel-crossnode -o json
  klab lab show pod-netns`,
	}
	cmd.AddCommand(newLabLintCmd(), newLabCheckCmd(), newLabShowCmd())
	return cmd
}

func newLabLintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "lint [LAB|FILE]...",
		Short: "Validate labs without running them: format, verbs, flags, arguments and the sandbox",
		Long: `Parse each lab and validate every command in it against klab's real verbs
and flags, without running anything. Commands that would fail in the sandbox
lab commands run in are reported too, as far as their words show (nsenter,
unshare, mount, modprobe, chroot, ip netns, a sysctl outside net.*, a write
outside /tmp and /run/flannel); blocks marked privileged are listed. Problems
are reported as FILE:LINE: message. With no argument, every embedded lab is
linted.`,
		Example: `  klab lab lint my-lab.md
  klab lab lint labs/*.md
  klab lab lint                 # the labs klab ships`,
		ValidArgsFunction: completeLabNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = labs.Names()
			}
			bad := 0
			for _, a := range args {
				l, err := labs.Load(a)
				if err == nil {
					err = labs.Lint(l, validateKlabArgs)
				}
				if err != nil {
					bad++
					fmt.Fprintln(os.Stderr, err)
					continue
				}
				if probs := labs.SandboxProblems(l); len(probs) > 0 {
					bad++
					fmt.Fprintln(os.Stderr, probs)
					continue
				}
				fmt.Printf("%s: ok (%d steps, %d commands, %d checks)\n", l.File, len(l.Steps), len(l.Commands()), len(l.Checks()))
				if priv := l.PrivilegedBlocks(); len(priv) > 0 {
					fmt.Printf("%s: %d privileged block(s), run unsandboxed after 'klab run' asks: %s\n", l.File, len(priv), blockLines(priv))
				}
			}
			if bad > 0 {
				return exitError{code: 1, msg: fmt.Sprintf("%d of %d lab(s) have problems", bad, len(args))}
			}
			return nil
		},
	}
}

func newLabCheckCmd() *cobra.Command {
	var noRetry bool
	var tf trustFlags
	cmd := &cobra.Command{
		Use:   "check LAB|FILE",
		Short: "Run only a lab's checks against the lab as it is now (grading)",
		Long: `Run every check of a lab against the running lab instance, without running
any action: a teacher's grading of what a student built, or a re-check after
exploring. Every check runs; the command exits 1 if any failed. -o json
prints one record per check (step, command, passed, output, hint). Checks
run sandboxed, as in 'klab run'; privileged ones need --allow-privileged.

The instance is the lab's name, or --lab NAME (also from $KLAB_LAB).`,
		Example: `  sudo klab lab check flannel-crossnode
  sudo klab lab check flannel-crossnode --lab alice -o json
  sudo klab lab check ./my-lab.md --no-retry`,
		Args:              exactLabArgs(1, "a lab name or a lab file"),
		ValidArgsFunction: completeLabNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if globals.output != "text" && globals.output != "json" {
				return exitError{code: 2, msg: fmt.Sprintf("output format %q is not known: use -o text or -o json", globals.output)}
			}
			l, err := loadAndLint(args[0])
			if err != nil {
				return err
			}
			if err := labsRequireRoot("check a lab"); err != nil {
				return err
			}
			if err := requirePrivileged(l, tf); err != nil {
				return err
			}
			r, err := newLabRunner(cmd, l, tf)
			if err != nil {
				return err
			}
			if globals.lab != "" { // grading follows $KLAB_LAB too
				r.Instance = globals.lab
			}
			r.NoRetry = noRetry
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			results := r.Check(ctx, l)
			failed := 0
			for _, c := range results {
				if !c.Passed {
					failed++
				}
			}
			if globals.output == "json" {
				if results == nil {
					results = []labs.CheckResult{}
				}
				if err := labsPrintJSON(results); err != nil {
					return err
				}
			} else {
				step := ""
				for _, c := range results {
					if c.Step != step {
						step = c.Step
						r.R.Note("%s", step)
					}
					r.R.CheckResult(c, false)
				}
				fmt.Printf("\n%d of %d checks passed (lab %s)\n", len(results)-failed, len(results), r.Instance)
			}
			if failed > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noRetry, "no-retry", false, "give each check one attempt (faster grading of a lab known to be settled)")
	trustFlagSet(cmd, &tf)
	return cmd
}

func newLabShowCmd() *cobra.Command {
	var render bool
	cmd := &cobra.Command{
		Use:   "show LAB|FILE",
		Short: "Print a lab's Markdown, to read it before (or instead of) running it",
		Long: `Print a lab's Markdown source: the walkthrough and every command the lab
runs. --render formats it for the terminal instead, as 'klab run' shows it,
without running anything.`,
		Example: `  klab lab show flannel-crossnode
  klab lab show flannel-crossnode > flannel-crossnode.md   # a copy to adapt
  klab lab show pod-netns --render | less -R`,
		Args:              exactLabArgs(1, "a lab name or a lab file"),
		ValidArgsFunction: completeLabNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			src, file, err := labs.Read(args[0])
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			if !render {
				_, err := os.Stdout.Write(src)
				return err
			}
			l, err := labs.Parse(file, src)
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			labs.NewRenderer(os.Stdout).Lab(l)
			return nil
		},
	}
	cmd.Flags().BoolVar(&render, "render", false, "format for the terminal instead of printing Markdown")
	return cmd
}

// exactLabArgs wants n arguments and says what they are.
func exactLabArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %s (got %d argument(s)): see '%s --help'", cmd.CommandPath(), what, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// completeLabNames completes embedded lab names, or .md files once the word
// looks like a path.
func completeLabNames(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if labs.IsPath(toComplete) || strings.HasPrefix(toComplete, ".") {
		return []string{"md"}, cobra.ShellCompDirectiveFilterFileExt
	}
	var out []string
	for _, n := range labs.Names() {
		if strings.HasPrefix(n, toComplete) {
			l, err := labs.Load(n)
			if err == nil {
				out = append(out, n+"\t"+l.Title)
			} else {
				out = append(out, n)
			}
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func labsPrintJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// labEnv is what a lab's front matter asks of its commands' environment:
// "cni: true" makes every 'klab pod add' run the real CNI plugins.
func labEnv(l *labs.Lab) []string {
	if l.CNI {
		return []string{cniEnv + "=1"}
	}
	return []string{cniEnv + "="}
}
