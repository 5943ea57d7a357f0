package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
)

// The script 'klab run LAB --script FILE' writes rebuilds the lab: run
// with sh after replacing the lab's name, it makes the same kernel objects
// klab made. Both labs are read back object by object with iproute2,
// bridge, sysctl and iptables-save (tools independent of klab's netlink
// code) and compared by name (see readLabKernel for what is compared and
// why). Lab A is destroyed before the script runs, so the script runs on a
// machine without the lab; lab B, which has no state file, is removed by
// 'klab destroy', which finds its namespaces by name.
func TestReplayScriptRebuildsTheLab(t *testing.T) {
	testutil.RequireRoot(t)
	requireTools(t, "ip", "bridge", "sysctl", "iptables-save", "sh")
	for _, lab := range []string{"flannel-crossnode", "service-clusterip"} {
		t.Run(lab, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			k := newCLI(t)
			a := testutil.LabName(t, "rpa")
			b := testutil.LabName(t, "rpb")
			k.destroyOnCleanup(a)
			k.destroyOnCleanup(b)
			dir := t.TempDir()
			script := filepath.Join(dir, "a.sh")
			k.must("run", lab, "--yes", "--lab", a, "--script", script)
			built := time.Since(start)
			kA := readLabKernel(t, a)
			filesA := stateFiles(t, filepath.Join(k.state, a))
			k.must("destroy", a)
			k.assertClean(a, "destroy of lab A")
			if l := netnsOf(t, a); len(l) > 0 {
				t.Fatalf("ip netns list still shows lab %s after destroy: %v", a, l)
			}

			text, err := os.ReadFile(script)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(text, []byte("#!/bin/sh\n")) || !bytes.Contains(text, []byte("klab."+a+".")) {
				t.Fatalf("%s is not a script of lab %s:\n%s", script, a, text)
			}
			replay := filepath.Join(dir, "b.sh")
			if err := os.WriteFile(replay, bytes.ReplaceAll(text, []byte(a), []byte(b)), 0o755); err != nil {
				t.Fatal(err)
			}
			replayStart := time.Now()
			if out, err := exec.Command("sh", replay).CombinedOutput(); err != nil {
				t.Fatalf("sh %s: %v\n%s", replay, err, out)
			}
			replayed := time.Since(replayStart)
			kB := readLabKernel(t, b)
			filesB := stateFiles(t, filepath.Join(k.state, b))

			if d := diffLabKernels(kA, a, kB, b); d != "" {
				t.Errorf("the replayed script (lab %s) made a different kernel state than klab (lab %s), names replaced by LAB (- klab, + script):\n%s", b, a, d)
			}
			if d := diffLines(filesA, filesB); d != "" {
				t.Errorf("the replayed script wrote different IPAM/flannel files than klab (- klab, + script):\n%s", d)
			}
			if len(kA) < 5 || len(kA["node1"]["links"]) == 0 {
				t.Fatalf("read back too little of lab %s: %d namespaces", a, len(kA))
			}

			k.must("destroy", b)
			k.assertClean(b, "destroy of the replayed lab B")
			if l := netnsOf(t, b); len(l) > 0 {
				t.Fatalf("ip netns list still shows lab %s after destroy: %v", b, l)
			}
			t.Logf("%s: %d namespaces compared; klab run %v, sh replay %v, whole test %v",
				lab, len(kA), built.Round(time.Millisecond), replayed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		})
	}
}

// requireTools skips the test when one of the tools it reads the kernel
// with is missing.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s to read the kernel state independently of klab", tool)
		}
	}
}

// labKernel is a lab's kernel state: per namespace (named without the
// "klab.<lab>." prefix), per section, normalised lines.
type labKernel map[string]map[string][]string

// netnsOf lists the namespaces of lab, as 'ip netns list' shows them.
func netnsOf(t testing.TB, lab string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var nss []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "klab."+lab+".") {
			nss = append(nss, f[0])
		}
	}
	sort.Strings(nss)
	return nss
}

// run runs a read-only tool and returns its stdout.
func tool(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func toolJSON(t testing.TB, v any, name string, args ...string) {
	t.Helper()
	out := tool(t, name, args...)
	if len(bytes.TrimSpace(out)) == 0 {
		return
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// canon renders a JSON object with sorted keys (encoding/json sorts maps).
func canon(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

var (
	chainCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	ruleCounters  = regexp.MustCompile(`^\[\d+:\d+\] `)
)

// sysctlKeys are read in every namespace: the one klab sets (ip_forward)
// and the ones a lab's forwarding depends on, so a difference in them
// would show too.
var sysctlKeys = []string{
	"net.ipv4.ip_forward",
	"net.ipv4.conf.all.forwarding",
	"net.ipv4.conf.all.rp_filter",
	"net.ipv4.conf.default.rp_filter",
	"net.ipv4.conf.all.route_localnet",
	"net.ipv4.conf.all.proxy_arp",
}

// readLabKernel reads every namespace of lab with iproute2, bridge, sysctl
// and iptables-save, object by object, keyed by names (ifindexes and
// link-netnsids differ between two builds and are left out):
//
//   - links: name, kind, MTU, transmit queue length, master, admin up, and for VXLAN devices the
//     VNI, local address, underlay device, UDP port and learning. The MAC is
//     compared where klab pins it: bridges (cni0, underlay0), VTEPs
//     (flannel.1, whose MAC the peers' ARP and FDB entries name), loopback,
//     and the inner end of every veth pair (eth0 of a node, pod or the
//     external host: 'peer name eth0 txqueuelen 0 address MAC'). The outer ends (a
//     pod's veth in its node, a node's or the external host's port in the
//     underlay) get random MACs from the kernel in both builds, as with CNI.
//   - addresses: every IPv4 address (with broadcast, scope, label) and
//     every IPv6 address that is not link-local (those derive from the MAC).
//   - routes of the main table, permanent neighbours, the FDB entries
//     with a remote (dst) of VXLAN devices, bridge ports' hairpin mode,
//     sysctlKeys, and iptables-save of every table (counters stripped, rule
//     order kept).
func readLabKernel(t testing.TB, lab string) labKernel {
	t.Helper()
	out := labKernel{}
	for _, ns := range netnsOf(t, lab) {
		short := strings.TrimPrefix(ns, "klab."+lab+".")
		s := map[string][]string{}
		add := func(sec, format string, args ...any) {
			s[sec] = append(s[sec], fmt.Sprintf(format, args...))
		}

		var links []struct {
			Name     string   `json:"ifname"`
			Flags    []string `json:"flags"`
			MTU      int      `json:"mtu"`
			TxQLen   int      `json:"txqlen"`
			Master   string   `json:"master"`
			Address  string   `json:"address"`
			LinkType string   `json:"link_type"`
			Info     struct {
				Kind string         `json:"info_kind"`
				Data map[string]any `json:"info_data"`
			} `json:"linkinfo"`
		}
		toolJSON(t, &links, "ip", "-n", ns, "-j", "-d", "link", "show")
		vxlan := map[string]bool{}
		for _, l := range links {
			kind := l.Info.Kind
			if kind == "" {
				kind = l.LinkType
			}
			up := false
			for _, f := range l.Flags {
				up = up || f == "UP"
			}
			mac := "(not pinned)"
			if kind != "veth" || l.Name == "eth0" {
				mac = l.Address
			}
			line := fmt.Sprintf("%s kind=%s mtu=%d txqlen=%d master=%q up=%v mac=%s", l.Name, kind, l.MTU, l.TxQLen, l.Master, up, mac)
			if kind == "vxlan" {
				vxlan[l.Name] = true
				d := l.Info.Data
				line += fmt.Sprintf(" vni=%v local=%v dev=%v port=%v learning=%v", d["id"], d["local"], d["link"], d["port"], d["learning"])
			}
			add("links", "%s", line)
		}

		var addrs []struct {
			Name  string           `json:"ifname"`
			Addrs []map[string]any `json:"addr_info"`
		}
		toolJSON(t, &addrs, "ip", "-n", ns, "-j", "addr", "show")
		for _, l := range addrs {
			for _, a := range l.Addrs {
				if a["family"] == "inet6" && a["scope"] == "link" {
					continue
				}
				add("addresses", "%s %v/%v brd=%v scope=%v label=%v", l.Name, a["local"], a["prefixlen"], a["broadcast"], a["scope"], a["label"])
			}
		}

		var objs []map[string]any
		toolJSON(t, &objs, "ip", "-n", ns, "-j", "route", "show", "table", "main")
		for _, r := range objs {
			// "linkdown" follows the device's carrier, which a veth
			// gets a moment after both ends are up: a read right after
			// the build may see it. The links' admin state is compared.
			if f, ok := r["flags"].([]any); ok {
				r["flags"] = slices.DeleteFunc(f, func(v any) bool { return v == "linkdown" })
			}
			add("routes", "%s", canon(r))
		}
		objs = nil
		toolJSON(t, &objs, "ip", "-n", ns, "-j", "neigh", "show", "nud", "permanent")
		for _, n := range objs {
			add("neighbours", "%s", canon(n))
		}
		objs = nil
		toolJSON(t, &objs, "bridge", "-n", ns, "-j", "fdb", "show")
		for _, f := range objs {
			if _, ok := f["dst"]; ok {
				if !vxlan[fmt.Sprint(f["ifname"])] {
					t.Errorf("%s: FDB entry with a dst on a device that is not VXLAN: %s", ns, canon(f))
				}
				add("fdb", "%s", canon(f))
			}
		}
		objs = nil
		toolJSON(t, &objs, "bridge", "-n", ns, "-d", "-j", "link", "show")
		for _, p := range objs {
			add("bridge ports", "%v master=%v hairpin=%v", p["ifname"], p["master"], p["hairpin"])
		}

		for _, line := range strings.Split(strings.TrimSpace(string(tool(t, "ip", append([]string{"netns", "exec", ns, "sysctl"}, sysctlKeys...)...))), "\n") {
			add("sysctls", "%s", line)
		}
		for k := range s {
			sort.Strings(s[k])
		}
		// Rule order matters: kept, and numbered per table.
		n := 0
		for _, line := range strings.Split(string(tool(t, "ip", "netns", "exec", ns, "iptables-save")), "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if strings.HasPrefix(line, "*") {
				n = 0
			}
			n++
			line = ruleCounters.ReplaceAllString(line, "")
			add("iptables-save", "%03d %s", n, chainCounters.ReplaceAllString(line, "[0:0]"))
		}
		out[short] = s
	}
	return out
}

// diffLabKernels compares two labs' kernel states after replacing each
// lab's name by LAB; "" when they are the same.
func diffLabKernels(a labKernel, aName string, b labKernel, bName string) string {
	flat := func(k labKernel, name string) []string {
		var lines []string
		for ns, secs := range k {
			lines = append(lines, ns+": namespace")
			for sec, ls := range secs {
				for _, l := range ls {
					lines = append(lines, strings.ReplaceAll(ns+": "+sec+": "+l, name, "LAB"))
				}
			}
		}
		sort.Strings(lines)
		return lines
	}
	return diffLines(flat(a, aName), flat(b, bName))
}

// diffLines lists the lines only in a ("-") and only in b ("+"), as
// multisets; "" when they are the same.
func diffLines(a, b []string) string {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	var d strings.Builder
	for _, l := range a {
		if count[l] > 0 {
			fmt.Fprintf(&d, "  - %s\n", l)
			count[l]--
		}
	}
	for _, l := range b {
		if count[l] < 0 {
			fmt.Fprintf(&d, "  + %s\n", l)
			count[l]++
		}
	}
	return d.String()
}

// stateFiles lists the files of a lab's state directory that the script
// writes too (IPAM reservations, flannel's subnet.env), with their
// contents; klab's own bookkeeping (state.json, the servers' logs) is
// named in the script, not written by it, and left out.
func stateFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel == "servers" {
				return filepath.SkipDir
			}
			return nil
		}
		if rel == "state.json" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s = %q", rel, b))
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}
