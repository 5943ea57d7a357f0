package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/plan"
)

// In nftables mode a service change, a readiness change and a mode switch
// SIGKILLed after any one of their operations leave a lab that 'klab list'
// finds damaged (or healthy, when the kill came after the state was
// saved), that 'klab repair' makes healthy, and that still serves traffic
// at the end; destroy leaves nothing.
func TestCrashNFTablesModeThenRepair(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to read the kernel back (apt-get install nftables)")
	}
	k := newCLI(t)
	lab := testutil.LabName(t, "nfcrash")
	k.destroyOnCleanup(lab)
	for _, step := range [][]string{
		{"node", "add", "node1", "--proxy-mode", "nftables"},
		{"node", "add", "node2"},
		{"pod", "add", "pod-a", "--node", "node1"},
		{"pod", "add", "pod-c", "--node", "node2"},
		{"serve", "pod-c", "--port", "8080"},
	} {
		k.must(append([]string{"--lab", lab}, step...)...)
	}
	points := 0
	for _, step := range [][]string{
		{"service", "add", "web", "--port", "80", "--target-port", "8080", "--endpoints", "pod-c", "--node-port", "30080"},
		{"pod", "set-ready", "pod-c", "false"},
		{"pod", "set-ready", "pod-c", "true"},
		{"proxy-mode", "set", "iptables"},
		{"proxy-mode", "set", "nftables"},
	} {
		for n := 1; ; n++ {
			r := k.run([]string{fmt.Sprintf("%s=%d", plan.CrashEnv, n)}, append([]string{"--lab", lab}, step...)...)
			if r.code == 0 || strings.Contains(r.out, "already exists") {
				break // done (the kill came after the state was saved, the repair kept it)
			}
			what := fmt.Sprintf("klab %s killed at operation %d", strings.Join(step, " "), n)
			if r.signal != syscall.SIGKILL {
				t.Fatalf("%s: exit %d, signal %v, want SIGKILL or success\n%s", what, r.code, r.signal, r.out)
			}
			points++
			if rr := k.run(nil, "repair", lab); rr.code != 0 {
				t.Fatalf("%s: klab repair: exit %d\n%s", what, rr.code, rr.out)
			}
			for _, li := range k.list(lab) {
				if li.Damaged() {
					t.Fatalf("%s: still damaged after repair: %v", what, li.Problems)
				}
			}
		}
	}
	if points == 0 {
		t.Fatal("no crash point was hit")
	}
	if out := k.must("proxy-mode", "show", "--lab", lab); strings.TrimSpace(out) != "nftables" {
		t.Errorf("proxy mode after the switches: %q", out)
	}
	if err := check(k, lab); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d crash points in nftables mode: each repaired to a healthy lab", points)
	k.must("destroy", lab)
	k.assertClean(lab, "destroy")
}

// nftables mode needs no nft and no iptables binary: with an empty PATH a
// lab is built, given a NodePort service and switched nowhere; nft (with
// the normal PATH) reads kube-proxy's table back and traffic flows. iptables
// mode on the same empty PATH is refused in one sentence.
func TestNFTablesModeWithoutBinaries(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to read the kernel back (apt-get install nftables)")
	}
	k := newCLI(t)
	lab := testutil.LabName(t, "nfbin")
	k.destroyOnCleanup(lab)
	empty := []string{"PATH=" + t.TempDir()}
	for _, step := range [][]string{
		{"node", "add", "node1", "--proxy-mode", "nftables"},
		{"node", "add", "node2"},
		{"pod", "add", "pod-a", "--node", "node1"},
		{"pod", "add", "pod-c", "--node", "node2"},
		{"serve", "pod-c", "--port", "8080"},
		{"service", "add", "web", "--port", "80", "--target-port", "8080", "--endpoints", "pod-c", "--node-port", "30080"},
	} {
		if r := k.run(empty, append([]string{"--lab", lab}, step...)...); r.code != 0 {
			t.Fatalf("klab %s without nft or iptables on PATH: exit %d\n%s", strings.Join(step, " "), r.code, r.out)
		}
	}
	out, err := exec.Command("ip", "netns", "exec", "klab."+lab+".node1", "nft", "list", "map", "ip", "kube-proxy", "service-nodeports").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tcp . 30080 : goto external-") {
		t.Errorf("nft list map service-nodeports: %v\n%s", err, out)
	}
	if err := check(k, lab); err != nil {
		t.Fatal(err)
	}
	other := testutil.LabName(t, "nfbip")
	k.destroyOnCleanup(other)
	r := k.run(empty, "node", "add", "node1", "--lab", other)
	if r.code == 0 || !strings.Contains(r.out, "iptables-restore is not installed") {
		t.Errorf("iptables mode without iptables-restore: exit %d\n%s", r.code, r.out)
	}
	k.must("destroy", lab)
	k.assertClean(lab, "destroy")
}
