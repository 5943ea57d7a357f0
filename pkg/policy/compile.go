package policy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// SetType is an ipset type.
type SetType string

const (
	HashIP  SetType = "hash:ip"  // peer pod addresses
	HashNet SetType = "hash:net" // ipBlock CIDRs, except entries nomatch
)

// Entry is one ipset member: an address (hash:ip) or a CIDR (hash:net),
// nomatch for an except.
type Entry struct {
	Addr    string
	NoMatch bool
}

// IPSet is one named set of the plan. Its name is derived from what it
// selects (a hash of the lab and the peer's canonical selector, or the
// ipBlock), so equal peers in many policies share one set and a pod's
// label change only changes set membership, not rules.
type IPSet struct {
	Name    string
	Type    SetType
	Entries []Entry // sorted
	// What says what the set holds ("pods of namespaceSelector ns=y and
	// podSelector pod=a"); it is also the rule comments' wording.
	What string
}

// Rule is one admitting rule of a pod chain: match the set (against the
// source address for ingress, the destination for egress; "" = any peer),
// the protocol ("" = any) and the destination port or range ("80",
// "80:81"; "" = any), then RETURN (this direction admits; the other is
// checked next).
type Rule struct {
	Set      string
	Protocol corev1.Protocol
	Ports    string
	Comment  string
}

// Chain is one direction of one isolated pod.
type Chain struct {
	Name      string
	Selecting []string // the policies isolating the pod for this direction
	Rules     []Rule
}

// PodPlan is the filtering of one pod. A nil Ingress/Egress means the pod
// is not isolated for that direction (no chain, no jump).
type PodPlan struct {
	Pod     string
	IP      netip.Addr
	Node    string
	Ingress *Chain
	Egress  *Chain
}

// Plan is the compiled form of the policies for the pods of one node (or
// all pods): sets and per-pod chains, as data. Render it with
// RenderIPSets, RenderIPTables and RenderIPSetDestroy.
type Plan struct {
	Lab        string
	Node       string
	NFLOGGroup uint16
	Sets       []IPSet   // sorted by name
	Pods       []PodPlan // sorted by pod
	// Warnings: what was left out (IPv6 addresses: the plan is IPv4).
	Warnings []string
}

// Set returns the set called name, or nil.
func (p *Plan) Set(name string) *IPSet {
	i := sort.Search(len(p.Sets), func(i int) bool { return p.Sets[i].Name >= name })
	if i < len(p.Sets) && p.Sets[i].Name == name {
		return &p.Sets[i]
	}
	return nil
}

// CompileOptions select what to compile.
type CompileOptions struct {
	// Lab is carried in every name hash and comment (two labs never share
	// a name).
	Lab string
	// Node restricts the plan to the pods that node hosts ("" = all pods):
	// a node enforces egress of its pods and ingress to its pods.
	Node string
	// NFLOGGroup is the netlink group of the drop rules' NFLOG (0 = 100).
	NFLOGGroup uint16
}

// Names: ipset names are at most 31 characters, iptables chain names 28.
const (
	// DispatchChain is jumped to from FORWARD; it sends each isolated
	// pod's traffic to its chains.
	DispatchChain = "KLAB-NETPOL"
	// EgressChain and IngressChain hold the per-pod jumps (see
	// RenderIPTables).
	EgressChain  = "KLAB-NETPOL-E"
	IngressChain = "KLAB-NETPOL-I"
	hashLen      = 16
)

func nameHash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return base32.StdEncoding.EncodeToString(h[:])[:hashLen]
}

// SetName is "KLAB-" + a kind letter (P pods, N ipBlock, Q pods by named
// port) + "-" + 16 base32 characters of SHA-256(lab, key): 23 characters;
// the swap set adds "-T" (25 ≤ 31).
func setName(lab string, kind byte, key string) string {
	return fmt.Sprintf("KLAB-%c-%s", kind, nameHash(lab, key))
}

// chainName is "KLAB-NPI-"/"KLAB-NPE-" + 16 characters (25 ≤ 28).
func chainName(lab, dir, pod string) string {
	return "KLAB-NP" + dir + "-" + nameHash(lab, dir, pod)
}

type compiler struct {
	e     *Evaluator
	opts  CompileOptions
	sets  map[string]*IPSet
	names map[string]string // kind+key -> set name (hashed once)
	plan  *Plan
	// With a Compiler: its memory, and what the chain being compiled
	// depends on besides its pod and its selecting policies.
	cc          *Compiler
	refs        []setRef
	uncacheable bool
}

func (c *compiler) setName(kind byte, key string) string {
	k := string(kind) + key
	if n, ok := c.names[k]; ok {
		return n
	}
	n := setName(c.opts.Lab, kind, key)
	c.names[k] = n
	return n
}

// Compile turns the state's policies into a Plan the kube-router / Felix
// way: for each pod of opts.Node isolated in a direction, a chain whose
// rules are the cross product of each selecting policy rule's peers (as
// sets) and ports, then an NFLOG + DROP. Named ports are resolved per
// target pod: for ingress against the pod itself (so the rule carries the
// number), for egress against each destination pod (so the rule matches a
// set of the pods whose port of that name has that number).
func Compile(s State, opts CompileOptions) (*Plan, error) {
	e, err := NewEvaluator(s)
	if err != nil {
		return nil, err
	}
	return e.Compile(opts), nil
}

// Compile is Compile on the evaluator's state.
func (e *Evaluator) Compile(opts CompileOptions) *Plan {
	return e.compile(opts, nil)
}

func (e *Evaluator) compile(opts CompileOptions, cc *Compiler) *Plan {
	if opts.NFLOGGroup == 0 {
		opts.NFLOGGroup = DefaultNFLOGGroup
	}
	c := &compiler{e: e, opts: opts, sets: map[string]*IPSet{}, names: map[string]string{}, plan: &Plan{Lab: opts.Lab, Node: opts.Node, NFLOGGroup: opts.NFLOGGroup}, cc: cc}
	pods := make([]*Pod, 0, len(e.state.Pods))
	for i := range e.state.Pods {
		p := &e.state.Pods[i]
		if opts.Node == "" || p.Node == opts.Node {
			pods = append(pods, p)
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Key() < pods[j].Key() })
	for _, p := range pods {
		if !p.IP.Is4() {
			c.plan.Warnings = append(c.plan.Warnings, fmt.Sprintf("pod %s: address %v is not IPv4; not filtered", p.Key(), p.IP))
			continue
		}
		pp := PodPlan{Pod: p.Key(), IP: p.IP, Node: p.Node}
		pp.Ingress = c.chain(p, true)
		pp.Egress = c.chain(p, false)
		c.plan.Pods = append(c.plan.Pods, pp)
	}
	for _, s := range c.sets {
		c.plan.Sets = append(c.plan.Sets, *s)
	}
	sort.Slice(c.plan.Sets, func(i, j int) bool { return c.plan.Sets[i].Name < c.plan.Sets[j].Name })
	return c.plan
}

func (c *compiler) chain(p *Pod, ingress bool) *Chain {
	dir, word := "E", "egress"
	if ingress {
		dir, word = "I", "ingress"
	}
	var ch *Chain
	var sel []*policy
	for _, pol := range c.e.byNS[p.Namespace] {
		if pol.ns != p.Namespace || ingress && !pol.ingress || !ingress && !pol.egress || !pol.sel.Matches(labelsOf(p)) {
			continue
		}
		sel = append(sel, pol)
	}
	if cached := c.cc.chain(dir, p, sel); cached != nil {
		// The pod and the policies selecting it are the ones this chain
		// was compiled from: only its sets need to be in the plan.
		for _, r := range cached.refs {
			c.peerSet(r.pol, r.pe)
		}
		return cached.chain
	}
	c.refs, c.uncacheable = nil, false
	for _, pol := range sel {
		if ch == nil {
			ch = &Chain{Name: chainName(c.opts.Lab, dir, p.Key())}
		}
		ch.Selecting = append(ch.Selecting, pol.key)
		rules := pol.out
		if ingress {
			rules = pol.in
		}
		for _, r := range rules {
			ch.Rules = append(ch.Rules, c.rules(pol, &r, p, ingress, word)...)
		}
	}
	c.cc.remember(dir, p, sel, ch, c.refs, c.uncacheable)
	return ch
}

// portMatch is one compiled port: protocol and range, or a named port.
type portMatch struct {
	proto corev1.Protocol
	ports string
	name  string // egress named port, resolved per destination
}

func (c *compiler) rules(pol *policy, r *rule, p *Pod, ingress bool, word string) []Rule {
	why := fmt.Sprintf("%s %s rule %d", pol.key, word, r.index+1)
	var pms []portMatch
	if len(r.ports) == 0 {
		pms = []portMatch{{}}
	}
	for _, np := range r.ports {
		proto := *np.Protocol
		switch {
		case np.Port == nil:
			pms = append(pms, portMatch{proto: proto})
		case np.Port.Type == intstr.String && ingress:
			// The target is this pod: resolve now. A name the pod does not
			// declare (for this protocol) matches nothing.
			for _, cp := range p.Ports {
				if cp.Name == np.Port.StrVal && protoOf(cp.Protocol) == proto {
					pms = append(pms, portMatch{proto: proto, ports: fmt.Sprint(cp.Port)})
				}
			}
		case np.Port.Type == intstr.String:
			pms = append(pms, portMatch{proto: proto, name: np.Port.StrVal})
		case np.EndPort != nil && *np.EndPort != np.Port.IntVal:
			pms = append(pms, portMatch{proto: proto, ports: fmt.Sprintf("%d:%d", np.Port.IntVal, *np.EndPort)})
		default:
			pms = append(pms, portMatch{proto: proto, ports: fmt.Sprint(np.Port.IntVal)})
		}
	}
	var out []Rule
	for _, pm := range pms {
		portDesc := ""
		if pm.proto != "" {
			portDesc = " " + strings.ToLower(string(pm.proto))
			switch {
			case pm.name != "":
				portDesc += "/" + pm.name
			case pm.ports != "":
				portDesc += "/" + strings.ReplaceAll(pm.ports, ":", "-")
			}
		}
		if pm.name != "" {
			// (These rules depend on other pods' ports: not cached.)
			c.uncacheable = true
			// Egress to a named port: the destination must be a pod whose
			// port of that name (and protocol) has the number; one set of
			// such pods per number.
			byNum := map[int32][]string{}
			for i := range c.e.state.Pods {
				d := &c.e.state.Pods[i]
				if !d.IP.Is4() || !c.ruleSelectsPod(pol, r, d) {
					continue
				}
				for _, cp := range d.Ports {
					if cp.Name == pm.name && protoOf(cp.Protocol) == pm.proto {
						byNum[cp.Port] = append(byNum[cp.Port], d.IP.String())
					}
				}
			}
			nums := make([]int32, 0, len(byNum))
			for n := range byNum {
				nums = append(nums, n)
			}
			sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
			for _, n := range nums {
				key := fmt.Sprintf("named|%s|%s|%s/%s=%d", pol.key, ruleKey(r), pm.proto, pm.name, n)
				what := fmt.Sprintf("pods of %s rule %d with port %s/%s = %d", pol.key, r.index+1, strings.ToLower(string(pm.proto)), pm.name, n)
				set := c.set('Q', key, HashIP, what, hostEntries(byNum[n]))
				out = append(out, Rule{Set: set, Protocol: pm.proto, Ports: fmt.Sprint(n), Comment: fmt.Sprintf("%s: to %s", why, what)})
			}
			continue
		}
		if r.all {
			peerWord := "from any peer"
			if !ingress {
				peerWord = "to any peer"
			}
			out = append(out, Rule{Protocol: pm.proto, Ports: pm.ports, Comment: fmt.Sprintf("%s: %s%s", why, peerWord, portDesc)})
			continue
		}
		for _, pe := range r.peers {
			set := c.peerSet(pol, &pe)
			out = append(out, Rule{Set: set, Protocol: pm.proto, Ports: pm.ports, Comment: fmt.Sprintf("%s: %s%s", why, pe.desc, portDesc)})
		}
	}
	return out
}

func ruleKey(r *rule) string {
	if r.all {
		return "*"
	}
	var ks []string
	for _, p := range r.peers {
		ks = append(ks, p.key)
	}
	return strings.Join(ks, "+")
}

func (c *compiler) ruleSelectsPod(pol *policy, r *rule, d *Pod) bool {
	if r.all {
		return true
	}
	for _, pe := range r.peers {
		if c.e.peerMatches(pol, &pe, end{pod: d, ip: d.IP}) {
			return true
		}
	}
	return false
}

// peerSet returns the name of the set for a peer, creating it.
func (c *compiler) peerSet(pol *policy, pe *peer) string {
	c.refs = append(c.refs, setRef{pol, pe})
	if pe.block != nil {
		var es []Entry
		if !pe.block.cidr.Addr().Is4() {
			c.plan.Warnings = append(c.plan.Warnings, fmt.Sprintf("policy %s: %s is not IPv4; it matches nothing here", pol.key, pe.desc))
		} else if pe.block.cidr.Bits() == 0 {
			// hash:net cannot hold a /0: two /1 halves, as kube-router does.
			es = append(es, Entry{Addr: "0.0.0.0/1"}, Entry{Addr: "128.0.0.0/1"})
		} else {
			es = append(es, Entry{Addr: pe.block.cidr.String()})
		}
		for _, x := range pe.block.except {
			if x.Addr().Is4() && len(es) > 0 {
				es = append(es, Entry{Addr: x.String(), NoMatch: true})
			}
		}
		return c.set('N', pe.key, HashNet, pe.desc, es)
	}
	key := pe.key // carries the policy's namespace when nsSel is nil
	name := c.setName('P', key)
	if c.sets[name] != nil {
		// The key says all the set selects: its members are computed
		// once per compile, however many rules name it.
		return name
	}
	if s := c.cc.set(name); s != nil {
		// Same pods and namespaces as when the Compiler last computed it.
		c.sets[name] = s
		return name
	}
	var ips []string
	for i := range c.e.state.Pods {
		d := &c.e.state.Pods[i]
		if d.IP.Is4() && c.e.peerMatches(pol, pe, end{pod: d, ip: d.IP}) {
			ips = append(ips, d.IP.String())
		}
	}
	what := "pods of " + pe.desc
	if pe.nsSel == nil {
		what += " in namespace " + pol.ns
	}
	c.set('P', key, HashIP, what, hostEntries(ips))
	c.cc.keep(c.sets[name])
	return name
}

func hostEntries(ips []string) []Entry {
	es := make([]Entry, 0, len(ips))
	for _, ip := range ips {
		es = append(es, Entry{Addr: ip})
	}
	return es
}

func (c *compiler) set(kind byte, key string, t SetType, what string, es []Entry) string {
	name := c.setName(kind, key)
	if _, ok := c.sets[name]; !ok {
		sort.Slice(es, func(i, j int) bool { return entryLess(es[i], es[j]) })
		c.sets[name] = &IPSet{Name: name, Type: t, Entries: es, What: what}
	}
	return name
}

func entryLess(a, b Entry) bool {
	pa, pb := parseEntry(a.Addr), parseEntry(b.Addr)
	if pa.Addr() != pb.Addr() {
		return pa.Addr().Less(pb.Addr())
	}
	return pa.Bits() < pb.Bits()
}

func parseEntry(s string) netip.Prefix {
	if strings.Contains(s, "/") {
		p, _ := netip.ParsePrefix(s)
		return p
	}
	a, _ := netip.ParseAddr(s)
	return netip.PrefixFrom(a, a.BitLen())
}

func protoOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}
