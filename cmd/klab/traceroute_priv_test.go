package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

var (
	hopLineRE = regexp.MustCompile(`(?m)^\s*(\d+)\s+(.*)$`)
	ipv4RE    = regexp.MustCompile(`\b\d+\.\d+\.\d+\.\d+\b`)
)

// hopsOf parses traceroute-style output into each hop's distinct addresses.
func hopsOf(out string) [][]string {
	var hops [][]string
	for _, m := range hopLineRE.FindAllStringSubmatch(out, -1) {
		var addrs []string
		for _, a := range ipv4RE.FindAllString(m[2], -1) {
			if !strings.Contains(strings.Join(addrs, " "), a) {
				addrs = append(addrs, a)
			}
		}
		hops = append(hops, addrs)
	}
	return hops
}

// TestTracerouteMatchesKernel compares klab traceroute with traceroute(8)
// run from the same pod: same number of hops, same address at each hop,
// same node, across flannel.1 (the tunnel is one hop) and out to the
// external host; UDP and ICMP probes.
func TestTracerouteMatchesKernel(t *testing.T) {
	c := newCLI(t)
	if _, err := exec.LookPath("traceroute"); err != nil {
		t.Skip("needs traceroute(8) to compare with (Debian package traceroute: scripts/install-deps.sh)")
	}
	lab := testutil.LabName(t, "sftr")
	c.destroyOnCleanup(lab)
	for _, args := range [][]string{
		{"node", "add", "node1"}, {"node", "add", "node2"},
		{"pod", "add", "pod-a", "--node", "node1"}, {"pod", "add", "pod-b", "--node", "node2"},
		{"pod", "add", "pod-c", "--node", "node1"},
	} {
		c.must(append([]string{"--lab", lab}, args...)...)
	}
	// The routers' ICMP rate limit would turn some of traceroute(8)'s
	// back-to-back probes into '*': lift it in the lab's own namespaces.
	for _, r := range []string{"node1", "node2", "underlay"} {
		c.must("--lab", lab, "exec", r, "--", "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
	}
	for _, tc := range []struct {
		target, addr string
		want         [][]string
	}{
		{"pod-c", "10.244.1.3", [][]string{{"10.244.1.3"}}},
		{"pod-b", "10.244.2.2", [][]string{{"10.244.1.1"}, {"10.244.2.0"}, {"10.244.2.2"}}},
		{"external", "203.0.113.10", [][]string{{"10.244.1.1"}, {"192.168.1.1"}, {"203.0.113.10"}}},
	} {
		for _, icmp := range []bool{false, true} {
			kargs := []string{"--lab", lab, "traceroute", "pod-a", tc.target}
			targs := []string{"--lab", lab, "exec", "pod-a", "--", "traceroute", "-n", "-w", "1", tc.addr}
			if icmp {
				kargs = append(kargs, "--icmp")
				targs = append(targs[:len(targs)-1], "-I", tc.addr)
			}
			kout := c.must(kargs...)
			tout := c.must(targs...)
			// The first line of each is the header: drop it.
			got := hopsOf(kout[strings.Index(kout, "\n")+1:])
			real := hopsOf(tout[strings.Index(tout, "\n")+1:])
			if !equalHops(got, real) || !equalHops(got, tc.want) {
				t.Errorf("traceroute pod-a %s (icmp %v):\nklab:       %v\n%s\ntraceroute: %v\n%s\nwant:       %v", tc.target, icmp, got, kout, real, tout, tc.want)
			}
		}
	}
	// Exit status: 1 when the target never answers (an address nobody has,
	// one hop out: the node's cni0 answers, then nothing).
	r := c.run(nil, "--lab", lab, "traceroute", "pod-a", "10.244.1.99", "-m", "2", "-w", "200ms", "-q", "1")
	if r.code != 1 || !strings.Contains(r.out, " 1  *") && !strings.Contains(r.out, "!H") {
		t.Errorf("traceroute to a missing pod: exit %d\n%s", r.code, r.out)
	}
}

func equalHops(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if strings.Join(a[i], " ") != strings.Join(b[i], " ") {
			return false
		}
	}
	return true
}
