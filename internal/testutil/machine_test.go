package testutil

import (
	"slices"
	"strings"
	"testing"
)

// TestMachines checks the simulated machines: each reaches the other over
// the LAN, and a namespace added on one is on neither the host nor the
// other, and goes away with its machine.
func TestMachines(t *testing.T) {
	ms := Machines(t, "tm", 2)
	ms[0].Run("ping", "-c1", "-W1", ms[1].Addr)
	ms[0].Run("ip", "netns", "add", "klab.tm-probe.x")
	if !slices.Contains(ms[0].Netns(), "klab.tm-probe.x") {
		t.Fatalf("m1's /run/netns: %v", ms[0].Netns())
	}
	if slices.Contains(ms[1].Netns(), "klab.tm-probe.x") {
		t.Fatal("m2 sees m1's namespace")
	}
	if out := ms[1].Run("ip", "-o", "link"); strings.Count(out, "\n") != 2 {
		t.Fatalf("m2 should hold lo and eth0 only:\n%s", out)
	}
}
