package journey

import (
	"fmt"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/policy"
	corev1 "k8s.io/api/core/v1"
)

// policyVerdict names the NetworkPolicy verdict for the journey's probe —
// computed from the lab's policies for the connection as the policy chains
// see it (after kube-proxy's DNAT: the last hop's destination) — and what
// the kernel says: a policy drop rule whose counter the probe raised, or
// the probe's answer. "" when the lab has no policy or the probe is not
// TCP or UDP from a pod.
func policyVerdict(lab *cluster.Lab, plan *Plan, rep *Report) string {
	if len(lab.Policies) == 0 {
		return ""
	}
	src := lab.Pod(plan.From)
	proto := corev1.Protocol(strings.ToUpper(plan.Proto))
	if src == nil || proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP {
		return ""
	}
	dst, port := plan.Dst, plan.Port
	if rep.Journey != nil && len(rep.Journey.Hops) > 0 {
		h := rep.Journey.Hops[len(rep.Journey.Hops)-1].Packet.Innermost()
		if h != nil && h.DstIP.IsValid() && h.SrcIP == rep.Journey.Hops[0].Packet.Innermost().SrcIP {
			dst, port = h.DstIP, int(h.DstPort)
		}
	}
	conn := policy.Connection{Src: policy.PodEndpoint(src.Namespace() + "/" + src.ShortName()), Dst: policy.IPEndpoint(dst), Protocol: proto, Port: int32(port)}
	for _, p := range lab.Pods {
		if p.IP == dst {
			conn.Dst = policy.PodEndpoint(p.Namespace() + "/" + p.ShortName())
		}
	}
	ev, err := policy.NewEvaluator(lab.PolicyState())
	if err != nil {
		return "policy: " + err.Error()
	}
	v, err := ev.Evaluate(conn)
	if err != nil {
		return "policy: " + err.Error()
	}
	var drops []string
	for _, h := range rep.Rules {
		if strings.Contains(h.Rule, fmt.Sprintf("klab %s drop ", lab.Name)) && strings.Contains(h.Rule, "-j DROP") {
			drops = append(drops, fmt.Sprintf("%s %s +%d", h.Node, h.Chain, h.Packets))
		}
	}
	// In nftables mode the policy table's drop is a traced rule (nftrace).
	for _, h := range rep.NFTrace {
		if h.Table == policy.NFTTable && h.Type == "rule" && h.Verdict == "drop" {
			drops = append(drops, fmt.Sprintf("%s %s (table ip %s)", h.Node, h.Chain, policy.NFTTable))
		}
	}
	answered := rep.Probe == "reply" || rep.Probe == "connected" || strings.HasPrefix(rep.Probe, "answered")
	switch {
	case !v.Allowed && len(drops) > 0:
		return fmt.Sprintf("policy: %s (confirmed: drop rule %s)", v.Reason, strings.Join(drops, ", "))
	case v.Allowed && answered && len(drops) == 0:
		return fmt.Sprintf("policy: %s (confirmed: answered, no drop rule counted)", v.Reason)
	default:
		return fmt.Sprintf("policy: %s (NOT confirmed by the kernel: probe %s, drop rules %v)", v.Reason, rep.Probe, drops)
	}
}

// policyTable is node's policy table as klab renders it (nftables mode),
// so trace events in it are shown with their rule text; nil without
// policies.
func policyTable(lab *cluster.Lab, node string) *nft.Table {
	if len(lab.Policies) == 0 {
		return nil
	}
	ev, err := policy.NewEvaluator(lab.PolicyState())
	if err != nil {
		return nil
	}
	t, err := policy.RenderNFT(ev.Compile(policy.CompileOptions{Lab: lab.Name, Node: node}))
	if err != nil {
		return nil
	}
	return t
}
