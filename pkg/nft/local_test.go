package nft

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
)

// upstreamSvc2 is TestOverallNFTablesRules' ns2/svc2 (kubernetes/kubernetes
// pkg/proxy/nftables/proxier_test.go at the mirrored commit): the Local
// external traffic policy, its one endpoint 10.180.0.2 on another node
// (upstream leaves its NodeName unset). Its external IP, load balancer and
// health-check port are left out (klab has none); NodePort 3001 is 30001.
func upstreamSvc2() nat.Service {
	return nat.Service{Namespace: "ns2", Name: "svc2", ClusterIP: netip.MustParseAddr("172.30.0.42"),
		Ports: []nat.ServicePort{{Name: "p80", Port: 80, NodePort: 30001}}, ExternalTrafficPolicy: nat.PolicyLocal,
		Endpoints: []nat.Endpoint{{IP: netip.MustParseAddr("10.180.0.2"), NodeName: "host2"}}}
}

// upstreamSvc2Rules are upstream's expected lines for svc2 on a node
// without its endpoint.
const upstreamSvc2Rules = `
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }
add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 30001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy no-endpoint-nodeports { tcp . 30001 comment "ns2/svc2:p80" : drop }
`

func renderLines(t *testing.T, cfg nat.Config, svcs []nat.Service) []string {
	t.Helper()
	tab, err := Render(cfg, svcs, NodePortAddresses(netip.MustParseAddr("192.168.0.2")))
	if err != nil {
		t.Fatal(err)
	}
	return sortedLines(strings.ReplaceAll(tab.Text(), "0x00004000", "0x4000"))
}

func compareLines(t *testing.T, got, want []string) {
	t.Helper()
	for _, l := range want {
		if !slices.Contains(got, l) {
			t.Errorf("missing: %s", l)
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			t.Errorf("unexpected: %s", l)
		}
	}
}

// TestRenderLocalMatchesUpstream: upstream's services plus svc2, rendered
// for a node without svc2's endpoint, equal upstream's expectation.
func TestRenderLocalMatchesUpstream(t *testing.T) {
	cfg := upstreamConfig
	cfg.NodeName = "host1"
	compareLines(t, renderLines(t, cfg, append(upstreamServices(), upstreamSvc2())),
		sortedLines(upstreamBase+upstreamServiceRules+upstreamSvc2Rules))
}

// TestRenderLocalWithLocalEndpoint: on the endpoint's node the external
// chain ends in a goto to the local- chain, which balances over the node's
// endpoints only, and there is no drop element.
func TestRenderLocalWithLocalEndpoint(t *testing.T) {
	cfg := upstreamConfig
	cfg.NodeName = "host2"
	svc := upstreamSvc2()
	svc.Endpoints = append(svc.Endpoints, nat.Endpoint{IP: netip.MustParseAddr("10.180.1.2"), NodeName: "host1"})
	got := renderLines(t, cfg, []nat.Service{svc})
	local := "local-42NFTM6N-ns2/svc2/tcp/p80"
	for _, want := range []string{
		"add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 goto " + local,
		"add chain ip kube-proxy " + local,
		"add rule ip kube-proxy " + local + " numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }",
		"add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 , 1 : goto endpoint-" + EndpointChainBase("ns2", "svc2", nat.TCP, "p80", netip.MustParseAddrPort("10.180.1.2:80")) + " }",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("missing: %s\n%s", want, strings.Join(got, "\n"))
		}
	}
	for _, l := range got {
		if strings.HasPrefix(l, "add element ip kube-proxy no-endpoint-nodeports") {
			t.Errorf("a node with a local endpoint drops its NodePort: %s", l)
		}
	}
}

// TestApplyLocalReadBack applies the Local renderings of both kinds of
// node to a lab namespace over netlink and reads them back with nft: the
// external chain's fib saddr rules and its goto to the local- chain on
// the endpoint's node; the drop verdict in no-endpoint-nodeports on the
// other.
func TestApplyLocalReadBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nf_tables)")
	}
	needNft(t)
	ns := netns.Name(testutil.LabName(t, "dp"), "n1")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(ns) })
	svc := upstreamSvc2()
	svc.Endpoints = append(svc.Endpoints, nat.Endpoint{IP: netip.MustParseAddr("10.180.1.2"), NodeName: "host1"})
	var prev *Table
	for _, tc := range []struct{ node, want, not string }{
		{"host1", "goto local-42NFTM6N-ns2/svc2/tcp/p80", `comment "ns2/svc2:p80" : drop`},
		{"host3", `tcp . 30001 comment "ns2/svc2:p80" : drop`, "local-42NFTM6N"},
	} {
		cfg := upstreamConfig
		cfg.NodeName = tc.node
		tab, err := Render(cfg, append(upstreamServices(), svc), NodePortAddresses(netip.MustParseAddr("192.168.0.2")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Apply(ns, prev, tab); err != nil {
			t.Fatalf("%s: %v", tc.node, err)
		}
		compareKernel(t, ns, tab)
		listing := nftOut(t, ns, "list", "table", "ip", "kube-proxy")
		for _, w := range []string{tc.want, `fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"`, `ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"`} {
			if !strings.Contains(listing, w) {
				t.Errorf("%s: nft list lacks %q:\n%s", tc.node, w, listing)
			}
		}
		if strings.Contains(listing, tc.not) {
			t.Errorf("%s: nft list has %q:\n%s", tc.node, tc.not, listing)
		}
		prev = tab
	}
}
