package plan

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Verb is what an operation does.
type Verb string

// The operations klab makes. Each is executed by the Applier and rendered
// as the command a student would type (Op.Command).
const (
	NetnsAdd       Verb = "netns add"        // ip netns add NAME
	NetnsDel       Verb = "netns del"        // ip netns del NAME
	LinkAdd        Verb = "link add"         // ip link add ... type veth|bridge|vxlan
	LinkDel        Verb = "link del"         // ip link del NAME
	LinkSetUp      Verb = "link set up"      // ip link set NAME up
	LinkSetMaster  Verb = "link set master"  // ip link set NAME master BRIDGE
	LinkSetMTU     Verb = "link set mtu"     // ip link set NAME mtu N
	LinkSetMAC     Verb = "link set address" // ip link set NAME address MAC
	LinkSetHairpin Verb = "hairpin on"       // bridge link set dev NAME hairpin on
	AddrAdd        Verb = "addr add"         // ip addr add CIDR dev NAME
	AddrDel        Verb = "addr del"         // ip addr del CIDR dev NAME
	RouteReplace   Verb = "route replace"    // ip route replace DST [via GW] dev NAME [onlink]
	RouteDel       Verb = "route del"        // ip route del DST ...
	NeighReplace   Verb = "neigh replace"    // ip neigh replace IP lladdr MAC dev NAME nud permanent
	NeighDel       Verb = "neigh del"        // ip neigh del IP dev NAME
	FDBReplace     Verb = "fdb replace"      // bridge fdb replace MAC dev NAME dst IP self permanent
	FDBDel         Verb = "fdb del"          // bridge fdb del MAC dev NAME dst IP self
	FDBAppend      Verb = "fdb append"       // bridge fdb append MAC dev NAME dst IP self permanent (one more flood destination)
	Sysctl         Verb = "sysctl"           // sysctl -w KEY=VALUE (inside the namespace)
	Restore        Verb = "iptables-restore" // iptables-restore [--noflush] --wait <<EOF
	IPTables       Verb = "iptables"         // one rule: iptables -C ... || iptables -I/-A ...; or -D
	IPSet          Verb = "ipset restore"    // ipset restore <<EOF (sets of addresses, inside the namespace)
	NFT            Verb = "nft"              // nft -f - <<EOF: one nf_tables transaction, sent over netlink
	WriteFile      Verb = "write"            // a file klab keeps (IPAM, subnet.env, state)
	RemoveFile     Verb = "remove"           // rm -rf PATH
	Exec           Verb = "exec"             // anything else: a process started or stopped
)

// Op is one change, as a value. NS is the namespace it happens in (for
// NetnsAdd and NetnsDel, the namespace itself; empty for host-side work:
// files and processes). Exactly the payload
// field its Verb needs is set.
type Op struct {
	Verb Verb
	NS   string
	// New is true when the operation creates its object (it did not exist
	// in the State the plan was computed from): a failed or interrupted
	// apply removes it again.
	New bool

	Link  *Link  // Link* verbs (LinkAdd: the whole link; the others: Name and the attribute)
	Addr  *Addr  // AddrAdd, AddrDel
	Route *Route // RouteReplace, RouteDel
	Neigh *Neigh // NeighReplace, NeighDel, FDBReplace, FDBAppend, FDBDel
	Key   string // Sysctl: the key under /proc/sys, like net/ipv4/ip_forward
	Value string // Sysctl: the value
	Rules *Rules // Restore, IPTables
	// Sets is the `ipset restore` input of an IPSet operation: create,
	// flush, add, del, swap and destroy lines, run as one command.
	Sets string
	// NFT is the transaction of an NFT operation (pkg/nft.Batch): its
	// `nft -f` text for Command, and its netlink apply.
	NFT  NFTables
	File *File // WriteFile, RemoveFile
	Proc *Proc // Exec

	// Why is a short comment printed after the command ("# flannel's
	// VTEP"); optional.
	Why string
}

// Link is a network device. For LinkAdd every field that is set is
// created; for the LinkSet verbs Name names the device and the one
// attribute is read (Master, MTU, MAC).
type Link struct {
	Name   string
	Type   string // veth, bridge, vxlan
	MTU    int
	MAC    net.HardwareAddr
	Master string // bridge to enslave to
	Up     bool   // created up (ip link add ... up)

	// veth: the peer, created directly in PeerNS.
	PeerName string
	PeerNS   string
	PeerMTU  int
	PeerMAC  net.HardwareAddr

	// vxlan
	VNI      int
	Local    netip.Addr
	Dev      string // underlay device
	Port     int
	Learning bool
	// Proxy, L2Miss and L3Miss are old flannel's (<= 0.9) device: the
	// kernel answers ARP from the device's neighbour table and tells
	// userspace (RTM_GETNEIGH) about every IP or MAC it has no entry for.
	Proxy, L2Miss, L3Miss bool
	// HostSocket creates the device from the machine's own namespace
	// straight into NS (ip link add NAME netns NS type vxlan ...): a
	// vxlan device opens its UDP socket in the namespace it was created
	// from, so the socket is in the machine's namespace, on the machine's
	// network, while the device is in the lab's. That socket is the only
	// thing klab ever opens in the machine's namespace (the stitch of a
	// lab that spans machines); no link appears there, not even briefly.
	HostSocket bool
}

// Addr is an address on a device.
type Addr struct {
	Dev    string
	Prefix netip.Prefix // address and prefix length, like 10.244.1.1/24
}

// Route is a main-table IPv4 route.
type Route struct {
	Dst    netip.Prefix // invalid means the default route
	Gw     netip.Addr   // invalid means a directly connected route
	Dev    string
	Onlink bool
	// Blackhole makes it a blackhole route (no device, no gateway): the
	// kernel drops what matches it (Felix blackholes a node's own IPAM
	// blocks).
	Blackhole bool
}

// IsDefault reports whether r is the default route.
func (r Route) IsDefault() bool { return !r.Dst.IsValid() || r.Dst.Bits() == 0 }

// Neigh is a permanent neighbour (ARP) entry, or, for the FDB verbs, a
// forwarding-database entry of a VXLAN device: MAC lives behind underlay
// address IP.
type Neigh struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

// Rules is an iptables change inside a namespace: an iptables-restore
// input (Restore), or one rule of a built-in chain (IPTables).
type Rules struct {
	Input   string // Restore: the iptables-restore input
	NoFlush bool   // Restore: --noflush

	// IPTables: Table and Chain, the rule's arguments, and what to do: -A
	// (append if missing), -I (insert at 1 if missing) or -D (delete if
	// present).
	Table, Chain, Action string
	Rule                 []string
}

// NFTables is an nf_tables transaction in one namespace, as pkg/nft builds
// it: Text is the equivalent `nft -f` input, Apply sends it over netlink
// (no nft binary) as one batch. (An interface, since pkg/nft's renderers
// build on pkg/nat, which builds on this package.)
type NFTables interface {
	Text() string
	Apply(ns string) error
}

// File is a file klab writes or removes. State files are klab's own
// bookkeeping: they are named, not spelled out, in --explain and scripts.
type File struct {
	Path    string
	Data    []byte
	Mode    uint32 // 0 means 0644
	State   bool   // klab's state file: written atomically, shown as a comment
	Atomic  bool   // write a temporary file, then rename it into place
	Recurse bool   // RemoveFile: the whole directory
}

// Proc is an operation klab does that is neither netlink nor a rule loader:
// starting or stopping a process. Cmd is its equivalent command line (a
// comment when there is none); Run does it.
type Proc struct {
	Cmd string
	Run func() error
}

// Command is the equivalent shell command of op: what a student would type
// to make the same change. Multi-line commands (iptables-restore, file
// writes) use quoted heredocs, unindented, so they run as printed.
func (op Op) Command() string {
	c := op.command()
	if op.Why != "" && !strings.Contains(c, "\n") {
		c += "   # " + op.Why
	}
	return c
}

func (op Op) command() string {
	ip := "ip"
	if op.NS != "" {
		ip = "ip -n " + op.NS
	}
	in := func(cmd string) string {
		if op.NS == "" {
			return cmd
		}
		return "ip netns exec " + op.NS + " " + cmd
	}
	switch op.Verb {
	case NetnsAdd:
		return "ip netns add " + op.NS
	case NetnsDel:
		return "ip netns del " + op.NS
	case LinkAdd:
		if op.Link.HostSocket {
			return "ip link add " + strings.Replace(linkAddArgs(op.Link), " ", " netns "+op.NS+" ", 1)
		}
		return ip + " link add " + linkAddArgs(op.Link)
	case LinkDel:
		return ip + " link del " + op.Link.Name
	case LinkSetUp:
		return ip + " link set " + op.Link.Name + " up"
	case LinkSetMaster:
		return ip + " link set " + op.Link.Name + " master " + op.Link.Master
	case LinkSetMTU:
		return fmt.Sprintf("%s link set %s mtu %d", ip, op.Link.Name, op.Link.MTU)
	case LinkSetMAC:
		return fmt.Sprintf("%s link set %s address %s", ip, op.Link.Name, op.Link.MAC)
	case LinkSetHairpin:
		return strings.Replace(ip, "ip", "bridge", 1) + " link set dev " + op.Link.Name + " hairpin on"
	case AddrAdd:
		// netlink.AddrAdd gives an IPv4 address shorter than /31 its
		// broadcast address; iproute2 does that only when asked (brd +).
		brd := ""
		if op.Addr.Prefix.Addr().Is4() && op.Addr.Prefix.Bits() < 31 {
			brd = " brd +"
		}
		return fmt.Sprintf("%s addr add %s%s dev %s", ip, op.Addr.Prefix, brd, op.Addr.Dev)
	case AddrDel:
		return fmt.Sprintf("%s addr del %s dev %s", ip, op.Addr.Prefix, op.Addr.Dev)
	case RouteReplace:
		return ip + " route replace " + op.Route.String()
	case RouteDel:
		return ip + " route del " + op.Route.String()
	case NeighReplace:
		return fmt.Sprintf("%s neigh replace %s lladdr %s dev %s nud permanent", ip, op.Neigh.IP, op.Neigh.MAC, op.Neigh.Dev)
	case NeighDel:
		return fmt.Sprintf("%s neigh del %s dev %s", ip, op.Neigh.IP, op.Neigh.Dev)
	case FDBReplace:
		return fmt.Sprintf("%s fdb replace %s dev %s dst %s self permanent", strings.Replace(ip, "ip", "bridge", 1), op.Neigh.MAC, op.Neigh.Dev, op.Neigh.IP)
	case FDBDel:
		return fmt.Sprintf("%s fdb del %s dev %s dst %s self", strings.Replace(ip, "ip", "bridge", 1), op.Neigh.MAC, op.Neigh.Dev, op.Neigh.IP)
	case FDBAppend:
		return fmt.Sprintf("%s fdb append %s dev %s dst %s self permanent", strings.Replace(ip, "ip", "bridge", 1), op.Neigh.MAC, op.Neigh.Dev, op.Neigh.IP)
	case Sysctl:
		return in(fmt.Sprintf("sysctl -qw %s=%s", strings.ReplaceAll(op.Key, "/", "."), op.Value))
	case Restore:
		flags := "--wait"
		if op.Rules.NoFlush {
			flags = "--noflush --wait"
		}
		return in("iptables-restore "+flags) + " <<'EOF'\n" + withNewline(op.Rules.Input) + "EOF"
	case IPSet:
		return in("ipset restore") + " <<'EOF'\n" + withNewline(op.Sets) + "EOF"
	case NFT:
		return in("nft -f -") + " <<'EOF'\n" + withNewline(op.NFT.Text()) + "EOF"
	case IPTables:
		r := op.Rules
		spec := r.Chain + " " + ShellJoin(r.Rule)
		switch r.Action {
		case "-D":
			return in(fmt.Sprintf("iptables --wait -t %s -D %s 2>/dev/null || true", r.Table, spec))
		case "-I":
			return in(fmt.Sprintf("iptables --wait -t %s -C %s 2>/dev/null || ", r.Table, spec)) + in(fmt.Sprintf("iptables --wait -t %s -I %s 1 %s", r.Table, r.Chain, ShellJoin(r.Rule)))
		default:
			return in(fmt.Sprintf("iptables --wait -t %s -C %s 2>/dev/null || ", r.Table, spec)) + in(fmt.Sprintf("iptables --wait -t %s -A %s", r.Table, spec))
		}
	case WriteFile:
		f := op.File
		if f.State {
			return "# klab saves the lab's state: " + f.Path
		}
		dir := f.Path[:max(strings.LastIndexByte(f.Path, '/'), 0)]
		return fmt.Sprintf("mkdir -p %s && printf '%%s' %s > %s", Quote(dir), Quote(string(f.Data)), Quote(f.Path))
	case RemoveFile:
		if op.File.Recurse {
			return "rm -rf " + Quote(op.File.Path)
		}
		return "rm -f " + Quote(op.File.Path)
	case Exec:
		return op.Proc.Cmd
	}
	return "# unknown operation " + string(op.Verb)
}

func withNewline(s string) string {
	if s == "" || strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

func linkAddArgs(l *Link) string {
	var b strings.Builder
	b.WriteString(l.Name)
	if l.MAC != nil {
		fmt.Fprintf(&b, " address %s", l.MAC)
	}
	if l.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", l.MTU)
	}
	if l.Master != "" {
		b.WriteString(" master " + l.Master)
	}
	if l.Up {
		b.WriteString(" up")
	}
	b.WriteString(" type " + l.Type)
	switch l.Type {
	case "veth":
		// The applier's netlink.Veth leaves PeerTxQLen 0: the peer is
		// created with txqueuelen 0 (iproute2's default would be 1000).
		b.WriteString(" peer name " + l.PeerName + " txqueuelen 0")
		if l.PeerMAC != nil {
			fmt.Fprintf(&b, " address %s", l.PeerMAC)
		}
		if l.PeerMTU != 0 {
			fmt.Fprintf(&b, " mtu %d", l.PeerMTU)
		}
		if l.PeerNS != "" {
			b.WriteString(" netns " + l.PeerNS)
		}
	case "vxlan":
		fmt.Fprintf(&b, " id %d", l.VNI)
		if l.Local.IsValid() {
			fmt.Fprintf(&b, " local %s", l.Local)
		}
		if l.Dev != "" {
			b.WriteString(" dev " + l.Dev)
		}
		if l.Port != 0 {
			fmt.Fprintf(&b, " dstport %d", l.Port)
		}
		if !l.Learning {
			b.WriteString(" nolearning")
		}
		if l.Proxy {
			b.WriteString(" proxy")
		}
		if l.L2Miss {
			b.WriteString(" l2miss")
		}
		if l.L3Miss {
			b.WriteString(" l3miss")
		}
	}
	return b.String()
}

// String renders the route as iproute2 arguments.
func (r Route) String() string {
	dst := "default"
	if !r.IsDefault() {
		dst = r.Dst.String()
	}
	if r.Blackhole {
		return "blackhole " + dst
	}
	s := dst
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += " dev " + r.Dev
	if r.Onlink {
		s += " onlink"
	}
	return s
}

// Object names the object an operation is about, as a network engineer
// would: "link cni0 in klab.demo.node1", "route 10.244.2.0/24 in ...".
func (op Op) Object() string {
	where := ""
	if op.NS != "" {
		where = " in " + op.NS
	}
	switch {
	case op.Verb == NetnsAdd || op.Verb == NetnsDel:
		return "namespace " + op.NS
	case op.Link != nil:
		return "link " + op.Link.Name + where
	case op.Addr != nil:
		return fmt.Sprintf("address %s on %s%s", op.Addr.Prefix, op.Addr.Dev, where)
	case op.Route != nil:
		return "route " + op.Route.String() + where
	case op.Neigh != nil && (op.Verb == FDBReplace || op.Verb == FDBDel || op.Verb == FDBAppend):
		return fmt.Sprintf("FDB entry %s dst %s on %s%s", op.Neigh.MAC, op.Neigh.IP, op.Neigh.Dev, where)
	case op.Neigh != nil:
		return fmt.Sprintf("neighbour %s on %s%s", op.Neigh.IP, op.Neigh.Dev, where)
	case op.Verb == Sysctl:
		return "sysctl " + strings.ReplaceAll(op.Key, "/", ".") + where
	case op.Rules != nil && op.Verb == Restore:
		return "iptables rules" + where
	case op.Verb == IPSet:
		return "ipsets" + where
	case op.Verb == NFT:
		return "nftables tables" + where
	case op.Rules != nil:
		return fmt.Sprintf("iptables rule in %s/%s%s", op.Rules.Table, op.Rules.Chain, where)
	case op.File != nil:
		return "file " + op.File.Path
	case op.Proc != nil:
		return "process: " + op.Proc.Cmd
	}
	return string(op.Verb)
}

// Undo is the operation that removes what op created, for rollback; ok is
// false when op creates nothing that needs removing on its own.
func (op Op) Undo() (undo Op, ok bool) {
	if !op.New {
		return Op{}, false
	}
	switch op.Verb {
	case NetnsAdd:
		return Op{Verb: NetnsDel, NS: op.NS}, true
	case LinkAdd:
		return Op{Verb: LinkDel, NS: op.NS, Link: &Link{Name: op.Link.Name}}, true
	case AddrAdd:
		return Op{Verb: AddrDel, NS: op.NS, Addr: op.Addr}, true
	case RouteReplace:
		return Op{Verb: RouteDel, NS: op.NS, Route: op.Route}, true
	case NeighReplace:
		return Op{Verb: NeighDel, NS: op.NS, Neigh: op.Neigh}, true
	case FDBReplace, FDBAppend:
		return Op{Verb: FDBDel, NS: op.NS, Neigh: op.Neigh}, true
	case WriteFile:
		return Op{Verb: RemoveFile, File: &File{Path: op.File.Path}}, true
	}
	return Op{}, false
}

// Quote quotes s for a POSIX shell, when it needs it.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ShellJoin quotes and joins arguments for a POSIX shell.
func ShellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// Plan is an ordered list of operations.
type Plan []Op

// Add appends operations.
func (p *Plan) Add(ops ...Op) { *p = append(*p, ops...) }

// Empty reports whether the plan does nothing.
func (p Plan) Empty() bool { return len(p) == 0 }

// String renders the plan as commands, one per line (heredocs intact).
func (p Plan) String() string {
	var b strings.Builder
	for _, op := range p {
		b.WriteString(op.Command())
		b.WriteByte('\n')
	}
	return b.String()
}
