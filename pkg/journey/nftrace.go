package journey

import (
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
)

// NFTHop is one nftables trace event of the probe in a node: the chain it
// walked, the rule (and verdict map key) that matched, and the verdict.
type NFTHop struct {
	Node string `json:"node"`
	nft.TraceEvent
}

func (h NFTHop) String() string { return h.Node + " " + h.TraceEvent.String() }

// nftTracing is klab's tracing of one probe in an nftables-mode lab:
// kube-proxy's nftables rules carry no counters, so every node gets klab's
// klab-trace table (meta nftrace set 1 on the probe) and a listener for the
// kernel's trace events, both removed when the probe is done.
type nftTracing struct {
	lab     *cluster.Lab
	a       *plan.Applier
	tracers map[string]*nft.Tracer
	// iptables: the lab is in iptables mode on iptables-nft (iptnft.go):
	// the events name iptables rules, collected in hits.
	iptables bool
	hits     []RuleHit
}

// startNFTTrace arms tracing in every node, or returns nil when the lab is
// not in nftables mode (or tracing cannot be armed: the journey then goes
// on without it).
func startNFTTrace(lab *cluster.Lab, p *Plan) *nftTracing {
	iptables := !lab.NFTables()
	if iptables && !iptablesNFT() {
		return nil // iptables-legacy: the counter diff (enrich.go)
	}
	m := nft.TraceMatch{Dst: p.Dst, Proto: p.Proto, Port: uint16(p.Port)}
	if pod := lab.Pod(p.From); pod != nil {
		m.Src = pod.IP // a node's source address depends on its route: match any
	}
	tr := &nftTracing{lab: lab, a: &plan.Applier{Discard: true}, tracers: map[string]*nft.Tracer{}, iptables: iptables}
	for _, n := range lab.Nodes {
		ns := netns.Name(lab.Name, n.Name)
		t, err := nft.ListenTrace(ns)
		if err != nil {
			continue
		}
		b := &nft.Batch{Changes: []*nft.Change{nft.Diff(nil, nft.RenderTrace(m))}}
		if err := tr.a.Apply(plan.Plan{{Verb: plan.NFT, NS: ns, NFT: b, Why: "klab's journey tracing"}}); err != nil {
			t.Close(0)
			continue
		}
		tr.tracers[n.Name] = t
	}
	return tr
}

// stop removes the tracing tables and returns the probe's trace events,
// node by node, with the rule texts of kube-proxy's and flannel's tables.
func (tr *nftTracing) stop() []NFTHop {
	if tr == nil {
		return nil
	}
	var out []NFTHop
	for _, n := range tr.lab.Nodes {
		t := tr.tracers[n.Name]
		if t == nil {
			continue
		}
		ns := netns.Name(tr.lab.Name, n.Name)
		t.Close(50 * time.Millisecond)
		tr.a.Apply(plan.Plan{{Verb: plan.NFT, NS: ns, NFT: &nft.Batch{DelTables: []string{nft.TraceTableName}}}})
		evs := t.Events()
		if tr.iptables {
			tr.hits = append(tr.hits, iptablesHits(n.Name, ns, evs)...)
			continue
		}
		kp, fl, err := tr.lab.NFTTables(n)
		if err == nil {
			tables := []*nft.Table{kp, fl}
			if pt := policyTable(tr.lab, n.Name); pt != nil {
				tables = append(tables, pt)
			}
			nft.Describe(ns, evs, tables...)
		}
		// The probe's first packet (the SYN, the echo request) is the one
		// that walks the NAT chains; the connection's later packets are
		// traced too. klab's marking rule is each traced packet's first
		// event (it runs before every other chain): keep the events from
		// the first marking to the next. (The kernel's trace id is no
		// guide: it changes between hooks once NAT has rewritten the
		// packet.)
		marks := 0
		for _, ev := range evs {
			if ev.Table == nft.TraceTableName {
				if ev.Type == "rule" && ev.Handle != 0 {
					marks++
				}
				continue // klab's own marking rule (and its chain's policy)
			}
			if marks != 1 {
				continue
			}
			out = append(out, NFTHop{Node: n.Name, TraceEvent: ev})
		}
	}
	return out
}
