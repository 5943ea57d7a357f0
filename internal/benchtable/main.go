// Command benchtable turns the output of klab's Go benchmarks (go test
// -bench, any number of packages and -count runs) into the one table 'make
// bench' prints: each klab figure next to its baseline from the same run,
// the ratio, the target and whether it is met. Each figure is the median of
// the runs (each run already reports medians of its iterations).
//
//	go test -run '^$' -bench . ./pkg/cluster ... | go run ./internal/benchtable
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// results maps "<pkg>/<Benchmark name without -procs>" to unit to values.
type results map[string]map[string][]float64

// parse reads go test -bench output.
func parse(r io.Reader) (results, error) {
	res := results{}
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), "github.com/klab-dev/klab/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // a benchmark's log line, not a result
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		key := pkg + "/" + name
		if res[key] == nil {
			res[key] = map[string][]float64{}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res[key][f[i+1]] = append(res[key][f[i+1]], v)
		}
	}
	return res, sc.Err()
}

// get is the median of a benchmark's unit, and whether it was measured.
func (r results) get(bench, unit string) (float64, bool) {
	xs := r[bench][unit]
	if len(xs) == 0 {
		return 0, false
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

// fig names one figure: a benchmark and a unit.
type fig struct{ bench, unit string }

// row is one line of the table.
type row struct {
	what     string
	klab     fig
	base     fig    // zero: no baseline
	baseName string // what the baseline is
	// ratio: "faster" (base/klab, times), "of" (klab/base), "rate"
	// (klab/base for throughputs), "" none.
	ratio  string
	target string
	met    func(klab, ratio float64) bool
	note   string
}

const (
	cl  = "pkg/cluster/BenchmarkFlannel/"
	cli = "cmd/klab/BenchmarkFlannel/"
	nt  = "pkg/nat/BenchmarkServices/"
	tr  = "trace/BenchmarkDecodeVsGopacket/"
	cp  = "cmd/klab/BenchmarkControlPlane/"
	mm  = "cmd/klab/BenchmarkMultiMachine"
)

var rows = []row{
	{what: "2 nodes x 2 pods up: klab library (cluster.Build)", klab: fig{cl + "2x2/klab", "up-ms"}, base: fig{cl + "2x2/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster",
		target: "<= 25 ms, >= 20x", met: func(k, r float64) bool { return k <= 25 && r >= 20 }},
	{what: "2 nodes x 2 pods up: klab library, one AddNode/AddPod per object", klab: fig{cl + "2x2/klab-each", "up-ms"}, base: fig{cl + "2x2/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster"},
	{what: "2 nodes x 2 pods up: klab CLI, one process per node/pod", klab: fig{cli + "2x2/klab-cli", "up-ms"}, base: fig{cl + "2x2/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster"},
	{what: "2 nodes x 2 pods down: until the command returns", klab: fig{cl + "2x2/klab", "down-ms"}, base: fig{cl + "2x2/iproute2", "down-ms"}, baseName: "ip netns del", ratio: "faster",
		target: "<= 60 ms", met: func(k, _ float64) bool { return k <= 60 }},
	{what: "2 nodes x 2 pods down: CLI (klab destroy)", klab: fig{cli + "2x2/klab-cli", "down-ms"}, base: fig{cl + "2x2/iproute2", "down-ms"}, baseName: "ip netns del", ratio: "faster",
		target: "<= 60 ms", met: func(k, _ float64) bool { return k <= 60 }},
	{what: "2 nodes x 2 pods down: until the kernel has freed it", klab: fig{cl + "2x2/klab", "kernel-ms"}, base: fig{cl + "2x2/iproute2", "kernel-ms"}, baseName: "ip netns del", ratio: "faster"},
	{what: "2 nodes x 2 pods up: CPU time used", klab: fig{cl + "2x2/klab", "cpu-ms"}, base: fig{cl + "2x2/iproute2", "cpu-ms"}, baseName: "iproute2 script", ratio: "faster"},
	{what: "10 x 10 up", klab: fig{cl + "10x10/klab", "up-ms"}, base: fig{cl + "10x10/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster",
		target: "<= 250 ms", met: func(k, _ float64) bool { return k <= 250 }},
	{what: "10 x 10 up: pods per second", klab: fig{cl + "10x10/klab", "pods/s"}, base: fig{cl + "10x10/iproute2", "pods/s"}, baseName: "iproute2 script", ratio: "rate"},
	{what: "10 x 10 up: klab library, one AddNode/AddPod per object", klab: fig{cl + "10x10/klab-each", "up-ms"}, base: fig{cl + "10x10/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster"},
	{what: "10 x 10 down: until the command returns", klab: fig{cl + "10x10/klab", "down-ms"}, base: fig{cl + "10x10/iproute2", "down-ms"}, baseName: "ip netns del", ratio: "faster"},
	{what: "10 x 10 down: until the kernel has freed it", klab: fig{cl + "10x10/klab", "kernel-ms"}, base: fig{cl + "10x10/iproute2", "kernel-ms"}, baseName: "ip netns del", ratio: "faster"},
	{what: "100 x 10 up (1,102 namespaces)", klab: fig{cl + "100x10/klab", "up-ms"}, base: fig{cl + "100x10/iproute2", "up-ms"}, baseName: "iproute2 script", ratio: "faster",
		target: "<= 2000 ms", met: func(k, _ float64) bool { return k <= 2000 }},
	{what: "100 x 10 up: pods per second", klab: fig{cl + "100x10/klab", "pods/s"}, base: fig{cl + "100x10/iproute2", "pods/s"}, baseName: "iproute2 script", ratio: "rate"},
	{what: "100 x 10 down: until the command returns", klab: fig{cl + "100x10/klab", "down-ms"}, base: fig{cl + "100x10/iproute2", "down-ms"}, baseName: "ip netns del", ratio: "faster",
		target: "<= 2000 ms", met: func(k, _ float64) bool { return k <= 2000 }},
	{what: "100 x 10 down: until the kernel has freed it", klab: fig{cl + "100x10/klab", "kernel-ms"}, base: fig{cl + "100x10/iproute2", "kernel-ms"}, baseName: "ip netns del", ratio: "faster"},
	{what: "100 x 10 up: klab peak RSS (MB)", klab: fig{cl + "100x10/klab", "peak-MB"},
		target: "< 100 MB", met: func(k, _ float64) bool { return k < 100 }},
	{what: "1,000 services x 10 endpoints into a node", klab: fig{nt + "1000x10/klab", "ms"}, base: fig{nt + "1000x10/per-rule", "ms"}, baseName: "iptables per rule (extrapolated)", ratio: "faster",
		target: ">= 100x", met: func(_, r float64) bool { return r >= 100 }},
	{what: "1,000 services x 10 endpoints: vs bare iptables-restore", klab: fig{nt + "1000x10/klab", "ms"}, base: fig{nt + "1000x10/restore", "ms"}, baseName: "iptables-restore", ratio: "of"},
	{what: "10,000 services x 2 endpoints into a node", klab: fig{nt + "10000x2/klab", "ms"}, base: fig{nt + "10000x2/restore", "ms"}, baseName: "iptables-restore", ratio: "of",
		target: "<= 1.1x restore", met: func(_, r float64) bool { return r <= 1.1 }},
	{what: "10,000 services x 2 endpoints: vs per-rule calls", klab: fig{nt + "10000x2/klab", "ms"}, base: fig{nt + "10000x2/per-rule", "ms"}, baseName: "iptables per rule (extrapolated)", ratio: "faster"},
	{what: "one service's endpoints changed, 10,000 services", klab: fig{nt + "10000x2/one-change", "klab-ms"}, base: fig{nt + "10000x2/one-change", "restore-ms"}, baseName: "iptables-restore --noflush", ratio: "of",
		target: "<= 100 ms", met: func(k, _ float64) bool { return k <= 100 }},
	{what: "one service's endpoints changed: vs per-rule calls", klab: fig{nt + "10000x2/one-change", "klab-ms"}, base: fig{nt + "10000x2/one-change", "per-rule-ms"}, baseName: "iptables per rule", ratio: "faster"},
	{what: "one service's endpoints changed, 1,000 x 10", klab: fig{nt + "1000x10/one-change", "klab-ms"}, base: fig{nt + "1000x10/one-change", "restore-ms"}, baseName: "iptables-restore --noflush", ratio: "of"},
	{what: "klab exec --sandbox node1 -- true", klab: fig{"cmd/klab/BenchmarkExecSandbox", "sandbox-ms"}, base: fig{"cmd/klab/BenchmarkExecSandbox", "plain-ms"}, baseName: "klab exec (full root)", ratio: "of"},
	{what: "klab exec: what the sandbox adds per command", klab: fig{"cmd/klab/BenchmarkExecSandbox", "added-ms"}, base: fig{"cmd/klab/BenchmarkExecSandbox", "ipnetns-ms"}, baseName: "ip netns exec (whole command)",
		target: "< 5 ms", met: func(k, _ float64) bool { return k < 5 }},
	{what: "cluster DNS, A/SRV/NXDOMAIN over UDP (dnsperf, queries/s)", klab: fig{"pkg/dns/BenchmarkDNSPerf/klab", "qps"}, base: fig{"pkg/dns/BenchmarkDNSPerf/unbound", "qps"}, baseName: "Unbound, same records", ratio: "of",
		target: ">= 1x Unbound", met: func(_, r float64) bool { return r >= 1 }},
	{what: "cluster DNS p99 latency under dnsperf", klab: fig{"pkg/dns/BenchmarkDNSPerf/klab", "p99-ms"}, base: fig{"pkg/dns/BenchmarkDNSPerf/unbound", "p99-ms"}, baseName: "Unbound, same records", ratio: "of"},
	{what: "one NetworkPolicy change, 1,000 policies x 300 pods (fresh compile)", klab: fig{"pkg/policy/BenchmarkPolicies/change/klab", "ms/op"}, base: fig{"pkg/policy/BenchmarkPolicies/change/baseline", "ms/op"}, baseName: "iptables-restore of the changed chains", ratio: "of",
		target: "<= 50 ms", met: func(k, _ float64) bool { return k <= 50 }},
	{what: "one NetworkPolicy change, incremental (policy.Compiler)", klab: fig{"pkg/policy/BenchmarkPolicies/change/klab-incremental", "ms/op"}, base: fig{"pkg/policy/BenchmarkPolicies/change/baseline", "ms/op"}, baseName: "iptables-restore of the changed chains", ratio: "of",
		target: "<= 50 ms", met: func(k, _ float64) bool { return k <= 50 }},
	{what: "100 x 10 up, control plane: etcd and 100 agents until every peer", klab: fig{cp + "100x10/etcd", "up-ms"}, base: fig{cp + "100x10/direct", "up-ms"}, baseName: "direct mode (klab programs every node)", ratio: "of"},
	{what: "one new lease reaching all 100 nodes' kernels", klab: fig{cp + "100x10/etcd", "lease-ms"},
		target: "<= 1000 ms", met: func(k, _ float64) bool { return k <= 1000 }},
	{what: "control plane, 100 nodes: one agent's private memory", klab: fig{cp + "100x10/etcd", "agent-anon-MB"}},
	{what: "control plane, 100 nodes: etcd's private memory", klab: fig{cp + "100x10/etcd", "etcd-anon-MB"}},
	{what: "second machine joins (token create, join, its first node)", klab: fig{mm, "join-ms"}, base: fig{mm, "first-node-ms"}, baseName: "first machine's first node (starts etcd)", ratio: "of"},
	{what: "pod add on another machine's node (its machine agent builds it)", klab: fig{mm, "remote-pod-ms"}, base: fig{mm, "local-pod-ms"}, baseName: "pod add on this machine's node", ratio: "of"},
	{what: "pod-to-pod ping across machines (stitch + flannel VXLAN), median", klab: fig{mm, "rtt-cross-us"}, base: fig{mm, "rtt-same-us"}, baseName: "across two nodes of one machine", ratio: "of"},
	{what: "decode a VXLAN frame (packets/s)", klab: fig{tr + "klab", "pkts/s"}, base: fig{tr + "dlp", "pkts/s"}, baseName: "gopacket DecodingLayerParser", ratio: "rate"},
	{what: "decode a VXLAN frame vs gopacket.NewPacket", klab: fig{tr + "klab", "pkts/s"}, base: fig{tr + "newpacket", "pkts/s"}, baseName: "gopacket.NewPacket", ratio: "rate"},
}

// format prints a figure with its unit.
func format(v float64, unit string) string {
	switch unit {
	case "pods/s":
		return fmt.Sprintf("%.0f pods/s", v)
	case "pkts/s":
		return fmt.Sprintf("%.2f M/s", v/1e6)
	case "peak-MB", "agent-anon-MB", "etcd-anon-MB":
		return fmt.Sprintf("%.1f MB", v)
	case "rtt-cross-us", "rtt-same-us":
		return fmt.Sprintf("%.0f µs", v)
	case "qps":
		return fmt.Sprintf("%.0f q/s", v)
	}
	switch {
	case v >= 60000:
		return fmt.Sprintf("%.1f min", v/60000)
	case v >= 1000:
		return fmt.Sprintf("%.2f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

// render writes the table (Markdown) for r.
func render(w io.Writer, r results) (met, missed int) {
	fmt.Fprintln(w, "| measurement | klab | baseline | baseline value | ratio | target | met |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---|---|")
	for _, rw := range rows {
		k, ok := r.get(rw.klab.bench, rw.klab.unit)
		if !ok {
			fmt.Fprintf(w, "| %s | not run | | | | %s | |\n", rw.what, rw.target)
			continue
		}
		base, ratio, rs := "", 0.0, ""
		if rw.base.bench != "" {
			if b, ok := r.get(rw.base.bench, rw.base.unit); ok {
				base = format(b, rw.base.unit)
				switch rw.ratio {
				case "faster":
					ratio = b / k
					rs = fmt.Sprintf("%.1fx faster", ratio)
					if ratio < 0.95 {
						rs = fmt.Sprintf("%.1fx slower", 1/ratio)
					} else if ratio < 1.05 {
						rs = "same"
					}
				case "of":
					ratio = k / b
					rs = fmt.Sprintf("%.3fx", ratio)
				case "rate":
					ratio = k / b
					rs = fmt.Sprintf("%.1fx", ratio)
				}
			} else {
				base = "not run"
			}
		}
		status := ""
		if rw.met != nil {
			if rw.ratio != "" && base == "not run" && strings.Contains(rw.target, "x") {
				status = "?"
			} else if rw.met(k, ratio) {
				status, met = "yes", met+1
			} else {
				status, missed = "**no**", missed+1
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", rw.what, format(k, rw.klab.unit), rw.baseName, base, rs, rw.target, status)
	}
	return met, missed
}

func main() {
	r, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(r) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results on stdin")
		os.Exit(1)
	}
	fmt.Printf("klab benchmarks, %s, %s\n\n", time.Now().Format("2006-01-02 15:04 MST"), machine())
	met, missed := render(os.Stdout, r)
	fmt.Printf("\n%d targets met, %d missed. Figures are medians; see docs/performance.md for the method and what bounds each figure.\n", met, missed)
}

// machine describes where the numbers come from.
func machine() string {
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel := "?"
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	ipt := "?"
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		ipt = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s, load average at the end %s", runtime.NumCPU(), cpu, kernel, ipt, load)
}
