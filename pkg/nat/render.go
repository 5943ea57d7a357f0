package nat

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// builder writes rules into a Ruleset's single buffer, chain after chain.
type builder struct {
	r       *Ruleset
	cur     int    // index of the open chain in r.chains, -1 if none
	comment string // `"klab:<lab>` (opening quote included, closing quote not)
}

// chain opens a new chain; the rules written next belong to it.
func (b *builder) chain(t Table, name string) {
	b.close()
	b.r.chains = append(b.r.chains, chainSpan{chainKey: chainKey{t, name}, start: len(b.r.buf)})
	b.cur = len(b.r.chains) - 1
}

func (b *builder) close() {
	if b.cur >= 0 {
		b.r.chains[b.cur].end = len(b.r.buf)
	}
}

// rule appends "-A <chain> -m comment --comment "klab:<lab>[ text]" args...".
// text is kube-proxy's (or flannel's) own comment for the rule, "" if it has
// none; the klab prefix is what lets `iptables-save | grep 'klab:<lab> '`
// find every rule of a lab.
func (b *builder) rule(text string, args ...string) {
	buf := b.r.buf
	buf = append(buf, "-A "...)
	buf = append(buf, b.r.chains[b.cur].name...)
	buf = append(buf, " -m comment --comment "...)
	buf = append(buf, b.comment...)
	if text != "" {
		buf = append(buf, ' ')
		buf = append(buf, text...)
	}
	buf = append(buf, '"')
	for _, a := range args {
		buf = append(buf, ' ')
		buf = append(buf, a...)
	}
	buf = append(buf, '\n')
	b.r.buf = buf
	b.r.chains[b.cur].rules++
}

// svcPort is one service port with everything its rules need, computed once.
type svcPort struct {
	name     string // "<ns>/<svc>:<port>"
	proto    string // "tcp" | "udp"
	portStr  string
	nodePort string // "" without NodePort
	svcChain string
	extChain string // "" without NodePort
	eps      []sepInfo
	// With the Local external traffic policy (and a NodePort): the
	// KUBE-SVL chain and the endpoints on the rendered node, a subset of eps.
	svlChain string
	local    []sepInfo
}

type sepInfo struct {
	addr  string // "ip:port"
	ip    string
	chain string
}

// Render turns a service set into the iptables rules kube-proxy (iptables
// mode, the v1.28+ layout with KUBE-EXT chains) would program on a node, plus
// flannel's masquerade chains when cfg.Flannel is set. It validates first
// and changes nothing; the result is applied with Apply. Services are
// rendered sorted by namespace/name, ports and endpoints in the given order,
// so equal inputs give byte-identical rulesets. Render(cfg, s) is
// new(Renderer).Render(cfg, s); keep a Renderer to render the same services
// again cheaply.
func Render(cfg Config, services []Service) (*Ruleset, error) {
	return new(Renderer).Render(cfg, services)
}

// Renderer renders like Render and remembers, per service, where its rules
// are in the last rendering (its lines in the shared chains, its own
// KUBE-SVC/EXT/SEP chains). Rendering a service set again after a few
// services changed then hashes and formats only those; the others' rules
// are copied from the previous rendering's buffer. That keeps a one-service
// change cheap at 10,000 services (kube-proxy caches its per-service-port
// chain names for the same reason), and lets a lab render every node's rules
// for little more than one node's: a service's rules are the same on every
// node. A service is forgotten when a rendering no longer has it. The zero
// Renderer is ready to use; it is not safe for concurrent use. The Rulesets
// it returns are immutable; it only reads them.
type Renderer struct {
	key   fragmentKey
	frags map[string]*fragment // by "<namespace>/<name>"
	// The last input's service names in input order, and the order that
	// sorts them: a service set that only changed endpoints is not sorted
	// again (sorting 10,000 names costs more than rendering one service).
	names []string // "<namespace>\x00<name>"
	perm  []int
	// chains is the number of services' own chains in the last rendering,
	// churn the number written anew since the cache was last reset.
	chains, churn int
}

// fragmentKey is what a service's rules depend on besides the service.
type fragmentKey struct {
	lab, mark string
	cluster   netip.Prefix
}

// fragment locates one service's rules in a rendering.
type fragment struct {
	svc    Service                 // a deep copy of the service rendered
	node   string                  // the node rendered for, when the service's rules depend on it (Local)
	src    *Ruleset                // the rendering holding its shared-chain lines
	shared [len(sharedChains)]span // its lines in each shared chain
	own    []chainSpan             // its own chains (text set: shared, never copied)
}

// span is a run of rule lines in a Ruleset's buffer.
type span struct{ start, end, rules int }

// sharedChains are the chains every service writes lines into, in the order
// a rendering contains them.
var sharedChains = [...]chainKey{
	{Filter, chainServices}, {Filter, chainExternalServices}, {NAT, chainServices}, {NAT, chainNodePorts},
}

// rendering is one service during a Render: its cached rules (old) or what
// writing them needs (ports), and where they end up (out).
type rendering struct {
	s     *Service
	ns    string
	old   *fragment
	cip   string
	ports []svcPort
	out   *fragment
	ownAt [2]int // a new service's own chains: r.chains[ownAt[0]:ownAt[1]]
}

// Render is Render, reusing the rules of services that did not change since
// the last call.
func (rn *Renderer) Render(cfg Config, services []Service) (*Ruleset, error) {
	if err := Validate(cfg, services); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	mark := c.Mark()
	markMask := mark + "/" + mark
	clusterCIDR := c.ClusterCIDR.String()

	key := fragmentKey{lab: c.Lab, mark: mark, cluster: c.ClusterCIDR}
	if rn.frags == nil || rn.key != key || rn.churn > 2*rn.chains+1000 {
		// Start afresh. (churn: a buffer of own chains stays alive while
		// one of its services does; after services' chains were rewritten
		// twice over, bit by bit, rendering everything anew releases the
		// buffers that a few survivors hold.)
		rn.key, rn.frags, rn.churn = key, make(map[string]*fragment, len(services)), 0
	}

	svcs := make([]rendering, len(services))
	for k, i := range rn.order(services) {
		svcs[k] = rendering{s: &services[i], ns: services[i].namespace()}
	}
	// An unchanged service's fragment is updated in place (its shared-chain
	// spans are read before they are overwritten, its src at the end); a
	// new service gets a fragment of its own (not a slot in a shared array,
	// which any one long-lived service would keep alive).
	size, kept := 0, 0 // bytes of kept shared-chain lines, kept own chains
	var nports, neps int
	for i := range svcs {
		v := &svcs[i]
		// A Local service's rules depend on the node (its KUBE-SVL chain
		// holds that node's endpoints): its fragment is reused only for
		// the node it was rendered for.
		if f := rn.frags[v.ns+"/"+v.s.Name]; f != nil && serviceEqual(f.svc, *v.s) && (!v.s.ExternalLocal() || f.node == c.NodeName) {
			v.old, v.out = f, f
			size += f.sharedSize()
			kept += len(f.own)
			continue
		}
		v.out = new(fragment)
		nports += len(v.s.Ports)
		neps += len(v.s.Ports) * len(v.s.Endpoints)
	}
	// What the new services' rules need, computed once (chain names hash
	// the port name: 40,000 sha256 sums at 10,000 services), in two
	// allocations; and a copy of each new service for the next comparison.
	ports := make([]svcPort, 0, nports)
	allEps := make([]sepInfo, neps)
	for i := range svcs {
		v := &svcs[i]
		if v.old != nil {
			continue
		}
		v.cip = v.s.ClusterIP.String()
		for _, p := range v.s.Ports {
			sp := svcPort{name: v.s.PortName(p), proto: string(p.protocol()), portStr: strconv.Itoa(p.Port)}
			sp.svcChain = SVCChain(sp.name, p.protocol())
			if p.NodePort != 0 {
				sp.nodePort = strconv.Itoa(p.NodePort)
				sp.extChain = extChainPrefix + sp.svcChain[len(svcChainPrefix):]
			}
			n := len(v.s.Endpoints)
			sp.eps, allEps = allEps[:n:n], allEps[n:]
			tp := strconv.Itoa(p.targetPort())
			for j, e := range v.s.Endpoints {
				ip := e.IP.String()
				addr := ip + ":" + tp
				sp.eps[j] = sepInfo{addr: addr, ip: ip, chain: SEPChain(sp.name, p.protocol(), addr)}
			}
			if sp.extChain != "" && v.s.ExternalLocal() {
				sp.svlChain = svlChainPrefix + sp.svcChain[len(svcChainPrefix):]
				for j, e := range v.s.Endpoints {
					if e.NodeName != "" && e.NodeName == c.NodeName {
						sp.local = append(sp.local, sp.eps[j])
					}
				}
			}
			ports = append(ports, sp)
		}
		v.ports, ports = ports[:len(v.s.Ports):len(v.s.Ports)], ports[len(v.s.Ports):]
		v.out.svc = *v.s
		if v.s.ExternalLocal() {
			v.out.node = c.NodeName
		}
		v.out.svc.Ports = slices.Clone(v.s.Ports)
		v.out.svc.Endpoints = slices.Clone(v.s.Endpoints)
	}

	// Size estimate for the new services: ~190 bytes per rule; 2 rules per
	// port (ClusterIP capture in a shared chain, masquerade in its own) and
	// 3 per endpoint (balance, hairpin, DNAT: own chains). Getting it about
	// right matters at 10k services: the buffers hold ~15 MB.
	size += 190 * (32 + nports)
	ownSize := 190 * (nports + 3*neps)
	r := &Ruleset{lab: c.Lab, buf: make([]byte, 0, size)}
	r.chains = make([]chainSpan, 0, 12+kept+2*nports+neps)
	b := &builder{r: r, cur: -1, comment: `"klab:` + c.Lab}
	w := serviceWriter{b: b, markMask: markMask, clusterCIDR: clusterCIDR}

	// ---------------- filter table ----------------
	// KUBE-SERVICES: a REJECT per service port without endpoints.
	b.chain(Filter, chainServices)
	w.shared(svcs, 0, w.filterServices)
	// KUBE-EXTERNAL-SERVICES: a REJECT per NodePort without endpoints.
	b.chain(Filter, chainExternalServices)
	w.shared(svcs, 1, w.filterExternal)
	b.chain(Filter, chainForward)
	// Conntrack-INVALID packets would bypass NAT reversal and leak with pod
	// addresses; drop them (kube-proxy's first forwarding rule).
	b.rule("", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	// Service traffic was marked for masquerade; accept it even when the
	// FORWARD policy is DROP (docker hosts).
	b.rule("kubernetes forwarding rules", "-m", "mark", "--mark", markMask, "-j", "ACCEPT")
	// Replies of accepted connections.
	b.rule("kubernetes forwarding conntrack rule", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	if f := c.Flannel; f != nil {
		b.chain(Filter, chainFlannelFwd)
		// flannel accepts everything from and to the pod network in FORWARD,
		// so pods keep working on hosts whose FORWARD policy is DROP.
		b.rule("flanneld forward", "-s", clusterCIDR, "-j", "ACCEPT")
		b.rule("flanneld forward", "-d", clusterCIDR, "-j", "ACCEPT")
	}

	// ---------------- nat table ----------------
	// KUBE-SERVICES: each ClusterIP:port with endpoints goes to its service
	// chain.
	b.chain(NAT, chainServices)
	w.shared(svcs, 2, w.natServices)
	// Anything addressed to the node itself may be a NodePort. This must be
	// the last rule: the ClusterIP rules above are more specific.
	b.rule("kubernetes service nodeports; NOTE: this must be the last rule in this chain", "-m", "addrtype", "--dst-type", "LOCAL", "-j", chainNodePorts)
	// KUBE-NODEPORTS: each NodePort with endpoints goes to its KUBE-EXT chain.
	b.chain(NAT, chainNodePorts)
	w.shared(svcs, 3, w.nodePorts)
	b.chain(NAT, chainMarkMasq)
	// Mark a packet for SNAT in POSTROUTING (one mark bit, 0x4000 by default).
	b.rule("", "-j", "MARK", "--or-mark", mark)
	b.chain(NAT, chainPostrouting)
	// Unmarked traffic is not ours to masquerade.
	b.rule("", "-m", "mark", "!", "--mark", markMask, "-j", "RETURN")
	// Clear the mark so a packet re-entering the stack (e.g. encapsulated
	// into VXLAN) is not masqueraded twice.
	b.rule("", "-j", "MARK", "--xor-mark", mark)
	// SNAT marked service traffic to the outgoing interface's address so
	// replies come back through this node and get un-DNATed.
	b.rule("kubernetes service traffic requiring SNAT", "-j", "MASQUERADE")

	b.close()

	// Every service's own chains, in service order: an unchanged service's
	// are the previous rendering's text (no copy, and comparing them with
	// the previous rendering is a pointer comparison); a new service's are
	// written into a buffer of their own, so a later rendering that keeps
	// them keeps only them alive, not this rendering's shared chains.
	own := &builder{r: &Ruleset{buf: make([]byte, 0, ownSize), chains: make([]chainSpan, 0, 2*nports+neps)}, cur: -1, comment: b.comment}
	ow := serviceWriter{b: own, markMask: markMask, clusterCIDR: clusterCIDR}
	for i := range svcs {
		v := &svcs[i]
		if v.old != nil {
			r.chains = append(r.chains, v.old.own...)
			continue
		}
		from := len(own.r.chains)
		ow.ownChains(v)
		own.close()
		own.cur = -1
		v.ownAt = [2]int{len(r.chains), len(r.chains) + len(own.r.chains) - from}
		r.chains = append(r.chains, own.r.chains[from:]...)
		rn.churn += len(own.r.chains) - from
	}
	b.cur = -1
	if f := c.Flannel; f != nil {
		renderFlannelPost(b, c, f, markMask)
	}
	b.close()

	r.jumps = jumps(c)
	rn.chains = len(r.chains)

	// Remember where every service's rules are now. A new service keeps a
	// copy of its own chains' spans (not a slice of r.chains, which would
	// keep all of r's spans alive as long as it lives).
	for i := range svcs {
		v := &svcs[i]
		v.out.src = r
		if v.old == nil {
			// own's buffer is final now: point the spans at it.
			for k := v.ownAt[0]; k < v.ownAt[1]; k++ {
				ch := &r.chains[k]
				ch.text = own.r.buf[ch.start:ch.end:ch.end]
			}
			v.out.own = slices.Clone(r.chains[v.ownAt[0]:v.ownAt[1]])
			rn.frags[v.ns+"/"+v.s.Name] = v.out
		}
	}
	if len(rn.frags) > len(svcs) {
		keep := make(map[*fragment]bool, len(svcs))
		for i := range svcs {
			keep[svcs[i].out] = true
		}
		for id, f := range rn.frags {
			if !keep[f] {
				delete(rn.frags, id)
			}
		}
	}
	return r, nil
}

// order returns the indexes of services sorted by namespace and name,
// reusing the last call's order when the names are the same as then.
func (rn *Renderer) order(services []Service) []int {
	same := len(services) == len(rn.names)
	for i := 0; same && i < len(services); i++ {
		n := rn.names[i]
		ns, name := services[i].namespace(), services[i].Name
		same = len(n) == len(ns)+1+len(name) && n[:len(ns)] == ns && n[len(ns)+1:] == name
	}
	if same {
		return rn.perm
	}
	names := make([]string, len(services))
	perm := make([]int, len(services))
	for i := range services {
		names[i] = services[i].namespace() + "\x00" + services[i].Name
		perm[i] = i
	}
	// "\x00" sorts before any character of a name: ordering by the joined
	// string is ordering by namespace, then name.
	slices.SortFunc(perm, func(a, b int) int { return cmp.Compare(names[a], names[b]) })
	rn.names, rn.perm = names, perm
	return perm
}

// sharedSize is the number of bytes of the fragment's shared-chain lines.
func (f *fragment) sharedSize() int {
	n := 0
	for _, s := range f.shared {
		n += s.end - s.start
	}
	return n
}

// serviceWriter writes services' rules into a rendering: copied from the
// previous rendering for unchanged services, formatted for new ones.
type serviceWriter struct {
	b                     *builder
	markMask, clusterCIDR string
}

// shared writes every service's lines for shared chain k into the open
// chain, recording where they went.
func (w serviceWriter) shared(svcs []rendering, k int, write func(v *rendering)) {
	b := w.b
	ch := &b.r.chains[b.cur]
	for i := range svcs {
		v := &svcs[i]
		start, rules := len(b.r.buf), ch.rules
		if v.old != nil {
			sp := v.old.shared[k]
			b.r.buf = append(b.r.buf, v.old.src.buf[sp.start:sp.end]...)
			ch.rules += sp.rules
		} else {
			write(v)
		}
		v.out.shared[k] = span{start, len(b.r.buf), ch.rules - rules}
	}
}

func (w serviceWriter) filterServices(v *rendering) {
	for _, sp := range v.ports {
		if len(sp.eps) == 0 {
			// A ClusterIP without endpoints must refuse connections at once
			// (ICMP port unreachable) instead of letting clients time out.
			w.b.rule(sp.name+" has no endpoints", "-m", sp.proto, "-p", sp.proto, "-d", v.cip, "--dport", sp.portStr, "-j", "REJECT")
		}
	}
}

func (w serviceWriter) filterExternal(v *rendering) {
	for _, sp := range v.ports {
		if len(sp.eps) == 0 && sp.extChain != "" {
			// The same for a NodePort on any local address of the node.
			w.b.rule(sp.name+" has no endpoints", "-m", "addrtype", "--dst-type", "LOCAL", "-m", sp.proto, "-p", sp.proto, "--dport", sp.nodePort, "-j", "REJECT")
		} else if sp.svlChain != "" && len(sp.local) == 0 {
			// Local traffic policy, endpoints elsewhere but none on this
			// node: external clients are dropped here (kube-proxy without a
			// health-check-aware load balancer in front: the client sees a
			// timeout, not a refusal), while pods and the node itself are
			// still sent to the cluster-wide endpoints by KUBE-EXT (after
			// DNAT this rule no longer matches their packets).
			w.b.rule(sp.name+" has no local endpoints", "-m", "addrtype", "--dst-type", "LOCAL", "-m", sp.proto, "-p", sp.proto, "--dport", sp.nodePort, "-j", "DROP")
		}
	}
}

func (w serviceWriter) natServices(v *rendering) {
	for _, sp := range v.ports {
		if len(sp.eps) > 0 {
			// Capture the ClusterIP:port and hand it to the service chain.
			w.b.rule(sp.name+" cluster IP", "-m", sp.proto, "-p", sp.proto, "-d", v.cip, "--dport", sp.portStr, "-j", sp.svcChain)
		}
	}
}

func (w serviceWriter) nodePorts(v *rendering) {
	for _, sp := range v.ports {
		if len(sp.eps) > 0 && sp.extChain != "" {
			// A NodePort leads to the service's external-traffic chain.
			w.b.rule(sp.name, "-m", sp.proto, "-p", sp.proto, "--dport", sp.nodePort, "-j", sp.extChain)
		}
	}
}

// ownChains writes a new service's KUBE-EXT, KUBE-SVC and KUBE-SEP chains
// with w.b (into the rendering's second buffer).
func (w serviceWriter) ownChains(v *rendering) {
	b := w.b
	s := v.s
	for _, sp := range v.ports {
		if len(sp.eps) == 0 {
			continue // no chains: the filter REJECT above handles it
		}
		if sp.svlChain != "" {
			// Local traffic policy (kube-proxy's proxier.go, "If we are only
			// using same-node endpoints, we can retain the source IP").
			b.chain(NAT, sp.extChain)
			// Pods reaching a NodePort are subject to neither policy: as if
			// they went out to a load balancer and came back in.
			b.rule("pod traffic for "+sp.name+" external destinations", "-s", w.clusterCIDR, "-j", sp.svcChain)
			// The node itself: its source address is one of the node's own,
			// so the reply must come back here; masquerade and use any
			// endpoint.
			b.rule("masquerade LOCAL traffic for "+sp.name+" external destinations", "-m", "addrtype", "--src-type", "LOCAL", "-j", chainMarkMasq)
			b.rule("route LOCAL traffic for "+sp.name+" external destinations", "-m", "addrtype", "--src-type", "LOCAL", "-j", sp.svcChain)
			if len(sp.local) > 0 {
				// Everyone else: only this node's endpoints, no masquerade,
				// so the pod sees the client's own address. Without local
				// endpoints there is no jump: the packet stays addressed to
				// the node and KUBE-EXTERNAL-SERVICES drops it.
				b.rule("", "-j", sp.svlChain)
			}
		} else if sp.extChain != "" {
			b.chain(NAT, sp.extChain)
			// Traffic from outside the cluster may be DNATed to a pod on
			// another node; masquerade it so the reply returns via this node.
			b.rule("masquerade traffic for "+sp.name+" external destinations", "-j", chainMarkMasq)
			// Then load-balance like ClusterIP traffic.
			b.rule("", "-j", sp.svcChain)
		}
		b.chain(NAT, sp.svcChain)
		// Callers outside the pod network (the node itself, other hosts)
		// reaching the ClusterIP need SNAT, or the pod's reply would bypass
		// the DNAT reversal.
		b.rule(sp.name+" cluster IP", "-m", sp.proto, "-p", sp.proto, "-d", v.cip, "--dport", sp.portStr, "!", "-s", w.clusterCIDR, "-j", chainMarkMasq)
		w.balance(s, sp.name, sp.eps)
		if sp.svlChain != "" && len(sp.local) > 0 {
			// The Local policy's chain: the same balancing over this
			// node's endpoints only (no masquerade rule: external clients
			// keep their address).
			b.chain(NAT, sp.svlChain)
			w.balance(s, sp.name, sp.local)
		}
		for _, e := range sp.eps {
			b.chain(NAT, e.chain)
			// Hairpin: a pod reaching itself through the service would see
			// its own address as source and answer directly; masquerade.
			b.rule(sp.name, "-s", e.ip, "-j", chainMarkMasq)
			if s.Affinity == AffinityClientIP {
				// Remember the client for affinity, then DNAT.
				b.rule(sp.name, "-m", "recent", "--name", e.chain, "--set", "-m", sp.proto, "-p", sp.proto, "-j", "DNAT", "--to-destination", e.addr)
			} else {
				// DNAT to the endpoint pod.
				b.rule(sp.name, "-m", sp.proto, "-p", sp.proto, "-j", "DNAT", "--to-destination", e.addr)
			}
		}
	}
}

// balance writes kube-proxy's writeServiceToEndpointRules into the open
// chain: affinity checks, then one random-probability jump per endpoint.
func (w serviceWriter) balance(s *Service, name string, eps []sepInfo) {
	b := w.b
	if s.Affinity == AffinityClientIP {
		timeout := strconv.Itoa(s.affinityTimeout())
		for _, e := range eps {
			// A client seen recently (per endpoint "recent" list) sticks
			// to the endpoint it used before.
			b.rule(name+" -> "+e.addr, "-m", "recent", "--name", e.chain, "--rcheck", "--seconds", timeout, "--reap", "-j", e.chain)
		}
	}
	n := len(eps)
	for j, e := range eps {
		if j < n-1 {
			// Endpoint j of n is taken with probability 1/(n-j) among
			// the remaining ones, so each gets 1/n overall.
			b.rule(name+" -> "+e.addr, "-m", "statistic", "--mode", "random", "--probability", probability(n-j), "-j", e.chain)
		} else {
			// The last endpoint takes whatever is left.
			b.rule(name+" -> "+e.addr, "-j", e.chain)
		}
	}
}

// serviceEqual reports whether two services render the same rules: every
// field compared, endpoints' informational names included (a difference
// there only costs a re-render).
func serviceEqual(a, b Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.ClusterIP == b.ClusterIP &&
		a.Affinity == b.Affinity && a.AffinityTimeout == b.AffinityTimeout && a.ExternalTrafficPolicy == b.ExternalTrafficPolicy &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Endpoints, b.Endpoints)
}

// renderFlannelPost writes flannel's FLANNEL-POSTRTG chain (current flannel,
// pkg/trafficmngr/iptables; flannel before v0.15 wrote the same rules
// straight into POSTROUTING, as seed 003's dump shows).
func renderFlannelPost(b *builder, c Config, f *FlannelMasq, markMask string) {
	cluster, pod := c.ClusterCIDR.String(), f.PodCIDR.Masked().String()
	var tcp []string
	if f.TCPOnly {
		// Seed 003's puzzle: only TCP is masqueraded, so a pod's ICMP/UDP
		// leaves with its pod address and the answers never find their way
		// back ("curl works, ping does not").
		tcp = []string{"-p", "tcp"}
	}
	b.chain(NAT, chainFlannelPost)
	// kube-proxy already marked this packet and will masquerade it; avoid a
	// double NAT.
	b.rule("flanneld masq", "-m", "mark", "--mark", markMask, "-j", "RETURN")
	// Pod to pod inside the cluster network keeps its addresses.
	b.rule("flanneld masq", "-s", pod, "-d", cluster, "-j", "RETURN")
	b.rule("flanneld masq", "-s", cluster, "-d", pod, "-j", "RETURN")
	// External traffic arriving for a local pod keeps its source.
	b.rule("flanneld masq", "!", "-s", cluster, "-d", pod, "-j", "RETURN")
	// Pods talking to the outside world (not multicast) get the node's address.
	b.rule("flanneld masq", append(append([]string{"-s", cluster, "!", "-d", "224.0.0.0/4"}, tcp...), "-j", "MASQUERADE", "--random-fully")...)
	// The node itself talking to pods on other nodes uses its flannel address.
	b.rule("flanneld masq", append(append([]string{"!", "-s", cluster, "-d", cluster}, tcp...), "-j", "MASQUERADE", "--random-fully")...)
}

// probability is kube-proxy's: 1/n printed with 10 decimals.
func probability(n int) string {
	if n < len(probabilities) {
		return probabilities[n]
	}
	return fmt.Sprintf("%0.10f", 1.0/float64(n))
}

// probabilities caches probability(n) for small n.
var probabilities = func() []string {
	p := make([]string, 128)
	for n := 1; n < len(p); n++ {
		p[n] = fmt.Sprintf("%0.10f", 1.0/float64(n))
	}
	return p
}()

// jumps lists the built-in-chain jumps of a rendering, kube-proxy's
// (iptablesJumpChains) and flannel's, each with a klab comment.
func jumps(c Config) []Jump {
	cm := func(text string) []string {
		return []string{"-m", "comment", "--comment", "klab:" + c.Lab + " " + text}
	}
	newOnly := []string{"-m", "conntrack", "--ctstate", "NEW"}
	j := func(t Table, chain string, prepend bool, pre []string, text, target string) Jump {
		rule := append(append(slices.Clone(pre), cm(text)...), "-j", target)
		return Jump{Table: t, Chain: chain, Prepend: prepend, Rule: rule}
	}
	out := []Jump{
		// Locally delivered traffic to NodePorts without endpoints: REJECT.
		j(Filter, "INPUT", true, newOnly, "kubernetes externally-visible service portals", chainExternalServices),
		// Forwarded traffic to services without endpoints: REJECT.
		j(Filter, "FORWARD", true, newOnly, "kubernetes service portals", chainServices),
		j(Filter, "FORWARD", true, newOnly, "kubernetes externally-visible service portals", chainExternalServices),
		// Accept marked / established service traffic despite a DROP policy.
		j(Filter, "FORWARD", true, nil, "kubernetes forwarding rules", chainForward),
		// Local processes calling services without endpoints: REJECT.
		j(Filter, "OUTPUT", true, newOnly, "kubernetes service portals", chainServices),
		// Service DNAT for traffic arriving (pods, other nodes, outside)...
		j(NAT, "PREROUTING", true, nil, "kubernetes service portals", chainServices),
		// ...and for traffic the node itself sends.
		j(NAT, "OUTPUT", true, nil, "kubernetes service portals", chainServices),
		// SNAT for marked service traffic.
		j(NAT, "POSTROUTING", true, nil, "kubernetes postrouting rules", chainPostrouting),
	}
	if c.Flannel != nil {
		out = append(out,
			// flannel appends its jumps (they come after kube-proxy's).
			j(Filter, "FORWARD", false, nil, "flanneld forward", chainFlannelFwd),
			j(NAT, "POSTROUTING", false, nil, "flanneld masq", chainFlannelPost),
		)
	}
	return out
}
