package nft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
)

// upstreamConfig is NewFakeProxier's: pods 10.0.0.0/8, services 172.30.0.0/16,
// NodePorts on 192.168.0.2 only.
var upstreamConfig = nat.Config{
	Lab:         "nfttest",
	ClusterCIDR: netip.MustParsePrefix("10.0.0.0/8"),
	ServiceCIDR: netip.MustParsePrefix("172.30.0.0/16"),
}

func ep(ip string) nat.Endpoint { return nat.Endpoint{IP: netip.MustParseAddr(ip)} }

// upstreamServices are TestOverallNFTablesRules' services that klab's
// inputs can express: svc1 (ClusterIP, one endpoint), svc3 (NodePort), svc4
// (two endpoints; its external IP left out), svc5 (ClientIP affinity and a
// NodePort; its load balancer left out) and svc6 (no endpoints). NodePorts
// move from 300x to 3000x (klab validates the real NodePort range).
func upstreamServices() []nat.Service {
	p80 := func(nodePort int) []nat.ServicePort {
		return []nat.ServicePort{{Name: "p80", Port: 80, NodePort: nodePort}}
	}
	return []nat.Service{
		{Namespace: "ns1", Name: "svc1", ClusterIP: netip.MustParseAddr("172.30.0.41"), Ports: p80(0), Endpoints: []nat.Endpoint{ep("10.180.0.1")}},
		{Namespace: "ns3", Name: "svc3", ClusterIP: netip.MustParseAddr("172.30.0.43"), Ports: p80(30003), Endpoints: []nat.Endpoint{ep("10.180.0.3")}},
		{Namespace: "ns4", Name: "svc4", ClusterIP: netip.MustParseAddr("172.30.0.44"), Ports: p80(0), Endpoints: []nat.Endpoint{ep("10.180.0.4"), ep("10.180.0.5")}},
		{Namespace: "ns5", Name: "svc5", ClusterIP: netip.MustParseAddr("172.30.0.45"), Ports: p80(30002), Affinity: nat.AffinityClientIP, AffinityTimeout: 10800, Endpoints: []nat.Endpoint{ep("10.180.0.3")}},
		{Namespace: "ns6", Name: "svc6", ClusterIP: netip.MustParseAddr("172.30.0.46"), Ports: p80(0)},
	}
}

// upstreamBase is proxier_test.go's baseRules as proxier.go at the mirrored
// commit writes them (filter chains at dstnat-10 = -110, filter-output-post-dnat
// at dstnat+10 = -90; see doc.go).
const upstreamBase = `
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }
add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }
add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump firewall-check
add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
`

// upstreamServiceRules are TestOverallNFTablesRules' expectations for those
// services, adapted as said above (and with the "tcp dport 80" match that
// the mirrored proxier.go writes in the masquerade rule).
const upstreamServiceRules = `
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }

add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 30003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }

add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }

add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80
add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.45 }
add element ip kube-proxy service-ips { 172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 30002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }

add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
`

// sortedLines is how upstream's assertNFTablesTransactionEqual compares:
// the set of non-empty lines.
func sortedLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// TestRenderMatchesUpstream compares the rendering of upstream's test
// services with what upstream's test expects.
func TestRenderMatchesUpstream(t *testing.T) {
	tab, err := Render(upstreamConfig, upstreamServices(), NodePortAddresses(netip.MustParseAddr("192.168.0.2")))
	if err != nil {
		t.Fatal(err)
	}
	// The fake proxier sets masqueradeMark "0x4000"; NewProxier formats it
	// with %#08x, which klab does.
	got := strings.ReplaceAll(tab.Text(), "0x00004000", "0x4000")
	want := upstreamBase + upstreamServiceRules
	g, w := sortedLines(got), sortedLines(want)
	if !slices.Equal(g, w) {
		for _, l := range w {
			if !slices.Contains(g, l) {
				t.Errorf("missing: %s", l)
			}
		}
		for _, l := range g {
			if !slices.Contains(w, l) {
				t.Errorf("unexpected: %s", l)
			}
		}
	}
}

// TestRenderNoNodePortAddresses: without --nodeport-addresses every local
// address takes NodePorts, and there is no nodeport-ips set.
func TestRenderNoNodePortAddresses(t *testing.T) {
	tab, err := Render(upstreamConfig, upstreamServices())
	if err != nil {
		t.Fatal(err)
	}
	txt := tab.Text()
	for _, want := range []string{
		"add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
		"add rule ip kube-proxy nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n",
		"add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000\n",
	} {
		if !strings.Contains(txt, want) {
			t.Errorf("missing %q", want)
		}
	}
	if tab.Set(SetNodePortIPs) != nil {
		t.Error("nodeport-ips exists without NodePortAddresses")
	}
}

// TestRenderUDPAndThreeEndpoints: a UDP port and a three-endpoint service,
// plus a NodePort without endpoints (no-endpoint-nodeports).
func TestRenderUDPAndThreeEndpoints(t *testing.T) {
	svcs := []nat.Service{
		{Namespace: "kube-system", Name: "kube-dns", ClusterIP: netip.MustParseAddr("172.30.0.10"),
			Ports:     []nat.ServicePort{{Name: "dns", Protocol: nat.UDP, Port: 53}, {Name: "dns-tcp", Port: 53}},
			Endpoints: []nat.Endpoint{ep("10.1.0.2"), ep("10.1.0.3"), ep("10.1.0.4")}},
		{Namespace: "ns1", Name: "empty", ClusterIP: netip.MustParseAddr("172.30.0.11"),
			Ports: []nat.ServicePort{{Name: "http", Port: 80, NodePort: 30080}}},
	}
	tab, err := Render(upstreamConfig, svcs)
	if err != nil {
		t.Fatal(err)
	}
	b := PortChainBase("kube-system", "kube-dns", nat.UDP, "dns")
	sc := tab.Chain(ServicePrefix + b)
	if sc == nil {
		t.Fatalf("no chain service-%s", b)
	}
	want := "numgen random mod 3 vmap { 0 : goto endpoint-" + EndpointChainBase("kube-system", "kube-dns", nat.UDP, "dns", netip.MustParseAddrPort("10.1.0.2:53")) +
		" , 1 : goto endpoint-" + EndpointChainBase("kube-system", "kube-dns", nat.UDP, "dns", netip.MustParseAddrPort("10.1.0.3:53")) +
		" , 2 : goto endpoint-" + EndpointChainBase("kube-system", "kube-dns", nat.UDP, "dns", netip.MustParseAddrPort("10.1.0.4:53")) + " }"
	if got := sc.Rules[len(sc.Rules)-1].Text(); got != want {
		t.Errorf("balance rule:\n got %s\nwant %s", got, want)
	}
	if got := sc.Rules[0].Text(); got != "ip daddr 172.30.0.10 udp dport 53 ip saddr != 10.0.0.0/8 jump mark-for-masquerade" {
		t.Errorf("masquerade rule: %s", got)
	}
	if e, ok := tab.Set(MapServiceIPs).Element([]string{"172.30.0.10", "udp", "53"}); !ok || e.Value != "goto service-"+b {
		t.Errorf("service-ips element: %+v %v", e, ok)
	}
	epc := tab.Chain(EndpointPrefix + EndpointChainBase("kube-system", "kube-dns", nat.UDP, "dns", netip.MustParseAddrPort("10.1.0.3:53")))
	if epc == nil || epc.Rules[1].Text() != "meta l4proto udp dnat to 10.1.0.3:53" {
		t.Errorf("endpoint chain: %+v", epc)
	}
	if e, ok := tab.Set(MapNoEndpointNodePorts).Element([]string{"tcp", "30080"}); !ok || e.Value != "goto reject-chain" || e.Comment != "ns1/empty:http" {
		t.Errorf("no-endpoint-nodeports element: %+v %v", e, ok)
	}
	if cs := tab.Set(SetClusterIPs); len(cs.Elements) != 2 {
		t.Errorf("cluster-ips: %v", cs.Elements)
	}
}

func TestRenderRejectsBadInput(t *testing.T) {
	_, err := Render(upstreamConfig, []nat.Service{{Name: "x", ClusterIP: netip.MustParseAddr("1.2.3.4"), Ports: []nat.ServicePort{{Port: 80}}}})
	if err == nil {
		t.Fatal("a ClusterIP outside the service CIDR was accepted")
	}
}
