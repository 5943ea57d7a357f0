package nat

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// labRules renders the services of a typical lab node (node1: eth0
// 192.168.1.101, cni0 10.244.1.1, pods 10.244.1.0/24) and parses the text
// back for the simulator.
func labRules(t *testing.T, tcpOnly bool) *Rules {
	t.Helper()
	cfg := Config{Lab: "sim", Flannel: &FlannelMasq{PodCIDR: pfx("10.244.1.0/24"), TCPOnly: tcpOnly}}
	r, err := Render(cfg, []Service{
		{Name: "web", ClusterIP: ip("10.96.0.10"), Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080}},
			Endpoints: eps("10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3", "10.244.3.2", "10.244.3.3")},
		{Namespace: "kube-system", Name: "kube-dns", ClusterIP: ip("10.96.0.53"), Ports: []ServicePort{{Name: "dns", Protocol: UDP, Port: 53}, {Name: "dns-tcp", Port: 53}, {Name: "metrics", Port: 9153}},
			Endpoints: eps("10.244.2.9")},
		{Name: "sticky", ClusterIP: ip("10.96.0.20"), Affinity: AffinityClientIP, Ports: []ServicePort{{Port: 80}}, Endpoints: eps("10.244.1.2", "10.244.2.2")},
		{Name: "empty", ClusterIP: ip("10.96.0.30"), Ports: []ServicePort{{Port: 80, NodePort: 30030}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRules(r.TextWithJumps())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

var nodeLocal = []netip.Addr{ip("192.168.1.101"), ip("10.244.1.1"), ip("10.244.1.0")}

func TestSimulate(t *testing.T) {
	rs := labRules(t, false)
	web := SVCChain("default/web:http", TCP)
	webExt := EXTChain("default/web:http", TCP)
	sep := func(addr string) string { return SEPChain("default/web:http", TCP, addr) }
	for _, tc := range []struct {
		name       string
		pkt        Packet
		tcpOnly    bool
		chains     []string // must appear, in this order
		endpoint   string
		dnat       string
		marked     bool
		masquerade bool
		verdict    string
	}{
		{name: "pod to ClusterIP, first endpoint", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, Rand: 0.01},
			chains:   []string{"nat/PREROUTING", "nat/KUBE-SERVICES", "nat/" + web, "nat/" + sep("10.244.1.2:8080"), "filter/FORWARD", "nat/POSTROUTING", "nat/KUBE-POSTROUTING", "nat/FLANNEL-POSTRTG"},
			endpoint: sep("10.244.1.2:8080"), dnat: "10.244.1.2:8080", verdict: "ACCEPT"},
		{name: "pod to ClusterIP, rand 0.55 picks endpoint 3 of 6", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, Rand: 0.55},
			endpoint: sep("10.244.2.3:8080"), dnat: "10.244.2.3:8080", verdict: "ACCEPT"},
		{name: "pod to ClusterIP, rand 0.99 falls to the last endpoint", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, Rand: 0.99},
			endpoint: sep("10.244.3.3:8080"), dnat: "10.244.3.3:8080", verdict: "ACCEPT"},
		{name: "node to ClusterIP is masqueraded", pkt: Packet{Src: ip("192.168.1.101"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, FromNode: true, Local: nodeLocal},
			chains:   []string{"nat/OUTPUT", "nat/KUBE-SERVICES", "nat/" + web, "nat/KUBE-MARK-MASQ", "filter/OUTPUT", "nat/KUBE-POSTROUTING"},
			endpoint: sep("10.244.1.2:8080"), dnat: "10.244.1.2:8080", marked: true, masquerade: true, verdict: "ACCEPT"},
		{name: "NodePort from outside", pkt: Packet{Src: ip("203.0.113.10"), Dst: ip("192.168.1.101"), Proto: TCP, DPort: 30080, Local: nodeLocal, Rand: 0.9},
			chains:   []string{"nat/KUBE-SERVICES", "nat/KUBE-NODEPORTS", "nat/" + webExt, "nat/KUBE-MARK-MASQ", "nat/" + web},
			endpoint: sep("10.244.3.3:8080"), dnat: "10.244.3.3:8080", marked: true, masquerade: true, verdict: "ACCEPT"},
		{name: "hairpin: pod reaches itself through the service", pkt: Packet{Src: ip("10.244.1.2"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, Rand: 0},
			endpoint: sep("10.244.1.2:8080"), dnat: "10.244.1.2:8080", marked: true, masquerade: true, verdict: "ACCEPT"},
		{name: "no endpoints: REJECT in filter", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.30"), Proto: TCP, DPort: 80},
			chains: []string{"nat/KUBE-SERVICES", "filter/FORWARD", "filter/KUBE-SERVICES"}, verdict: "REJECT"},
		{name: "no endpoints on NodePort: REJECT in INPUT", pkt: Packet{Src: ip("203.0.113.10"), Dst: ip("192.168.1.101"), Proto: TCP, DPort: 30030, Local: nodeLocal},
			chains: []string{"filter/INPUT", "filter/KUBE-EXTERNAL-SERVICES"}, verdict: "REJECT"},
		{name: "UDP DNS", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.53"), Proto: UDP, DPort: 53},
			chains: []string{"nat/" + SVCChain("kube-system/kube-dns:dns", UDP)}, endpoint: SEPChain("kube-system/kube-dns:dns", UDP, "10.244.2.9:53"), dnat: "10.244.2.9:53", verdict: "ACCEPT"},
		{name: "second port of a multi-port service", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.53"), Proto: TCP, DPort: 9153},
			endpoint: SEPChain("kube-system/kube-dns:metrics", TCP, "10.244.2.9:9153"), dnat: "10.244.2.9:9153", verdict: "ACCEPT"},
		// Not a service port: routed like any non-pod destination, so flannel masquerades it.
		{name: "wrong port is not a service", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.53"), Proto: UDP, DPort: 9153}, masquerade: true, verdict: "ACCEPT"},
		{name: "pod to internet is masqueraded by flannel", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("93.184.216.34"), Proto: Protocol("icmp")},
			chains: []string{"nat/FLANNEL-POSTRTG"}, masquerade: true, verdict: "ACCEPT"},
		{name: "TCP-only masquerade: ping leaves unmasqueraded", tcpOnly: true, pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("93.184.216.34"), Proto: Protocol("icmp")}, verdict: "ACCEPT"},
		{name: "TCP-only masquerade: curl is masqueraded", tcpOnly: true, pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("93.184.216.34"), Proto: TCP, DPort: 80}, masquerade: true, verdict: "ACCEPT"},
		{name: "pod to pod keeps its address", pkt: Packet{Src: ip("10.244.1.7"), Dst: ip("10.244.2.7"), Proto: TCP, DPort: 80}, verdict: "ACCEPT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rs
			if tc.tcpOnly {
				r = labRules(t, true)
			}
			res := r.Simulate(tc.pkt)
			i := 0
			for _, c := range res.Chains {
				if i < len(tc.chains) && c == tc.chains[i] {
					i++
				}
			}
			if i < len(tc.chains) {
				t.Errorf("chains %q do not contain %q in order", res.Chains, tc.chains)
			}
			dnat := ""
			if res.DNAT.IsValid() {
				dnat = res.DNAT.String()
			}
			if res.Endpoint != tc.endpoint || dnat != tc.dnat || res.Marked != tc.marked || res.Masquerade != tc.masquerade || res.Verdict != tc.verdict {
				t.Errorf("got endpoint %s dnat %q marked %v masq %v verdict %s; want %s %q %v %v %s\nrules:\n%s",
					res.Endpoint, dnat, res.Marked, res.Masquerade, res.Verdict, tc.endpoint, tc.dnat, tc.marked, tc.masquerade, tc.verdict, strings.Join(res.Rules, "\n"))
			}
		})
	}
}

func TestSimulateUniform(t *testing.T) {
	rs := labRules(t, false)
	seen := map[string]int{}
	const n = 600
	for i := 0; i < n; i++ {
		res := rs.Simulate(Packet{Src: ip("10.244.1.7"), Dst: ip("10.96.0.10"), Proto: TCP, DPort: 80, Rand: (float64(i) + 0.5) / n})
		seen[res.DNAT.String()]++
	}
	if len(seen) != 6 {
		t.Fatalf("endpoints picked: %v", seen)
	}
	for ep, c := range seen {
		if c != n/6 {
			t.Errorf("endpoint %s picked %d times of %d, want %d", ep, c, n, n/6)
		}
	}
}

func TestSimulateAffinity(t *testing.T) {
	rs := labRules(t, false)
	recent := Recent{}
	client := ip("10.244.1.7")
	first := rs.Simulate(Packet{Src: client, Dst: ip("10.96.0.20"), Proto: TCP, DPort: 80, Rand: 0.9, Recent: recent})
	if first.DNAT.String() != "10.244.2.2:80" {
		t.Fatalf("first connection went to %s", first.DNAT)
	}
	if _, ok := recent[first.Endpoint][client]; !ok {
		t.Fatalf("recent list %s not updated: %v", first.Endpoint, recent)
	}
	// The statistic draw now says endpoint 0, but affinity wins.
	for _, r := range []float64{0, 0.3, 0.6} {
		res := rs.Simulate(Packet{Src: client, Dst: ip("10.96.0.20"), Proto: TCP, DPort: 80, Rand: r, Recent: recent})
		if res.DNAT != first.DNAT {
			t.Errorf("rand %v: affinity broken, went to %s", r, res.DNAT)
		}
	}
	// After the timeout the client is load-balanced again.
	recent[first.Endpoint][client] = DefaultAffinityTimeout + 1
	res := rs.Simulate(Packet{Src: client, Dst: ip("10.96.0.20"), Proto: TCP, DPort: 80, Rand: 0, Recent: recent})
	if res.DNAT.String() != "10.244.1.2:80" {
		t.Errorf("after timeout went to %s", res.DNAT)
	}
	// Another client is not affected.
	res = rs.Simulate(Packet{Src: ip("10.244.1.8"), Dst: ip("10.96.0.20"), Proto: TCP, DPort: 80, Rand: 0.1, Recent: Recent{}})
	if res.DNAT.String() != "10.244.1.2:80" {
		t.Errorf("other client went to %s", res.DNAT)
	}
	if !slices.Contains(res.Chains, "nat/"+SVCChain("default/sticky", TCP)) {
		t.Errorf("chains %q", res.Chains)
	}
}
