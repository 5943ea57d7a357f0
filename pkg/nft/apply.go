package nft

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/klab-dev/klab/pkg/netns"
)

// elemBytes bounds the elements' encoded size in one netlink message: they
// travel in one nested attribute (NFTA_SET_ELEM_LIST_ELEMENTS), whose
// length field is 16 bits. Past 64 KiB the length wraps and the kernel
// reads a truncated list without an error: service-ips elements (a goto
// to a ~45-byte chain name) are ~100 bytes, so 1,024 of them lost all but
// the first ~255. Measured per element, as the attribute grows.
const elemBytes = 48 << 10

// batchLen is how many of elems fit in one message (at least one, at most
// elemBatch).
func batchLen(elems []Element) int {
	size := 0
	for i, e := range elems {
		// key (<= 16 bytes) + attribute headers, the verdict with its
		// chain name, the comment in userdata, and padding.
		size += 64 + len(e.Value) + len(e.Comment)
		if i > 0 && (size > elemBytes || i == elemBatch) {
			return i
		}
	}
	return len(elems)
}

// elemBatch is the most elements sent in one netlink message (the whole
// transaction is still one batch: one Flush, one kernel commit).
const elemBatch = 1024

// Apply brings the kube-proxy table in the named network namespace from prev
// (what the last Apply wrote there; nil if unknown) to next, in ONE netlink
// transaction: Diff(prev, next) applied with ApplyChange.
func Apply(nsName string, prev, next *Table) (*Change, error) {
	ch := Diff(prev, next)
	return ch, ApplyChange(nsName, ch)
}

// ApplyChange sends a change to the kernel of the named network namespace as
// one nf_tables batch (a single Flush of a google/nftables Conn opened in that
// namespace): either all of it takes effect or none does. Nothing runs `nft`.
func ApplyChange(nsName string, ch *Change) error {
	if ch.Empty() {
		return nil
	}
	h, err := netns.Open(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)), nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		return fmt.Errorf("nftables in namespace %s: %w", nsName, err)
	}
	e := &encoder{conn: conn, table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ch.Table}, sets: map[string]*nftables.Set{}}
	if ch.Family != TableFamily {
		return fmt.Errorf("table family %q is not supported (only ip)", ch.Family)
	}
	encodeMu.Lock()
	err = e.change(ch)
	encodeMu.Unlock()
	if err != nil {
		return fmt.Errorf("encode nftables change for namespace %s: %w", nsName, err)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables transaction in namespace %s: %w", nsName, err)
	}
	return nil
}

// bigSendBuffer lets one sendmsg carry a whole batch: the kernel takes an
// nf_tables transaction from a single message, and a full sync at 10,000
// services is ~10 MB, far above the default socket buffer. Like nft
// (mnl_set_sndbuffer), it forces the sizes (SO_SNDBUFFORCE and
// SO_RCVBUFFORCE, root).
func bigSendBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 256<<20)
		if serr == nil {
			// google/nftables asks for an ack per message and reads them
			// after the kernel has processed the whole batch: ~100,000
			// acks at 10,000 services must fit in the receive queue.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<30)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Delete removes the kube-proxy table from the named namespace (idempotent).
func Delete(nsName string) error {
	h, err := netns.Open(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	conn.AddTable(t) // add+delete: no error when it does not exist
	conn.DelTable(t)
	return conn.Flush()
}

// encoder turns Table values into google/nftables calls on one Conn.
type encoder struct {
	conn  *nftables.Conn
	table *nftables.Table
	sets  map[string]*nftables.Set // created in this transaction (they have IDs)
}

func (e *encoder) chainRef(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: e.table}
}

// set returns the set to refer to: the one created in this batch (by ID), or
// one already in the kernel (by name).
func (e *encoder) set(name string) (*nftables.Set, error) {
	if s := e.sets[name]; s != nil {
		return s, nil
	}
	return &nftables.Set{Table: e.table, Name: name}, nil
}

func (e *encoder) change(ch *Change) error {
	if t := ch.Full; t != nil {
		e.conn.AddTable(e.table)
		e.conn.DelTable(e.table) // replace whatever was there
		e.conn.AddTable(e.table)
		for _, c := range t.Chains {
			e.addChain(c)
		}
		for _, s := range t.Sets {
			if err := e.addSet(s, s.Elements); err != nil {
				return err
			}
		}
		for _, c := range t.Chains {
			if err := e.addRules(c); err != nil {
				return err
			}
		}
		return nil
	}
	for _, c := range ch.AddChains {
		e.addChain(c)
	}
	for _, s := range ch.AddSets {
		if err := e.addSet(s, s.Elements); err != nil {
			return err
		}
	}
	for _, se := range ch.DelElements {
		if err := e.elements(se, false); err != nil {
			return err
		}
	}
	for _, c := range ch.RewriteChains {
		e.conn.FlushChain(e.chainRef(c.Name))
		if err := e.addRules(c); err != nil {
			return err
		}
	}
	for _, c := range ch.AddChains {
		if err := e.addRules(c); err != nil {
			return err
		}
	}
	for _, se := range ch.AddElements {
		if err := e.elements(se, true); err != nil {
			return err
		}
	}
	for _, n := range ch.DelChains {
		e.conn.FlushChain(e.chainRef(n))
	}
	for _, n := range ch.DelChains {
		e.conn.DelChain(e.chainRef(n))
	}
	for _, n := range ch.DelSets {
		e.conn.DelSet(&nftables.Set{Table: e.table, Name: n})
	}
	return nil
}

var hooks = map[string]*nftables.ChainHook{
	"prerouting":  nftables.ChainHookPrerouting,
	"input":       nftables.ChainHookInput,
	"forward":     nftables.ChainHookForward,
	"output":      nftables.ChainHookOutput,
	"postrouting": nftables.ChainHookPostrouting,
}

func (e *encoder) addChain(c *Chain) {
	nc := &nftables.Chain{Name: c.Name, Table: e.table}
	if c.Hook != "" {
		nc.Hooknum = hooks[c.Hook]
		nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Priority))
		nc.Type = nftables.ChainType(c.Type)
	}
	// google/nftables v0.3 has no chain (or table) comments: the kernel
	// copy lacks them; Text() has them.
	e.conn.AddChain(nc)
}

func (e *encoder) addRules(c *Chain) error {
	ref := e.chainRef(c.Name)
	for i, r := range c.Rules {
		var exprs []expr.Any
		for _, s := range r.Stmts {
			x, err := s.exprs(e)
			if err != nil {
				return fmt.Errorf("chain %s rule %d (%s): %w", c.Name, i, r.Text(), err)
			}
			exprs = append(exprs, x...)
		}
		nr := &nftables.Rule{Table: e.table, Chain: ref, Exprs: exprs}
		if r.Comment != "" {
			nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
		}
		e.conn.AddRule(nr)
	}
	return nil
}

// datatypes are the key and data types kube-proxy's sets and maps use.
var datatypes = map[string]nftables.SetDatatype{
	"ipv4_addr":    nftables.TypeIPAddr,
	"inet_proto":   nftables.TypeInetProto,
	"inet_service": nftables.TypeInetService,
}

func (e *encoder) nfSet(s *Set) (*nftables.Set, []string, error) {
	keyType, _, _ := strings.Cut(s.Type, " : ")
	fields := strings.Split(keyType, " . ")
	types := make([]nftables.SetDatatype, len(fields))
	for i, f := range fields {
		dt, ok := datatypes[f]
		if !ok {
			return nil, nil, fmt.Errorf("set %s: type %q is not supported", s.Name, f)
		}
		types[i] = dt
	}
	ns := &nftables.Set{Table: e.table, Name: s.Name, IsMap: s.IsMap, Comment: s.Comment, KeyType: types[0]}
	if len(types) > 1 {
		kt, err := nftables.ConcatSetType(types...)
		if err != nil {
			return nil, nil, err
		}
		ns.KeyType = kt
	}
	if s.IsMap {
		ns.DataType = nftables.TypeVerdict
	}
	for _, f := range s.Flags {
		switch f {
		case "dynamic":
			ns.Dynamic = true
		case "timeout":
			ns.HasTimeout = true
		default:
			return nil, nil, fmt.Errorf("set %s: flag %q is not supported", s.Name, f)
		}
	}
	if s.Timeout > 0 {
		ns.HasTimeout = true
		ns.Timeout = time.Duration(s.Timeout) * time.Second
	}
	return ns, fields, nil
}

func (e *encoder) addSet(s *Set, elems []Element) error {
	ns, fields, err := e.nfSet(s)
	if err != nil {
		return err
	}
	first := elems[:batchLen(elems)]
	ne, err := encodeElements(s, fields, first)
	if err != nil {
		return err
	}
	if err := e.conn.AddSet(ns, ne); err != nil {
		return err
	}
	e.sets[s.Name] = ns
	return e.sendElements(ns, s, fields, elems[len(first):], true)
}

func (e *encoder) elements(se SetElements, add bool) error {
	ns, fields, err := e.nfSet(se.Set)
	if err != nil {
		return err
	}
	if known := e.sets[se.Set.Name]; known != nil {
		ns = known
	}
	return e.sendElements(ns, se.Set, fields, se.Elements, add)
}

func (e *encoder) sendElements(ns *nftables.Set, s *Set, fields []string, elems []Element, add bool) error {
	for len(elems) > 0 {
		n := batchLen(elems)
		ne, err := encodeElements(s, fields, elems[:n])
		if err != nil {
			return err
		}
		if add {
			err = e.conn.SetAddElements(ns, ne)
		} else {
			err = e.conn.SetDeleteElements(ns, ne)
		}
		if err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

func encodeElements(s *Set, fields []string, elems []Element) ([]nftables.SetElement, error) {
	out := make([]nftables.SetElement, len(elems))
	concat := len(fields) > 1
	for i, el := range elems {
		if len(el.Key) != len(fields) {
			return nil, fmt.Errorf("set %s: element %v does not match type %s", s.Name, el.Key, s.Type)
		}
		var key []byte
		for j, f := range fields {
			b, err := encodeField(f, el.Key[j])
			if err != nil {
				return nil, fmt.Errorf("set %s element %v: %w", s.Name, el.Key, err)
			}
			key = append(key, b...)
			if concat {
				for len(key)%4 != 0 {
					key = append(key, 0)
				}
			}
		}
		out[i] = nftables.SetElement{Key: key, Comment: el.Comment}
		if s.IsMap {
			kind, chain, _ := strings.Cut(el.Value, " ")
			v, err := verdictExpr(kind, chain)
			if err != nil || v == nil {
				return nil, fmt.Errorf("set %s element %v: value %q is not a verdict", s.Name, el.Key, el.Value)
			}
			out[i].VerdictData = v
		}
	}
	return out, nil
}

func encodeField(typ, v string) ([]byte, error) {
	switch typ {
	case "ipv4_addr":
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%q is not an IPv4 address", v)
		}
		b := a.As4()
		return b[:], nil
	case "inet_proto":
		p, err := protoNum(v)
		return []byte{p}, err
	case "inet_service":
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%q is not a port", v)
		}
		return binaryutil.BigEndian.PutUint16(uint16(n)), nil
	}
	return nil, fmt.Errorf("type %q is not supported", typ)
}
