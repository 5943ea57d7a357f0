package labs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type reply struct {
	out  string
	exit int
}

// fakeExec answers commands from a script; a command with several replies
// gets them in order, the last one repeating.
type fakeExec struct {
	mu      sync.Mutex
	replies map[string][]reply
	calls   []string
	labs    []string
	block   map[string]chan struct{} // commands that wait for a channel to close
}

func (f *fakeExec) Run(ctx context.Context, lab string, args []string, out io.Writer) (int, error) {
	key := strings.Join(args, " ")
	f.mu.Lock()
	f.calls = append(f.calls, key)
	f.labs = append(f.labs, lab)
	rs := f.replies[key]
	r := reply{}
	if len(rs) > 0 {
		r = rs[0]
		if len(rs) > 1 {
			f.replies[key] = rs[1:]
		}
	}
	ch := f.block[key]
	f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
	io.WriteString(out, r.out)
	return r.exit, nil
}

func mustParse(t *testing.T, body string) *Lab {
	t.Helper()
	l, err := Parse("t.md", []byte(front+body))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

const twoSteps = `
## One

Build it.

` + "```klab\nklab node add node1\n```\n\n```check retry=0\nklab exec node1 -- ip route\n  expect: 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink\n```\n\n> Hint: look at the route.\n" + `
## Two

` + "```check retry=0\nklab ping pod-a pod-b\n```\n"

func TestRunStraight(t *testing.T) {
	f := &fakeExec{replies: map[string][]reply{
		"--explain node add node1": {{out: "# equivalent commands:\n  ip netns add klab.t.node1\n"}},
		"exec node1 -- ip route":   {{out: "default via 192.168.1.1 dev eth0\n10.244.2.0/24  via 10.244.2.0 dev flannel.1   onlink\n"}},
		"ping pod-a pod-b":         {{out: "1 received\n"}},
	}}
	var out bytes.Buffer
	r := &Runner{Exec: f, R: &Renderer{W: &out}, Mode: Straight}
	res, err := r.Run(context.Background(), mustParse(t, twoSteps))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	want := []string{"destroy t-labs-x --script=", "--explain node add node1", "exec node1 -- ip route", "ping pod-a pod-b"}
	if !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	for _, l := range f.labs {
		if l != "t-labs-x" {
			t.Errorf("command ran against lab %q", l)
		}
	}
	if res.Steps != 2 || len(res.Checks) != 2 || res.Failed != 0 || res.Lab != "t-labs-x" {
		t.Errorf("result %+v", res)
	}
	s := out.String()
	for _, w := range []string{"Step 1/2: One", "$ klab node add node1", "  # equivalent commands:", "✓ klab exec node1 -- ip route", "Step 2/2: Two", "klab destroy t-labs-x"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	if strings.Contains(s, "\x1b[") {
		t.Errorf("ANSI escapes without Color:\n%q", s)
	}
	if strings.Contains(s, "look at the route") {
		t.Errorf("hint shown for a passing check")
	}
}

func TestRunCheckFails(t *testing.T) {
	f := &fakeExec{replies: map[string][]reply{
		"exec node1 -- ip route": {{out: "default via 192.168.1.1 dev eth0\n"}},
	}}
	var out bytes.Buffer
	r := &Runner{Exec: f, R: &Renderer{W: &out}, Instance: "alice"}
	res, err := r.Run(context.Background(), mustParse(t, twoSteps))
	var cf *CheckFailedError
	if !errors.As(err, &cf) || len(cf.Failed) != 1 || cf.Lab != "alice" {
		t.Fatalf("err = %v, want a CheckFailedError", err)
	}
	if res.Steps != 0 || res.Failed != 1 {
		t.Errorf("result %+v", res)
	}
	for _, c := range f.calls {
		if c == "ping pod-a pod-b" {
			t.Errorf("step two ran after a failed check")
		}
	}
	s := out.String()
	for _, w := range []string{"✗ klab exec node1 -- ip route", `no output line contains "10.244.2.0/24 via`, "Hint: look at the route.", "default via 192.168.1.1", "klab destroy alice"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
}

func TestRunActionFails(t *testing.T) {
	f := &fakeExec{replies: map[string][]reply{"--explain node add node1": {{out: "boom\n", exit: 3}}}}
	r := &Runner{Exec: f, R: &Renderer{W: io.Discard}}
	_, err := r.Run(context.Background(), mustParse(t, twoSteps))
	var af *CommandFailedError
	if !errors.As(err, &af) || af.Exit != 3 || af.Line != 13 || af.Command != "klab node add node1" {
		t.Fatalf("err = %#v", err)
	}
	if len(f.calls) != 2 {
		t.Errorf("ran on after a failed action: %q", f.calls)
	}
}

func TestRunStepwise(t *testing.T) {
	for _, tc := range []struct {
		input     string
		steps     int
		stopped   bool
		wantCalls int
	}{
		{"\n", 2, false, 4},
		{"q\n", 1, true, 3},
		{"", 2, false, 4}, // end of input: straight through
	} {
		f := &fakeExec{replies: map[string][]reply{"exec node1 -- ip route": {{out: "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"}}}}
		var out bytes.Buffer
		r := &Runner{Exec: f, R: &Renderer{W: &out}, Mode: Stepwise, In: strings.NewReader(tc.input)}
		res, err := r.Run(context.Background(), mustParse(t, twoSteps))
		if err != nil {
			t.Fatal(err)
		}
		if res.Steps != tc.steps || res.Stopped != tc.stopped || len(f.calls) != tc.wantCalls {
			t.Errorf("input %q: result %+v, calls %q", tc.input, res, f.calls)
		}
		if !strings.Contains(out.String(), "q: stop here") {
			t.Errorf("no prompt:\n%s", out.String())
		}
	}
}

func TestCheckRetriesUntilItConverges(t *testing.T) {
	l := mustParse(t, "## S\n```check retry=5s\nklab curl pod-a http://web/\n  expect: web-1\n```\n")
	f := &fakeExec{replies: map[string][]reply{"curl pod-a http://web/": {{exit: 1}, {out: "nobody"}, {out: "web-1 3"}}}}
	r := &Runner{Exec: f, R: &Renderer{W: io.Discard}, Poll: time.Millisecond}
	res := r.Check(context.Background(), l)
	if len(res) != 1 || !res[0].Passed || res[0].Attempts != 3 {
		t.Fatalf("results %+v", res)
	}
	// NoRetry: one attempt, failed
	f = &fakeExec{replies: map[string][]reply{"curl pod-a http://web/": {{exit: 1}, {out: "web-1"}}}}
	r = &Runner{Exec: f, R: &Renderer{W: io.Discard}, Poll: time.Millisecond, NoRetry: true}
	res = r.Check(context.Background(), l)
	if res[0].Passed || res[0].Attempts != 1 || res[0].Reason != "exit status 1 (want 0)" {
		t.Fatalf("results %+v", res)
	}
}

func TestCheckOnlyRunsChecks(t *testing.T) {
	f := &fakeExec{replies: map[string][]reply{"ping pod-a pod-b": {{exit: 1, out: "100% loss"}}}}
	r := &Runner{Exec: f, R: &Renderer{W: io.Discard}}
	res := r.Check(context.Background(), mustParse(t, twoSteps))
	if want := []string{"exec node1 -- ip route", "ping pod-a pod-b"}; !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	if len(res) != 2 || res[0].Passed || res[1].Passed || res[0].Hint != "look at the route." || res[1].Step != "Two" || res[1].Output != "100% loss" {
		t.Errorf("results %+v", res)
	}
}

func TestEvaluate(t *testing.T) {
	out := "default via 192.168.1.1 dev eth0\n10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink\n"
	re := func(s string) Expectation { return Expectation{Kind: Matches, Text: s} }
	for _, tc := range []struct {
		c    Check
		exit int
		want string // substring of the reason; "" = pass
	}{
		{Check{}, 0, ""},
		{Check{}, 1, "exit status 1 (want 0)"},
		{Check{ExitCode: 2}, 2, ""},
		{Check{NonZero: true}, 1, ""},
		{Check{NonZero: true}, 0, "must fail"},
		{Check{Expect: []Expectation{{Kind: Contains, Text: "10.244.2.0/24   via 10.244.2.0"}}}, 0, ""},
		{Check{Expect: []Expectation{{Kind: Contains, Text: "10.244.3.0/24"}}}, 0, "no output line contains"},
		{Check{Expect: []Expectation{{Kind: NotContains, Text: "10.244.3.0/24"}}}, 0, ""},
		{Check{Expect: []Expectation{{Kind: NotContains, Text: "flannel.1"}}}, 0, "none should"},
		{Check{Expect: []Expectation{re(`^10\.244\.2\.0/24 via \S+ dev flannel\.1 onlink$`)}}, 0, ""},
		{Check{Expect: []Expectation{re(`^via`)}}, 0, "does not match"},
	} {
		got := evaluate(&tc.c, tc.exit, out)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("evaluate(%+v, %d) = %q, want %q", tc.c, tc.exit, got, tc.want)
		}
	}
}

func TestBackgroundCommands(t *testing.T) {
	l := mustParse(t, "## S\n```klab settle=1ms timeout=5s\nklab trace node1:eth0 --count 1 &\nklab ping pod-a pod-b\n```\n")
	release := make(chan struct{})
	f := &fakeExec{
		replies: map[string][]reply{"--explain trace node1:eth0 --count 1": {{out: "node1/eth0 > 192.168.1.101 > 192.168.1.102 VXLAN\n"}}},
		block:   map[string]chan struct{}{"--explain trace node1:eth0 --count 1": release},
	}
	// the ping runs while the trace is still capturing; then the trace ends
	go func() {
		for {
			f.mu.Lock()
			n := len(f.calls)
			f.mu.Unlock()
			if n >= 3 {
				close(release)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var out bytes.Buffer
	r := &Runner{Exec: f, R: &Renderer{W: &out}}
	if _, err := r.Run(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if i, j := strings.Index(s, "$ klab ping"), strings.Index(s, "VXLAN"); i < 0 || j < i {
		t.Errorf("background output should come after the foreground command:\n%s", s)
	}
	if !strings.Contains(s, "$ klab trace node1:eth0 --count 1 &") {
		t.Errorf("background command not shown:\n%s", s)
	}
}

func TestBackgroundTimeout(t *testing.T) {
	l := mustParse(t, "## S\n```klab settle=1ms timeout=20ms\nklab trace node1:eth0 &\nklab ping a b\n```\n")
	f := &fakeExec{block: map[string]chan struct{}{"--explain trace node1:eth0": make(chan struct{})}}
	r := &Runner{Exec: f, R: &Renderer{W: io.Discard}}
	if _, err := r.Run(context.Background(), l); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline", err)
	}
}

// A final=false block is checked by klab run and skipped by klab lab check,
// which grades the lab as it is at the end.
func TestCheckSkipsPassingStates(t *testing.T) {
	l := mustParse(t, "## S\n```check retry=0 final=false\nklab ping pod-a pod-c\n  exit: nonzero\n```\n\n```check retry=0\nklab ping pod-a pod-b\n```\n")
	if cs := l.Checks(); len(cs) != 2 || !cs[0].Passing || cs[1].Passing {
		t.Fatalf("checks %+v", cs)
	}
	f := &fakeExec{replies: map[string][]reply{"ping pod-a pod-c": {{exit: 1}}}}
	r := &Runner{Exec: f, R: &Renderer{W: io.Discard}}
	if res := r.Check(context.Background(), l); len(res) != 1 || res[0].Command != "klab ping pod-a pod-b" {
		t.Errorf("lab check ran %+v, want only the final-state check", res)
	}
	f = &fakeExec{replies: map[string][]reply{"ping pod-a pod-c": {{exit: 1}}}}
	r = &Runner{Exec: f, R: &Renderer{W: io.Discard}}
	if _, err := r.Run(context.Background(), l); err != nil || !slices.Contains(f.calls, "ping pod-a pod-c") || !slices.Contains(f.calls, "ping pod-a pod-b") {
		t.Errorf("klab run: %v, calls %q: it must run both checks", err, f.calls)
	}
	if _, err := Parse("t.md", []byte(front+"## S\n```check final=maybe\nklab ping a b\n```\n")); err == nil || !strings.Contains(err.Error(), "final=maybe is not valid") {
		t.Errorf("final=maybe: %v", err)
	}
}
