package main

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
)

// BenchmarkMultiMachine measures a lab across two simulated machines
// (internal/testutil.Machines) against the same thing on one machine, in
// the same run:
//
//   - join-ms: token create on m1 plus join on m2 plus m2's first node,
//     beside first-node-ms, m1's first node (which starts etcd);
//   - pod add on a node of the same machine (local-pod-ms) and on the other
//     machine's node (remote-pod-ms: the Pod object written, built by m2's
//     machine agent, its status read back), and their ratio;
//   - ping round trips between pods on two nodes of one machine (rtt-same-us)
//     and on two machines (rtt-cross-us: the stitch's second VXLAN
//     wrapping and the machines' LAN), medians of 50, and their ratio.
//
// Run it with -benchtime 5x.
func BenchmarkMultiMachine(b *testing.B) {
	testutil.RequireRoot(b)
	klab := testutil.Klab(b)
	ms := testutil.Machines(b, "mb", 2)
	m1, m2 := ms[0], ms[1]
	lab := fmt.Sprintf("mb-%06x", rand.IntN(1<<24))
	b.Cleanup(func() {
		m2.Try(klab, "destroy", "--lab", lab)
		m1.Try(klab, "destroy", "--lab", lab)
	})
	k := func(m *testutil.Machine, args ...string) (string, time.Duration) {
		b.Helper()
		t0 := time.Now()
		out := m.Run(klab, append(args, "--lab", lab)...)
		return out, time.Since(t0)
	}
	_, first := k(m1, "node", "add", "node1", "--control-plane", "etcd", "--underlay-mtu", "1450")
	k(m1, "node", "add", "node1b")
	t0 := time.Now()
	line, _ := k(m1, "token", "create", "--name", "m1")
	m2.Run(klab, append(strings.Fields(strings.TrimSpace(line))[1:], "--name", "m2")...)
	k(m2, "node", "add", "node2")
	join := time.Since(t0)
	podIP := func(out string) string { return strings.Fields(out)[2] }
	k(m1, "pod", "add", "src", "--node", "node1")
	out, _ := k(m1, "pod", "add", "same", "--node", "node1b")
	same := podIP(out)
	out, _ = k(m2, "pod", "add", "cross", "--node", "node2")
	cross := podIP(out)
	rtt := regexp.MustCompile(`time=([0-9.]+) ms`)
	median := func(to string) float64 {
		out := m1.Run("ip", "netns", "exec", "klab."+lab+".src", "ping", "-c", "50", "-i", "0.01", "-W", "1", to)
		var v []float64
		for _, m := range rtt.FindAllStringSubmatch(out, -1) {
			f, _ := strconv.ParseFloat(m[1], 64)
			v = append(v, f*1000)
		}
		if len(v) == 0 {
			b.Fatalf("no replies from %s:\n%s", to, out)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	var local, remote []float64
	var rttSame, rttCross []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, d := k(m1, "pod", "add", fmt.Sprintf("l%d", i), "--node", "node1b")
		local = append(local, float64(d.Microseconds())/1000)
		_, d = k(m1, "pod", "add", fmt.Sprintf("r%d", i), "--node", "node2")
		remote = append(remote, float64(d.Microseconds())/1000)
		rttSame = append(rttSame, median(same))
		rttCross = append(rttCross, median(cross))
	}
	b.StopTimer()
	med := func(v []float64) float64 {
		sort.Float64s(v)
		return v[len(v)/2]
	}
	b.ReportMetric(float64(first.Milliseconds()), "first-node-ms")
	b.ReportMetric(float64(join.Milliseconds()), "join-ms")
	b.ReportMetric(med(local), "local-pod-ms")
	b.ReportMetric(med(remote), "remote-pod-ms")
	b.ReportMetric(med(remote)/med(local), "pod-ratio")
	b.ReportMetric(med(rttSame), "rtt-same-us")
	b.ReportMetric(med(rttCross), "rtt-cross-us")
	b.ReportMetric(med(rttCross)/med(rttSame), "rtt-ratio")
}
