package dns

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// serveIn opens UDP and TCP sockets on addr inside the namespace and
// serves h on them until the test ends.
func serveIn(t *testing.T, ns, addr string, h interface {
	Serve(context.Context, net.PacketConn, net.Listener) error
}) {
	t.Helper()
	var pc net.PacketConn
	var l net.Listener
	err := netns.Do(ns, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		if l, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx, pc, l) }()
	t.Cleanup(func() {
		start := time.Now()
		cancel()
		defer func() {
			if d := time.Since(start); d > time.Second {
				t.Logf("stopping the server on %s took %v", addr, d)
			}
		}()
		if err := <-done; err != nil {
			t.Errorf("Serve %s: %v", addr, err)
		}
	})
}

// dig is one run of the real dig inside the namespace.
type digResult struct {
	out       string
	status    string
	answer    []string
	authority []string
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

func dig(t *testing.T, ns string, args ...string) digResult {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "dig", "@127.0.0.1", "+time=2", "+tries=1"}, args...)...)
	start := time.Now()
	b, err := cmd.CombinedOutput()
	if d := time.Since(start); d > time.Second {
		t.Logf("dig %s took %v", strings.Join(args, " "), d)
	}
	out := string(b)
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	r := digResult{out: out}
	if m := digStatus.FindStringSubmatch(out); m != nil {
		r.status = m[1]
	}
	var sect *[]string
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION:"):
			sect = &r.answer
		case strings.HasPrefix(line, ";; AUTHORITY SECTION:"):
			sect = &r.authority
		case line == "" || strings.HasPrefix(line, ";"):
			sect = nil
		case sect != nil:
			*sect = append(*sect, strings.Join(strings.Fields(line), " "))
		}
	}
	return r
}

// TestDig serves the fixture lab on 127.0.0.1:53 inside a throwaway
// namespace, with an Authority for example.test on 127.0.0.2:53 as its
// upstream, and asks the real dig (and glibc, through getent) for every
// kind of record.
func TestDig(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig to query the server as an independent client (apt-get install bind9-dnsutils)")
	}
	ns := netns.Name(testutil.LabName(t, "dnst"), "dns")
	start := time.Now()
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("creating namespace %s took %v (the kernel serialises namespace creation and cleanup)", ns, d)
	}
	h, err := netns.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	h.Close()
	if err != nil {
		t.Fatal(err)
	}

	serveIn(t, ns, "127.0.0.2:53", exampleAuthority(t))
	s := newServer(t, Config{Upstream: "127.0.0.2:53", Dial: DialIn(ns)}, fixture())
	serveIn(t, ns, "127.0.0.1:53", s)

	check := func(r digResult, status string, answer ...string) {
		t.Helper()
		if r.status != status || strings.Join(r.answer, "\n") != strings.Join(answer, "\n") {
			t.Errorf("dig: status %s, answer\n  %s\nwant %s\n  %s\n%s", r.status, strings.Join(r.answer, "\n  "), status, strings.Join(answer, "\n  "), r.out)
		}
	}
	check(dig(t, ns, "web.default.svc.cluster.local", "A"), "NOERROR",
		"web.default.svc.cluster.local. 5 IN A 10.96.0.20")
	check(dig(t, ns, "_mysql._tcp.db.default.svc.cluster.local", "SRV"), "NOERROR",
		"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 db-0.db.default.svc.cluster.local.",
		"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 db-1.db.default.svc.cluster.local.",
		"_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 13306 10-244-2-8.db.default.svc.cluster.local.")
	check(dig(t, ns, "-x", "10.96.0.20"), "NOERROR",
		"20.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local.")
	check(dig(t, ns, "dns-version.cluster.local", "TXT"), "NOERROR",
		`dns-version.cluster.local. 5 IN TXT "1.1.0"`)
	r := dig(t, ns, "nope.default.svc.cluster.local", "A")
	check(r, "NXDOMAIN")
	if len(r.authority) != 1 || !strings.HasPrefix(r.authority[0], "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local.") {
		t.Errorf("NXDOMAIN authority %q, want the zone's SOA", r.authority)
	}

	r = dig(t, ns, "+tcp", "web.default.svc.cluster.local", "A")
	check(r, "NOERROR", "web.default.svc.cluster.local. 5 IN A 10.96.0.20")
	if !strings.Contains(r.out, "(TCP)") {
		t.Errorf("+tcp: dig did not say it used TCP:\n%s", r.out)
	}

	// 100 endpoints do not fit dig's 1232-byte EDNS0 buffer: TC, and dig
	// asks again over TCP and gets them all.
	r = dig(t, ns, "many.default.svc.cluster.local", "A")
	if !strings.Contains(r.out, "Truncated, retrying in TCP mode") || len(r.answer) != 100 || r.status != "NOERROR" {
		t.Errorf("large answer: want truncation, a TCP retry and 100 answers; got %d answers:\n%s", len(r.answer), r.out)
	}

	// Outside the zone: forwarded to the example.test authority.
	check(dig(t, ns, "www.example.test", "A"), "NOERROR", "www.example.test. 300 IN A 203.0.113.10")
	check(dig(t, ns, "+tcp", "www.example.test", "A"), "NOERROR", "www.example.test. 300 IN A 203.0.113.10")
	check(dig(t, ns, "ext.default.svc.cluster.local", "A"), "NOERROR",
		"ext.default.svc.cluster.local. 5 IN CNAME www.example.test.",
		"www.example.test. 300 IN A 203.0.113.10")
	check(dig(t, ns, "elsewhere.invalid", "A"), "REFUSED")

	// A change in the lab is answered at once.
	o := fixture()
	o.ServiceList = append(o.ServiceList, Service{Namespace: "default", Name: "late", ClusterIP: ip("10.96.0.77")})
	if err := s.Update(o); err != nil {
		t.Fatal(err)
	}
	check(dig(t, ns, "late.default.svc.cluster.local", "A"), "NOERROR", "late.default.svc.cluster.local. 5 IN A 10.96.0.77")

	// glibc's resolver with the kubelet's resolv.conf, through iproute2's
	// /etc/netns/<name>/resolv.conf: short names through the search list.
	if _, err := exec.LookPath("getent"); err != nil {
		return
	}
	dir := filepath.Join("/etc/netns", ns)
	_, err = os.Stat("/etc/netns")
	made := os.IsNotExist(err)
	t.Cleanup(func() {
		os.RemoveAll(dir)
		if made {
			os.Remove("/etc/netns") // only if empty: another lab's stays
		}
	})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]string{
		"web":              {"10.96.0.20", "web.default.svc.cluster.local"},
		"web.ns2":          {"10.96.0.30", "web.ns2.svc.cluster.local"},
		"db-0.db":          {"10.244.1.5", "db-0.db.default.svc.cluster.local"},
		"www.example.test": {"203.0.113.10", "www.example.test"},
	} {
		// "hosts", not "ahosts": getaddrinfo's AI_ADDRCONFIG finds no
		// IPv4 address but loopback here and would return nothing.
		start := time.Now()
		out, err := exec.Command("ip", "netns", "exec", ns, "getent", "hosts", name).CombinedOutput()
		if d := time.Since(start); d > time.Second {
			t.Logf("getent hosts %s took %v", name, d)
		}
		got := strings.Fields(string(out))
		if err != nil || len(got) < 2 || got[0] != want[0] || got[1] != want[1] {
			t.Errorf("getent hosts %s: %v\n%s\nwant %s %s", name, err, out, want[0], want[1])
		}
	}
}
