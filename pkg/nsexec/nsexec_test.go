package nsexec

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// TestMain makes the test binary its own EnterCommand, as the klab binary
// is, so Spec.Run can re-execute it.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == EnterCommand {
		os.Exit(enterMain(os.Args[2:]))
	}
	testutil.Main(m)
}

// enterMain is cmd/klab's __enter verb, without cobra.
func enterMain(args []string) int {
	var binds []Bind
	var rw []string
	sandbox := false
	for len(args) > 0 {
		switch {
		case args[0] == "--sandbox":
			sandbox, args = true, args[1:]
			continue
		case len(args) > 1 && args[0] == "--rw":
			rw, args = append(rw, args[1]), args[2:]
			continue
		case len(args) > 1 && args[0] == "--bind":
			b, err := ParseBind(args[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			binds, args = append(binds, b), args[2:]
			continue
		}
		break
	}
	if len(args) == 0 || args[0] != "--" {
		fmt.Fprintln(os.Stderr, "want -- before the command")
		return 2
	}
	if sandbox {
		code, err := EnterSandbox(binds, rw, args[1:])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
		return code
	}
	err := Enter(binds, args[1:])
	fmt.Fprintln(os.Stderr, err)
	if errors.Is(err, ErrNotFound) {
		return 127
	}
	return 1
}

func TestEnterArgs(t *testing.T) {
	for _, tc := range []struct {
		binds []Bind
		argv  []string
		want  []string
	}{
		{nil, []string{"ip", "route"}, []string{"__enter", "--", "ip", "route"}},
		{[]Bind{{"/run/klab/demo/nodes/node1/flannel", "/run/flannel"}}, []string{"cat", "--", "x"},
			[]string{"__enter", "--bind", "/run/klab/demo/nodes/node1/flannel:/run/flannel", "--", "cat", "--", "x"}},
	} {
		if got := EnterArgs(tc.binds, tc.argv); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("EnterArgs(%v, %q) = %q, want %q", tc.binds, tc.argv, got, tc.want)
		}
	}
}

func TestParseBind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bind
		err  bool
	}{
		{"/a:/b", Bind{"/a", "/b"}, false},
		{"/a:/b:c", Bind{"/a", "/b:c"}, false},
		{"/a", Bind{}, true},
		{":/b", Bind{}, true},
		{"/a:", Bind{}, true},
	} {
		got, err := ParseBind(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBind(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("ParseBind(%q).String() = %q", tc.in, got.String())
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
			t.Errorf("ParseBind(%q): error %q does not quote the bind", tc.in, err)
		}
	}
}

// TestRun runs commands in a fresh namespace: /sys shows its devices, the
// bind is there and reaches nothing outside, and exit statuses come back
// as a shell reports them.
func TestRun(t *testing.T) {
	testutil.RequireRoot(t)
	ns := netns.Name(testutil.LabName(t, "hyexec"), "n1")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	src, dst := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "subnet.env"), []byte("FLANNEL_SUBNET=10.244.1.1/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec{NS: ns, Binds: []Bind{{src, dst}}, Env: []string{"KLAB_TARGET=n1"}}
	run := func(argv ...string) (int, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code, err := spec.Run(argv, nil, &out, &errb)
		if err != nil {
			t.Fatalf("Run(%q): %v", argv, err)
		}
		return code, out.String(), errb.String()
	}

	code, out, errs := run("sh", "-c", `ls /sys/class/net; cat `+dst+`/subnet.env; echo "$KLAB_TARGET"`)
	if want := "lo\nFLANNEL_SUBNET=10.244.1.1/24\nn1\n"; code != 0 || out != want {
		t.Errorf("exit %d, stdout %q (stderr %q), want %q", code, out, errs, want)
	}
	if code, _, _ := run("sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit 7 came back as %d", code)
	}
	if code, _, _ := run("sh", "-c", "kill -TERM $$"); code != 128+15 {
		t.Errorf("SIGTERM came back as %d, want 143", code)
	}
	code, _, errs = run("klab-no-such-command")
	if code != 127 || !strings.Contains(errs, "klab-no-such-command: command not found in PATH") {
		t.Errorf("a missing command: exit %d, stderr %q; want 127 and 'command not found'", code, errs)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("the bind reached the host: %s holds %v", dst, ents)
	}
	// Other tests mount namespaces under /run/netns meanwhile: look for
	// this bind only.
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mounts, []byte(" "+dst+" ")) {
		t.Errorf("the bind on %s is mounted on the host", dst)
	}
	if _, err := (Spec{NS: netns.Name("hyexec-none", "n1")}).Run([]string{"true"}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "klab.hyexec-none.n1") {
		t.Errorf("Run in a missing namespace: %v, want an error naming it", err)
	}
}
