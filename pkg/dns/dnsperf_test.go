package dns

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// dnsperfMix is the benchmark's query file: for each of n services a third
// A (the ClusterIP), a third SRV of its named port, a third NXDOMAIN, in
// dnsperf's "name type" format, interleaved.
func dnsperfMix(n int) []query {
	var out []query
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("ns%d", i%10)
		switch i % 3 {
		case 0:
			out = append(out, query{name: fmt.Sprintf("svc%d.%s.svc.cluster.local.", i, ns), qtype: miekg.TypeA})
		case 1:
			out = append(out, query{name: fmt.Sprintf("_http._tcp.svc%d.%s.svc.cluster.local.", i, ns), qtype: miekg.TypeSRV})
		default:
			out = append(out, query{name: fmt.Sprintf("nosuch%d.%s.svc.cluster.local.", i, ns), qtype: miekg.TypeA})
		}
	}
	return out
}

// unboundConfig is an Unbound configuration serving, as local-data of a
// static cluster.local zone, every record klab's server gives for the mix
// (answers, additional records, the SOA of its negative answers), on
// 127.0.0.1:port with the same number of threads as CPUs klab may use.
func unboundConfig(t testing.TB, s *Server, mix []query, dir string, port, threads int) string {
	t.Helper()
	rrs := map[string]bool{}
	for _, q := range mix {
		m, _ := ask(t, s, q)
		for _, sec := range [][]miekg.RR{m.Answer, m.Extra, m.Ns} {
			for _, rr := range sec {
				if rr.Header().Rrtype == miekg.TypeOPT {
					continue
				}
				rrs[strings.ReplaceAll(rr.String(), "\t", " ")] = true
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "server:\n  interface: 127.0.0.1@%d\n  port: %d\n  do-ip6: no\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n", port, port)
	fmt.Fprintf(&b, "  directory: %q\n  pidfile: %q\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: %d\n", dir, filepath.Join(dir, "unbound.pid"), threads)
	b.WriteString("  access-control: 127.0.0.0/8 allow\n  local-zone: \"cluster.local.\" static\n")
	keys := make([]string, 0, len(rrs))
	for k := range rrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  local-data: %q\n", k)
	}
	b.WriteString("remote-control:\n  control-enable: no\n")
	return b.String()
}

// dnsperfResult is what one dnsperf run measured.
type dnsperfResult struct {
	qps, p50, p99 float64 // queries/s, latency ms
	lost          int
}

var (
	reQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLost = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	// -v prints one line per answer: "> NOERROR name type latency".
	reAnswer = regexp.MustCompile(`(?m)^> \S+ \S+ \S+ ([0-9.]+)$`)
)

// runDnsperf runs dnsperf in namespace ns against 127.0.0.1:port for
// seconds, with clients and outstanding queries bounded, and parses its
// report; -v gives every answer's latency, for the percentiles.
func runDnsperf(t testing.TB, ns, file string, port, seconds int) dnsperfResult {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", file,
		"-l", strconv.Itoa(seconds), "-c", "8", "-T", "1", "-q", dnsperfOutstanding(), "-t", "2", "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("dnsperf: %v: %s", err, tail(out))
	}
	m := reQPS.FindSubmatch(out)
	if m == nil {
		t.Fatalf("dnsperf printed no rate: %s", tail(out))
	}
	var r dnsperfResult
	r.qps, _ = strconv.ParseFloat(string(m[1]), 64)
	if l := reLost.FindSubmatch(out); l != nil {
		r.lost, _ = strconv.Atoi(string(l[1]))
	}
	var lat []float64
	for _, a := range reAnswer.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(a[1]), 64)
		lat = append(lat, v*1000)
	}
	if len(lat) == 0 {
		t.Fatalf("dnsperf -v printed no latencies: %s", tail(out))
	}
	slices.Sort(lat)
	r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	return r
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}

// BenchmarkDNSPerf measures queries per second and latency with dnsperf
// (a mix of A, SRV and NXDOMAIN over UDP, 1,000 services) against klab's
// DNS server and, in the same run on the same machine, Unbound serving
// the same records as local-data. Both listen on 127.0.0.1 in one lab
// namespace (never the host's port 53), Unbound with as many threads as
// GOMAXPROCS; and, as the baseline of the UDP fast path, the same
// Server behind miekg/dns's own UDP server ("old-klab", how Serve ran UDP
// before udpfast.go). Rounds (KLAB_DNSPERF_ROUNDS, default 3, of
// KLAB_DNSPERF_SECONDS, default 3) go Unbound, klab, old klab in turn
// (logged one line per round with -v); each row
// reports its median round's qps, p50-ms and p99-ms (from dnsperf -v's
// per-answer latencies) and lost, and the klab row ratio (klab qps /
// Unbound qps; ≥ 1 means klab is at least as fast) and paired-ratio
// (the median of each round's klab/Unbound ratio).
// Needs root, dnsperf and unbound (scripts/install-deps.sh with
// KLAB_BENCH_DEPS=1); it skips with a sentence otherwise.
func BenchmarkDNSPerf(b *testing.B) {
	testutil.RequireRoot(b)
	for _, tool := range []string{"dnsperf", "unbound"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s: install it (Debian package %s; scripts/install-deps.sh with KLAB_BENCH_DEPS=1)", tool, tool)
		}
	}
	seconds := 3
	if v, err := strconv.Atoi(os.Getenv("KLAB_DNSPERF_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	ns := netns.Name(testutil.LabName(b, "dp"), "dnsperf")
	if _, err := netns.Ensure(ns); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { netns.Delete(ns) })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		b.Fatalf("lo up: %v: %s", err, out)
	}
	dir := b.TempDir()
	s := newServer(b, Config{}, labObjects(1000))
	mix := dnsperfMix(999)
	var qf strings.Builder
	for _, q := range mix {
		fmt.Fprintf(&qf, "%s %s\n", strings.TrimSuffix(q.name, "."), miekg.TypeToString[q.qtype])
	}
	file := filepath.Join(dir, "queries")
	if err := os.WriteFile(file, []byte(qf.String()), 0o644); err != nil {
		b.Fatal(err)
	}

	// klab's server, in this process, its socket in the namespace.
	const klabPort, unboundPort, oldPort = 5300, 5301, 5302
	// One UDP socket, as the coredns pods run it (cluster.listen53).
	var pc net.PacketConn
	if err := netns.Do(ns, func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", klabPort))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, s, pc, nil) }()
	b.Cleanup(func() { cancel(); <-done })
	// The old UDP path, the baseline of the fast path: miekg/dns's own
	// UDP server (a goroutine per datagram, one recvmsg and sendmsg each)
	// with the same Server as Handler, as Serve ran it before udpfast.go.
	var oldPC net.PacketConn
	if err := netns.Do(ns, func() (err error) {
		oldPC, err = net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", oldPort))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	old := &miekg.Server{PacketConn: oldPC, Handler: s, UDPSize: miekg.MaxMsgSize,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second}
	oldDone := make(chan error, 1)
	go func() { oldDone <- old.ActivateAndServe() }()
	b.Cleanup(func() { oldPC.Close(); <-oldDone })

	// Unbound, in the same namespace.
	conf := filepath.Join(dir, "unbound.conf")
	threads := max(1, runtimeProcs())
	if err := os.WriteFile(conf, []byte(unboundConfig(b, s, mix, dir, unboundPort, threads)), 0o644); err != nil {
		b.Fatal(err)
	}
	ub := exec.Command("ip", "netns", "exec", ns, "unbound", "-d", "-c", conf)
	var ubOut strings.Builder
	ub.Stdout, ub.Stderr = &ubOut, &ubOut
	if err := ub.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ub.Process.Kill(); ub.Wait() })
	for _, port := range []int{klabPort, unboundPort, oldPort} {
		if err := waitAnswer(ns, port, mix[0]); err != nil {
			b.Fatalf("server on port %d does not answer: %v\n%s", port, err, ubOut.String())
		}
	}
	// Both must give the same answers (rcode and answer records).
	for _, q := range mix[:30] {
		k, err1 := exchangeIn(ns, klabPort, q)
		u, err2 := exchangeIn(ns, unboundPort, q)
		if err1 != nil || err2 != nil || k.Rcode != u.Rcode || len(k.Answer) != len(u.Answer) {
			b.Fatalf("%s %s: klab %v (%v), unbound %v (%v)", q.name, miekg.TypeToString[q.qtype], k, err1, u, err2)
		}
	}

	// Rounds alternate Unbound and klab, so that load from elsewhere on
	// the machine falls on both alike; each reports its median round.
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("KLAB_DNSPERF_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	var ks, us, olds []dnsperfResult
	for range rounds {
		us = append(us, runDnsperf(b, ns, file, unboundPort, seconds))
		ks = append(ks, runDnsperf(b, ns, file, klabPort, seconds))
		olds = append(olds, runDnsperf(b, ns, file, oldPort, seconds))
	}
	for i := range ks {
		b.Logf("round %d: unbound %.0f q/s p99 %.2f ms, klab %.0f q/s p99 %.2f ms, old klab %.0f q/s p99 %.2f ms",
			i+1, us[i].qps, us[i].p99, ks[i].qps, ks[i].p99, olds[i].qps, olds[i].p99)
	}
	klab, unbound, oldKlab := median(ks), median(us), median(olds)
	report := func(b *testing.B, r dnsperfResult) {
		b.ReportMetric(r.qps, "qps")
		b.ReportMetric(r.p50, "p50-ms")
		b.ReportMetric(r.p99, "p99-ms")
		b.ReportMetric(float64(r.lost), "lost")
	}
	b.Run("unbound", func(b *testing.B) { report(b, unbound) })
	b.Run("klab", func(b *testing.B) {
		report(b, klab)
		b.ReportMetric(klab.qps/unbound.qps, "ratio")
		b.ReportMetric(pairedRatio(ks, us), "paired-ratio")
	})
	b.Run("old-klab", func(b *testing.B) {
		report(b, oldKlab)
		b.ReportMetric(oldKlab.qps/unbound.qps, "ratio")
		b.ReportMetric(pairedRatio(olds, us), "paired-ratio")
	})
}

// pairedRatio is the median over rounds of a's rate over b's in the same
// round: the two ran back to back, so load from elsewhere on the machine
// cancels more than in the ratio of the two medians.
func pairedRatio(a, b []dnsperfResult) float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = a[i].qps / b[i].qps
	}
	slices.Sort(r)
	return r[len(r)/2]
}

// median is the round with the median rate.
func median(rs []dnsperfResult) dnsperfResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b dnsperfResult) int { return cmp.Compare(a.qps, b.qps) })
	return s[len(s)/2]
}

func exchangeIn(ns string, port int, q query) (*miekg.Msg, error) {
	var c net.Conn
	if err := netns.Do(ns, func() (err error) {
		c, err = net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	m := new(miekg.Msg)
	m.SetQuestion(q.name, q.qtype)
	co := &miekg.Conn{Conn: c}
	co.SetDeadline(time.Now().Add(time.Second))
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

func waitAnswer(ns string, port int, q query) error {
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err = exchangeIn(ns, port, q); err == nil {
			return nil
		}
	}
	return err
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// dnsperfOutstanding is dnsperf's -q, the queries in flight: its default,
// 100, unless KLAB_DNSPERF_OUTSTANDING says otherwise.
func dnsperfOutstanding() string {
	if v, err := strconv.Atoi(os.Getenv("KLAB_DNSPERF_OUTSTANDING")); err == nil && v > 0 {
		return strconv.Itoa(v)
	}
	return "100"
}
