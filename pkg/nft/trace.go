package nft

// klab's nftables tracing. kube-proxy's nftables rules have no counters, so
// a journey cannot diff them; instead klab adds its own table, klab-trace,
// whose base chains (prerouting and output, priority -350: before
// conntrack and every NAT chain) set `meta nftrace set 1` on the probe,
// and listens to the kernel's trace events (NFT_MSG_TRACE on the
// NFNLGRP_NFTRACE group of NETLINK_NETFILTER), which name, for every
// chain the marked packet walks, the table, chain, rule handle, and the
// verdict. google/nftables v0.3 has no trace monitor (its monitor.go
// decodes table/chain/rule/set events only), so the events are decoded here
// with mdlayher/netlink, following the kernel's
// net/netfilter/nf_tables_trace.c and nft's src/trace.c.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/klab-dev/klab/pkg/netns"
)

// TraceTableName is klab's own tracing table (removed after a journey).
const TraceTableName = "klab-trace"

// priRaw is "raw - 50" (-350): before conntrack (-200) and DNAT (-100).
const priRaw = -350

// NftraceSet is "meta nftrace set 1".
type NftraceSet struct{}

func (NftraceSet) appendText(b []byte) []byte { return append(b, "meta nftrace set 1"...) }

func (NftraceSet) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: []byte{1}},
		&expr.Meta{Key: expr.MetaKeyNFTRACE, SourceRegister: true, Register: 1},
	}, nil
}

// TraceMatch selects the probe: its source and destination (before any
// NAT), its protocol ("tcp", "udp" or "icmp") and, for TCP and UDP, its
// destination port.
type TraceMatch struct {
	Src, Dst netip.Addr
	Proto    string
	Port     uint16
}

// RenderTrace is klab's tracing table for one probe.
func RenderTrace(m TraceMatch) *Table {
	stmts := []Stmt{}
	if m.Src.IsValid() {
		stmts = append(stmts, IPMatch{Field: Saddr, Prefix: netip.PrefixFrom(m.Src, 32)})
	}
	stmts = append(stmts, IPMatch{Field: Daddr, Prefix: netip.PrefixFrom(m.Dst, 32)})
	switch m.Proto {
	case "tcp", "udp":
		stmts = append(stmts, PortMatch{m.Proto, m.Port})
	case "icmp":
		stmts = append(stmts, L4Proto{"icmp"})
	}
	stmts = append(stmts, NftraceSet{})
	rule := []Rule{{Stmts: stmts}}
	t := &Table{Family: TableFamily, Name: TraceTableName, Comment: "klab journey tracing", Chains: []*Chain{
		{Name: "prerouting", Type: "filter", Hook: "prerouting", Priority: priRaw, Rules: rule},
		{Name: "output", Type: "filter", Hook: "output", Priority: priRaw, Rules: rule},
	}}
	t.index()
	return t
}

// TraceEvent is one trace event: the packet met a rule (Type "rule"), fell
// off the end of a regular chain ("return") or took a base chain's policy
// ("policy").
type TraceEvent struct {
	ID      uint32 `json:"id"` // the same for every event of one packet
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Handle  uint64 `json:"handle,omitempty"`
	Type    string `json:"type"`
	Verdict string `json:"verdict"`
	// Rule is the rule's text (from klab's rendering of the table, matched
	// by handle), when known.
	Rule string `json:"rule,omitempty"`
	// Key is the verdict map's key for a rule that looks one up ("10.96.0.2
	// . tcp . 80"), from the packet's headers in the event.
	Key string `json:"key,omitempty"`

	daddr         netip.Addr
	proto         uint8
	dport         uint16
	haveTransport bool
}

// Tracer collects the trace events of one namespace.
type Tracer struct {
	conn *netlink.Conn
	mu   sync.Mutex
	evs  []TraceEvent
	done chan struct{}
}

// ListenTrace subscribes to the trace events of the named namespace. Close
// it to stop; Events returns what was collected.
func ListenTrace(nsName string) (*Tracer, error) {
	h, err := netns.Open(nsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(h)})
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket in %s: %w", nsName, err)
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		c.Close()
		return nil, fmt.Errorf("join the nftables trace group in %s: %w", nsName, err)
	}
	t := &Tracer{conn: c, done: make(chan struct{})}
	go t.loop()
	return t, nil
}

func (t *Tracer) loop() {
	defer close(t.done)
	for {
		msgs, err := t.conn.Receive()
		if err != nil {
			var ne *netlink.OpError
			if errors.As(err, &ne) && errors.Is(ne.Err, unix.ENOBUFS) {
				continue // events were lost; keep reading the rest
			}
			return // closed (or deadline)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_TRACE) || len(m.Data) < 4 {
				continue
			}
			if ev, err := decodeTrace(m.Data[4:]); err == nil {
				t.mu.Lock()
				t.evs = append(t.evs, ev)
				t.mu.Unlock()
			}
		}
	}
}

// Close stops listening, waiting for the events already queued (up to
// wait) to be read.
func (t *Tracer) Close(wait time.Duration) {
	t.conn.SetReadDeadline(time.Now().Add(wait))
	<-t.done
	t.conn.Close()
}

// Events returns the events collected so far, in the order the kernel sent
// them.
func (t *Tracer) Events() []TraceEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]TraceEvent(nil), t.evs...)
}

func decodeTrace(b []byte) (TraceEvent, error) {
	var ev TraceEvent
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ev, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_TABLE:
			ev.Table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.Chain = ad.String()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.Handle = ad.Uint64()
		case unix.NFTA_TRACE_ID:
			ev.ID = ad.Uint32()
		case unix.NFTA_TRACE_TYPE:
			ev.Type = map[uint32]string{1: "policy", 2: "return", 3: "rule"}[ad.Uint32()]
		case unix.NFTA_TRACE_POLICY:
			ev.Verdict = verdictName(int32(ad.Uint32()), "")
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				nd.ByteOrder = binary.BigEndian
				var code int32
				var chain string
				for nd.Next() {
					switch nd.Type() {
					case unix.NFTA_VERDICT_CODE:
						code = int32(nd.Uint32())
					case unix.NFTA_VERDICT_CHAIN:
						chain = nd.String()
					}
				}
				ev.Verdict = verdictName(code, chain)
				return nil
			})
		case unix.NFTA_TRACE_NETWORK_HEADER:
			if h := ad.Bytes(); len(h) >= 20 && h[0]>>4 == 4 {
				ev.daddr = netip.AddrFrom4([4]byte(h[16:20]))
				ev.proto = h[9]
			}
		case unix.NFTA_TRACE_TRANSPORT_HEADER:
			if h := ad.Bytes(); len(h) >= 4 {
				ev.dport = binary.BigEndian.Uint16(h[2:4])
				ev.haveTransport = true
			}
		}
	}
	return ev, ad.Err()
}

func verdictName(code int32, chain string) string {
	switch code {
	case 1: // NF_ACCEPT
		return "accept"
	case 0: // NF_DROP
		return "drop"
	case -1: // NFT_CONTINUE
		return "continue"
	case -2: // NFT_BREAK
		return "break"
	case -3: // NFT_JUMP
		return "jump " + chain
	case -4: // NFT_GOTO
		return "goto " + chain
	case -5: // NFT_RETURN
		return "return"
	}
	return strconv.Itoa(int(code))
}

// Describe fills in each event's rule text from the rendered tables (the
// kernel's rules of a chain are the rendering's, in order, so the n-th
// handle is the n-th rule) and, for rules that look up a verdict map by
// address, protocol and port, the key the packet presented.
func Describe(nsName string, evs []TraceEvent, tables ...*Table) error {
	h, err := netns.Open(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	byName := map[string]*Table{}
	for _, t := range tables {
		byName[t.Name] = t
	}
	texts := map[string]map[uint64]Rule{} // "table/chain" -> handle -> rule
	var last TraceEvent                   // the packet's headers, as last dumped
	for i := range evs {
		ev := &evs[i]
		// The kernel dumps the packet's headers once per hook, in the
		// hook's first event: later events of that hook have the same.
		if ev.haveTransport || ev.daddr.IsValid() {
			last = *ev
		} else {
			ev.daddr, ev.proto, ev.dport, ev.haveTransport = last.daddr, last.proto, last.dport, last.haveTransport
		}
		t := byName[ev.Table]
		if t == nil || ev.Type != "rule" {
			continue
		}
		k := ev.Table + "/" + ev.Chain
		m, ok := texts[k]
		if !ok {
			m = map[uint64]Rule{}
			if c := t.Chain(ev.Chain); c != nil {
				rules, err := conn.GetRules(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: t.Name}, &nftables.Chain{Name: ev.Chain})
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				for j, r := range rules {
					if j < len(c.Rules) {
						m[r.Handle] = c.Rules[j]
					}
				}
			}
			texts[k] = m
		}
		r, ok := m[ev.Handle]
		if !ok {
			continue
		}
		ev.Rule = r.Text()
		for _, s := range r.Stmts {
			if v, ok := s.(VmapLookup); ok && ev.haveTransport && ev.daddr.IsValid() {
				proto := map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp"}[ev.proto]
				if v.Key == AddrProtoPort {
					ev.Key = ev.daddr.String() + " . " + proto + " . " + strconv.Itoa(int(ev.dport))
				} else {
					ev.Key = proto + " . " + strconv.Itoa(int(ev.dport))
				}
			}
		}
	}
	return nil
}

func (e TraceEvent) String() string {
	s := "ip " + e.Table + " " + e.Chain + ": "
	switch {
	case e.Type == "rule" && e.Handle == 0:
		// The kernel's event for a regular chain none of whose rules
		// decided: back to the calling chain.
		return s + "end of chain, no rule decided"
	case e.Type == "rule":
		if e.Rule != "" {
			s += e.Rule
		} else {
			s += "rule handle " + strconv.FormatUint(e.Handle, 10)
		}
		if e.Key != "" {
			s += "   [key " + e.Key + "]"
		}
		return s + "  => " + e.Verdict
	case e.Type == "return":
		return s + "end of chain, return"
	}
	return s + "policy " + e.Verdict
}
