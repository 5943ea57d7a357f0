package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// Every iptables command that klab runs — iptables-restore for the rules,
// go-iptables for the jumps — and every one a lab runs through klab exec,
// waits for the xtables lock (--wait/-w), so two labs built at once never
// make iptables fail. Wrappers first on PATH record every call and run the
// real tool.
func TestIptablesAlwaysWaits(t *testing.T) {
	t.Parallel()
	k := newCLI(t)
	dir := t.TempDir()
	logf := filepath.Join(dir, "calls.log")
	tools := []string{"iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save",
		"iptables-nft", "iptables-nft-restore", "iptables-legacy", "iptables-legacy-restore"}
	for _, tool := range tools {
		real, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %s\nexec %s \"$@\"\n", tool, logf, real)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
	lab := testutil.LabName(t, "rlxt")
	k.destroyOnCleanup(lab)
	steps := append(append([][]string{}, crossnodeBuild...),
		[]string{"pod", "add", "pod-b", "--node", "node1"},
		[]string{"service", "set-endpoints", "web", "pod-b", "pod-c"},
		[]string{"service", "del", "web"},
		[]string{"node", "del", "node2"},
	)
	for _, step := range steps {
		if r := k.run(env, append([]string{"--lab", lab}, step...)...); r.code != 0 {
			t.Fatalf("klab %s: exit %d\n%s", strings.Join(step, " "), r.code, r.out)
		}
	}
	// A node add killed after its namespace exists, then run again: the
	// second run finds the namespace and reconciles its rules with the
	// kernel (iptables-save; then, as the crash came before any rule was
	// written, one iptables-restore with the chains and the jumps —
	// go-iptables checks the jumps one by one only in a namespace that
	// already has rules).
	if r := k.run(append(env, "KLAB_CRASH_AFTER=3"), "--lab", lab, "node", "add", "node3"); r.signal == 0 {
		t.Fatalf("node add node3 was not killed: %+v", r)
	}
	if r := k.run(env, "--lab", lab, "node", "add", "node3"); r.code != 0 {
		t.Fatalf("node add node3 after a crash: exit %d\n%s", r.code, r.out)
	}
	if li := k.list(lab); len(li) != 1 || li[0].Damaged() {
		t.Fatalf("lab after completing node3: %+v", li)
	}
	k.must("destroy", lab)
	egress := testutil.LabName(t, "rlxteg")
	k.destroyOnCleanup(egress)
	// --trust: the wrappers and their log are under /tmp, which the
	// sandbox a lab's commands run in replaces with a private one.
	if r := k.run(env, "run", "pod-egress", "--yes", "--trust", "--lab", egress); r.code != 0 {
		t.Fatalf("klab run pod-egress: exit %d\n%s", r.code, r.out)
	}
	k.must("destroy", egress)

	b, err := os.ReadFile(logf)
	if err != nil {
		t.Fatalf("no iptables call was recorded: %v", err)
	}
	waits := regexp.MustCompile(`(^| )(-w|--wait)( |=|$|[0-9])`)
	calls := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		tool, args, _ := strings.Cut(line, " ")
		calls[tool]++
		if strings.HasSuffix(tool, "-save") || strings.Contains(" "+args+" ", " --version ") {
			continue
		}
		if !waits.MatchString(args) {
			t.Errorf("%s called without --wait: %s", tool, line)
		}
	}
	if calls["iptables-restore"] == 0 || calls["iptables-save"] == 0 {
		t.Fatalf("the build did not run iptables-restore and iptables-save (calls: %v): the wrappers were not used", calls)
	}
	t.Logf("iptables calls recorded: %v", calls)
}
