package nft

import (
	"net/netip"
	"testing"

	"github.com/klab-dev/klab/pkg/nat"
)

// TestNamesMatchUpstream computes the chain names of the inputs of
// kube-proxy's pkg/proxy/nftables/proxier_test.go (TestOverallNFTablesRules)
// and knftables' fake_test.go (the IPv6 endpoints) and compares them with
// the names those tests expect, byte for byte.
func TestNamesMatchUpstream(t *testing.T) {
	for _, c := range []struct{ ns, svc, port, want string }{
		{"ns1", "svc1", "p80", "ULMVA6XW-ns1/svc1/tcp/p80"},
		{"ns2", "svc2", "p80", "42NFTM6N-ns2/svc2/tcp/p80"},
		{"ns3", "svc3", "p80", "4AT6LBPK-ns3/svc3/tcp/p80"},
		{"ns4", "svc4", "p80", "LAUZTJTB-ns4/svc4/tcp/p80"},
		{"ns5", "svc5", "p80", "HVFWP5L3-ns5/svc5/tcp/p80"},
	} {
		if got := PortChainBase(c.ns, c.svc, nat.TCP, c.port); got != c.want {
			t.Errorf("PortChainBase(%s/%s:%s) = %s, upstream expects %s", c.ns, c.svc, c.port, got, c.want)
		}
	}
	for _, c := range []struct{ ns, svc, ep, want string }{
		{"ns1", "svc1", "10.180.0.1:80", "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"},
		{"ns2", "svc2", "10.180.0.2:80", "SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"},
		{"ns3", "svc3", "10.180.0.3:80", "UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80"},
		{"ns4", "svc4", "10.180.0.4:80", "UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"},
		{"ns4", "svc4", "10.180.0.5:80", "5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"},
		{"ns5", "svc5", "10.180.0.3:80", "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"},
		{"ns1", "svc1", "[fd00:10:180::1]:80", "ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80"},
		{"ns1", "svc1", "[fd00:10:180::2:1]:80", "2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80"},
	} {
		got := EndpointChainBase(c.ns, c.svc, nat.TCP, "p80", netip.MustParseAddrPort(c.ep))
		if got != c.want {
			t.Errorf("EndpointChainBase(%s/%s %s) = %s, upstream expects %s", c.ns, c.svc, c.ep, got, c.want)
		}
	}
}
