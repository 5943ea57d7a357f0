package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
)

// TestMultiMachine is issue 17's lab across machines, on one box: three
// simulated machines (each a network namespace with its own mount
// namespace and /run) on one LAN. klab on m1 creates a control-plane lab
// with two nodes and prints the join command; a wrong token and a wrong
// CA pin are refused on m2 leaving nothing; the real command joins m2,
// which adds two more nodes, and m3 joins with a token of its own. Read
// back with ping, curl, etcdctl, ip, bridge, ss and nft: pods on all five
// nodes reach each other (ICMP, TCP), ClusterIP and selector Services
// span machines (readiness too, from any machine), Services are made on
// any machine with their ClusterIPs claimed in etcd, a NetworkPolicy from
// m1 is enforced on m2, pods are asked for across machines, plain etcd
// never crosses machines while TLS does, MTUs nest, killed agents come
// back with repair; each machine's only new thing in its own namespace is
// the stitch's UDP socket, and destroying the lab on every machine leaves
// them as they were.
func TestMultiMachine(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	klab := testutil.Klab(t)
	ms := testutil.Machines(t, "mm", 3)
	m1, m2, m3 := ms[0], ms[1], ms[2]
	lab := fmt.Sprintf("mm-%06x", rand.IntN(1<<24))
	baseline := map[*testutil.Machine]string{}
	for _, m := range ms {
		baseline[m] = m.Run("ip", "-o", "link")
	}
	k := func(m *testutil.Machine, args ...string) string {
		t.Helper()
		return m.Run(klab, append(args, "--lab", lab)...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range ms {
				out, _ := m.Try("sh", "-c", "tail -n 20 /run/klab/"+lab+"/servers/*.log")
				t.Logf("%s's server logs:\n%s", m.Name, out)
			}
		}
		// Whatever happened: the lab goes on both (m2 first, while etcd
		// still answers its goodbye).
		m3.Try(klab, "destroy", "--lab", lab)
		m2.Try(klab, "destroy", "--lab", lab)
		m1.Try(klab, "destroy", "--lab", lab)
	})

	k(m1, "node", "add", "node1", "--control-plane", "etcd", "--underlay-mtu", "1450")
	k(m1, "node", "add", "node2")
	line := strings.TrimSpace(k(m1, "token", "create", "--name", "m1"))
	t.Logf("join command: %s", line)
	args := strings.Fields(line)
	if len(args) < 4 || args[0] != "klab" || args[1] != "join" || args[2] != m1.Addr {
		t.Fatalf("token create printed %q", line)
	}
	joinArgs := append(args[1:], "--name", "m2", "--timeout", "5s")
	flag := func(name string) int { return slices.Index(joinArgs, name) + 1 }

	// Bad input: a wrong token's secret, a wrong CA pin. One sentence
	// each, and nothing on m2.
	bad := slices.Clone(joinArgs)
	tok := bad[flag("--token")]
	bad[flag("--token")] = tok[:7] + strings.Repeat("x", 16)
	out, err := m2.Try(klab, bad...)
	if err == nil || !strings.Contains(out, "join token was refused") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Fatalf("join with a wrong token: err %v\n%s", err, out)
	}
	t.Logf("wrong token: %s", strings.TrimSpace(out))
	assertMachineClean(t, m2, baseline[m2], "after a refused join")
	bad = slices.Clone(joinArgs)
	bad[flag("--discovery-token-ca-cert-hash")] = "sha256:" + strings.Repeat("0", 64)
	out, err = m2.Try(klab, bad...)
	if err == nil || !strings.Contains(out, "discovery-token-ca-cert-hash") {
		t.Fatalf("join with a wrong CA pin: err %v\n%s", err, out)
	}
	t.Logf("wrong CA pin: %s", strings.TrimSpace(out))
	assertMachineClean(t, m2, baseline[m2], "after a refused join")

	m2.Run(klab, joinArgs...)
	k(m2, "node", "add", "node3")
	k(m2, "node", "add", "node4")
	// A third machine, with a token of its own: the machine agents add
	// the flood entries between m2 and m3, which never met.
	line3 := strings.Fields(strings.TrimSpace(k(m1, "token", "create")))
	m3.Run(klab, append(line3[1:], "--name", "m3")...)
	k(m3, "node", "add", "node5")
	waitFor(t, 3*time.Second, "m2's and m3's stitches to flood to each other", func() bool {
		return strings.Contains(m2.Run("bridge", "-n", "klab."+lab+".underlay", "fdb", "show", "dev", "stitch"), "00:00:00:00:00:00 dst "+m3.Addr) &&
			strings.Contains(m3.Run("bridge", "-n", "klab."+lab+".underlay", "fdb", "show", "dev", "stitch"), "00:00:00:00:00:00 dst "+m2.Addr)
	})

	// The machines, the nodes and flannel's leases, read with etcdctl on
	// the first machine.
	etcdctl := func(args ...string) string {
		return m1.Run("ip", append([]string{"netns", "exec", "klab." + lab + ".underlay", "etcdctl", "--endpoints", "http://192.168.1.100:2379"}, args...)...)
	}
	if got := etcdctl("get", "--prefix", "--keys-only", cluster.MachinesPrefix); !strings.Contains(got, "/klab/machines/m1") || !strings.Contains(got, "/klab/machines/m2") {
		t.Fatalf("machines in etcd:\n%s", got)
	}
	leases := etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets")
	if n := strings.Count(leases, "/coreos.com/network/subnets/"); n != 5 {
		t.Fatalf("%d leases, want 5:\n%s", n, leases)
	}
	nodes := etcdctl("get", "--prefix", "--print-value-only", cluster.NodesPrefix)
	for _, n := range []string{"node1", "node2", "node3", "node4", "node5"} {
		if !strings.Contains(nodes, `"name":"`+n+`"`) {
			t.Fatalf("no Node object for %s:\n%s", n, nodes)
		}
	}
	// The stitch: a vxlan port of each underlay bridge; its socket is in
	// the machine's namespace (UDP 4789), and no link appeared there.
	for _, m := range ms {
		d := m.Run("ip", "-n", "klab."+lab+".underlay", "-d", "link", "show", "stitch")
		if !strings.Contains(d, "vxlan id") || !strings.Contains(d, "master underlay0") || !strings.Contains(d, "dstport 4789") {
			t.Fatalf("%s's stitch:\n%s", m.Name, d)
		}
		if ss := m.Run("ss", "-uanH", "sport", "= :4789"); !strings.Contains(ss, ":4789") {
			t.Fatalf("%s has no stitch socket: %q", m.Name, ss)
		}
		if got := m.Run("ip", "-o", "link"); got != baseline[m] {
			t.Fatalf("%s's own namespace changed:\n%s\nwas:\n%s", m.Name, got, baseline[m])
		}
	}
	fdb := m1.Run("bridge", "-n", "klab."+lab+".underlay", "fdb", "show", "dev", "stitch")
	if !strings.Contains(fdb, "00:00:00:00:00:00 dst "+m2.Addr) {
		t.Fatalf("m1's stitch does not flood to m2:\n%s", fdb)
	}

	// Pods on all four nodes.
	pods := map[string]*testutil.Machine{"pa": m1, "pb": m1, "pc": m2, "pd": m2, "pe": m3}
	node := map[string]string{"pa": "node1", "pb": "node2", "pc": "node3", "pd": "node4", "pe": "node5"}
	ip := map[string]string{}
	labels := map[string]string{"pa": "role=client", "pb": "app=web", "pc": "tier=db", "pd": "app=web"}
	for _, p := range []string{"pa", "pb", "pc", "pd", "pe"} {
		if l, ok := labels[p]; ok {
			k(pods[p], "pod", "add", p, "--node", node[p], "-l", l)
		} else {
			k(pods[p], "pod", "add", p, "--node", node[p])
		}
		k(pods[p], "serve", p, "--port", "8080")
		addr := pods[p].Run("ip", "-n", "klab."+lab+"."+p, "-4", "-o", "addr", "show", "eth0")
		f := strings.Fields(addr)
		ip[p] = strings.Split(f[3], "/")[0]
	}
	// ICMP and TCP, every pod to every other, in parallel.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails []string
	for from := range pods {
		for to := range pods {
			if from == to {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, ns := pods[from], "klab."+lab+"."+from
				if out, err := m.Try("ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip[to]); err != nil {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("ping %s -> %s (%s): %v %s", from, to, ip[to], err, out))
					mu.Unlock()
				}
				if out, err := m.Try("ip", "netns", "exec", ns, "curl", "-s", "-m", "3", "http://"+ip[to]+":8080/"); err != nil || !strings.Contains(out, to) {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("curl %s -> %s: %v %q", from, to, err, out))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(fails) > 0 {
		t.Fatalf("%d of 40 probes failed:\n%s", len(fails), strings.Join(fails, "\n"))
	}
	// Kubelet's role: a pod asked for on m1 for m2's node is built by
	// m2's machine agent; pod names are cluster-wide; a delete on m1
	// tears it down on m2.
	out = k(m1, "pod", "add", "pf", "--node", "node3")
	f := strings.Fields(out)
	if len(f) < 3 || !strings.Contains(out, "on node node3 (another machine's node") {
		t.Fatalf("remote pod add: %q", out)
	}
	if !slices.Contains(m2.Netns(), "klab."+lab+".pf") {
		t.Fatalf("m2 has no namespace for pf: %v", m2.Netns())
	}
	m1.Run("ip", "netns", "exec", "klab."+lab+".pa", "ping", "-c1", "-W2", f[2])
	if out, err := m2.Try(klab, "pod", "add", "pa", "--node", "node4", "--lab", lab); err == nil || !strings.Contains(out, "on node node1 of another machine") {
		t.Fatalf("a pod name m1 holds, added on m2: err %v\n%s", err, out)
	}
	if out, err := m1.Try(klab, "exec", "pf", "--lab", lab, "--", "true"); err == nil || !strings.Contains(out, "a pod on node node3 of another machine") {
		t.Fatalf("exec of m2's pod on m1: err %v\n%s", err, out)
	}
	k(m1, "pod", "del", "pf")
	waitFor(t, 3*time.Second, "m2 to tear down pf", func() bool { return !slices.Contains(m2.Netns(), "klab."+lab+".pf") })

	// MTUs nest: the LAN's 1500, the underlay's 1450 inside the stitch,
	// the pods' 1400 inside flannel's VXLAN. A full-size pod packet
	// with DF set crosses machines whole; one byte more does not leave
	// the pod.
	pc := "klab." + lab + ".pc"
	if out := m2.Run("ip", "-n", pc, "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
		t.Fatalf("pc's eth0: %s", out)
	}
	m2.Run("ip", "netns", "exec", pc, "ping", "-c1", "-W2", "-M", "do", "-s", "1372", ip["pa"])
	if out, err := m2.Try("ip", "netns", "exec", pc, "ping", "-c1", "-W2", "-M", "do", "-s", "1373", ip["pa"]); err == nil {
		t.Fatalf("a 1401-byte packet with DF left pc:\n%s", out)
	}
	// Trust: plain etcd does not cross machines (dropped at m1's stitch);
	// TLS with m2's client certificate does; without one it is refused.
	mp := "klab." + lab + ".machine"
	if out, err := m2.Try("ip", "netns", "exec", mp, "curl", "-s", "-m", "1", "http://192.168.1.100:2379/version"); err == nil {
		t.Fatalf("plain HTTP to etcd crossed machines: %s", out)
	}
	pkiDir := "/run/klab/" + lab + "/pki/"
	tlsArgs := []string{"netns", "exec", mp, "etcdctl", "--endpoints", "https://192.168.1.100:2378", "--cacert", pkiDir + "ca.crt"}
	if got := m2.Run("ip", append(tlsArgs, "--cert", pkiDir+"client.crt", "--key", pkiDir+"client.key", "get", "--print-value-only", "/klab/machines/m2")...); !strings.Contains(got, `"address":"`+m2.Addr+`"`) {
		t.Fatalf("m2's record over TLS: %s", got)
	}
	if out, err := m2.Try("ip", append(tlsArgs, "--dial-timeout", "2s", "--command-timeout", "2s", "get", "/klab/machines/m2")...); err == nil {
		t.Fatalf("etcd answered m2 without a client certificate: %s", out)
	}
	if out := m1.Run("ip", "netns", "exec", "klab."+lab+".underlay", "nft", "list", "table", "bridge", "klab-stitch"); !strings.Contains(out, "counter packets") || strings.Contains(out, "counter packets 0 ") {
		t.Fatalf("m1's stitch filter dropped nothing:\n%s", out)
	}
	// A ClusterIP service on m1 with endpoints on m1's pods, reached
	// from m2's pods through their own nodes' kube-proxy rules (synced
	// from etcd by their agents).
	k(m1, "service", "add", "web", "--endpoints", "pa,pb", "--port", "80", "--target-port", "8080")
	var st struct {
		Services []struct {
			Name      string `json:"name"`
			ClusterIP string `json:"clusterIP"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(m1.Run("cat", "/run/klab/"+lab+"/state.json")), &st); err != nil || len(st.Services) != 1 {
		t.Fatalf("state: %v %+v", err, st)
	}
	vip := st.Services[0].ClusterIP
	seen := map[string]bool{}
	for i := 0; i < 12 && len(seen) < 2; i++ {
		for _, p := range []string{"pc", "pd"} {
			out, err := m2.Try("ip", "netns", "exec", "klab."+lab+"."+p, "curl", "-s", "-m", "3", "http://"+vip+"/")
			if err != nil {
				t.Fatalf("curl %s -> ClusterIP %s from m2: %v %q", p, vip, err, out)
			}
			for _, e := range []string{"pa", "pb"} {
				if strings.Contains(out, e) {
					seen[e] = true
				}
			}
		}
	}
	if len(seen) != 2 {
		t.Fatalf("the ClusterIP from m2 reached only %v", seen)
	}
	// A selector service: its endpoints are pods of every machine (the
	// first machine's endpointslice controller reads the others' Pod
	// objects in etcd); a matching pod added on m3 joins it.
	k(m1, "service", "add", "sel", "--selector", "app=web", "--port", "80", "--target-port", "8080")
	if err := json.Unmarshal([]byte(m1.Run("cat", "/run/klab/"+lab+"/state.json")), &st); err != nil {
		t.Fatal(err)
	}
	selIP := ""
	for _, s := range st.Services {
		if s.Name == "sel" {
			selIP = s.ClusterIP
		}
	}
	spreadTo := func(from, vip string, n int) map[string]bool {
		seen := map[string]bool{}
		for i := 0; i < n; i++ {
			out, err := pods[from].Try("ip", "netns", "exec", "klab."+lab+"."+from, "curl", "-s", "-m", "2", "http://"+vip+"/")
			if err != nil {
				t.Fatalf("curl %s -> %s: %v %q\nslices:\n%s", from, vip, err, out, etcdctl("get", "--prefix", cluster.EndpointSlicesPrefix))
			}
			for _, p := range []string{"pb", "pd", "pg"} {
				if strings.Contains(out, p) {
					seen[p] = true
				}
			}
		}
		return seen
	}
	spread := func(from string, n int) map[string]bool { return spreadTo(from, selIP, n) }
	if got := spread("pe", 16); !got["pb"] || !got["pd"] || len(got) != 2 {
		t.Fatalf("the selector service from m3 reached %v, want pb (m1) and pd (m2)", got)
	}
	// Readiness crosses machines too: pd marked unready on m2 leaves sel
	// (its Pod object's Ready condition, read by m1's controller).
	k(m2, "pod", "set-ready", "pd", "false")
	waitFor(t, 2*time.Second, "pd to be unready in sel's EndpointSlice", func() bool {
		var es struct {
			Endpoints []struct {
				Conditions struct {
					Ready bool `json:"ready"`
				} `json:"conditions"`
				TargetRef struct {
					Name string `json:"name"`
				} `json:"targetRef"`
			} `json:"endpoints"`
		}
		json.Unmarshal([]byte(etcdctl("get", "--print-value-only", "/registry/endpointslices/default/sel")), &es)
		for _, e := range es.Endpoints {
			if e.TargetRef.Name == "pd" {
				return !e.Conditions.Ready
			}
		}
		return false
	})
	if got := spread("pe", 12); !got["pb"] || got["pd"] {
		t.Fatalf("sel with pd unready reached %v, want pb only", got)
	}
	k(m2, "pod", "set-ready", "pd", "true")
	waitFor(t, 2*time.Second, "pd to be ready in sel again", func() bool {
		return spread("pe", 8)["pd"]
	})
	k(m3, "pod", "add", "pg", "--node", "node5", "-l", "app=web")
	k(m3, "serve", "pg", "--port", "8080")
	waitFor(t, 2*time.Second, "pg (on m3) to join sel's EndpointSlice", func() bool {
		return strings.Contains(etcdctl("get", "--print-value-only", "/registry/endpointslices/default/sel"), `"name":"pg"`)
	})
	if got := spread("pa", 24); !got["pg"] {
		t.Fatalf("the selector service from m1 never reached pg on m3: %v", got)
	}
	k(m3, "pod", "del", "pg")
	waitFor(t, 2*time.Second, "pg to leave sel's EndpointSlice", func() bool {
		return !strings.Contains(etcdctl("get", "--print-value-only", "/registry/endpointslices/default/sel"), `"name":"pg"`)
	})

	// Services from any machine: m2 makes one; its ClusterIP is an
	// IPAddress claimed in etcd, and pods of every machine reach it.
	k(m2, "service", "add", "web2", "--selector", "app=web", "--port", "80", "--target-port", "8080")
	var m2st struct {
		Services []struct {
			Name      string `json:"name"`
			ClusterIP string `json:"clusterIP"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(m2.Run("cat", "/run/klab/"+lab+"/state.json")), &m2st); err != nil || len(m2st.Services) != 1 {
		t.Fatalf("m2's services: %v %+v", err, m2st)
	}
	web2 := m2st.Services[0].ClusterIP
	if web2 == vip || web2 == selIP {
		t.Fatalf("m2's service got ClusterIP %s, which m1's services hold (%s, %s)", web2, vip, selIP)
	}
	ips := etcdctl("get", "--prefix", "--keys-only", cluster.IPAddressesPrefix)
	for _, a := range []string{vip, selIP, web2} {
		if !strings.Contains(ips, cluster.IPAddressesPrefix+a) {
			t.Fatalf("no IPAddress for %s in etcd:\n%s", a, ips)
		}
	}
	if got := k(m1, "service", "list"); !strings.Contains(got, "web2@m2") || !strings.Contains(got, web2) {
		t.Fatalf("service list on m1 does not show m2's service:\n%s", got)
	}
	if got := spreadTo("pa", web2, 16); !got["pb"] || !got["pd"] {
		t.Fatalf("m2's selector service from m1 reached %v, want pb (m1) and pd (m2)", got)
	}
	if out, err := m3.Try(klab, "service", "add", "web", "--endpoints", "pe", "--port", "80", "--lab", lab); err == nil || !strings.Contains(out, "created on another machine") {
		t.Fatalf("a service name m1 holds, added on m3: err %v\n%s", err, out)
	}
	if out, err := m3.Try(klab, "service", "add", "dup", "--endpoints", "pe", "--port", "80", "--cluster-ip", vip, "--lab", lab); err == nil || !strings.Contains(out, "is taken by service web") {
		t.Fatalf("m1's ClusterIP asked for on m3: err %v\n%s", err, out)
	}
	k(m2, "service", "del", "web2")
	if got := etcdctl("get", "--prefix", "--keys-only", cluster.IPAddressesPrefix); strings.Contains(got, web2) {
		t.Fatalf("web2's IPAddress stays after its delete:\n%s", got)
	}

	// A NetworkPolicy applied on m1 is enforced on m2's node by its
	// agent, from the policy and the pods (of every machine) in etcd:
	// only role=client (pa, on m1) reaches tier=db (pc, on m2).
	np := t.TempDir() + "/db.yaml"
	if err := os.WriteFile(np, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {tier: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	k(m1, "apply", "-f", np)
	reach := func(from string) bool {
		out, err := pods[from].Try("ip", "netns", "exec", "klab."+lab+"."+from, "curl", "-s", "-m", "1", "http://"+ip["pc"]+":8080/")
		return err == nil && strings.Contains(out, "pc")
	}
	got := map[string]bool{}
	for _, from := range []string{"pa", "pb", "pd", "pe"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := reach(from)
			mu.Lock()
			got[from] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	if want := map[string]bool{"pa": true, "pb": false, "pd": false, "pe": false}; !maps.Equal(got, want) {
		t.Fatalf("who reaches pc (on m2) under a policy applied on m1: %v, want %v", got, want)
	}
	if out := m2.Run("ip", "netns", "exec", "klab."+lab+".node3", "iptables-save", "-t", "filter"); !strings.Contains(out, "db") {
		t.Fatalf("node3 has no policy chain:\n%s", out)
	}
	k(m1, "delete", "-f", np)
	if !reach("pb") {
		t.Fatal("pb does not reach pc after the policy's delete")
	}
	// klab list on the joined machine shows the whole lab.
	if got := k(m2, "list", "--prefix", lab); !strings.Contains(got, "node3,node4 + node1@m1,node2@m1,node5@m3") {
		t.Fatalf("klab list on m2 does not show the whole lab:\n%s", got)
	}

	// A machine agent killed: list says so, repair starts it again, and
	// it keeps the flood list.
	var st2 struct {
		Servers []struct {
			Proto string `json:"proto"`
			PID   int    `json:"pid"`
		} `json:"servers"`
	}
	json.Unmarshal([]byte(m2.Run("cat", "/run/klab/"+lab+"/state.json")), &st2)
	pid := ""
	for _, s := range st2.Servers {
		if s.Proto == "machine" {
			pid = fmt.Sprint(s.PID)
		}
	}
	m2.Run("kill", "-9", pid)
	waitFor(t, 2*time.Second, "the machine agent to die", func() bool { _, err := m2.Try("kill", "-0", pid); return err != nil })
	if got, _ := m2.Try(klab, "list", "--prefix", lab); !strings.Contains(got, "machine server on machine port 0 (pid "+pid+") is not running") {
		t.Fatalf("list on m2 does not see the dead machine agent:\n%s", got)
	}
	k(m2, "repair")
	if got := k(m2, "list", "--prefix", lab); strings.Contains(got, "DAMAGED") {
		t.Fatalf("after repair on m2:\n%s", got)
	}
	m2.Run("ip", "netns", "exec", "klab."+lab+".pc", "ping", "-c1", "-W2", ip["pe"])
	// The first machine's join endpoint and machine agent, killed, are
	// started again by repair there.
	for _, sv := range serversOf(t, m1, lab, "join", "machine") {
		m1.Run("kill", "-9", fmt.Sprint(sv))
	}
	if out := k(m1, "repair"); !strings.Contains(out, "the join endpoint on control-plane") || !strings.Contains(out, "the machine agent on control-plane") {
		t.Fatalf("repair on m1 after its join endpoint and machine agent died:\n%s", out)
	}
	if got := k(m1, "list", "--prefix", lab); strings.Contains(got, "DAMAGED") {
		t.Fatalf("after repair on m1:\n%s", got)
	}

	// Destroy on every machine: the joined ones first (their goodbye
	// leaves etcd), then m1.
	k(m3, "destroy")
	k(m2, "destroy")
	if got := etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets"); strings.Count(got, "/subnets/") != 2 {
		t.Fatalf("m2's leases stay after its destroy:\n%s", got)
	}
	if got := etcdctl("get", "--prefix", "--keys-only", cluster.MachinesPrefix); strings.Contains(got, "m2") || strings.Contains(got, "m3") {
		t.Fatalf("m2 or m3 stays registered after its destroy:\n%s", got)
	}
	waitFor(t, 3*time.Second, "m1's stitch to stop flooding to m2 and m3", func() bool {
		return !strings.Contains(m1.Run("bridge", "-n", "klab."+lab+".underlay", "fdb", "show", "dev", "stitch"), "00:00:00:00:00:00")
	})
	k(m1, "destroy")
	for _, m := range ms {
		assertMachineClean(t, m, baseline[m], "after destroy")
	}
}

// serversOf lists the PIDs of a machine's servers of the protos.
func serversOf(t *testing.T, m *testutil.Machine, lab string, protos ...string) []int {
	t.Helper()
	var st struct {
		Servers []struct {
			Proto string `json:"proto"`
			PID   int    `json:"pid"`
		} `json:"servers"`
	}
	if err := json.Unmarshal([]byte(m.Run("cat", "/run/klab/"+lab+"/state.json")), &st); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, s := range st.Servers {
		if slices.Contains(protos, s.Proto) {
			pids = append(pids, s.PID)
		}
	}
	if len(pids) != len(protos) {
		t.Fatalf("%s runs %v of %v", m.Name, pids, protos)
	}
	return pids
}

// assertMachineClean checks that a simulated machine holds nothing of a
// lab: no namespace, no process, no new link, no stitch socket, no
// state.
func assertMachineClean(t *testing.T, m *testutil.Machine, links, when string) {
	t.Helper()
	if ns := m.Netns(); len(ns) > 0 {
		t.Fatalf("%s holds namespaces %s: %v", when, m.Name, ns)
	}
	if p := m.Processes(); len(p) > 0 {
		t.Fatalf("%s %s runs processes %v", when, m.Name, p)
	}
	if got := m.Run("ip", "-o", "link"); got != links {
		t.Fatalf("%s %s's links changed:\n%s", when, m.Name, got)
	}
	// A deleted namespace's devices go in the kernel's cleanup work,
	// asynchronously: the stitch's socket closes a moment later.
	waitFor(t, 3*time.Second, m.Name+"'s stitch socket to close", func() bool {
		return !strings.Contains(m.Run("ss", "-uanH"), ":4789")
	})
	if st, err := m.Try("ls", "-A", "/run/klab"); err == nil && strings.TrimSpace(st) != "" {
		t.Fatalf("%s %s keeps state: %s", when, m.Name, st)
	}
}

// TestJoinRefusals is the bad input around joining: a lab that cannot
// span machines (no control plane; an underlay MTU the stitch cannot
// carry), a malformed join line, and a first machine that does not
// answer. One sentence each, and nothing built.
func TestJoinRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	klab := testutil.Klab(t)
	ms := testutil.Machines(t, "mr", 2)
	m1, m2 := ms[0], ms[1]
	lab := fmt.Sprintf("mr-%06x", rand.IntN(1<<24))
	links := m2.Run("ip", "-o", "link")
	t.Cleanup(func() {
		m1.Try(klab, "destroy", "--lab", lab)
		m1.Try(klab, "destroy", "--lab", lab+"-cp")
		m2.Try(klab, "destroy", "--lab", lab)
	})
	refused := func(m *testutil.Machine, want string, args ...string) {
		t.Helper()
		out, err := m.Try(klab, args...)
		out = strings.TrimSpace(out)
		if err == nil || !strings.Contains(out, want) || strings.Contains(out, "\n") {
			t.Fatalf("klab %s: err %v, want one sentence with %q:\n%s", strings.Join(args, " "), err, want, out)
		}
		t.Logf("%s", out)
	}
	m1.Run(klab, "node", "add", "node1", "--lab", lab)
	refused(m1, "create it with --control-plane etcd", "token", "create", "--lab", lab)
	m1.Run(klab, "node", "add", "node1", "--lab", lab+"-cp", "--control-plane", "etcd")
	refused(m1, "--underlay-mtu 1450", "token", "create", "--lab", lab+"-cp")
	if out := m1.Run("ip", "-n", "klab."+lab+"-cp.underlay", "-o", "link"); strings.Contains(out, "stitch") {
		t.Fatalf("a refused token create built the stitch:\n%s", out)
	}
	hash := "sha256:" + strings.Repeat("ab", 32)
	refused(m2, "not a join token", "join", m1.Addr, "--lab", lab, "--token", "nope", "--discovery-token-ca-cert-hash", hash, "--underlay-address", "192.168.1.254/24", "--underlay-mtu", "1450")
	refused(m2, "--discovery-token-ca-cert-hash", "join", m1.Addr, "--lab", lab, "--token", "abcdef.0123456789abcdef", "--discovery-token-ca-cert-hash", "sha1:00", "--underlay-address", "192.168.1.254/24", "--underlay-mtu", "1450")
	refused(m2, "--underlay-mtu 1450", "join", m1.Addr, "--lab", lab, "--token", "abcdef.0123456789abcdef", "--discovery-token-ca-cert-hash", hash, "--underlay-address", "192.168.1.254/24", "--underlay-mtu", "1500")
	refused(m2, "unreachable", "join", "10.250.0.9", "--lab", lab, "--token", "abcdef.0123456789abcdef", "--discovery-token-ca-cert-hash", hash, "--underlay-address", "192.168.1.254/24", "--underlay-mtu", "1450", "--timeout", "1s")
	assertMachineClean(t, m2, links, "after refused joins")
}
