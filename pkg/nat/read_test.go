package nat

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestOwnedInPacketOrder(t *testing.T) {
	save := `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "klab:demo kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m comment --comment "klab:other kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m comment --comment "klab:demo" -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SEP-BBB - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ORPHAN - [0:0]
-A PREROUTING -m comment --comment "klab:demo kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE
-A POSTROUTING -m comment --comment "klab:demo kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m comment --comment "klab:demo" -j MASQUERADE
-A KUBE-SEP-BBB -m comment --comment "klab:demo" -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.96.0.2/32 -m comment --comment "klab:demo default/web" -j KUBE-SVC-AAA
-A KUBE-SVC-AAA -m comment --comment "klab:demo default/web" -j KUBE-SEP-BBB
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-ORPHAN -j RETURN
COMMIT
`
	got := ownedInPacketOrder(save, "demo")
	var names []string
	for _, c := range got {
		names = append(names, string(c.Table)+"/"+c.Name)
	}
	want := "nat/PREROUTING nat/KUBE-SERVICES nat/KUBE-SVC-AAA nat/KUBE-SEP-BBB nat/KUBE-MARK-MASQ nat/POSTROUTING nat/KUBE-POSTROUTING filter/FORWARD filter/KUBE-FORWARD nat/KUBE-SEP-ORPHAN"
	if strings.Join(names, " ") != want {
		t.Errorf("chains in packet order:\n got %s\nwant %s", strings.Join(names, " "), want)
	}
	for _, c := range got {
		for _, r := range c.Rules {
			if strings.Contains(r, "klab:other") || strings.Contains(r, "DOCKER-USER") || strings.Contains(r, "-s 10.0.0.0/8") {
				t.Errorf("%s holds a rule klab's lab demo does not own: %s", c.Name, r)
			}
		}
	}
}

func TestServiceRules(t *testing.T) {
	web := Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports:     []ServicePort{{Port: 80, TargetPort: 8080, NodePort: 30080}},
		Endpoints: []Endpoint{{IP: netip.MustParseAddr("10.244.1.2")}}}
	own := ServiceChains(web) // SVC, EXT, SEP
	if len(own) != 3 {
		t.Fatalf("ServiceChains(web) = %v, want SVC, EXT and one SEP", own)
	}
	svc, ext, sep := own[0], own[1], own[2]
	jump := func(chain, match, target string) string {
		return "-A " + chain + " " + match + ` -m comment --comment "klab:demo default/web" -j ` + target
	}
	other := "KUBE-SVC-OTHEROTHEROTHER"
	services := Chain{Table: NAT, Name: "KUBE-SERVICES", Rules: []string{
		jump("KUBE-SERVICES", "-d 10.96.0.10/32 -p tcp --dport 80", svc),
		jump("KUBE-SERVICES", "-d 10.96.0.11/32 -p tcp --dport 80", other),
	}}
	nodePorts := Chain{Table: NAT, Name: "KUBE-NODEPORTS", Rules: []string{jump("KUBE-NODEPORTS", "-p tcp --dport 30080", ext)}}
	svcChain := Chain{Table: NAT, Name: svc, Rules: []string{jump(svc, "", sep)}}
	extChain := Chain{Table: NAT, Name: ext, Rules: []string{jump(ext, "", "KUBE-MARK-MASQ"), jump(ext, "", svc)}}
	sepChain := Chain{Table: NAT, Name: sep, Rules: []string{jump(sep, "-p tcp", "DNAT --to-destination 10.244.1.2:8080")}}
	otherChain := Chain{Table: NAT, Name: other, Rules: []string{jump(other, "", "KUBE-SEP-OTHEROTHEROTHER")}}
	forward := Chain{Table: Filter, Name: "KUBE-FORWARD", Rules: []string{`-A KUBE-FORWARD -m comment --comment "klab:demo" -j ACCEPT`}}

	for _, tc := range []struct {
		name   string
		chains []Chain
		want   []Chain
	}{
		{"nothing read", nil, nil},
		{"own chains whole, dispatch rules that jump to them",
			[]Chain{services, nodePorts, svcChain, extChain, sepChain, otherChain, forward},
			[]Chain{{NAT, "KUBE-SERVICES", services.Rules[:1]}, nodePorts, svcChain, extChain, sepChain}},
		{"order of the input kept",
			[]Chain{sepChain, svcChain, services},
			[]Chain{sepChain, svcChain, {NAT, "KUBE-SERVICES", services.Rules[:1]}}},
		{"another service's chains only", []Chain{otherChain, forward}, nil},
		{"a comment that names the chain is no jump",
			[]Chain{{NAT, "KUBE-SERVICES", []string{`-A KUBE-SERVICES -m comment --comment "see -j ` + svc + `" -j ` + other}}}, nil},
		{"an unterminated quote is skipped, not misread",
			[]Chain{{NAT, "KUBE-SERVICES", []string{`-A KUBE-SERVICES -m comment --comment "oops -j ` + svc}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ServiceRules(tc.chains, web)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ServiceRules:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
	// A service without endpoints owns its SVC (and EXT) chain only.
	bare := web
	bare.Endpoints = nil
	if got := ServiceRules([]Chain{svcChain, sepChain}, bare); !reflect.DeepEqual(got, []Chain{svcChain}) {
		t.Errorf("ServiceRules without endpoints: %q, want the SVC chain only", got)
	}
}
