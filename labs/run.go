package labs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/klab-dev/klab/pkg/doctor"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Executor runs one klab command against a lab instance.
type Executor interface {
	// Run runs klab with args (the words after "klab") against lab, writing
	// its combined output to out, and returns its exit status. err is for a
	// command that could not be run at all (or was cut off by ctx).
	Run(ctx context.Context, lab string, args []string, out io.Writer) (exit int, err error)
}

// ExecExecutor runs the klab binary at Path (normally os.Executable()) with
// the lab selected through $KLAB_LAB. Env adds variables (e.g. the state
// directory) to the runner's environment.
type ExecExecutor struct {
	Path string
	Env  []string
	// Sandbox runs every command with KLAB_SANDBOX=1, so 'klab exec' and
	// 'klab serve' sandbox what they run (see package nsexec), except the
	// commands of blocks marked privileged (Unsandboxed(ctx)).
	Sandbox bool
}

type unsandboxedKey struct{}

// WithUnsandboxed marks ctx as that of a command of a privileged block: an
// ExecExecutor runs it without the sandbox.
func WithUnsandboxed(ctx context.Context) context.Context {
	return context.WithValue(ctx, unsandboxedKey{}, true)
}

// Unsandboxed reports whether ctx is that of a privileged block's command.
func Unsandboxed(ctx context.Context) bool {
	v, _ := ctx.Value(unsandboxedKey{}).(bool)
	return v
}

// commandContext is the context a lab command runs with.
func commandContext(ctx context.Context, c *Command) context.Context {
	if c.Privileged {
		return WithUnsandboxed(ctx)
	}
	return ctx
}

// KillGrace is how long ExecExecutor waits for a cancelled command to stop
// after SIGINT (a build rolls back in well under a second) before SIGKILL.
var KillGrace = 10 * time.Second

// Run implements Executor. The command runs in its own process group, so a
// Ctrl-C on the terminal reaches the runner only; when ctx is cancelled
// (that Ctrl-C, or a timeout) the runner passes one SIGINT on, and the
// command stops the klab way: it finishes its current kernel operation and
// rolls back. Only a command still running KillGrace later is killed.
func (e ExecExecutor) Run(ctx context.Context, lab string, args []string, out io.Writer) (int, error) {
	cmd := exec.Command(e.Path, args...)
	sandbox := "KLAB_SANDBOX="
	if e.Sandbox && !Unsandboxed(ctx) {
		sandbox += "1"
	}
	cmd.Env = append(append(os.Environ(), e.Env...), "KLAB_LAB="+lab, sandbox)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A verb that leaves a daemon behind (klab serve) must not keep us
	// waiting for its copy of the output pipe.
	cmd.WaitDelay = time.Second
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("klab %s: %w", joinWords(args), err)
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("klab %s: %w", joinWords(args), err)
	}
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	var err error
	select {
	case err = <-waitc:
	case <-ctx.Done():
		cmd.Process.Signal(os.Interrupt)
		t := time.NewTimer(KillGrace)
		select {
		case err = <-waitc:
		case <-t.C:
			cmd.Process.Kill()
			err = <-waitc
		}
		t.Stop()
		return -1, fmt.Errorf("klab %s: %w", joinWords(args), ctx.Err())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), nil
	case errors.Is(err, exec.ErrWaitDelay):
		return 0, nil
	}
	return -1, fmt.Errorf("klab %s: %w", joinWords(args), err)
}

// Mode says whether the runner pauses between steps.
type Mode int

const (
	Straight Mode = iota // --yes: run every step without pausing
	Stepwise             // --step: wait for Enter before each step after the first
)

// Runner runs labs (Run) or only their checks (Check).
type Runner struct {
	Exec     Executor
	R        *Renderer
	In       io.Reader // answers to the step prompt
	Mode     Mode
	Instance string        // lab instance name; empty means the lab's name
	NoRetry  bool          // checks get one attempt (overrides retry=)
	Poll     time.Duration // pause between check attempts; 0 means 500ms
	// Verbose prints the output of passed checks too (Run always does).
	Verbose bool
	// Script, when set, is the file every kernel change of the run is
	// appended to as a runnable sh script: the klab verbs append their own
	// operations (the executor passes $KLAB_SCRIPT on), and the runner
	// appends the lab's 'klab exec' actions as the 'ip netns exec' commands
	// they are.
	Script string

	lines chan promptLine
}

// CheckResult is the outcome of one check.
type CheckResult struct {
	Step     string `json:"step"`
	Line     int    `json:"line"`
	Command  string `json:"command"`
	Passed   bool   `json:"passed"`
	Output   string `json:"output"`
	Reason   string `json:"reason,omitempty"`
	Hint     string `json:"hint,omitempty"`
	Attempts int    `json:"attempts"`
}

// Result is what Run did.
type Result struct {
	Lab      string        // instance name
	Steps    int           // steps completed
	Stopped  bool          // the student quit at a prompt
	Checks   []CheckResult // every check run
	Failed   int           // failed checks
	Duration time.Duration
}

// CheckFailedError is returned when a check of the lab failed; the lab is left
// as it is.
type CheckFailedError struct {
	Lab    string
	Failed []CheckResult
}

func (e *CheckFailedError) Error() string {
	if len(e.Failed) == 1 {
		c := e.Failed[0]
		return fmt.Sprintf("lab %s: check failed in step %q: %s: %s", e.Lab, c.Step, c.Command, c.Reason)
	}
	return fmt.Sprintf("lab %s: %d checks failed", e.Lab, len(e.Failed))
}

// CommandFailedError is returned when an action exits non-zero.
type CommandFailedError struct {
	Lab     string
	Step    string
	Line    int
	Command string
	Exit    int
}

func (e *CommandFailedError) Error() string {
	return fmt.Sprintf("lab %s: step %q: %s exited with status %d", e.Lab, e.Step, e.Command, e.Exit)
}

// InterruptedError is returned when the run was interrupted (Ctrl-C): the
// command that was running stopped cleanly (rolled back), and the lab is
// left up as far as it got.
type InterruptedError struct {
	Lab   string
	Step  string // the step that was running
	Steps int    // steps completed before it
}

func (e *InterruptedError) Error() string {
	return fmt.Sprintf("interrupted in step %q (%d step(s) done before it): the command that was running stopped cleanly, and lab %s is up as far as it got: see it with 'klab list', remove it with 'klab destroy %s'", e.Step, e.Steps, e.Lab, e.Lab)
}

func (r *Runner) instance(l *Lab) string {
	if r.Instance != "" {
		return r.Instance
	}
	return l.Name
}

// Run runs a lab from a clean start: it destroys a previous instance, then
// for each step prints the prose, runs the actions (with --explain, so the
// kernel objects they create are shown) and the checks. It stops at the first
// step with a failed check (returning *CheckFailedError) or failed action
// (*CommandFailedError). The lab is always left up for the student to explore.
func (r *Runner) Run(ctx context.Context, l *Lab) (*Result, error) {
	inst := r.instance(l)
	res := &Result{Lab: inst}
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	r.R.Header(l, inst)
	for _, b := range l.Intro {
		r.R.Block(stripTitle(b))
	}
	// start clean
	r.R.Note("Starting from a clean slate: removing anything left of lab %s.", inst)
	// (Not part of a --script: the script is for a machine without the lab.)
	if err := r.action(ctx, inst, "", &Command{Text: "klab destroy " + inst, Args: []string{"destroy", inst, "--script="}}, DefaultActionTimeout, false); err != nil {
		if ctx.Err() != nil {
			return res, r.interrupted(l, inst, "start clean", res)
		}
		return res, err
	}
	for i, s := range l.Steps {
		if i > 0 && r.Mode == Stepwise {
			ok := r.prompt(ctx, fmt.Sprintf("Enter: step %d/%d, %q · q: stop here", i+1, len(l.Steps), s.Title))
			if ctx.Err() != nil {
				return res, r.interrupted(l, inst, s.Title, res)
			}
			if !ok {
				res.Stopped = true
				r.explore(l, inst, false)
				return res, nil
			}
		}
		r.R.Step(i+1, len(l.Steps), s.Title)
		var failed []CheckResult
		for _, b := range s.Blocks {
			switch b.Kind {
			case Action:
				if err := r.actions(ctx, inst, s.Title, b); err != nil {
					if ctx.Err() != nil {
						return res, r.interrupted(l, inst, s.Title, res)
					}
					r.explore(l, inst, true)
					return res, err
				}
				r.R.printf("\n")
			case CheckBlock:
				for _, c := range b.Checks {
					if ctx.Err() != nil {
						return res, r.interrupted(l, inst, s.Title, res)
					}
					cr := r.check(ctx, inst, c)
					if ctx.Err() != nil {
						return res, r.interrupted(l, inst, s.Title, res)
					}
					r.R.CheckResult(cr, true)
					res.Checks = append(res.Checks, cr)
					if !cr.Passed {
						failed = append(failed, cr)
						res.Failed++
					}
				}
				r.R.printf("\n")
			default:
				r.R.Block(b)
			}
		}
		if len(failed) > 0 {
			r.explore(l, inst, true)
			return res, &CheckFailedError{Lab: inst, Failed: failed}
		}
		res.Steps++
	}
	r.R.Note("All %d steps done; %d checks passed.", len(l.Steps), len(res.Checks))
	r.explore(l, inst, false)
	return res, nil
}

// stripTitle drops a "# Title" line opening an intro block: the header
// already shows the title.
func stripTitle(b Block) Block {
	if b.Kind == Prose && strings.HasPrefix(b.Text, "# ") {
		_, rest, _ := strings.Cut(b.Text, "\n")
		b.Text = strings.TrimLeft(rest, "\n")
	}
	return b
}

// Check runs only the lab's checks against the instance as it stands (for
// grading). Every check of the lab's final state runs; checks of states the
// lab only passes through (final=false) are skipped. Failed ones are
// counted in the results.
func (r *Runner) Check(ctx context.Context, l *Lab) []CheckResult {
	inst := r.instance(l)
	var out []CheckResult
	for _, c := range l.Checks() {
		if !c.Passing {
			out = append(out, r.check(ctx, inst, c))
		}
	}
	return out
}

// interrupted tells the student where the lab stopped and how to clean up,
// and returns the error to exit with.
func (r *Runner) interrupted(l *Lab, inst, step string, res *Result) error {
	r.R.printf("\n")
	r.R.Note("Interrupted during %q. The command that was running stopped cleanly; the lab stays as far as it got.", step)
	r.explore(l, inst, true)
	return &InterruptedError{Lab: inst, Step: step, Steps: res.Steps}
}

// explore tells the student how to look around and how to clean up.
func (r *Runner) explore(l *Lab, inst string, failed bool) {
	if failed {
		r.R.Note("The lab is left as it is, so you can see what went wrong:")
	} else {
		r.R.Note("Lab %s stays up. Look around:", inst)
	}
	r.R.printf("    export KLAB_LAB=%s\n", inst)
	// sudo only where it is needed: a container or a root shell has none.
	sudoE := ""
	if doctor.Sudo() != "" {
		sudoE = "sudo -E "
	}
	r.R.printf("    %sklab show node1               # links, routes, neighbours, FDB\n", sudoE)
	r.R.printf("    %sklab exec node1 -- ip route   # any command inside a node or pod\n", sudoE)
	check := l.Name
	if inst != l.Name {
		check += " --lab " + inst
	}
	r.R.printf("    %sklab lab check %s   # run the lab's checks again\n", doctor.Sudo(), check)
	r.R.Note("When you are done:")
	r.R.printf("    %sklab destroy %s\n", doctor.Sudo(), inst)
}

// prompt waits for Enter (true) or q (false). End of input means go on; an
// interruption (ctx) returns false at once.
func (r *Runner) prompt(ctx context.Context, msg string) bool {
	if r.In == nil {
		return true
	}
	if r.lines == nil {
		// One reader for the whole run: a read cut short by ctx is
		// picked up by the next prompt.
		r.lines = make(chan promptLine, 1)
		in := bufio.NewReader(r.In)
		go func() {
			for {
				s, err := in.ReadString('\n')
				r.lines <- promptLine{s, err}
				if err != nil {
					return
				}
			}
		}()
	}
	r.R.printf("\n%s ", r.R.style(ansiYellow, "── "+msg+" ──"))
	var pl promptLine
	select {
	case pl = <-r.lines:
	case <-ctx.Done():
		return false
	}
	if pl.err != nil && pl.s == "" {
		r.R.printf("\n")
		r.In = nil // no more input: run the rest straight through
		return true
	}
	a := strings.ToLower(strings.TrimSpace(pl.s))
	return a != "q" && a != "quit" && a != "exit"
}

type promptLine struct {
	s   string
	err error
}

// actions runs an action block: foreground commands in order, background ones
// alongside (each given b.Settle to get ready); it then waits for the
// background commands.
func (r *Runner) actions(ctx context.Context, inst, step string, b Block) error {
	type bg struct {
		c    *Command
		out  bytes.Buffer
		exit int
		err  error
		done chan struct{}
	}
	var bgs []*bg
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	for _, c := range b.Commands {
		if c.Background {
			j := &bg{c: c, done: make(chan struct{})}
			bgs = append(bgs, j)
			r.R.Command(c.Text + " &")
			r.R.Note("  (runs in the background while the next commands run)")
			go func() {
				defer close(j.done)
				tctx, tcancel := context.WithTimeout(bctx, b.Timeout)
				defer tcancel()
				j.exit, j.err = r.Exec.Run(commandContext(tctx, c), inst, withExplain(c.Args), &lockedWriter{w: &j.out})
			}()
			sleep(ctx, b.Settle)
			continue
		}
		if err := r.action(ctx, inst, step, c, b.Timeout, true); err != nil {
			firstErr = err
			cancel()
			break
		}
	}
	for _, j := range bgs {
		<-j.done
		r.R.Note("output of %s &:", j.c.Text)
		io.WriteString(r.R.Output(), j.out.String())
		if firstErr != nil {
			continue
		}
		switch {
		case j.err != nil:
			firstErr = j.err
		case j.exit != 0:
			firstErr = &CommandFailedError{Lab: inst, Step: step, Line: j.c.Line, Command: j.c.Text, Exit: j.exit}
		}
	}
	return firstErr
}

// action runs one foreground command, streaming its output.
func (r *Runner) action(ctx context.Context, inst, step string, c *Command, timeout time.Duration, explain bool) error {
	r.R.Command(c.Text)
	args := c.Args
	if explain {
		args = withExplain(args)
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	exit, err := r.Exec.Run(commandContext(tctx, c), inst, args, r.R.Output())
	if err != nil {
		return err
	}
	if exit != 0 {
		return &CommandFailedError{Lab: inst, Step: step, Line: c.Line, Command: c.Text, Exit: exit}
	}
	if r.Script != "" && step != "" && len(c.Args) > 3 && c.Args[0] == "exec" && c.Args[2] == "--" {
		op := plan.Op{Verb: plan.Exec, Proc: &plan.Proc{Cmd: "ip netns exec " + netns.Name(inst, c.Args[1]) + " " + plan.ShellJoin(c.Args[3:])}}
		return plan.AppendScript(r.Script, c.Text, plan.Plan{op})
	}
	return nil
}

// withExplain asks a verb to print the equivalent ip/bridge/iptables commands.
func withExplain(args []string) []string {
	return append([]string{"--explain"}, args...)
}

// check runs one check until it passes or its retry time is used up.
func (r *Runner) check(ctx context.Context, inst string, c *Check) CheckResult {
	res := CheckResult{Step: c.Step, Line: c.Line, Command: c.Text, Hint: c.Hint}
	poll := r.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	deadline := time.Now().Add(c.Retry)
	for {
		res.Attempts++
		var out bytes.Buffer
		timeout := c.Timeout
		if timeout <= 0 {
			timeout = DefaultCheckTimeout
		}
		tctx, cancel := context.WithTimeout(ctx, timeout)
		exit, err := r.Exec.Run(commandContext(tctx, &c.Command), inst, c.Args, &out)
		cancel()
		res.Output = out.String()
		if err != nil {
			res.Reason = err.Error()
		} else {
			res.Reason = evaluate(c, exit, res.Output)
		}
		res.Passed = res.Reason == ""
		if res.Passed || r.NoRetry || ctx.Err() != nil || !time.Now().Add(poll).Before(deadline) {
			return res
		}
		sleep(ctx, poll)
	}
}

var spaces = regexp.MustCompile(`[ \t]+`)

// normalize collapses runs of blanks, so "expect:" need not copy alignment.
func normalize(s string) string { return strings.TrimSpace(spaces.ReplaceAllString(s, " ")) }

// evaluate returns why a check's result is wrong, or "" if it passed.
func evaluate(c *Check, exit int, output string) string {
	switch {
	case c.NonZero && exit == 0:
		return "exit status 0, but this command must fail"
	case !c.NonZero && exit != c.ExitCode:
		return fmt.Sprintf("exit status %d (want %d)", exit, c.ExitCode)
	}
	lines := strings.Split(output, "\n")
	has := func(text string) bool {
		want := normalize(text)
		for _, l := range lines {
			if strings.Contains(normalize(l), want) {
				return true
			}
		}
		return false
	}
	for _, e := range c.Expect {
		switch e.Kind {
		case Contains:
			if !has(e.Text) {
				return fmt.Sprintf("no output line contains %q", e.Text)
			}
		case NotContains:
			if has(e.Text) {
				return fmt.Sprintf("an output line contains %q, and none should", e.Text)
			}
		case Matches:
			re := e.re
			if re == nil {
				re = regexp.MustCompile("(?m)" + e.Text)
			}
			if !re.MatchString(output) {
				return fmt.Sprintf("the output does not match /%s/", e.Text)
			}
		}
	}
	return ""
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// lockedWriter serialises writes from a command's stdout and stderr copiers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// DryRun lists a lab's steps and, for each klab action that changes the
// lab, the operations it would run, without changing anything: each such
// action runs with --dry-run through r.Exec, which the caller points at a
// scratch state directory with $KLAB_SIMULATE=1, so that every plan is
// computed against an empty machine after the actions before it (their
// state, not their kernel objects, carries over). Other actions and the
// checks are listed, not run. mutating tells which klab commands change a
// lab.
func (r *Runner) DryRun(ctx context.Context, l *Lab, mutating func(args []string) bool) error {
	inst := r.instance(l)
	r.R.Header(l, inst)
	for i, s := range l.Steps {
		r.R.Step(i+1, len(l.Steps), s.Title)
		for _, b := range s.Blocks {
			switch b.Kind {
			case Action:
				for _, c := range b.Commands {
					if !mutating(c.Args) {
						r.R.Note("would run: %s", c.Text)
						continue
					}
					r.R.Command(c.Text)
					exit, err := r.Exec.Run(ctx, inst, append(slices.Clone(c.Args), "--dry-run"), r.R.Output())
					if err != nil {
						return err
					}
					if exit != 0 {
						r.R.Note("(planned against an empty machine, this command fails: see above)")
					}
				}
			case CheckBlock:
				for _, c := range b.Checks {
					r.R.Note("would check: %s", c.Text)
				}
			}
		}
		r.R.printf("\n")
	}
	return nil
}
