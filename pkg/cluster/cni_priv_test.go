package cluster_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/klabtest"
)

// TestCNIMatchesNative runs the real CNI plugins (loopback, then flannel's
// delegate chain: bridge with host-local, portmap) for a pod on a klab
// node, next to a pod klab wired itself on the same node, and compares the
// two object by object as ip, bridge and /proc/sys show them: the pod's
// links, addresses and routes, the host-side veth (type, MTU, master,
// state, hairpin), and the sysctls of both ends. Names, MACs and addresses
// differ by nature; the bridge plugin's two extra sysctls are asserted as
// such. CNI-wired and native pods ping each other across nodes; CHECK
// passes; DEL leaves the node, its rules and the allocator as before.
func TestCNIMatchesNative(t *testing.T) {
	klabtest.RequireRoot(t)
	klabtest.RequireCNIPlugins(t)
	for _, tool := range []string{"ip", "bridge", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s to read the kernel state back: apt-get install iproute2 iptables", tool)
		}
	}
	t.Parallel()
	lab := klabtest.New(t, klabtest.Nodes(2), klabtest.PodsPerNode(1), klabtest.Prefix("kt"))
	native, remote := lab.Pod("pod-a"), lab.Pod("pod-b") // node1, node2
	node1 := lab.Node("node1")
	before := nodeSnapshot(t, lab, node1)
	viaCNI := lab.AddPodCNI("cni-a", "node1")
	remoteCNI := lab.AddPodCNI("cni-b", "node2")

	// The pod's side.
	if n, c := podView(t, native), podView(t, viaCNI); n != c {
		t.Errorf("pod side differs:\nnative: %s\nCNI:    %s", n, c)
	}
	// The node's side: the veth port on cni0.
	st, err := cluster.Load(lab.StateDir, lab.Name)
	if err != nil {
		t.Fatal(err)
	}
	nv, cv := st.Pod("pod-a").HostVeth, st.Pod("cni-a").HostVeth
	if n, c := portView(t, node1, nv), portView(t, node1, cv); n != c {
		t.Errorf("host side differs:\nnative %s: %s\nCNI    %s: %s", nv, n, cv, c)
	}
	// Sysctls, both ends.
	ns, cs := sysctls(t, native.NS, "eth0", true), sysctls(t, viaCNI.NS, "eth0", true)
	// The bridge plugin also asks for a gratuitous ARP when eth0 comes up
	// and turns IPv6 duplicate address detection off in the pod.
	want := map[string][2]string{"ipv4/arp_notify": {"0", "1"}, "ipv6/accept_dad": {"1", "0"}}
	for k, v := range ns {
		if w, ok := want[k]; ok {
			if v != w[0] || cs[k] != w[1] {
				t.Errorf("pod sysctl %s: native %s, CNI %s; want %s, %s", k, v, cs[k], w[0], w[1])
			}
			continue
		}
		if cs[k] != v {
			t.Errorf("pod sysctl %s: native %s, CNI %s", k, v, cs[k])
		}
	}
	hn, hc := sysctls(t, node1.NS, nv, false), sysctls(t, node1.NS, cv, false)
	for k, v := range hn {
		if hc[k] != v {
			t.Errorf("host veth sysctl %s: native %s, CNI %s", k, v, hc[k])
		}
	}
	// Traffic both ways between the two kinds, across nodes.
	for _, pair := range [][2]*klabtest.Pod{{viaCNI, remote}, {remote, viaCNI}, {native, remoteCNI}, {remoteCNI, viaCNI}} {
		if err := pair[0].Ping(pair[1].IP); err != nil {
			t.Error(err)
		}
	}
	// CHECK: 'klab list' reports no problem.
	infos, err := cluster.List(lab.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		if i.Name == lab.Name && i.Damaged() {
			t.Errorf("klab list after CNI ADD: %v", i.Problems)
		}
	}
	// Damage that CHECK sees: cni-b's address removed with ip.
	run(t, "ip", "-n", remoteCNI.NS, "addr", "del", remoteCNI.IP.String()+"/24", "dev", "eth0")
	infos, err = cluster.List(lab.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, i := range infos {
		for _, p := range i.Problems {
			found = found || i.Name == lab.Name && strings.Contains(p, "pod cni-b (CNI-wired) fails CNI CHECK")
		}
	}
	if !found {
		t.Errorf("klab list after removing cni-b's address reports no CNI CHECK failure: %+v", infos)
	}
	// The result JSON is in the lab's state, as the runtime got it.
	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	b, err := os.ReadFile(filepath.Join(lab.StateDir, lab.Name, "cni", "results", "cni-a.json"))
	if err != nil || json.Unmarshal(b, &res) != nil || len(res.IPs) != 1 || res.IPs[0].Address != viaCNI.IP.String()+"/24" {
		t.Errorf("result of cni-a: %s, %v; want the address %s/24", b, err, viaCNI.IP)
	}
	// DEL leaves node1 as it was: links, addresses, routes, neighbours,
	// rules and the allocator's files.
	if err := lab.Update(func(c *cluster.Cluster) error { return c.DelPod("cni-a") }); err != nil {
		t.Fatal(err)
	}
	if after := nodeSnapshot(t, lab, node1); after != before {
		t.Errorf("node1 after CNI DEL differs from before ADD:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// podView is a pod's links, addresses and routes with its own address and
// MAC replaced by placeholders.
func podView(t *testing.T, p *klabtest.Pod) string {
	var links []struct {
		IfName    string   `json:"ifname"`
		Flags     []string `json:"flags"`
		MTU       int      `json:"mtu"`
		Operstate string   `json:"operstate"`
		Linkinfo  struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
	}
	json.Unmarshal([]byte(run(t, "ip", "-j", "-d", "-n", p.NS, "link", "show")), &links)
	var b strings.Builder
	for _, l := range links {
		fmt.Fprintf(&b, "link %s %s mtu %d %s %v; ", l.IfName, l.Linkinfo.Kind, l.MTU, l.Operstate, l.Flags)
	}
	addrs := run(t, "ip", "-4", "-o", "-n", p.NS, "addr", "show")
	routes := run(t, "ip", "-4", "-n", p.NS, "route", "show")
	for _, l := range strings.Split(strings.TrimSpace(addrs), "\n") {
		f := strings.Fields(l)
		b.WriteString("addr " + strings.Join(f[1:], " ") + "; ")
	}
	b.WriteString("routes " + strings.Join(strings.Fields(routes), " "))
	return regexp.MustCompile(regexp.QuoteMeta(p.IP.String())+`\b`).ReplaceAllString(b.String(), "POD-IP")
}

// portView is a host-side veth: type, MTU, master, state, and its bridge
// port flags (hairpin, learning, flooding) as bridge -d shows them.
func portView(t *testing.T, n *klabtest.Node, veth string) string {
	var links []struct {
		MTU       int    `json:"mtu"`
		Master    string `json:"master"`
		Operstate string `json:"operstate"`
		Linkinfo  struct {
			Kind      string `json:"info_kind"`
			SlaveKind string `json:"info_slave_kind"`
		} `json:"linkinfo"`
	}
	json.Unmarshal([]byte(run(t, "ip", "-j", "-d", "-n", n.NS, "link", "show", "dev", veth)), &links)
	if len(links) != 1 {
		t.Fatalf("no link %s in %s", veth, n.Name)
	}
	l := links[0]
	var ports []map[string]any
	json.Unmarshal([]byte(run(t, "bridge", "-j", "-d", "-n", n.NS, "link", "show", "dev", veth)), &ports)
	var flags []string
	if len(ports) == 1 {
		for _, k := range []string{"hairpin", "learning", "flood", "state", "guard", "isolated", "proxy_arp", "neigh_suppress"} {
			flags = append(flags, fmt.Sprintf("%s=%v", k, ports[0][k]))
		}
	}
	return fmt.Sprintf("%s/%s mtu %d master %s %s %s", l.Linkinfo.Kind, l.Linkinfo.SlaveKind, l.MTU, l.Master, l.Operstate, strings.Join(flags, " "))
}

// sysctls reads /proc/sys/net/ipv{4,6}/conf/<iface>/* inside ns through a
// shell started there (ip netns exec): an independent reader.
func sysctls(t *testing.T, ns, iface string, v6 bool) map[string]string {
	out := run(t, "ip", "netns", "exec", ns, "sh", "-c",
		"cd /proc/sys/net/ipv4/conf/"+iface+" && for f in *; do echo ipv4/$f=$(cat $f); done; "+
			"cd /proc/sys/net/ipv6/conf/"+iface+" 2>/dev/null && for f in accept_dad disable_ipv6 accept_ra forwarding; do echo ipv6/$f=$(cat $f); done")
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	if !v6 {
		for k := range m {
			if strings.HasPrefix(k, "ipv6/") {
				delete(m, k)
			}
		}
	}
	return m
}

// nodeSnapshot is what a node holds that a pod's wiring could leave
// behind: links, addresses, routes, permanent neighbours, the bridge's
// ports, iptables rules (no counters) and the node's allocator files.
func nodeSnapshot(t *testing.T, lab *klabtest.Lab, n *klabtest.Node) string {
	var b strings.Builder
	links := run(t, "ip", "-o", "-n", n.NS, "link", "show")
	for _, l := range strings.Split(strings.TrimSpace(links), "\n") {
		f := strings.Fields(l)
		b.WriteString("link " + f[1] + "\n")
	}
	// IPv4: IPv6 link-local addresses and their routes come and go with
	// duplicate address detection, on their own schedule.
	b.WriteString(run(t, "ip", "-4", "-n", n.NS, "addr", "show"))
	b.WriteString(run(t, "ip", "-4", "-n", n.NS, "route", "show", "table", "all"))
	b.WriteString(run(t, "ip", "-n", n.NS, "neigh", "show", "nud", "permanent"))
	b.WriteString(run(t, "bridge", "-n", n.NS, "link", "show"))
	for _, l := range strings.Split(run(t, "ip", "netns", "exec", n.NS, "iptables-save"), "\n") {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l + "\n")
		}
	}
	ents, _ := os.ReadDir(filepath.Join(lab.StateDir, lab.Name, "ipam", n.Name))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	names = slices.DeleteFunc(names, func(s string) bool { return s == "lock" || s == "last_reserved_ip.0" })
	b.WriteString("allocated " + strings.Join(names, " ") + "\n")
	// IPv6 link-local addresses of deleted ports and counters aside, the
	// text is stable; remove the lifetime lines.
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if !strings.Contains(l, "valid_lft") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
