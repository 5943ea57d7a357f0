package nat

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzValidate: a service as 'klab service add' builds it from the command
// line (name, ClusterIP, port/protocol, NodePort, affinity, endpoint list).
// Never panics; a rejection is one sentence; an accepted service renders,
// and the rendered rules parse back (the rule simulator reads them).
func FuzzValidate(f *testing.F) {
	f.Add("web", "10.96.0.10", 80, "tcp", 8080, 0, "None", "10.244.1.2,10.244.2.2")
	f.Add("dns", "10.96.0.53", 53, "udp", 53, 0, "ClientIP", "10.244.1.3")
	f.Add("np", "10.96.0.20", 80, "tcp", 0, 30080, "None", "")
	f.Add("Bad_Name", "10.1.0.1", 0, "sctp", -1, 80, "Sticky", "x,,10.244.1.2")
	f.Add("dup", "10.96.0.10", 65535, "tcp", 65536, 32767, "", "10.244.1.2,10.244.1.2")
	f.Fuzz(func(t *testing.T, name, clusterIP string, port int, proto string, target, nodePort int, affinity, endpoints string) {
		ip, _ := netip.ParseAddr(clusterIP)
		s := Service{Name: name, ClusterIP: ip, Affinity: Affinity(affinity),
			Ports: []ServicePort{{Protocol: Protocol(proto), Port: port, TargetPort: target, NodePort: nodePort}}}
		for _, e := range strings.Split(endpoints, ",") {
			if e == "" {
				continue
			}
			a, _ := netip.ParseAddr(e)
			s.Endpoints = append(s.Endpoints, Endpoint{IP: a})
		}
		cfg := Config{Lab: "rl-fuzz"}
		if err := Validate(cfg, []Service{s}); err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one sentence: %q", err)
			}
			return
		}
		rs, err := Render(cfg, []Service{s})
		if err != nil {
			t.Fatalf("validated service does not render: %v (%+v)", err, s)
		}
		if _, err := ParseRules(rs.TextWithJumps()); err != nil {
			t.Fatalf("rendered rules do not parse: %v\n%s", err, rs.TextWithJumps())
		}
		if !strings.Contains(rs.Text(), "klab:rl-fuzz") {
			t.Fatalf("rules without the lab's comment:\n%s", rs.Text())
		}
	})
}
