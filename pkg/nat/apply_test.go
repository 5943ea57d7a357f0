package nat

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and iptables rules in them")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("needs iptables-restore")
	}
}

// testLab returns a unique lab name with this package's test prefix.
func testLab(t testing.TB) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t-nat-" + hex.EncodeToString(b)
}

// testNS creates namespace klab.<lab>.<obj>, removed in Cleanup.
func testNS(t testing.TB, lab, obj string) string {
	t.Helper()
	ns := netns.Name(lab, obj)
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(ns); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ns
}

// inNS runs a command inside ns and returns its stdout.
func inNS(t testing.TB, ns string, args ...string) string {
	t.Helper()
	var out []byte
	err := netns.Do(ns, func() error {
		var err error
		out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
	}
	return string(out)
}

func labServices() []Service {
	return []Service{
		{Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080}, {Name: "dns", Protocol: UDP, Port: 53}},
			Endpoints: eps("10.244.1.5", "10.244.2.5", "10.244.3.5")},
		{Name: "sticky", ClusterIP: ip("10.96.0.11"), Affinity: AffinityClientIP, Ports: []ServicePort{{Port: 80, Protocol: UDP}}, Endpoints: eps("10.244.1.6")},
		{Name: "other", ClusterIP: ip("10.96.0.12"), Ports: []ServicePort{{Port: 80, Protocol: UDP}}, Endpoints: eps("10.244.1.7")},
		{Name: "empty", ClusterIP: ip("10.96.0.13"), Ports: []ServicePort{{Port: 80, NodePort: 30013}}},
	}
}

// savedChains parses iptables-save output: table -> chain -> rules.
func savedChains(t testing.TB, ns string, counters bool) map[Table]map[string][]string {
	out := map[Table]map[string][]string{}
	for _, tb := range tables {
		args := []string{"iptables-save", "-t", string(tb)}
		if counters {
			args = append(args, "-c")
		}
		m := map[string][]string{}
		for _, line := range strings.Split(inNS(t, ns, args...), "\n") {
			if strings.HasPrefix(line, ":") {
				name, _, _ := strings.Cut(line[1:], " ")
				m[name] = m[name][:0:0]
				continue
			}
			rest := line
			if counters && strings.HasPrefix(line, "[") {
				_, rest, _ = strings.Cut(line, "] ")
			}
			if strings.HasPrefix(rest, "-A ") {
				tok, _ := tokenize(rest)
				m[tok[1]] = append(m[tok[1]], line)
			}
		}
		out[tb] = m
	}
	return out
}

func TestApplyReadBack(t *testing.T) {
	needRoot(t)
	lab := testLab(t)
	ns := testNS(t, lab, "node")
	cfg := Config{Lab: lab, Flannel: &FlannelMasq{PodCIDR: pfx("10.244.1.0/24")}}
	r, err := Render(cfg, labServices())
	if err != nil {
		t.Fatal(err)
	}
	log := &plan.Applier{}
	res, err := testApply(log, ns, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.JumpsChecked != len(r.Jumps()) || len(res.Deleted) != 0 {
		t.Errorf("result %+v", res)
	}
	if !strings.Contains(log.Ran().String(), "ip netns exec "+ns+" iptables-restore --wait <<'EOF'" /* fresh namespace: no --noflush needed */) {
		t.Errorf("explain log lacks the restore: %q", log.Ran().String())
	}
	saved := savedChains(t, ns, false)
	total := 0
	for _, tb := range tables {
		for _, c := range r.Chains(tb) {
			want, _ := r.ChainRules(tb, c)
			got, ok := saved[tb][c]
			if !ok {
				t.Errorf("chain %s/%s missing in the kernel", tb, c)
				continue
			}
			// iptables rewrites rules (--or-mark becomes --set-xmark, -d
			// gains /32): compare the count and targets, then ask the
			// kernel with iptables -C whether each rendered rule exists.
			if len(got) != len(want) {
				t.Errorf("%s/%s: %d rules in the kernel, %d rendered", tb, c, len(got), len(want))
			}
			for i := range min(len(got), len(want)) {
				g, _ := tokenize(got[i])
				w, _ := tokenize(want[i])
				if jumpTarget(g) != jumpTarget(w) {
					t.Errorf("%s/%s rule %d: target %s, rendered %s", tb, c, i, jumpTarget(g), jumpTarget(w))
				}
			}
			for _, w := range want {
				tok, _ := tokenize(w)
				inNS(t, ns, append([]string{"iptables", "-w", "-t", string(tb), "-C"}, tok[1:]...)...)
			}
			total += len(want)
		}
	}
	for _, j := range r.Jumps() {
		inNS(t, ns, append([]string{"iptables", "-w", "-t", string(j.Table), "-C", j.Chain}, j.Rule...)...)
	}
	total += len(r.Jumps())
	// Every rule of the lab is found by its comment.
	all := inNS(t, ns, "iptables-save")
	if n := strings.Count(all, "klab:"+lab+" ") + strings.Count(all, `"klab:`+lab+`"`); n != total {
		t.Errorf("%d rules carry klab:%s, want %d", n, lab, total)
	}
	// Applying again with prev is a no-op.
	res, err = testApply(nil, ns, r, r)
	if err != nil || res.Input != "" || res.JumpsChecked != 0 {
		t.Errorf("re-apply: %+v, %v", res, err)
	}
	// Applying again without prev rewrites but does not duplicate jumps.
	if _, err := testApply(nil, ns, r, nil); err != nil {
		t.Fatal(err)
	}
	if got := savedChains(t, ns, false)[NAT]["PREROUTING"]; len(got) != 1 {
		t.Errorf("PREROUTING after second apply: %q", got)
	}
}

// setupUplink gives ns lo, a veth "eth0" 192.168.1.101/24 and a default
// route, so packets to ClusterIPs leave through the nat OUTPUT chain.
func setupUplink(t *testing.T, ns string) {
	t.Helper()
	h, err := netns.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// A veth pair with both ends in ns (this kernel has no dummy driver).
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}
	if err := h.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	p, err := h.LinkByName("eth0p")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(d, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 1, 101), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Gw: net.IPv4(192, 168, 1, 1)}); err != nil {
		t.Fatal(err)
	}
}

// sendUDP sends n datagrams, each from a new socket (a new conntrack entry,
// so each goes through the nat table), from inside ns.
func sendUDP(t *testing.T, ns, addr string, n int) {
	t.Helper()
	err := netns.Do(ns, func() error {
		for range n {
			c, err := net.Dial("udp4", addr)
			if err != nil {
				return err
			}
			c.Write([]byte("x"))
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

var counterRE = regexp.MustCompile(`^\[(\d+):\d+\]`)

func packets(line string) int {
	m := counterRE.FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestApplyRewritesOnlyChangedService(t *testing.T) {
	needRoot(t)
	lab := testLab(t)
	ns := testNS(t, lab, "node")
	setupUplink(t, ns)
	cfg := Config{Lab: lab}
	svcs := labServices()
	r1, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testApply(nil, ns, r1, nil); err != nil {
		t.Fatal(err)
	}
	// Traffic to "other" (10.96.0.12:80/udp) counts packets in its chains.
	sendUDP(t, ns, "10.96.0.12:80", 3)
	otherSVC := SVCChain("default/other", UDP)
	otherSEP := SEPChain("default/other", UDP, "10.244.1.7:80")
	before := savedChains(t, ns, true)
	if p := packets(before[NAT][otherSEP][1]); p != 3 {
		t.Fatalf("DNAT rule of %s counted %d packets, want 3: %q", otherSEP, p, before[NAT][otherSEP])
	}

	// Change the endpoints of "sticky" only.
	svcs[1].Endpoints = eps("10.244.1.6", "10.244.2.6")
	r2, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	log := &plan.Applier{}
	res, err := testApply(log, ns, r2, r1)
	if err != nil {
		t.Fatal(err)
	}
	stickySVC := SVCChain("default/sticky", UDP)
	newSEP := SEPChain("default/sticky", UDP, "10.244.2.6:80")
	slices.Sort(res.Rewritten)
	want := []string{"nat/" + newSEP, "nat/" + stickySVC}
	slices.Sort(want)
	if !slices.Equal(res.Rewritten, want) || len(res.Deleted) != 0 || res.JumpsChecked != 0 || len(log.Ran()) != 1 {
		t.Errorf("result %+v, log %d commands", res, len(log.Ran()))
	}
	after := savedChains(t, ns, true)
	// The kernel has the new endpoint...
	if got := after[NAT][stickySVC]; len(got) != 5 { // masq + 2 affinity + 2 balance
		t.Errorf("%s has %d rules: %q", stickySVC, len(got), got)
	}
	// ...and counters of every other chain survived: they were not rewritten.
	for _, c := range []string{otherSVC, otherSEP, "KUBE-SERVICES"} {
		if !slices.Equal(before[NAT][c], after[NAT][c]) {
			t.Errorf("chain %s changed:\nbefore %q\nafter  %q", c, before[NAT][c], after[NAT][c])
		}
	}
	if p := packets(after[NAT][otherSEP][1]); p != 3 {
		t.Errorf("counter of %s reset to %d", otherSEP, p)
	}

	// Remove "web": its chains are deleted, KUBE-SERVICES/NODEPORTS rewritten.
	r3, err := Render(cfg, svcs[1:])
	if err != nil {
		t.Fatal(err)
	}
	res, err = testApply(nil, ns, r3, r2)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 2+3*2+1 { // 2 SVC, 6 SEP, 1 EXT
		t.Errorf("deleted %q", res.Deleted)
	}
	final := savedChains(t, ns, false)
	for c := range final[NAT] {
		if _, ok := r3.ChainRules(NAT, c); ownedChain(c) && !ok {
			t.Errorf("stale chain %s left in the kernel", c)
		}
	}
}

func TestApplyWithoutPrevRemovesStale(t *testing.T) {
	needRoot(t)
	lab := testLab(t)
	ns := testNS(t, lab, "node")
	withFlannel := Config{Lab: lab, Flannel: &FlannelMasq{PodCIDR: pfx("10.244.1.0/24")}}
	r1, err := Render(withFlannel, labServices())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testApply(nil, ns, r1, nil); err != nil {
		t.Fatal(err)
	}
	// A "restarted" klab that lost r1: no flannel, one service.
	r2, err := Render(Config{Lab: lab}, labServices()[2:3])
	if err != nil {
		t.Fatal(err)
	}
	res, err := testApply(nil, ns, r2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Deleted, "nat/FLANNEL-POSTRTG") || !slices.Contains(res.Deleted, "filter/FLANNEL-FWD") {
		t.Errorf("deleted %q", res.Deleted)
	}
	saved := savedChains(t, ns, false)
	for _, tb := range tables {
		var want []string
		for c := range saved[tb] {
			if ownedChain(c) {
				want = append(want, c)
			}
		}
		got := r2.Chains(tb)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s chains in the kernel %q, want %q", tb, want, got)
		}
	}
	if strings.Contains(inNS(t, ns, "iptables-save"), "flanneld") {
		t.Error("flannel jumps left behind")
	}
}

func TestDelete(t *testing.T) {
	needRoot(t)
	lab := testLab(t)
	ns := testNS(t, lab, "node")
	// Someone else's rule in the namespace must survive.
	inNS(t, ns, "iptables", "-w", "-A", "FORWARD", "-s", "10.9.9.9", "-j", "ACCEPT")
	r, err := Render(Config{Lab: lab, Flannel: &FlannelMasq{PodCIDR: pfx("10.244.1.0/24")}}, labServices())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testApply(nil, ns, r, nil); err != nil {
		t.Fatal(err)
	}
	// Another lab's name must not match this lab's rules.
	if err := testDelete(nil, ns, lab+"x"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inNS(t, ns, "iptables-save"), "klab:"+lab) {
		t.Fatal("Delete of another lab removed this lab's rules")
	}
	log := &plan.Applier{}
	if err := testDelete(log, ns, lab); err != nil {
		t.Fatal(err)
	}
	all := inNS(t, ns, "iptables-save")
	if strings.Contains(all, "klab:") || strings.Contains(all, "KUBE-") || strings.Contains(all, "FLANNEL-") {
		t.Errorf("klab rules left after Delete:\n%s", all)
	}
	if !strings.Contains(all, "-A FORWARD -s 10.9.9.9/32 -j ACCEPT") {
		t.Errorf("foreign rule removed:\n%s", all)
	}
	if err := testDelete(nil, ns, lab); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if err := testDelete(nil, netns.Name(lab, "gone"), lab); err != nil {
		t.Errorf("Delete in a missing namespace: %v", err)
	}
}

func TestBackend(t *testing.T) {
	for in, want := range map[string]string{
		"iptables v1.8.9 (nf_tables)\n": "nf_tables",
		"iptables v1.8.7 (legacy)\n":    "legacy",
		"iptables v1.6.1\n":             "legacy",
	} {
		if got, err := parseBackend(in); got != want || err != nil {
			t.Errorf("parseBackend(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := parseBackend("nonsense"); err == nil {
		t.Error("no error for nonsense")
	}
	if _, err := exec.LookPath("iptables"); err == nil {
		if b, err := Backend(); err != nil || b == "" {
			t.Errorf("Backend() = %q, %v", b, err)
		}
	}
}

var _ = netip.Addr{}

// TestApplyBothBackends programs the same rules with iptables-nft and with
// iptables-legacy (chosen the way a distribution does: by which binary is
// first on PATH) and reads each back with that backend's own iptables-save:
// the rules must land in the backend in use, and only there.
func TestApplyBothBackends(t *testing.T) {
	needRoot(t)
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			dir := t.TempDir()
			for _, tool := range []string{"iptables", "iptables-save", "iptables-restore"} {
				real, err := exec.LookPath(strings.Replace(tool, "iptables", "iptables-"+backend, 1))
				if err != nil {
					t.Skipf("no %s backend installed: %v", backend, err)
				}
				if err := os.Symlink(real, dir+"/"+tool); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
			got, err := Backend()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]string{"nft": "nf_tables", "legacy": "legacy"}[backend]; got != want {
				t.Errorf("Backend() = %q with iptables-%s first on PATH, want %q", got, backend, want)
			}
			lab := testLab(t)
			ns := testNS(t, lab, "node1")
			cfg := Config{Lab: lab, Flannel: &FlannelMasq{PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}}
			rs, err := Render(cfg, labServices())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testApply(nil, ns, rs, nil); err != nil {
				t.Fatal(err)
			}
			other := map[string]string{"nft": "legacy", "legacy": "nft"}[backend]
			mine := inNS(t, ns, "iptables-"+backend+"-save")
			theirs := inNS(t, ns, "iptables-"+other+"-save")
			for _, want := range []string{"-A KUBE-SERVICES -d 10.96.0.10/32", "-A PREROUTING -m comment --comment \"klab:" + lab, "-A FLANNEL-POSTRTG"} {
				if !strings.Contains(mine, want) {
					t.Errorf("iptables-%s-save lacks %q", backend, want)
				}
				if strings.Contains(theirs, want) {
					t.Errorf("iptables-%s-save shows %q, written through %s", other, want, backend)
				}
			}
			// A change and the removal work through the same backend.
			if _, err := testApply(nil, ns, mustRender(t, cfg, labServices()[:1]), rs); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(inNS(t, ns, "iptables-"+backend+"-save"), "10.96.0.11") {
				t.Error("service sticky's rules survived its removal")
			}
			if err := testDelete(nil, ns, lab); err != nil {
				t.Fatal(err)
			}
			if left := inNS(t, ns, "iptables-"+backend+"-save"); strings.Contains(left, "klab:") {
				t.Errorf("Delete left klab rules:\n%s", left)
			}
		})
	}
}

func mustRender(t testing.TB, cfg Config, svcs []Service) *Ruleset {
	t.Helper()
	rs, err := Render(cfg, svcs)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
