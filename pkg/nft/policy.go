package nft

// Statements and read-backs for klab's NetworkPolicy table on nftables
// nodes (pkg/policy RenderNFT): the shapes kube-proxy never writes but a
// policy filter needs — conntrack established/related, destination port
// ranges, an address against a list of ranges (an ipBlock with its
// excepts), NFLOG — and the drop rules' counters read back over netlink.

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/klab-dev/klab/pkg/netns"
)

// CtStateEstablishedRelated is "ct state established,related".
type CtStateEstablishedRelated struct{}

func (CtStateEstablishedRelated) appendText(b []byte) []byte {
	return append(b, "ct state established,related"...)
}

func (CtStateEstablishedRelated) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, nil
}

// PortRange is "tcp dport 80-81" (From == To prints "tcp dport 80").
type PortRange struct {
	Proto    string
	From, To uint16
}

func (s PortRange) appendText(b []byte) []byte {
	b = strconv.AppendUint(append(b, s.Proto+" dport "...), uint64(s.From), 10)
	if s.To != s.From {
		b = strconv.AppendUint(append(b, '-'), uint64(s.To), 10)
	}
	return b
}

func (s PortRange) exprs(e *encoder) ([]expr.Any, error) {
	if s.From == s.To {
		return PortMatch{Proto: s.Proto, Port: s.From}.exprs(e)
	}
	p, err := protoNum(s.Proto)
	if err != nil {
		return nil, err
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: binaryutil.BigEndian.PutUint16(s.From), ToData: binaryutil.BigEndian.PutUint16(s.To)},
	}, nil
}

// IPRange is an inclusive range of IPv4 addresses.
type IPRange struct{ From, To netip.Addr }

// IPInRanges is "ip saddr { 10.0.0.0-10.0.255.255, 10.2.0.0-10.255.255.255 }":
// an anonymous interval set, the nftables form of an ipset hash:net with
// nomatch entries (the ranges are what remains of the CIDRs once the
// excepts are cut out). Ranges are sorted and disjoint.
type IPInRanges struct {
	Field  Field
	Ranges []IPRange
}

func (s IPInRanges) appendText(b []byte) []byte {
	b = append(append(append(b, "ip "...), s.Field.String()...), " { "...)
	for i, r := range s.Ranges {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = r.From.AppendTo(b)
		if r.To != r.From {
			b = r.To.AppendTo(append(b, '-'))
		}
	}
	return append(b, " }"...)
}

func (s IPInRanges) exprs(e *encoder) ([]expr.Any, error) {
	if len(s.Ranges) == 0 {
		return nil, fmt.Errorf("an address range list is empty")
	}
	// An interval set is a sorted list of boundaries: a start element per
	// range and an IntervalEnd element one past its end; the gap before the
	// first range is an IntervalEnd at 0.0.0.0, as nft sends it.
	var elems []nftables.SetElement
	if f := s.Ranges[0].From.As4(); f != [4]byte{} {
		elems = append(elems, nftables.SetElement{Key: []byte{0, 0, 0, 0}, IntervalEnd: true})
	}
	for _, r := range s.Ranges {
		if !r.From.Is4() || !r.To.Is4() || r.To.Less(r.From) {
			return nil, fmt.Errorf("address range %v-%v is not an IPv4 range", r.From, r.To)
		}
		f := r.From.As4()
		elems = append(elems, nftables.SetElement{Key: f[:]})
		if n := r.To.Next(); n.IsValid() {
			t := n.As4()
			elems = append(elems, nftables.SetElement{Key: t[:], IntervalEnd: true})
		}
	}
	set := &nftables.Set{Table: e.table, Anonymous: true, Constant: true, Interval: true,
		KeyType: nftables.TypeIPAddr, KeyByteOrder: binaryutil.BigEndian}
	if err := e.conn.AddSet(set, elems); err != nil {
		return nil, err
	}
	return []expr.Any{s.Field.payload(1), &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID}}, nil
}

// Log is `log prefix "..." group N`: the packet goes to NFLOG group N (what
// iptables' -j NFLOG --nflog-group does), and the rule goes on.
type Log struct {
	Prefix string
	Group  uint16
}

func (s Log) appendText(b []byte) []byte {
	b = strconv.AppendQuote(append(b, "log prefix "...), s.Prefix)
	return strconv.AppendUint(append(b, " group "...), uint64(s.Group), 10)
}

func (s Log) exprs(*encoder) ([]expr.Any, error) {
	return []expr.Any{&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: s.Group, Data: []byte(s.Prefix)}}, nil
}

// RuleCounters reads, over netlink, the packet counters of the rules of
// table ip NAME in the named namespace that carry a comment and a counter:
// comment -> packets (summed over rules sharing a comment). Nil, nil when
// the table does not exist.
func RuleCounters(nsName, table string) (map[string]uint64, error) {
	h, err := netns.Open(nsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)), nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		return nil, fmt.Errorf("nftables in namespace %s: %w", nsName, err)
	}
	t, err := conn.ListTableOfFamily(table, nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables chains in namespace %s: %w", nsName, err)
	}
	m := map[string]uint64{}
	for _, c := range chains {
		if c.Table.Name != table {
			continue
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s in namespace %s: %w", c.Name, nsName, err)
		}
		for _, r := range rules {
			cm, ok := userdata.GetString(r.UserData, userdata.TypeComment)
			if !ok || cm == "" {
				continue
			}
			for _, x := range r.Exprs {
				if ctr, ok := x.(*expr.Counter); ok {
					m[cm] += ctr.Packets
				}
			}
		}
	}
	return m, nil
}
