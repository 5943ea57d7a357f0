package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// baselineScript is the hand-written iproute2 script the benchmarks compare
// klab with.
var baselineScript = filepath.Join("..", "..", "scripts", "baseline", "flannel.sh")

// TestBaselineScriptMatchesKlab builds the same 3-node lab three ways — one
// AddNode/AddPod call per object, one Build call, and the baseline script —
// and checks that the kernel state (links, addresses, routes, neighbours,
// FDB, bridge ports, sysctls, iptables) and the subnet.env files are
// identical, so that the benchmarks compare like with like.
func TestBaselineScriptMatchesKlab(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"ip", "bridge", "iptables-save", "iptables-restore", "bash", "sha256sum", "sha1sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	lab := testutil.LabName(t, "bn-cmp")
	const nodes, pods = 3, 2
	dumps := map[string]string{}
	envs := map[string]string{}
	for _, how := range []string{"each", "build", "script"} {
		state := t.TempDir()
		switch how {
		case "script":
			out, err := exec.Command(baselineScript, "up", lab, fmt.Sprint(nodes), fmt.Sprint(pods), state).CombinedOutput()
			if err != nil {
				t.Fatalf("baseline script: %v\n%s", err, out)
			}
		default:
			c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := bench.FlannelSpec(nodes, pods)
			if how == "build" {
				_, _, err = c.Build(s)
			} else {
				for _, n := range s.Nodes {
					if _, err = c.AddNode(n); err != nil {
						break
					}
				}
				for _, p := range s.Pods {
					if err != nil {
						break
					}
					_, err = c.AddPod(p)
				}
			}
			c.Close()
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
		}
		dumps[how] = dumpLab(t, lab)
		env, err := os.ReadFile(filepath.Join(state, lab, "nodes", "node2", "flannel", "subnet.env"))
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		envs[how] = string(env)
		if how == "script" {
			if out, err := exec.Command(baselineScript, "down", lab, state).CombinedOutput(); err != nil {
				t.Fatalf("baseline script down: %v\n%s", err, out)
			}
		} else if err := cluster.Destroy(state, lab, nil, nil); err != nil {
			t.Fatal(err)
		}
		if left, _ := netns.List(lab); len(left) != 0 {
			t.Fatalf("%s: namespaces left after teardown: %v", how, left)
		}
	}
	for _, how := range []string{"build", "script"} {
		if d := lineDiff(dumps["each"], dumps[how]); d != "" {
			t.Errorf("kernel state of %q differs from AddNode/AddPod's (-each +%s):\n%s", how, how, d)
		}
		if envs[how] != envs["each"] {
			t.Errorf("subnet.env of %q: %q, want %q", how, envs[how], envs["each"])
		}
	}
}

var (
	reIfindex = regexp.MustCompile(`(?m)^\d+: `)
	rePeerIdx = regexp.MustCompile(`@if\d+`)
	reNetnsID = regexp.MustCompile(`link-netnsid \d+`)
	reTimer   = regexp.MustCompile(`(\w+_timer)\s+[\d.]+`)
	reCounter = regexp.MustCompile(`\[\d+:\d+\]`)
	reLink    = regexp.MustCompile(`(?m)^N: ([^:@]+)[:@].*\n\s+link/ether ([0-9a-f:]{17})`)
)

// dumpLab prints the kernel state of every namespace of a lab, normalised:
// interface indexes, timers and counters removed, and the MACs the kernel
// chose at random (the outer ends of veth pairs, which klab does not pin)
// replaced by the interface's name. IPv6 and learned (dynamic) entries
// are left out: they depend on timing, not on the build.
func dumpLab(t *testing.T, lab string) string {
	t.Helper()
	nss, err := netns.List(lab)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(nss)
	random := map[string]string{}
	var b strings.Builder
	for _, ns := range nss {
		_, obj, _ := netns.Parse(ns)
		run := func(args ...string) string {
			var stderr strings.Builder
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
			return string(out)
		}
		// (iproute2 names a veth's peer namespace by asking every namespace
		// under /run/netns for its id; namespaces that other programs delete
		// meanwhile make it print an error on stderr, which run drops.)
		links := run("ip", "-n", ns, "-d", "link", "show")
		links = reIfindex.ReplaceAllString(links, "N: ")
		for _, m := range reLink.FindAllStringSubmatch(links, -1) {
			if strings.HasPrefix(m[1], "veth") || (obj == cluster.UnderlayName && m[1] != cluster.UnderlayBridge) {
				random[m[2]] = "<mac of " + obj + "/" + m[1] + ">"
			}
		}
		fmt.Fprintf(&b, "### %s\n%s", obj, links)
		b.WriteString(run("ip", "-n", ns, "-4", "addr", "show"))
		b.WriteString(run("ip", "-n", ns, "-4", "route", "show", "table", "all"))
		b.WriteString(run("ip", "-n", ns, "-4", "neigh", "show", "nud", "permanent"))
		for _, l := range strings.SplitAfter(run("bridge", "-n", ns, "fdb", "show"), "\n") {
			if strings.Contains(l, "permanent") && !strings.HasPrefix(l, "33:33:") {
				b.WriteString(l)
			}
		}
		b.WriteString("forward=" + run("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"))
		for _, l := range strings.SplitAfter(run("ip", "netns", "exec", ns, "iptables-save"), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(l)
			}
		}
	}
	s := b.String()
	s = reIfindex.ReplaceAllString(s, "N: ")
	s = rePeerIdx.ReplaceAllString(s, "@ifN")
	s = reNetnsID.ReplaceAllString(s, "link-netnsid N")
	s = reTimer.ReplaceAllString(s, "$1 T")
	s = reCounter.ReplaceAllString(s, "[N:N]")
	for mac, name := range random {
		s = strings.ReplaceAll(s, mac, name)
	}
	return s
}

// lineDiff lists the lines only in a (-) and only in b (+), with the
// namespace they belong to; "" when both have the same lines per namespace.
func lineDiff(a, b string) string {
	if a == b {
		return ""
	}
	count := func(s string) map[string]int {
		m := map[string]int{}
		sect := ""
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "### ") {
				sect = l[4:]
			}
			m[sect+": "+l]++
		}
		return m
	}
	ca, cb := count(a), count(b)
	var out []string
	for l, n := range ca {
		if cb[l] < n {
			out = append(out, "- "+l)
		}
	}
	for l, n := range cb {
		if ca[l] < n {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	// Same lines in another order is the same state: the kernel lists
	// neighbours and FDB entries in hash order, which depends on the order
	// they were added in.
	return strings.Join(out, "\n")
}
