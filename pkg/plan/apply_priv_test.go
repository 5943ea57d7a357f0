package plan_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// vtep plans a namespace with an uplink bridge (holding an address, so
// onlink gateways are accepted) and a flannel.1 on it.
func vtep(ns string) plan.Plan {
	return plan.Plan{
		{Verb: plan.NetnsAdd, NS: ns, New: true},
		{Verb: plan.LinkAdd, NS: ns, New: true, Link: &plan.Link{Name: "eth0", Type: "bridge", Up: true}},
		{Verb: plan.AddrAdd, NS: ns, Addr: &plan.Addr{Dev: "eth0", Prefix: netip.MustParsePrefix("192.168.1.101/24")}},
		{Verb: plan.LinkAdd, NS: ns, New: true, Link: &plan.Link{Name: "flannel.1", Type: "vxlan", VNI: 1, Local: netip.MustParseAddr("192.168.1.101"), Dev: "eth0", Port: 8472, MTU: 1450}},
		{Verb: plan.LinkSetUp, NS: ns, Link: &plan.Link{Name: "flannel.1"}},
	}
}

// peers plans n peers' ARP, FDB and route entries (the batchable kind).
func peers(ns string, n int) plan.Plan {
	var p plan.Plan
	for i := range n {
		mac := net.HardwareAddr{0x0a, 0, 0, 0, byte(i >> 8), byte(i)}
		gw := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		p.Add(
			plan.Op{Verb: plan.NeighReplace, NS: ns, Neigh: &plan.Neigh{Dev: "flannel.1", IP: gw, MAC: mac}},
			plan.Op{Verb: plan.FDBReplace, NS: ns, Neigh: &plan.Neigh{Dev: "flannel.1", IP: netip.AddrFrom4([4]byte{192, 168, 2, byte(i)}), MAC: mac}},
			plan.Op{Verb: plan.RouteReplace, NS: ns, Route: &plan.Route{Dst: netip.PrefixFrom(gw, 32), Gw: gw, Dev: "flannel.1", Onlink: true}})
	}
	return p
}

func count(t *testing.T, args ...string) int {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).Output()
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	var v []json.RawMessage
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return len(v)
}

// Neighbour, FDB and route operations go to the kernel in batches (300
// peers: 900 requests in a few sendmsg calls) and leave exactly the
// entries one request each would; read back with ip and bridge. A failed
// request in a batch is named by its command.
func TestBatchedEntries(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "plb")
	ns := netns.Name(lab, "node1")
	var a plan.Applier
	defer a.Close()
	if err := a.Apply(append(vtep(ns), peers(ns, 300)...)); err != nil {
		t.Fatal(err)
	}
	if n := count(t, "ip", "-j", "-n", ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent"); n != 300 {
		t.Errorf("%d neighbour entries, want 300", n)
	}
	if n := count(t, "bridge", "-j", "-n", ns, "fdb", "show", "dev", "flannel.1"); n != 300 {
		t.Errorf("%d FDB entries, want 300", n)
	}
	if n := count(t, "ip", "-j", "-n", ns, "route", "show", "dev", "flannel.1"); n != 300 {
		t.Errorf("%d routes, want 300", n)
	}
	// The read-back State sees them all, and the same plan is now a no-op.
	st, err := a.Read(ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Neighs) != 300 || len(st.FDB) != 300 {
		t.Errorf("state: %d neighbours, %d FDB entries", len(st.Neighs), len(st.FDB))
	}
	bad := peers(ns, 3)
	bad[5].Route = &plan.Route{Dst: netip.MustParsePrefix("10.99.0.0/16"), Gw: netip.MustParseAddr("172.16.0.1"), Dev: "flannel.1"} // not onlink: unreachable
	err = a.Apply(bad)
	if err == nil || !strings.Contains(err.Error(), "route replace 10.99.0.0/16 via 172.16.0.1 dev flannel.1") || !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("err = %v, want the failing route named, ENETUNREACH", err)
	}
}

// RollbackTo removes what an apply created — namespaces with everything
// inside them, devices created in namespaces that existed before — and
// leaves what existed before alone.
func TestRollback(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "plr")
	old, fresh := netns.Name(lab, "old"), netns.Name(lab, "new")
	var a plan.Applier
	defer a.Close()
	if err := a.Apply(vtep(old)); err != nil {
		t.Fatal(err)
	}
	mark := a.Mark()
	p := plan.Plan{
		{Verb: plan.NetnsAdd, NS: fresh, New: true},
		{Verb: plan.LinkAdd, NS: old, New: true, Link: &plan.Link{Name: "veth-x", Type: "veth", Up: true, PeerName: "eth0", PeerNS: fresh}},
		{Verb: plan.LinkAdd, NS: old, New: true, Link: &plan.Link{Name: "cni0", Type: "bridge"}},
		{Verb: plan.LinkAdd, NS: old, New: true, Link: &plan.Link{Name: "cni0", Type: "bridge"}}, // EEXIST
	}
	err := a.Apply(p)
	if !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("err = %v, want EEXIST", err)
	}
	if err := a.RollbackTo(mark); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(fresh) {
		t.Error("the namespace this apply created is still there")
	}
	out, _ := exec.Command("ip", "-n", old, "-br", "link").Output()
	if s := string(out); strings.Contains(s, "veth-x") || strings.Contains(s, "cni0") || !strings.Contains(s, "flannel.1") {
		t.Errorf("links after rollback:\n%s", s)
	}
	undo := a.Ran().String()
	if !strings.Contains(undo, "ip -n "+old+" link del cni0") || !strings.Contains(undo, "ip netns del "+fresh) {
		t.Errorf("the undo operations are not recorded:\n%s", undo)
	}
}

// A dry run records the plan and changes nothing.
func TestDryRunChangesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.LabName(t, "pld")
	ns := netns.Name(lab, "node1")
	a := plan.Applier{DryRun: true}
	if err := a.Apply(vtep(ns)); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(ns) {
		t.Fatal("a dry run created a namespace")
	}
	if got := len(a.Ran()); got != len(vtep(ns)) {
		t.Errorf("recorded %d operations, want %d", got, len(vtep(ns)))
	}
}

// An IPSet operation runs `ipset restore` inside its namespace: the sets
// exist there and nowhere else, and a rule loaded after them can name them.
func TestIPSetRestoreInsideNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("ipset"); err != nil {
		t.Skip("needs ipset (scripts/install-deps.sh installs it)")
	}
	ns := netns.Name(testutil.LabName(t, "t-ipset"), "node1")
	a := &plan.Applier{}
	defer a.Close()
	p := plan.Plan{
		{Verb: plan.NetnsAdd, NS: ns, New: true},
		{Verb: plan.IPSet, NS: ns, Sets: "create KLAB-T-S hash:net family inet -exist\nadd KLAB-T-S 10.0.0.0/8\nadd KLAB-T-S 10.1.0.0/16 nomatch\n"},
		{Verb: plan.Restore, NS: ns, Rules: &plan.Rules{NoFlush: true, Input: "*filter\n:KLAB-T - [0:0]\n-A KLAB-T -m set --match-set KLAB-T-S src -j RETURN\nCOMMIT\n"}},
	}
	if err := a.Apply(p); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "ipset", "list", "KLAB-T-S").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.1.0.0/16 nomatch") {
		t.Fatalf("ipset list inside %s: %v\n%s", ns, err, out)
	}
	if out, _ := exec.Command("ipset", "list", "-n").CombinedOutput(); strings.Contains(string(out), "KLAB-T-S") {
		t.Fatalf("the set leaked into the host's namespace:\n%s", out)
	}
	// A failing input is an error naming the command and ipset's message.
	err = a.Apply(plan.Plan{{Verb: plan.IPSet, NS: ns, Sets: "add KLAB-T-NONE 10.0.0.1\n"}})
	if err == nil || !strings.Contains(err.Error(), "ipset restore") {
		t.Fatalf("bad input: %v", err)
	}
}
