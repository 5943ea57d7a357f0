package journey

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/klabtest"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/probe"
)

// In iptables mode on iptables-nft, the journey's rule hits come from
// nftrace, so they are the probe's alone: while pod-b hammers the same
// ClusterIP (the same KUBE-SVC/KUBE-SEP rules, whose counters a counter
// diff would count), the probe from pod-a shows its KUBE-SEP DNAT once
// (one traced connection: nat rules see its first packet only), and every
// hit is a line iptables-save prints in that node.
func TestJourneyIPTablesNFTTrace(t *testing.T) {
	if !iptablesNFT() {
		t.Skip("iptables here is not iptables-nft (iptables -V lacks \"(nf_tables)\"): the journey uses the counter diff")
	}
	lab := klabtest.New(t, klabtest.Prefix("n2"), klabtest.Backend(cluster.BackendVXLAN), klabtest.Nodes(2), klabtest.PodsPerNode(0))
	for _, p := range [][2]string{{"pod-a", "node1"}, {"pod-b", "node1"}, {"pod-c", "node2"}} {
		lab.AddPod(p[0], p[1])
	}
	l, err := cluster.Load(lab.StateDir, lab.Name)
	if err != nil {
		t.Fatal(err)
	}
	svc := nat.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []nat.ServicePort{{Port: 80, TargetPort: 8080}},
		Endpoints: []nat.Endpoint{{IP: l.Pod("pod-c").IP, PodName: "pod-c", NodeName: "node2"}}}
	for _, n := range l.Nodes {
		rs, err := nat.Render(nat.Config{Lab: l.Name, Flannel: &nat.FlannelMasq{PodCIDR: n.PodCIDR}}, []nat.Service{svc})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nat.Apply(&plan.Applier{}, "klab."+l.Name+"."+n.Name, rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	listen(t, l, "pod-c")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var noise int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if c, err := probe.Dial(ctx, "klab."+l.Name+".pod-b", "tcp4", "10.96.0.10:80"); err == nil {
				c.Close()
				noise++
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	rep := run(t, l, "pod-a", "10.96.0.10:80", TCP, 0, Options{})
	cancel()
	wg.Wait()
	if noise == 0 {
		t.Fatal("pod-b's background connections all failed")
	}
	var sep int
	save := map[string]string{}
	for _, h := range rep.Rules {
		if h.Node == "node1" && strings.HasPrefix(h.Chain, "KUBE-SEP-") && strings.Contains(h.Rule, "DNAT") {
			sep++
			if h.Packets != 1 {
				t.Errorf("KUBE-SEP DNAT counted %d traced packets, want the probe's 1 (pod-b made %d connections meanwhile): %v", h.Packets, noise, h)
			}
		}
		k := h.Node + "/" + h.Table
		if _, ok := save[k]; !ok {
			out, err := exec.Command("ip", "netns", "exec", "klab."+l.Name+"."+h.Node, "iptables-save", "-t", h.Table).Output()
			if err != nil {
				t.Fatal(err)
			}
			save[k] = string(out)
		}
		if !strings.Contains(save[k], h.Rule+"\n") {
			t.Errorf("hit %q is not a line of %s's iptables-save -t %s", h.Rule, h.Node, h.Table)
		}
	}
	if sep != 1 {
		t.Errorf("want node1's KUBE-SEP DNAT once among the hits, got %d: %v", sep, rep.Rules)
	}
	if !rep.RulesTraced || !strings.Contains(rep.String(), "from klab's nftrace") {
		t.Error("the report does not say its rule hits are traced")
	}
	if len(rep.NFTrace) != 0 {
		t.Errorf("iptables mode reports nftables hops: %v", rep.NFTrace)
	}
	t.Logf("pod-b made %d connections during the probe; hits: %v", noise, rep.Rules)
}
