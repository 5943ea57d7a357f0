package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// --dry-run changes nothing, on a lab that exists and on one that does
// not: every mutating verb exits 0 and prints a script that sh accepts
// (or, for bad input, fails exactly as without --dry-run), and the lab
// namespaces, the state directory (contents, modes and modification
// times), the labs' processes, the temporary directory and the host's
// network namespace are the same before and after. 'klab run LAB
// --dry-run' lists the lab's steps with each action's plan and changes
// nothing either.
func TestDryRunChangesNothing(t *testing.T) {
	k := newCLI(t)
	requireTools(t, "ip", "iptables-save", "sh")
	lab := testutil.LabName(t, "rpdry")
	fresh := testutil.LabName(t, "rpdrn") // never built
	runLab := testutil.LabName(t, "rpdrr")
	for _, l := range []string{lab, fresh, runLab} {
		k.destroyOnCleanup(l)
	}
	for _, args := range [][]string{
		{"node", "add", "node1"},
		{"node", "add", "node2"},
		{"pod", "add", "pa", "--node", "node1"},
		{"pod", "add", "pb", "--node", "node2", "--label", "app=web"},
		{"serve", "pb", "--port", "8080"},
		{"service", "add", "web", "--port", "80", "--target-port", "8080", "--selector", "app=web"},
	} {
		k.must(append(args, "--lab", lab)...)
	}
	// klab's temporary files (klab run --dry-run's scratch state) go to a
	// directory of this test, so other programs' files do not count.
	tmp := t.TempDir()
	env := []string{"TMPDIR=" + tmp, "KLAB_SCRIPT="}
	labs := []string{lab, fresh, runLab}

	host, err := testutil.TakeHostSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	before := dryRunSnapshot(t, k, labs, tmp)
	last := before
	// unchanged fails the test if the last command changed anything.
	unchanged := func(args []string) {
		t.Helper()
		now := dryRunSnapshot(t, k, labs, tmp)
		if d := diffLines(last, now); d != "" {
			t.Errorf("klab %s changed something (- before, + after):\n%s", strings.Join(args, " "), d)
		}
		last = now
	}

	ok := [][]string{
		{"node", "add", "node3", "--lab", lab},
		{"node", "del", "node2", "--lab", lab},
		{"pod", "add", "pc", "--node", "node1", "--lab", lab},
		{"pod", "del", "pa", "--lab", lab},
		{"service", "add", "web2", "--port", "81", "--target-port", "8080", "--endpoints", "pa", "--lab", lab},
		{"service", "del", "web", "--lab", lab},
		{"service", "set-endpoints", "web", "pa", "--lab", lab},
		{"serve", "pa", "--port", "8080", "--lab", lab},
		{"repair", lab},
		{"proxy-mode", "set", "nftables", "--lab", lab},
		{"destroy", lab},
		// a lab that does not exist yet
		{"node", "add", "node1", "--lab", fresh},
		{"node", "add", "node1", "--proxy-mode", "nftables", "--lab", fresh},
		{"destroy", fresh},
	}
	for _, args := range ok {
		args = append(args, "--dry-run")
		stdout, stderr, code := runSplit(t, k, env, args...)
		if code != 0 {
			t.Errorf("klab %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
			continue
		}
		if !strings.HasPrefix(stdout, "#!/bin/sh\n") {
			t.Errorf("klab %s: stdout does not start with #!/bin/sh:\n%s", strings.Join(args, " "), stdout)
		}
		if out, err := shCheck(stdout); err != nil {
			t.Errorf("klab %s: sh -n rejects the plan: %v: %s\n%s", strings.Join(args, " "), err, out, stdout)
		}
		unchanged(args)
	}
	// A plan that changes something says so: the plan of a new node
	// creates its namespace.
	if stdout, _, _ := runSplit(t, k, env, "node", "add", "node3", "--lab", lab, "--dry-run"); !strings.Contains(stdout, "ip netns add klab."+lab+".node3\n") {
		t.Errorf("the plan of node add node3 does not create its namespace:\n%s", stdout)
	}

	// Bad input fails with --dry-run as it fails without it.
	bad := [][]string{
		{"node", "add", "Bad_Name!", "--lab", lab},
		{"node", "add", "node1", "--lab", lab}, // exists
		{"node", "del", "nodeZ", "--lab", lab},
		{"pod", "add", "pz", "--node", "nodeZ", "--lab", lab},
		{"pod", "add", "pa", "--node", "node1", "--lab", lab}, // exists
		{"pod", "del", "pz", "--lab", lab},
		{"service", "add", "web", "--port", "80", "--selector", "app=web", "--lab", lab}, // exists
		{"service", "add", "web3", "--port", "99999", "--endpoints", "pa", "--lab", lab},
		{"service", "set-endpoints", "web", "pz", "--lab", lab},
		{"service", "del", "nope", "--lab", lab},
		{"serve", "pz", "--port", "8080", "--lab", lab},
		{"pod", "add", "px", "--node", "node1", "--lab", fresh}, // no such lab
		{"repair", fresh},
		{"proxy-mode", "set", "ipvs", "--lab", lab},
		{"proxy-mode", "set", "bogus", "--lab", lab},
		{"node", "add", "node1", "--proxy-mode", "ipvs", "--lab", fresh},
	}
	for _, args := range bad {
		wantOut, wantErr, wantCode := runSplit(t, k, env, args...)
		unchanged(args)
		gotOut, gotErr, gotCode := runSplit(t, k, env, append(args, "--dry-run")...)
		unchanged(append(args, "--dry-run"))
		if wantCode == 0 {
			t.Errorf("klab %s: exit 0, want a validation error\n%s%s", strings.Join(args, " "), wantOut, wantErr)
			continue
		}
		if gotCode != wantCode || gotErr != wantErr {
			t.Errorf("klab %s --dry-run: exit %d %q, want exit %d %q as without --dry-run", strings.Join(args, " "), gotCode, gotErr, wantCode, wantErr)
		}
		if strings.TrimSpace(gotOut) != "" && !strings.HasPrefix(gotOut, "#!/bin/sh\n") {
			t.Errorf("klab %s --dry-run: stdout is neither empty nor a script:\n%s", strings.Join(args, " "), gotOut)
		}
	}

	// klab run --dry-run: the steps, each klab action with its plan.
	stdout, stderr, code := runSplit(t, k, env, "run", "flannel-crossnode", "--lab", runLab, "--dry-run")
	unchanged([]string{"run", "flannel-crossnode", "--lab", runLab, "--dry-run"})
	if code != 0 {
		t.Errorf("klab run flannel-crossnode --dry-run: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"$ klab node add node1", "$ klab pod add pod-a --node node1", "ip netns add klab." + runLab + ".underlay", "ip netns add klab." + runLab + ".pod-a", "bridge -n klab." + runLab + ".node1 fdb replace"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("klab run flannel-crossnode --dry-run does not show %q:\n%s", want, stdout)
		}
	}

	after := dryRunSnapshot(t, k, labs, tmp)
	if d := diffLines(before, after); d != "" {
		t.Errorf("--dry-run changed something (- before, + after):\n%s", d)
	}
	hostAfter, err := testutil.TakeHostSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if d := host.Diff(hostAfter); d != "" {
		t.Errorf("--dry-run changed the host's network namespace:\n%s", d)
	}
	k.must("destroy", lab)
	k.assertClean(lab, "destroy after the dry runs")
}

// runSplit runs klab and returns its stdout and stderr apart, and its exit
// status.
func runSplit(t testing.TB, k *cli, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := k.cmd(env, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	r := exitResult(t, "", cmd.Run())
	if r.signal != 0 {
		t.Fatalf("klab %s: killed by %v\n%s%s", strings.Join(args, " "), r.signal, o.String(), e.String())
	}
	return o.String(), e.String(), r.code
}

// shCheck asks sh whether script parses (sh -n), reading it from stdin.
func shCheck(script string) ([]byte, error) {
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = strings.NewReader(script)
	return cmd.CombinedOutput()
}

var (
	bridgeTimers = regexp.MustCompile(`(hello_timer|tcn_timer|topology_change_timer|gc_timer|message_age_timer|forward_delay_timer|hold_timer)\s+[\d.]+`)
	tentative    = regexp.MustCompile(` tentative`)
)

// dryRunSnapshot records, as sorted lines: the namespaces of labs ('ip
// netns list'), each one's links (ip -d link, bridge timers left out),
// addresses (the IPv6 "tentative" flag, which clears by itself, left
// out), main-table routes, permanent neighbours (the others age by
// themselves) and iptables-save (counters stripped); every file and
// directory of the state directory with mode, size, modification time
// and contents; the processes that name one of the labs; and what is in
// tmp. Only the labs of this test are looked at: other programs may
// create namespaces meanwhile.
func dryRunSnapshot(t testing.TB, k *cli, labs []string, tmp string) []string {
	t.Helper()
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, lab := range labs {
		for _, ns := range netnsOf(t, lab) {
			add("netns %s", ns)
			for _, c := range [][]string{
				{"ip", "-n", ns, "-d", "link", "show"},
				{"ip", "-n", ns, "addr", "show"},
				{"ip", "-n", ns, "route", "show", "table", "main"},
				{"ip", "-n", ns, "neigh", "show", "nud", "permanent"},
				{"ip", "netns", "exec", ns, "iptables-save"},
			} {
				text := string(tool(t, c[0], c[1:]...))
				text = bridgeTimers.ReplaceAllString(text, "$1 (timer)")
				text = tentative.ReplaceAllString(text, "")
				for i, line := range strings.Split(text, "\n") {
					if line == "" || strings.HasPrefix(line, "#") {
						continue
					}
					line = ruleCounters.ReplaceAllString(line, "")
					add("%s: %s: %04d %s", ns, strings.Join(c[3:], " "), i, chainCounters.ReplaceAllString(line, "[0:0]"))
				}
			}
		}
		for _, pid := range processesMentioning(lab) {
			b, _ := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "cmdline"))
			add("process %d: %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	for _, root := range []string{k.state, tmp} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			line := fmt.Sprintf("file %s %v", p, fi.Mode())
			if !d.IsDir() {
				// A directory's modification time changes when a
				// command creates and removes a lock file in it: what it
				// holds is compared instead.
				line += fmt.Sprintf(" size=%d mtime=%d", fi.Size(), fi.ModTime().UnixNano())
			}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				line += fmt.Sprintf(" ino=%d", st.Ino)
			}
			if fi.Mode().IsRegular() {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				line += fmt.Sprintf(" %q", b)
			}
			out = append(out, line)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(out)
	return out
}
