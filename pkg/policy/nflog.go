package policy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
)

// NFLOG: every pod chain's last two rules are NFLOG (group Plan.NFLOGGroup,
// prefix NFLOGPrefix) and DROP. DropLog listens on that group in a node's
// namespace, so a drop is seen as it happens, with the prefix that names
// the pod and direction — the same event a policy agent's logging (Calico's
// flow logs, Cilium's policy verdicts) reports, and an alternative to
// reading the DROP rule's counter.
//
// The messages are nfnetlink_log's (linux/netfilter/nfnetlink_log.h),
// framed by github.com/ti-mo/netfilter over github.com/mdlayher/netlink.
const (
	nfulnlMsgPacket = 0 // NFULNL_MSG_PACKET
	nfulnlMsgConfig = 1 // NFULNL_MSG_CONFIG

	nfulaCfgCmd  = 1 // NFULA_CFG_CMD: struct nfulnl_msg_config_cmd { __u8 command; }
	nfulaCfgMode = 2 // NFULA_CFG_MODE: { __be32 copy_range; __u8 copy_mode; __u8 pad; }
	// NFULA_CFG_QTHRESH (__be32): packets the kernel batches before it
	// sends them (default 100, or after the 1 s flush timeout).
	nfulaCfgQthresh = 4
	nfulaPrefix     = 10

	nfulnlCfgCmdBind = 1
	nfulnlCopyMeta   = 1 // metadata only: the prefix is all DropLog needs
)

// DefaultNFLOGGroup is the NFLOG group of the drop rules when
// CompileOptions.NFLOGGroup is 0.
const DefaultNFLOGGroup = 100

// DropLog collects the NFLOG prefixes logged on one group of one
// namespace while it is open.
type DropLog struct {
	conn *netfilter.Conn
	mu   sync.Mutex
	seen []string
	done chan struct{}
}

// ListenDrops binds NFLOG group in namespace ns (one listener per group
// and namespace: the kernel refuses a second) and collects the prefixes of
// what is logged until Close.
func ListenDrops(ns string, group uint16) (*DropLog, error) {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, fmt.Errorf("NFLOG in %s: %w", ns, err)
	}
	defer f.Close()
	conn, err := netfilter.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("NFLOG in %s: %w", ns, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0) // copy_range: unlimited (metadata mode copies none)
	mode[4] = nfulnlCopyMeta
	one := binary.BigEndian.AppendUint32(nil, 1) // each drop sent as it happens
	for _, a := range [][]netfilter.Attribute{
		{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}},
		{{Type: nfulaCfgMode, Data: mode}},
		{{Type: nfulaCfgQthresh, Data: one}},
	} {
		msg, err := netfilter.MarshalNetlink(netfilter.Header{
			SubsystemID: netfilter.NFSubsysULOG, MessageType: nfulnlMsgConfig,
			Family: netfilter.ProtoUnspec, Flags: netlink.Request | netlink.Acknowledge, ResourceID: group,
		}, a)
		if err == nil {
			_, err = conn.Query(msg)
		}
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("NFLOG in %s: bind group %d: %w", ns, group, err)
		}
	}
	d := &DropLog{conn: conn, done: make(chan struct{})}
	go d.read()
	return d, nil
}

func (d *DropLog) read() {
	defer close(d.done)
	for {
		msgs, err := d.conn.Receive()
		if err != nil {
			return // closed (or the deadline Close set)
		}
		for _, m := range msgs {
			h, attrs, err := netfilter.UnmarshalNetlink(m)
			if err != nil || h.SubsystemID != netfilter.NFSubsysULOG || h.MessageType != nfulnlMsgPacket {
				continue
			}
			for _, a := range attrs {
				if a.Type == nfulaPrefix {
					d.mu.Lock()
					d.seen = append(d.seen, string(bytes.TrimRight(a.Data, "\x00")))
					d.mu.Unlock()
				}
			}
		}
	}
}

// Close stops listening (the group is unbound with the socket) and
// returns the prefixes logged, in order. Packets logged just before are
// still read: the socket is drained for up to wait first.
func (d *DropLog) Close(wait time.Duration) []string {
	d.conn.SetReadDeadline(time.Now().Add(wait))
	<-d.done
	d.conn.Close()
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.seen...)
}
