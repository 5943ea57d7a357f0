package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
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
	"github.com/klab-dev/klab/pkg/calico"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/probe"
)

// calicoLab builds a calico lab of n nodes (192.168.1.101...) with a short
// graceful-restart time (2 s: a test waits for it) and the pods given as
// {name, node}.
func calicoLab(t testing.TB, n int, pods [][2]string) *Cluster {
	return calicoLabWith(t, CalicoSettings{GracefulRestart: 2}, n, pods)
}

// calicoLabWith is calicoLab with other settings.
func calicoLabWith(t testing.TB, s CalicoSettings, n int, pods [][2]string) *Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	if err := checkBird(); err != nil {
		t.Skip(err)
	}
	lab := testutil.LabName(t, "ca")
	state, err := os.MkdirTemp("", "ca")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(state, lab, &Options{Backend: BackendCalico, Calico: s}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
		os.RemoveAll(state)
	})
	var spec Spec
	for i := range n {
		spec.Nodes = append(spec.Nodes, NodeSpec{Name: fmt.Sprintf("node%d", i+1)})
	}
	for _, p := range pods {
		spec.Pods = append(spec.Pods, PodSpec{Name: p[0], Node: p[1]})
	}
	if _, _, err := c.Build(spec); err != nil {
		t.Fatal(err)
	}
	return c
}

// ipJSON runs `ip -j ARGS` in an object's namespace.
func ipJSON(t testing.TB, c *Cluster, obj string, args ...string) []map[string]any {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", c.NS(obj), "-j"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ip %v in %s: %v", args, obj, err)
	}
	var v []map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return v
}

// routes is `ip route` of an object, one line per route (iproute2's own
// text, an independent reading of the kernel).
func routes(t testing.TB, c *Cluster, obj string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", c.NS(obj), "route", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return lines
}

// waitRoutes waits until every node has a route to every other node's
// blocks via that node, proto bird.
func waitRoutes(t testing.TB, c *Cluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		missing := ""
		for _, n := range c.Lab.Nodes {
			rs := routes(t, c, n.Name)
			for _, o := range c.Lab.Nodes {
				for _, b := range o.Blocks {
					want := fmt.Sprintf("%s via %s dev eth0 proto bird", b, o.IP)
					if o == n {
						want = fmt.Sprintf("blackhole %s proto bird", b)
					}
					if !slices.Contains(rs, want) {
						missing = n.Name + ": " + want
					}
				}
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, no route %s", timeout, missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func birdc(t testing.TB, sock string, args ...string) string {
	t.Helper()
	out, err := exec.Command("birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("birdc %v: %v: %s", args, err, out)
	}
	return string(out)
}

var establishedRe = regexp.MustCompile(`(?m)^(Mesh_\S+)\s+BGP\s+\S+\s+up\s+\S+\s+Established`)

// TestCalicoKernelState builds two calico nodes and reads the result back
// with ip, sysctl, birdc and tshark: the pods' /32s and 169.254.1.1, the
// cali veths with no bridge, Felix's routes and static ARP entries, the
// blackholed blocks and the peers' blocks by BGP, real traffic with TTL 62
// and no encapsulation, and a Service.
func TestCalicoKernelState(t *testing.T) {
	t.Parallel()
	c := calicoLab(t, 2, [][2]string{{"pod-a", "node1"}, {"pod-b", "node1"}, {"pod-c", "node2"}})
	waitRoutes(t, c, 15*time.Second)
	n1, n2 := c.Lab.Node("node1"), c.Lab.Node("node2")
	if n1.Blocks[0] != netip.MustParsePrefix("10.244.0.0/26") || n2.Blocks[0] != netip.MustParsePrefix("10.244.0.64/26") {
		t.Errorf("blocks: node1 %v, node2 %v", n1.Blocks, n2.Blocks)
	}
	// No bridge on a calico node.
	if br := ipJSON(t, c, "node1", "link", "show", "type", "bridge"); len(br) != 0 {
		t.Errorf("node1 has bridges: %v", br)
	}
	// --cni (flannel's bridge chain) is refused in one sentence and
	// creates no pod namespace.
	if _, err := c.AddPodCNI(PodSpec{Name: "pod-cni", Node: "node1"}); err == nil || !strings.Contains(err.Error(), "drop --cni") {
		t.Errorf("AddPodCNI on calico: %v", err)
	}
	if _, err := os.Stat("/run/netns/" + c.NS("pod-cni")); err == nil {
		t.Error("a refused --cni pod left its namespace")
	}
	for _, p := range c.Lab.Pods {
		veth := calico.VethName("default", p.Name)
		if p.HostVeth != veth || !strings.HasPrefix(veth, "cali") || len(veth) != 15 {
			t.Errorf("pod %s host veth %q, want %q", p.Name, p.HostVeth, veth)
		}
		links := ipJSON(t, c, p.Node, "link", "show", "dev", veth)
		if len(links) != 1 || links[0]["address"] != "ee:ee:ee:ee:ee:ee" || links[0]["master"] != nil {
			t.Errorf("%s: %v", veth, links)
		}
		for _, kv := range calico.HostSysctls(veth) {
			out, err := exec.Command("ip", "netns", "exec", c.NS(p.Node), "sysctl", "-n", strings.ReplaceAll(kv[0], "/", ".")).Output()
			if err != nil || strings.TrimSpace(string(out)) != kv[1] {
				t.Errorf("sysctl %s = %q (%v), want %s", kv[0], out, err, kv[1])
			}
		}
		rs := routes(t, c, p.Node)
		if want := p.IP.String() + " dev " + veth + " scope link"; !slices.Contains(rs, want) {
			t.Errorf("node %s has no route %q: %v", p.Node, want, rs)
		}
		nb := ipJSON(t, c, p.Node, "neigh", "show", "dev", veth)
		mac := MAC(c.Lab.Name, p.Name, "eth0").String()
		if len(nb) != 1 || nb[0]["dst"] != p.IP.String() || nb[0]["lladdr"] != mac || !slices.Contains(anyStrings(nb[0]["state"]), "PERMANENT") {
			t.Errorf("node %s neighbours on %s: %v, want %s %s PERMANENT", p.Node, veth, nb, p.IP, mac)
		}
		addrs := ipJSON(t, c, p.Name, "addr", "show", "dev", "eth0")
		ai := addrs[0]["addr_info"].([]any)
		var v4 []string
		for _, a := range ai {
			m := a.(map[string]any)
			if m["family"] == "inet" {
				v4 = append(v4, fmt.Sprintf("%s/%v", m["local"], m["prefixlen"]))
			}
		}
		if len(v4) != 1 || v4[0] != p.IP.String()+"/32" {
			t.Errorf("pod %s eth0 addresses %v, want %s/32", p.Name, v4, p.IP)
		}
		prs := routes(t, c, p.Name)
		if !slices.Equal(prs, []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"}) {
			t.Errorf("pod %s routes %q", p.Name, prs)
		}
	}
	// Every mesh session Established, as birdc sees it.
	for _, n := range c.Lab.Nodes {
		out := birdc(t, c.BirdSocket(n.Name), "show", "protocols")
		got := establishedRe.FindAllStringSubmatch(out, -1)
		if len(got) != len(c.Lab.Nodes)-1 {
			t.Errorf("node %s: %d Established mesh sessions, want %d:\n%s", n.Name, len(got), len(c.Lab.Nodes)-1, out)
		}
	}
	// Real traffic: same node (one routed hop, TTL 63), cross node (two,
	// TTL 62) with a capture on node2's eth0 showing the pods' own
	// addresses and no UDP tunnel.
	a, b, cc := c.Lab.Pod("pod-a"), c.Lab.Pod("pod-b"), c.Lab.Pod("pod-c")
	ping := func(from *Pod, to netip.Addr) string {
		out, err := exec.Command("ip", "netns", "exec", c.NS(from.Name), "ping", "-c", "2", "-i", "0.2", "-W", "2", to.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ping %s -> %s: %v: %s", from.Name, to, err, out)
		}
		return string(out)
	}
	if out := ping(a, b.IP); !strings.Contains(out, "ttl=63") {
		t.Errorf("same-node ping: %s", out)
	}
	capture := exec.Command("ip", "netns", "exec", c.NS("node2"), "tshark", "-n", "-i", "eth0", "-a", "duration:20", "-c", "2",
		"-f", "icmp or udp port 4789 or udp port 8472", "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto", "-e", "udp.dstport")
	var capOut strings.Builder
	capture.Stdout = &capOut
	startCapture(t, capture)
	if out := ping(a, cc.IP); !strings.Contains(out, "ttl=62") {
		t.Errorf("cross-node ping: %s", out)
	}
	capture.Wait()
	lines := strings.Split(strings.TrimSpace(capOut.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("capture on node2 eth0: %q", capOut.String())
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 3 || f[2] != "1" || (f[0] != a.IP.String() && f[0] != cc.IP.String()) {
			t.Errorf("captured %q: want plain ICMP between %s and %s, no UDP tunnel", l, a.IP, cc.IP)
		}
	}
	// Pod to Service: iptables DNAT on node1 to pod-c, routed by BGP.
	l, err := probe.Listen(c.NS("pod-c"), ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go probe.ServeHTTP(ctx, l, "pod-c")
	svc, err := c.AddService(ServiceSpec{Name: "web", Ports: []nat.ServicePort{{Port: 80, TargetPort: 8080}}, Endpoints: []string{"pod-c"}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := probe.Get(ctx, probe.Client(c.NS("pod-a"), 2*time.Second), "http://"+svc.ClusterIP.String()+"/")
	if err != nil || probe.FirstLine(body) != "pod-c" {
		t.Errorf("pod-a -> %s: %q, %v", svc.ClusterIP, body, err)
	}
}

func anyStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, s := range l {
			out = append(out, fmt.Sprint(s))
		}
	}
	return out
}

// TestCalicoGracefulRestart stops node2's BIRD as a crash would: node1
// keeps node2's block for the graceful-restart time (2 s here), then
// withdraws it; started again, the route comes back.
func TestCalicoGracefulRestart(t *testing.T) {
	t.Parallel()
	c := calicoLab(t, 2, nil)
	waitRoutes(t, c, 15*time.Second)
	// BIRD keeps a failed peer's routes only once the session's protocol
	// is up (bgp_sock_err: gr_ready && proto_state == PS_UP), which on a
	// loaded machine can lag the routes reaching the kernel.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := exec.Command(BirdcBinary, "-s", c.BirdSocket("node1"), "show", "protocols").CombinedOutput()
		if bgpUp(string(out)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node1's BGP sessions are not all up and Established:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	n2 := c.Lab.Node("node2")
	want := fmt.Sprintf("%s via %s dev eth0 proto bird", n2.Blocks[0], n2.IP)
	if err := c.SetBGP("node2", false); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if c.BirdPID("node2") != 0 {
		t.Fatal("node2's BIRD still runs")
	}
	time.Sleep(500 * time.Millisecond)
	if !slices.Contains(routes(t, c, "node1"), want) {
		t.Errorf("node1 dropped %q at once: graceful restart should keep it for 2 s", want)
	}
	gone := time.Duration(0)
	for time.Since(stopped) < 10*time.Second {
		if !slices.Contains(routes(t, c, "node1"), want) {
			gone = time.Since(stopped)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if gone == 0 {
		t.Fatalf("node1 still has %q 10 s after node2's BIRD stopped (graceful restart 2 s)", want)
	}
	t.Logf("node2's block withdrawn on node1 %.2f s after its BIRD stopped (graceful-restart time 2 s)", gone.Seconds())
	// The node's own blackhole stays in its kernel (protocol kernel: persist).
	if !slices.Contains(routes(t, c, "node2"), "blackhole "+n2.Blocks[0].String()+" proto bird") {
		t.Errorf("node2 lost its blackhole route: %v", routes(t, c, "node2"))
	}
	if err := c.SetBGP("node2", true); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, c, 15*time.Second)
}

// TestCalicoExternalPeer starts a BIRD of the test's own in a namespace on
// the underlay (192.168.1.250, AS 64513), makes it every node's global BGP
// peer, and checks with its birdc that it learns exactly the pod blocks;
// a node that claims a second block announces it too.
func TestCalicoExternalPeer(t *testing.T) {
	t.Parallel()
	c := calicoLabWith(t, CalicoSettings{GracefulRestart: 2, BlockSize: 30}, 2, nil)
	router := c.NS("router")
	if _, err := netns.Ensure(router); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, args := range [][]string{
		{"-n", c.NS(UnderlayName), "link", "add", "router", "type", "veth", "peer", "name", "eth0", "netns", router},
		{"-n", c.NS(UnderlayName), "link", "set", "router", "master", UnderlayBridge, "up"},
		{"-n", router, "addr", "add", "192.168.1.250/24", "dev", "eth0"},
		{"-n", router, "link", "set", "eth0", "up"},
		{"-n", router, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "router id 192.168.1.250;\nprotocol device {}\n")
	for _, n := range c.Lab.Nodes {
		fmt.Fprintf(&cfg, "protocol bgp %s {\n  local as 64513;\n  neighbor %s as %d;\n  ipv4 { import all; export none; };\n}\n", n.Name, n.IP, calico.AS)
	}
	conf, sock := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	bird := exec.Command("ip", "netns", "exec", router, BirdBinary, "-f", "-c", conf, "-s", sock)
	if err := bird.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bird.Process.Kill(); bird.Wait() })
	if err := c.AddBGPPeer(netip.MustParseAddr("192.168.1.250"), 64513); err != nil {
		t.Fatal(err)
	}
	learned := func() []string {
		out, err := exec.Command("birdc", "-s", sock, "show", "route").CombinedOutput()
		if err != nil {
			return nil
		}
		var nets []string
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) > 0 && strings.Contains(f[0], "/") {
				nets = append(nets, f[0])
			}
		}
		sort.Strings(nets)
		return nets
	}
	wantBlocks := func() []string {
		var w []string
		for _, b := range c.Lab.claimedBlocks() {
			w = append(w, b.String())
		}
		sort.Strings(w)
		return w
	}
	wait := func() {
		deadline := time.Now().Add(15 * time.Second)
		for !slices.Equal(learned(), wantBlocks()) {
			if time.Now().After(deadline) {
				t.Fatalf("the external BIRD learned %v, want exactly the blocks %v", learned(), wantBlocks())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait()
	// node1's /30 holds four pods: the fifth makes it claim a second
	// block, which BIRD announces.
	for i := range 5 {
		if _, err := c.AddPod(PodSpec{Name: fmt.Sprintf("pod-%d", i), Node: "node1"}); err != nil {
			t.Fatal(err)
		}
	}
	if n1 := c.Lab.Node("node1"); len(n1.Blocks) != 2 || n1.Blocks[1] != netip.MustParsePrefix("10.244.0.8/30") || c.Lab.Pod("pod-4").IP != netip.MustParseAddr("10.244.0.8") {
		t.Errorf("node1 blocks %v, pod-4 %s: want a second block 10.244.0.8/30 holding pod-4", n1.Blocks, c.Lab.Pod("pod-4").IP)
	}
	wait()
	out := birdc(t, c.BirdSocket("node1"), "show", "protocols")
	if !regexp.MustCompile(`(?m)^Global_192_168_1_250\s+BGP\s+\S+\s+up\s+\S+\s+Established`).MatchString(out) {
		t.Errorf("node1's session to the external peer is not Established:\n%s", out)
	}
}

// TestCalicoVXLAN builds Calico's VXLAN mode and reads it back: vxlan.calico
// (VNI 4096, port 4789, MTU 1450, the VTEP MAC, the /32 tunnel address),
// per peer a permanent ARP entry, an FDB entry and the block's route via
// the tunnel address onlink, no BIRD; traffic crosses in UDP 4789; a
// second block reaches the other node as a route.
func TestCalicoVXLAN(t *testing.T) {
	t.Parallel()
	c := calicoLabWith(t, CalicoSettings{Encapsulation: EncapVXLAN, BlockSize: 30}, 2, [][2]string{{"pod-a", "node1"}, {"pod-b", "node2"}})
	n1, n2 := c.Lab.Node("node1"), c.Lab.Node("node2")
	for _, n := range []*Node{n1, n2} {
		if c.BirdPID(n.Name) != 0 {
			t.Errorf("node %s runs BIRD in VXLAN mode", n.Name)
		}
		l := ipJSON(t, c, n.Name, "-d", "link", "show", "dev", CalicoVXLANDevice)
		info := l[0]["linkinfo"].(map[string]any)["info_data"].(map[string]any)
		if fmt.Sprint(info["id"]) != "4096" || fmt.Sprint(info["port"]) != "4789" || fmt.Sprint(l[0]["mtu"]) != "1450" || l[0]["address"] != calicoVTEPMAC(n.Name).String() || info["local"] != n.IP.String() {
			t.Errorf("%s on %s: %v", CalicoVXLANDevice, n.Name, l[0])
		}
		a, err := exec.Command("ip", "-n", c.NS(n.Name), "-4", "-o", "addr", "show", "dev", CalicoVXLANDevice).Output()
		if err != nil || !strings.Contains(string(a), "inet "+n.Blocks[0].Addr().String()+"/32 ") {
			t.Errorf("%s address on %s: %s (%v), want %s/32", CalicoVXLANDevice, n.Name, a, err, n.Blocks[0].Addr())
		}
	}
	if got := c.Lab.Pod("pod-a").IP; got != netip.MustParseAddr("10.244.0.1") {
		t.Errorf("pod-a got %s: the block's first address is node1's tunnel address", got)
	}
	if want := "10.244.0.4/30 via 10.244.0.4 dev vxlan.calico onlink"; !slices.Contains(routes(t, c, "node1"), want) {
		t.Errorf("node1 routes %v, want %q", routes(t, c, "node1"), want)
	}
	nb := ipJSON(t, c, "node1", "neigh", "show", "dev", CalicoVXLANDevice)
	if len(nb) != 1 || nb[0]["dst"] != "10.244.0.4" || nb[0]["lladdr"] != calicoVTEPMAC("node2").String() {
		t.Errorf("node1 neighbours on vxlan.calico: %v", nb)
	}
	fdb, err := exec.Command("bridge", "-n", c.NS("node1"), "fdb", "show", "dev", CalicoVXLANDevice).Output()
	if err != nil || !strings.Contains(string(fdb), calicoVTEPMAC("node2").String()+" dst 192.168.1.102 self permanent") {
		t.Errorf("node1 fdb: %s %v", fdb, err)
	}
	// Three more pods fill node2's /30 (tunnel + pod-b + 2): the third
	// claims 10.244.0.8/30, and node1 gets its route.
	for i := range 3 {
		if _, err := c.AddPod(PodSpec{Name: fmt.Sprintf("q%d", i), Node: "node2"}); err != nil {
			t.Fatal(err)
		}
	}
	if want := "10.244.0.8/30 via 10.244.0.4 dev vxlan.calico onlink"; !slices.Contains(routes(t, c, "node1"), want) {
		t.Errorf("node1 routes %v, want %q", routes(t, c, "node1"), want)
	}
	// Felix blackholes each of a node's blocks, the new one too.
	for _, want := range []string{"blackhole 10.244.0.4/30", "blackhole 10.244.0.8/30"} {
		if !slices.Contains(routes(t, c, "node2"), want) {
			t.Errorf("node2 routes %v, want %q", routes(t, c, "node2"), want)
		}
	}
	capture := exec.Command("ip", "netns", "exec", c.NS("node2"), "tshark", "-n", "-i", "eth0", "-a", "duration:20", "-c", "1",
		"-f", "udp port 4789", "-d", "udp.port==4789,vxlan", "-T", "fields", "-e", "vxlan.vni", "-e", "ip.src")
	var capOut strings.Builder
	capture.Stdout = &capOut
	startCapture(t, capture)
	out, err := exec.Command("ip", "netns", "exec", c.NS("pod-a"), "ping", "-c", "2", "-i", "0.2", "-W", "2", c.Lab.Pod("q2").IP.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ttl=62") {
		t.Errorf("ping pod-a -> q2 (second block): %v: %s", err, out)
	}
	capture.Wait()
	if f := strings.Fields(capOut.String()); len(f) < 2 || f[0] != "4096" || !strings.Contains(f[1], "192.168.1.101") || !strings.Contains(f[1], c.Lab.Pod("pod-a").IP.String()) {
		t.Errorf("capture on node2 eth0: %q, want VNI 4096 from 192.168.1.101 carrying %s", capOut.String(), c.Lab.Pod("pod-a").IP)
	}
}

// TestCalicoGateway makes the underlay's router a BGP peer of every node
// (seed 001's physical gateway): its kernel gets each block via its own
// node, proto bird, and the external host pings a pod IP directly (TTL 62:
// the underlay and the node routed it), which it could not before.
func TestCalicoGateway(t *testing.T) {
	t.Parallel()
	c := calicoLab(t, 2, [][2]string{{"pod-a", "node1"}, {"pod-b", "node2"}})
	waitRoutes(t, c, 15*time.Second)
	pod := c.Lab.Pod("pod-b").IP.String()
	ping := func() (string, error) {
		out, err := exec.Command("ip", "netns", "exec", c.NS(ExternalName), "ping", "-c", "1", "-W", "1", pod).CombinedOutput()
		return string(out), err
	}
	if out, err := ping(); err == nil {
		t.Fatalf("the external host reaches %s before the gateway peers: %s", pod, out)
	}
	if err := c.SetGatewayBGP(true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range c.Lab.Nodes {
		want := fmt.Sprintf("%s via %s dev %s proto bird metric 32", n.Blocks[0], n.IP, UnderlayBridge)
		for !slices.Contains(routes(t, c, UnderlayName), want) {
			if time.Now().After(deadline) {
				t.Fatalf("underlay routes %v, want %q", routes(t, c, UnderlayName), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := ping(); err != nil || !strings.Contains(out, "ttl=62") {
		t.Errorf("external -> %s: %v: %s", pod, err, out)
	}
	if err := c.SetGatewayBGP(false); err != nil {
		t.Fatal(err)
	}
	if rs := routes(t, c, UnderlayName); slices.ContainsFunc(rs, func(r string) bool { return strings.Contains(r, "proto bird") }) {
		t.Errorf("underlay keeps BGP routes after gateway off: %v", rs)
	}
}

// TestCalicoTwoLabsNeverPeer builds two calico labs with the same node
// addresses at once: each node's BIRD has exactly its own lab's peer
// Established, and its routes point at its own lab's blocks (the labs'
// underlays are separate namespaces, so their BGP sessions cannot meet).
func TestCalicoTwoLabsNeverPeer(t *testing.T) {
	t.Parallel()
	a := calicoLab(t, 2, nil)
	b := calicoLabWith(t, CalicoSettings{GracefulRestart: 2, BlockSize: 28}, 2, nil)
	waitRoutes(t, a, 15*time.Second)
	waitRoutes(t, b, 15*time.Second)
	for _, c := range []*Cluster{a, b} {
		for _, n := range c.Lab.Nodes {
			out := birdc(t, c.BirdSocket(n.Name), "show", "protocols")
			if got := establishedRe.FindAllStringSubmatch(out, -1); len(got) != 1 {
				t.Errorf("lab %s node %s: %d Established sessions, want 1:\n%s", c.Lab.Name, n.Name, len(got), out)
			}
			for _, r := range routes(t, c, n.Name) {
				if !strings.Contains(r, "proto bird") {
					continue
				}
				dst, _, _ := strings.Cut(strings.TrimPrefix(r, "blackhole "), " ")
				if !slices.Contains(c.Lab.claimedBlocks(), netip.MustParsePrefix(dst)) {
					t.Errorf("lab %s node %s has a BGP route %q that is not one of its lab's blocks", c.Lab.Name, n.Name, r)
				}
			}
		}
	}
}

// TestCalicoRouteReflector turns the mesh off: node1 reflects, the others
// peer only with it, and every node still gets every block with its
// originator as next hop.
func TestCalicoRouteReflector(t *testing.T) {
	t.Parallel()
	c := calicoLabWith(t, CalicoSettings{GracefulRestart: 2, RouteReflector: true}, 4, nil)
	waitRoutes(t, c, 15*time.Second)
	nodeRe := regexp.MustCompile(`(?m)^(Node_\S+)\s+BGP\s+\S+\s+up\s+\S+\s+Established`)
	for i, n := range c.Lab.Nodes {
		out := birdc(t, c.BirdSocket(n.Name), "show", "protocols")
		want := 1
		if i == 0 {
			want = len(c.Lab.Nodes) - 1
		}
		if got := nodeRe.FindAllString(out, -1); len(got) != want || strings.Contains(out, "Mesh_") {
			t.Errorf("node %s: %d Established Node_ sessions, want %d and no mesh:\n%s", n.Name, len(got), want, out)
		}
	}
	if err := c.DelNode("node1"); err == nil || !strings.Contains(err.Error(), "route reflector") {
		t.Errorf("deleting the reflector: %v", err)
	}
}

// TestCalicoBuildBadInputChangesNothing: a bulk build whose last pod is
// bad (a duplicate name) leaves the lab as it was: no new node, pod,
// namespace or BIRD.
func TestCalicoBuildBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	c := calicoLab(t, 1, nil)
	_, _, err := c.Build(Spec{
		Nodes: []NodeSpec{{Name: "node2"}},
		Pods:  []PodSpec{{Name: "pod-a", Node: "node2"}, {Name: "pod-a", Node: "node1"}},
	})
	if err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("duplicate pod: %v", err)
	}
	if len(c.Lab.Nodes) != 1 || len(c.Lab.Pods) != 0 || netns.Exists(c.NS("node2")) || netns.Exists(c.NS("pod-a")) || c.BirdPID("node2") != 0 {
		t.Errorf("after a refused build: nodes %d, pods %d, node2 ns %v, pod-a ns %v", len(c.Lab.Nodes), len(c.Lab.Pods), netns.Exists(c.NS("node2")), netns.Exists(c.NS("pod-a")))
	}
	if strings.Contains(birdc(t, c.BirdSocket("node1"), "show", "protocols"), "Mesh_") {
		t.Error("node1's BIRD still has a session to the removed node2")
	}
	// Pods are deleted like any other: the veth, its /32 route and the
	// neighbour go with it.
	p, err := c.AddPod(PodSpec{Name: "pod-b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DelPod("pod-b"); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes(t, c, "node1") {
		if strings.HasPrefix(r, p.IP.String()+" ") {
			t.Errorf("route %q left after pod del", r)
		}
	}
}

// startCapture starts a tshark command and returns once tshark says it
// captures ("Capturing on ..." on stderr), or after 15 s: a fixed wait
// missed the packets on a loaded machine, where tshark's start takes
// seconds. Give tshark an -a duration long enough for that wait; -c ends
// it at once when the packets come.
func startCapture(t *testing.T, capture *exec.Cmd) {
	t.Helper()
	stderr, err := capture.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	capturing := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Capturing on") {
				close(capturing)
				break
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case <-capturing:
	case <-time.After(15 * time.Second):
	}
}

// bgpUp reports whether every BGP protocol in birdc's 'show protocols' is
// up and Established (and there is one).
func bgpUp(out string) bool {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || f[1] != "BGP" {
			continue
		}
		n++
		if f[3] != "up" || !strings.Contains(l, "Established") {
			return false
		}
	}
	return n > 0
}
