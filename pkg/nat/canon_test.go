package nat

import "testing"

// Rules as klab renders them and as iptables-save (iptables-nft 1.8.9)
// printed them back in a lab node compare equal once canonical; different
// rules do not.
func TestCanon(t *testing.T) {
	same := []struct{ rendered, saved string }{
		{`-m comment --comment "klab:l default/web cluster IP" -m tcp -p tcp -d 10.96.0.2 --dport 80 -j KUBE-SVC-X`,
			`-d 10.96.0.2/32 -p tcp -m comment --comment "klab:l default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-X`},
		{`-m comment --comment "klab:l default/web cluster IP" -m tcp -p tcp -d 10.96.0.2 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ`,
			`! -s 10.244.0.0/16 -d 10.96.0.2/32 -p tcp -m comment --comment "klab:l default/web cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ`},
		{`-m comment --comment "klab:l" -j MARK --or-mark 0x4000`, `-m comment --comment "klab:l" -j MARK --set-xmark 0x4000/0x4000`},
		{`-m comment --comment "klab:l" -j MARK --xor-mark 0x4000`, `-m comment --comment "klab:l" -j MARK --set-xmark 0x4000/0x0`},
		{`-m comment --comment "klab:l x" -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A`,
			`-m comment --comment "klab:l x" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A`},
		{`-m comment --comment "klab:l x" -m recent --name KUBE-SEP-A --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080`,
			`-p tcp -m comment --comment "klab:l x" -m recent --set --name KUBE-SEP-A --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.2:8080`},
		{`-m comment --comment "klab:l x" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A`,
			`-m comment --comment "klab:l x" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A`},
		{`-m comment --comment "klab:l x" -s 10.244.1.2 -j KUBE-MARK-MASQ`, `-s 10.244.1.2/32 -m comment --comment "klab:l x" -j KUBE-MARK-MASQ`},
		{`-m comment --comment "klab:l x has no endpoints" -m tcp -p tcp -d 10.96.0.9 --dport 80 -j REJECT`,
			`-d 10.96.0.9/32 -p tcp -m comment --comment "klab:l x has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`},
		{`-m conntrack --ctstate NEW -m comment --comment "klab:l portals" -j KUBE-SERVICES`, `-m conntrack --ctstate NEW -m comment --comment "klab:l portals" -j KUBE-SERVICES`},
	}
	for _, c := range same {
		a, err := tokenize(c.rendered)
		if err != nil {
			t.Fatal(err)
		}
		b, err := tokenize(c.saved)
		if err != nil {
			t.Fatal(err)
		}
		if Canon(a) != Canon(b) {
			t.Errorf("not equal:\n  %s\n  %s", Canon(a), Canon(b))
		}
	}
	differ := [][2]string{
		{`-d 10.96.0.2 -p tcp --dport 80 -j KUBE-SVC-X`, `-d 10.96.0.3 -p tcp --dport 80 -j KUBE-SVC-X`},
		{`-s 10.244.0.0/16 -j RETURN`, `! -s 10.244.0.0/16 -j RETURN`},
		{`-m statistic --mode random --probability 0.5 -j A`, `-m statistic --mode random --probability 0.3333333333 -j A`},
		{`-j MARK --or-mark 0x4000`, `-j MARK --xor-mark 0x4000`},
	}
	for _, c := range differ {
		a, _ := tokenize(c[0])
		b, _ := tokenize(c[1])
		if Canon(a) == Canon(b) {
			t.Errorf("equal but should differ: %s", Canon(a))
		}
	}
}
