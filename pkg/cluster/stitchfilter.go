package cluster

// The stitch's filter, on the first machine: etcd's plain-HTTP port
// (:2379) serves this machine's nodes only. Frames that come in through
// the stitch (from other machines) and carry TCP to the control-plane
// node's :2379 are dropped at the underlay bridge by a bridge-family
// nftables rule, so nothing crosses machines in clear: the other machines
// use etcd's TLS port (:2378, client certificates of the lab's CA) and
// the join endpoint (:6443, TLS). The bridge family filters bridged
// frames without br_netfilter (a host-wide module setting klab must not
// touch). Written over netlink (github.com/google/nftables) in one
// transaction, like klab's other tables.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"golang.org/x/sys/unix"
)

// StitchFilterTable is the table's name in the first machine's underlay
// namespace.
const StitchFilterTable = "klab-stitch"

// stitchFilter is the table, as a plan.NFT operation's transaction.
type stitchFilter struct {
	CP   netip.Addr
	Port int
}

func (f stitchFilter) Text() string {
	return fmt.Sprintf(`add table bridge %[1]s
delete table bridge %[1]s
table bridge %[1]s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname %[2]q ether type ip ip daddr %[3]s tcp dport %[4]d counter drop comment "etcd's plain HTTP is for this machine's nodes: other machines use TLS on :%[5]d"
	}
}
`, StitchFilterTable, StitchDev, f.CP, f.Port, EtcdTLSPort)
}

func (f stitchFilter) Apply(ns string) error {
	h, err := netns.Open(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return fmt.Errorf("nftables in namespace %s: %w", ns, err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: StitchFilterTable}
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := conn.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, StitchDev)
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, uint16(f.Port))
	etherIP := make([]byte, 2)
	binary.BigEndian.PutUint16(etherIP, unix.ETH_P_IP)
	comment := fmt.Sprintf("etcd's plain HTTP is for this machine's nodes: other machines use TLS on :%d", EtcdTLSPort)
	conn.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: userdata.AppendString(nil, userdata.TypeComment, comment), Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: etherIP},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: f.CP.AsSlice()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables transaction in namespace %s: %w", ns, err)
	}
	return nil
}

// planStitchFilter plans the table on the first machine's underlay.
func (c *Cluster) planStitchFilter() plan.Plan {
	f := stitchFilter{CP: c.Lab.ControlPlane.IP, Port: 2379}
	return plan.Plan{{Verb: plan.NFT, NS: c.NS(UnderlayName), NFT: f, Why: "plain etcd stays on this machine"}}
}
