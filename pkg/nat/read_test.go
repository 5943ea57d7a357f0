package nat

import (
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
