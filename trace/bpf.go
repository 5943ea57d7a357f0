package trace

import (
	"encoding/binary"

	"golang.org/x/net/bpf"
)

// DefaultSnapLen is the capture length: large enough for GSO/GRO frames,
// which are far bigger than the MTU.
const DefaultSnapLen = 262144

// BPF compiles the filter to a classic BPF program for the kernel
// (SO_ATTACH_FILTER), best effort. The program is a pre-filter: it accepts
// every packet the filter matches, and maybe more; exact reports whether it
// accepts exactly the matching packets. The compiler knows the outer
// Ethernet/IPv4/IPv6/ARP/TCP/UDP headers and VXLAN's VNI (ports 8472 and
// 4789). Inner-header primitives, and unqualified primitives on VXLAN
// packets (whose inner headers may match), compile to "accept VXLAN", and a
// "not" over something inexact compiles to "accept": userspace Match does
// the rest. A nil filter, or a program too large for classic BPF's jumps,
// gives an accept-all program.
func (f *Filter) BPF(snapLen uint32) (prog []bpf.Instruction, exact bool) {
	if snapLen == 0 {
		snapLen = DefaultSnapLen
	}
	acceptAll := []bpf.Instruction{bpf.RetConstant{Val: snapLen}}
	if f == nil || f.root == nil {
		return acceptAll, true
	}
	c := &bpfc{}
	accept, drop := c.label(), c.label()
	exact = c.node(f.root, accept, drop)
	c.place(accept)
	c.emit(bpf.RetConstant{Val: snapLen})
	c.place(drop)
	c.emit(bpf.RetConstant{Val: 0})
	prog, ok := c.resolve()
	if !ok {
		return acceptAll, false
	}
	return prog, exact
}

// AssembleBPF turns a program into the raw form SO_ATTACH_FILTER takes.
func AssembleBPF(prog []bpf.Instruction) ([]bpf.RawInstruction, error) {
	return bpf.Assemble(prog)
}

// label identifies a jump target; it is placed at an instruction index.
type label int

const next label = -1 // fall through to the next instruction

type pins struct {
	ins    bpf.Instruction
	jt, jf label // for conditional jumps
	ja     label // for unconditional jumps
	cond   bool
	jump   bool
}

type bpfc struct {
	code   []pins
	labels []int // label -> instruction index, -1 until placed
}

func (c *bpfc) label() label {
	c.labels = append(c.labels, -1)
	return label(len(c.labels) - 1)
}

func (c *bpfc) place(l label)              { c.labels[l] = len(c.code) }
func (c *bpfc) emit(i bpf.Instruction)     { c.code = append(c.code, pins{ins: i}) }
func (c *bpfc) jmp(l label)                { c.code = append(c.code, pins{jump: true, ja: l}) }
func (c *bpfc) ldh(off uint32)             { c.emit(bpf.LoadAbsolute{Off: off, Size: 2}) }
func (c *bpfc) ldb(off uint32)             { c.emit(bpf.LoadAbsolute{Off: off, Size: 1}) }
func (c *bpfc) ldw(off uint32)             { c.emit(bpf.LoadAbsolute{Off: off, Size: 4}) }
func (c *bpfc) jeq(v uint32, jt, jf label) { c.jif(bpf.JumpEqual, v, jt, jf) }
func (c *bpfc) jif(cond bpf.JumpTest, v uint32, jt, jf label) {
	c.code = append(c.code, pins{ins: bpf.JumpIf{Cond: cond, Val: v}, cond: true, jt: jt, jf: jf})
}

func (c *bpfc) resolve() ([]bpf.Instruction, bool) {
	out := make([]bpf.Instruction, len(c.code))
	skip := func(i int, l label) (int, bool) {
		if l == next {
			return 0, true
		}
		s := c.labels[l] - i - 1
		return s, s >= 0
	}
	for i, p := range c.code {
		switch {
		case p.jump:
			s, ok := skip(i, p.ja)
			if !ok {
				return nil, false
			}
			out[i] = bpf.Jump{Skip: uint32(s)}
		case p.cond:
			st, ok1 := skip(i, p.jt)
			sf, ok2 := skip(i, p.jf)
			if !ok1 || !ok2 || st > 255 || sf > 255 {
				return nil, false
			}
			switch j := p.ins.(type) {
			case bpf.JumpIf:
				j.SkipTrue, j.SkipFalse = uint8(st), uint8(sf)
				out[i] = j
			case bpf.JumpIfX:
				j.SkipTrue, j.SkipFalse = uint8(st), uint8(sf)
				out[i] = j
			}
		default:
			out[i] = p.ins
		}
	}
	return out, true
}

// exactBPF reports whether n compiles to an exact kernel test.
func exactBPF(n fnode) bool {
	switch n := n.(type) {
	case *andNode:
		return exactBPF(n.a) && exactBPF(n.b)
	case *orNode:
		return exactBPF(n.a) && exactBPF(n.b)
	case *notNode:
		return exactBPF(n.x)
	case *prim:
		switch n.kind {
		case pVXLAN, pVNI:
			return true
		case pNet:
			return n.q == qOuter && n.prefix.Addr().Is4()
		}
		return n.q == qOuter
	}
	return false
}

// node emits code that jumps to t if n may match and to f if it surely
// does not; it returns whether the test is exact.
func (c *bpfc) node(n fnode, t, f label) bool {
	switch n := n.(type) {
	case *andNode:
		l := c.label()
		e1 := c.node(n.a, l, f)
		c.place(l)
		e2 := c.node(n.b, t, f)
		return e1 && e2
	case *orNode:
		l := c.label()
		e1 := c.node(n.a, t, l)
		c.place(l)
		e2 := c.node(n.b, t, f)
		return e1 && e2
	case *notNode:
		if !exactBPF(n.x) {
			c.jmp(t)
			return false
		}
		return c.node(n.x, f, t)
	case *prim:
		return c.prim(n, t, f)
	}
	c.jmp(t)
	return false
}

func (c *bpfc) prim(n *prim, t, f label) bool {
	switch n.kind {
	case pVXLAN:
		c.vxlan(t, f, nil)
		return true
	case pVNI:
		c.vxlan(t, f, &n.vni)
		return true
	}
	switch n.q {
	case qInner:
		c.vxlan(t, f, nil)
		return false
	case qAny:
		// outer match, or any VXLAN packet (its inner headers may match)
		l := c.label()
		c.outer(n, t, l)
		c.place(l)
		c.vxlan(t, f, nil)
		return false
	}
	return c.outer(n, t, f)
}

// vxlan tests for UDP to a VXLAN port, and if vni is set, for that VNI.
func (c *bpfc) vxlan(t, f label, vni *uint32) {
	v6 := c.label()
	c.ldh(12)
	c.jeq(0x0800, next, v6)
	c.ldb(23)
	c.jeq(ProtoUDP, next, f)
	c.ldh(20)
	c.jif(bpf.JumpBitsSet, 0x1fff, f, next)
	// The frame must hold the 8-byte VXLAN header (X+14+8+8 bytes), or
	// userspace would not call it VXLAN.
	c.emit(bpf.LoadMemShift{Off: 14})
	c.emit(bpf.TXA{})
	c.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 14 + 8 + 8})
	c.emit(bpf.TAX{})
	c.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	c.code = append(c.code, pins{ins: bpf.JumpIfX{Cond: bpf.JumpGreaterOrEqual}, cond: true, jt: next, jf: f})
	c.emit(bpf.LoadMemShift{Off: 14})
	c.vxlanPorts(t, f, vni, true, 0)
	c.place(v6)
	c.jeq(0x86dd, next, f)
	c.ldb(20)
	c.jeq(ProtoUDP, next, f)
	c.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	c.jif(bpf.JumpGreaterOrEqual, 54+8+8, next, f)
	c.vxlanPorts(t, f, vni, false, 54)
}

// vxlanPorts checks the UDP destination port (at X+14+2 when indirect, or at
// udp+2) and the VNI.
func (c *bpfc) vxlanPorts(t, f label, vni *uint32, indirect bool, udp uint32) {
	load := func(off uint32, size int) {
		if indirect {
			c.emit(bpf.LoadIndirect{Off: 14 + off, Size: size})
		} else {
			c.emit(bpf.LoadAbsolute{Off: udp + off, Size: size})
		}
	}
	load(2, 2)
	yes := t
	if vni != nil {
		yes = c.label()
	}
	for i, p := range DefaultVXLANPorts {
		jf := next
		if i == len(DefaultVXLANPorts)-1 {
			jf = f
		}
		c.jeq(uint32(p), yes, jf)
	}
	if vni == nil {
		return
	}
	c.place(yes)
	load(8+4, 4)
	c.emit(bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 8})
	c.jeq(*vni, t, f)
}

// outer compiles a primitive on the outer headers; it returns exactness.
func (c *bpfc) outer(n *prim, t, f label) bool {
	switch n.kind {
	case pHost:
		if n.addr.Is4() {
			c.host4(n.dir, be32(n.addr.As4()), 0xffffffff, t, f)
			return true
		}
		c.host6(n, t, f)
		return true
	case pNet:
		if n.prefix.Addr().Is4() {
			bits := n.prefix.Bits()
			mask := uint32(0)
			if bits > 0 {
				mask = ^uint32(0) << (32 - bits)
			}
			c.host4(n.dir, be32(n.prefix.Addr().As4()), mask, t, f)
			return true
		}
		c.ldh(12)
		c.jeq(0x86dd, t, f)
		return false
	case pPort:
		c.port(n, t, f)
		return true
	case pProto:
		switch n.proto {
		case selIP:
			c.ldh(12)
			c.jeq(0x0800, t, f)
		case selIP6:
			c.ldh(12)
			c.jeq(0x86dd, t, f)
		case selARP:
			c.ldh(12)
			c.jeq(0x0806, t, f)
		default:
			v6 := c.label()
			c.ldh(12)
			c.jeq(0x0800, next, v6)
			c.ldb(23)
			c.jeq(uint32(n.proto), t, f)
			c.place(v6)
			c.jeq(0x86dd, next, f)
			c.ldb(20)
			c.jeq(uint32(n.proto), t, f)
		}
		return true
	}
	c.jmp(t)
	return false
}

func be32(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

// host4 tests IPv4 src/dst (and ARP sender/target) against addr under mask.
func (c *bpfc) host4(dir dirSel, addr, mask uint32, t, f label) {
	arp := c.label()
	c.ldh(12)
	c.jeq(0x0800, next, arp)
	c.addrs(dir, 26, 30, addr, mask, t, f)
	c.place(arp)
	c.jeq(0x0806, next, f)
	c.addrs(dir, 28, 38, addr, mask, t, f)
}

func (c *bpfc) addrs(dir dirSel, srcOff, dstOff uint32, addr, mask uint32, t, f label) {
	one := func(off uint32, jf label) {
		c.ldw(off)
		if mask != 0xffffffff {
			c.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
		}
		c.jeq(addr, t, jf)
	}
	switch dir {
	case dSrc:
		one(srcOff, f)
	case dDst:
		one(dstOff, f)
	default:
		one(srcOff, next)
		one(dstOff, f)
	}
}

func (c *bpfc) host6(n *prim, t, f label) {
	c.ldh(12)
	c.jeq(0x86dd, next, f)
	a := n.addr.As16()
	cmp := func(base uint32, fail label) {
		for i := 0; i < 4; i++ {
			c.ldw(base + uint32(4*i))
			w := binary.BigEndian.Uint32(a[4*i:])
			if i == 3 {
				c.jeq(w, t, fail)
			} else {
				c.jeq(w, next, fail)
			}
		}
	}
	switch n.dir {
	case dSrc:
		cmp(22, f)
	case dDst:
		cmp(38, f)
	default:
		l := c.label()
		cmp(22, l)
		c.place(l)
		cmp(38, f)
	}
}

func (c *bpfc) port(n *prim, t, f label) {
	v6, l4 := c.label(), c.label()
	c.ldh(12)
	c.jeq(0x0800, next, v6)
	c.ldb(23)
	c.jeq(ProtoTCP, l4, next)
	c.jeq(ProtoUDP, l4, f)
	c.place(l4)
	c.ldh(20)
	c.jif(bpf.JumpBitsSet, 0x1fff, f, next)
	c.emit(bpf.LoadMemShift{Off: 14})
	ports := func(load func(off uint32)) {
		switch n.dir {
		case dSrc:
			load(0)
			c.jeq(uint32(n.port), t, f)
		case dDst:
			load(2)
			c.jeq(uint32(n.port), t, f)
		default:
			load(0)
			c.jeq(uint32(n.port), t, next)
			load(2)
			c.jeq(uint32(n.port), t, f)
		}
	}
	ports(func(off uint32) { c.emit(bpf.LoadIndirect{Off: 14 + off, Size: 2}) })
	c.place(v6)
	l6 := c.label()
	c.jeq(0x86dd, next, f)
	c.ldb(20)
	c.jeq(ProtoTCP, l6, next)
	c.jeq(ProtoUDP, l6, f)
	c.place(l6)
	ports(func(off uint32) { c.ldh(54 + off) })
}
