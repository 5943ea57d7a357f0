package journey

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/frames"
	"github.com/klab-dev/klab/trace"
)

type hopSpec struct {
	point string
	dir   trace.Direction
	data  []byte
}

func decode(t testing.TB, data []byte) trace.Packet {
	t.Helper()
	var p trace.Packet
	if err := trace.NewDecoder().Decode(data, &p); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return p
}

func packets(t *testing.T, specs []hopSpec, tie bool) []trace.Packet {
	base := time.Unix(1700000000, 0)
	var ps []trace.Packet
	for i, s := range specs {
		p := decode(t, s.data)
		p.Point, p.Dir = s.point, s.dir
		p.Time = base.Add(time.Duration(i) * time.Microsecond)
		if tie {
			p.Time = base // every capture point stamped the same instant
		}
		ps = append(ps, p)
	}
	rand.New(rand.NewSource(1)).Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	return ps
}

func kinds(h Hop) string {
	var k []string
	for _, c := range h.Changes {
		k = append(k, c.Kind)
	}
	return strings.Join(k, ",")
}

// A ClusterIP connection from pod-a (node1) to pod-b (node2): DNAT on node1,
// VXLAN between the nodes, and the SYN-ACK coming back un-DNATed.
func TestFollowClusterIPAcrossVXLAN(t *testing.T) {
	syn := func(dst string, dport uint16, ttl uint8, smac, dmac []byte) []byte {
		return frames.TCP(t, smac, dmac, frames.V4("10.244.1.2", dst, ttl, 5), 40000, dport, 1000, 0, true, false)
	}
	synack := func(src string, sport uint16, ttl uint8, smac, dmac []byte) []byte {
		return frames.TCP(t, smac, dmac, frames.V4(src, "10.244.1.2", ttl, 0), sport, 40000, 5000, 1001, true, true)
	}
	outer12 := frames.V4("192.168.1.101", "192.168.1.102", 64, 10)
	outer21 := frames.V4("192.168.1.102", "192.168.1.101", 64, 11)
	specs := []hopSpec{
		{"pod-a/eth0", trace.DirOut, syn("10.96.0.10", 80, 64, frames.MacPodA, frames.MacCni1)},
		{"node1/cni0", trace.DirIn, syn("10.96.0.10", 80, 64, frames.MacPodA, frames.MacCni1)},
		{"node1/flannel.1", trace.DirOut, syn("10.244.2.3", 8080, 63, frames.MacVtep1, frames.MacVtep2)},
		{"node1/eth0", trace.DirOut, frames.VXLAN(t, outer12, 33333, 8472, 1, syn("10.244.2.3", 8080, 63, frames.MacVtep1, frames.MacVtep2))},
		{"node2/eth0", trace.DirIn, frames.VXLAN(t, outer12, 33333, 8472, 1, syn("10.244.2.3", 8080, 63, frames.MacVtep1, frames.MacVtep2))},
		{"node2/flannel.1", trace.DirIn, syn("10.244.2.3", 8080, 63, frames.MacVtep1, frames.MacVtep2)},
		{"pod-b/eth0", trace.DirIn, syn("10.244.2.3", 8080, 62, frames.MacCni1, frames.MacPodA)},
		// reply
		{"pod-b/eth0", trace.DirOut, synack("10.244.2.3", 8080, 64, frames.MacPodA, frames.MacCni1)},
		{"node2/eth0", trace.DirOut, frames.VXLAN(t, outer21, 44444, 8472, 1, synack("10.244.2.3", 8080, 63, frames.MacVtep2, frames.MacVtep1))},
		{"node1/eth0", trace.DirIn, frames.VXLAN(t, outer21, 44444, 8472, 1, synack("10.244.2.3", 8080, 63, frames.MacVtep2, frames.MacVtep1))},
		{"pod-a/eth0", trace.DirIn, synack("10.96.0.10", 80, 62, frames.MacCni1, frames.MacPodA)},
		// noise: another connection, an ARP, a ping
		{"pod-a/eth0", trace.DirOut, frames.TCP(t, frames.MacPodA, frames.MacCni1, frames.V4("10.244.1.2", "10.96.0.10", 64, 6), 40001, 80, 777, 0, true, false)},
		{"node1/cni0", trace.DirIn, frames.ARP(t, 1, "10.244.1.2", "10.244.1.1")},
		{"node1/eth0", trace.DirOut, frames.CrossNodePing(t)},
	}
	path := []string{"pod-a/eth0", "node1/cni0", "node1/flannel.1", "node1/eth0", "node2/eth0", "node2/flannel.1", "pod-b/eth0"}
	for _, tie := range []bool{false, true} {
		ps := packets(t, specs, tie)
		probe := FindProbeMatching(ps, trace.MustParseFilter("tcp and dst port 80 and src port 40000"))
		if probe < 0 {
			t.Fatal("no probe")
		}
		j, err := Follow(ps, probe, path)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, h := range j.Hops {
			got = append(got, h.Point+"["+kinds(h)+"]")
		}
		want := "pod-a/eth0[] node1/cni0[] node1/flannel.1[dnat,ttl,mac] node1/eth0[+vxlan] node2/eth0[] node2/flannel.1[-vxlan] pod-b/eth0[ttl,mac]"
		if strings.Join(got, " ") != want {
			t.Errorf("tie=%v hops:\n got %s\nwant %s\n%s", tie, strings.Join(got, " "), want, j)
		}
		got = nil
		for _, h := range j.Reply {
			got = append(got, h.Point+"["+kinds(h)+"]")
		}
		want = "pod-b/eth0[] node2/eth0[+vxlan,ttl,mac] node1/eth0[] pod-a/eth0[-vxlan,snat,ttl,mac]"
		if strings.Join(got, " ") != want {
			t.Errorf("tie=%v reply:\n got %s\nwant %s\n%s", tie, strings.Join(got, " "), want, j)
		}
		s := j.String()
		for _, w := range []string{"dnat   dst 10.96.0.10:80 -> 10.244.2.3:8080",
			"+vxlan encapsulated in VXLAN: outer 192.168.1.101:33333 > 192.168.1.102 udp/8472 vni=1",
			"snat   src 10.244.2.3:8080 -> 10.96.0.10:80 (reply: conntrack reverses the forward DNAT)",
			"ttl    ttl 63 -> 62 (routed)"} {
			if !strings.Contains(s, w) {
				t.Errorf("journey text lacks %q:\n%s", w, s)
			}
		}
		if _, err := json.Marshal(j); err != nil {
			t.Fatal(err)
		}
		if testing.Verbose() && !tie {
			t.Log("\n" + s)
		}
	}
}

// Without a path, hops fall back to TTL then time; MASQUERADE shows as SNAT.
func TestFollowNoPathMasquerade(t *testing.T) {
	specs := []hopSpec{
		{"pod-a/eth0", trace.DirOut, frames.ICMP(t, frames.MacPodA, frames.MacCni1, frames.V4("10.244.1.2", "203.0.113.10", 64, 99), true, 7, 3)},
		{"node1/eth0", trace.DirOut, frames.ICMP(t, frames.MacEth1, frames.MacEth2, frames.V4("192.168.1.101", "203.0.113.10", 63, 99), true, 7, 3)},
		{"node1/eth0", trace.DirIn, frames.ICMP(t, frames.MacEth2, frames.MacEth1, frames.V4("203.0.113.10", "192.168.1.101", 64, 1234), false, 7, 3)},
		{"pod-a/eth0", trace.DirIn, frames.ICMP(t, frames.MacCni1, frames.MacPodA, frames.V4("203.0.113.10", "10.244.1.2", 63, 1234), false, 7, 3)},
	}
	ps := packets(t, specs, true)
	j, err := Follow(ps, FindProbeMatching(ps, trace.MustParseFilter("icmp and src host 10.244.1.2")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Hops) != 2 || j.Hops[0].Point != "pod-a/eth0" || kinds(j.Hops[1]) != "snat,ttl,mac" {
		t.Fatalf("hops:\n%s", j)
	}
	if len(j.Reply) != 2 || j.Reply[0].Point != "node1/eth0" || kinds(j.Reply[1]) != "dnat,ttl,mac" ||
		!strings.Contains(j.Reply[1].Changes[0].Detail, "reverses the forward SNAT") {
		t.Fatalf("reply:\n%s", j)
	}
	if _, err := Follow(ps, 99, nil); err == nil {
		t.Error("out-of-range probe accepted")
	}
	arp := []trace.Packet{decode(t, frames.ARP(t, 1, "1.1.1.1", "1.1.1.2"))}
	if _, err := Follow(arp, 0, nil); err != ErrNoProbe {
		t.Errorf("arp probe: %v", err)
	}
}

// MASQUERADE also rewrites an echo's id (conntrack's "port" for ICMP): the
// id change is told with the source on the way out and with the
// destination on the way back, never as a source change of the reply.
func TestFollowMasqueradedICMPID(t *testing.T) {
	specs := []hopSpec{
		{"pod-a/eth0", trace.DirOut, frames.ICMP(t, frames.MacPodA, frames.MacCni1, frames.V4("10.244.1.2", "203.0.113.10", 64, 99), true, 7, 3)},
		{"node1/eth0", trace.DirOut, frames.ICMP(t, frames.MacEth1, frames.MacEth2, frames.V4("192.168.1.101", "203.0.113.10", 63, 99), true, 4242, 3)},
		{"node1/eth0", trace.DirIn, frames.ICMP(t, frames.MacEth2, frames.MacEth1, frames.V4("203.0.113.10", "192.168.1.101", 64, 1234), false, 4242, 3)},
		{"pod-a/eth0", trace.DirIn, frames.ICMP(t, frames.MacCni1, frames.MacPodA, frames.V4("203.0.113.10", "10.244.1.2", 63, 1234), false, 7, 3)},
	}
	ps := packets(t, specs, true)
	j, err := Follow(ps, FindProbeMatching(ps, trace.MustParseFilter("icmp and src host 10.244.1.2")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if kinds(j.Hops[1]) != "snat,ttl,mac" || !strings.Contains(j.Hops[1].Changes[0].Detail, "icmp id 7 -> 4242") {
		t.Errorf("forward:\n%s", j)
	}
	if len(j.Reply) != 2 || kinds(j.Reply[1]) != "dnat,ttl,mac" || !strings.Contains(j.Reply[1].Changes[0].Detail, "icmp id 4242 -> 7") {
		t.Errorf("reply:\n%s", j)
	}
}
