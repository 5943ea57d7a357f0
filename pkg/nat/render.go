package nat

import (
	"cmp"
	"fmt"
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
	svc       *Service
	port      ServicePort
	name      string // "<ns>/<svc>:<port>"
	proto     string // "tcp" | "udp"
	clusterIP string
	portStr   string
	svcChain  string
	extChain  string // "" without NodePort
	eps       []sepInfo
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
// so equal inputs give byte-identical rulesets.
func Render(cfg Config, services []Service) (*Ruleset, error) {
	if err := Validate(cfg, services); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	mark := c.Mark()
	markMask := mark + "/" + mark
	clusterCIDR := c.ClusterCIDR.String()

	order := make([]*Service, len(services))
	nports, neps := 0, 0
	for i := range services {
		order[i] = &services[i]
		nports += len(services[i].Ports)
		neps += len(services[i].Ports) * len(services[i].Endpoints)
	}
	slices.SortFunc(order, func(a, b *Service) int {
		return cmp.Or(cmp.Compare(a.namespace(), b.namespace()), cmp.Compare(a.Name, b.Name))
	})
	ports := make([]svcPort, 0, nports)
	allEps := make([]sepInfo, neps)
	for _, s := range order {
		cip := s.ClusterIP.String()
		for _, p := range s.Ports {
			sp := svcPort{svc: s, port: p, name: s.PortName(p), proto: string(p.protocol()), clusterIP: cip, portStr: strconv.Itoa(p.Port)}
			sp.svcChain = SVCChain(sp.name, p.protocol())
			if p.NodePort != 0 {
				sp.extChain = extChainPrefix + sp.svcChain[len(svcChainPrefix):]
			}
			sp.eps, allEps = allEps[:len(s.Endpoints):len(s.Endpoints)], allEps[len(s.Endpoints):]
			tp := strconv.Itoa(p.targetPort())
			for i, e := range s.Endpoints {
				ip := e.IP.String()
				addr := ip + ":" + tp
				sp.eps[i] = sepInfo{addr: addr, ip: ip, chain: SEPChain(sp.name, p.protocol(), addr)}
			}
			ports = append(ports, sp)
		}
	}

	// Size estimate: ~190 bytes per rule; 2 rules per port (ClusterIP
	// capture, masquerade) and 3 per endpoint (balance, hairpin, DNAT).
	// Getting it about right matters at 10k services: the buffer is ~15 MB.
	r := &Ruleset{lab: c.Lab, buf: make([]byte, 0, 190*(32+2*nports+3*neps))}
	r.chains = make([]chainSpan, 0, 12+2*nports+neps)
	b := &builder{r: r, cur: -1, comment: `"klab:` + c.Lab}

	// ---------------- filter table ----------------
	b.chain(Filter, chainServices)
	for i := range ports {
		sp := &ports[i]
		if len(sp.eps) == 0 {
			// A ClusterIP without endpoints must refuse connections at once
			// (ICMP port unreachable) instead of letting clients time out.
			b.rule(sp.name+" has no endpoints", "-m", sp.proto, "-p", sp.proto, "-d", sp.clusterIP, "--dport", sp.portStr, "-j", "REJECT")
		}
	}
	b.chain(Filter, chainExternalServices)
	for i := range ports {
		sp := &ports[i]
		if len(sp.eps) == 0 && sp.extChain != "" {
			// The same for a NodePort on any local address of the node.
			b.rule(sp.name+" has no endpoints", "-m", "addrtype", "--dst-type", "LOCAL", "-m", sp.proto, "-p", sp.proto, "--dport", strconv.Itoa(sp.port.NodePort), "-j", "REJECT")
		}
	}
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
	b.chain(NAT, chainServices)
	for i := range ports {
		sp := &ports[i]
		if len(sp.eps) > 0 {
			// Capture the ClusterIP:port and hand it to the service chain.
			b.rule(sp.name+" cluster IP", "-m", sp.proto, "-p", sp.proto, "-d", sp.clusterIP, "--dport", sp.portStr, "-j", sp.svcChain)
		}
	}
	// Anything addressed to the node itself may be a NodePort. This must be
	// the last rule: the ClusterIP rules above are more specific.
	b.rule("kubernetes service nodeports; NOTE: this must be the last rule in this chain", "-m", "addrtype", "--dst-type", "LOCAL", "-j", chainNodePorts)

	b.chain(NAT, chainNodePorts)
	for i := range ports {
		sp := &ports[i]
		if len(sp.eps) > 0 && sp.extChain != "" {
			// A NodePort leads to the service's external-traffic chain.
			b.rule(sp.name, "-m", sp.proto, "-p", sp.proto, "--dport", strconv.Itoa(sp.port.NodePort), "-j", sp.extChain)
		}
	}
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

	for i := range ports {
		sp := &ports[i]
		if len(sp.eps) == 0 {
			continue // no chains: the filter REJECT above handles it
		}
		if sp.extChain != "" {
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
		b.rule(sp.name+" cluster IP", "-m", sp.proto, "-p", sp.proto, "-d", sp.clusterIP, "--dport", sp.portStr, "!", "-s", clusterCIDR, "-j", chainMarkMasq)
		if sp.svc.Affinity == AffinityClientIP {
			timeout := strconv.Itoa(sp.svc.affinityTimeout())
			for _, e := range sp.eps {
				// A client seen recently (per endpoint "recent" list) sticks
				// to the endpoint it used before.
				b.rule(sp.name+" -> "+e.addr, "-m", "recent", "--name", e.chain, "--rcheck", "--seconds", timeout, "--reap", "-j", e.chain)
			}
		}
		n := len(sp.eps)
		for j, e := range sp.eps {
			if j < n-1 {
				// Endpoint j of n is taken with probability 1/(n-j) among
				// the remaining ones, so each gets 1/n overall.
				b.rule(sp.name+" -> "+e.addr, "-m", "statistic", "--mode", "random", "--probability", probability(n-j), "-j", e.chain)
			} else {
				// The last endpoint takes whatever is left.
				b.rule(sp.name+" -> "+e.addr, "-j", e.chain)
			}
		}
		for _, e := range sp.eps {
			b.chain(NAT, e.chain)
			// Hairpin: a pod reaching itself through the service would see
			// its own address as source and answer directly; masquerade.
			b.rule(sp.name, "-s", e.ip, "-j", chainMarkMasq)
			if sp.svc.Affinity == AffinityClientIP {
				// Remember the client for affinity, then DNAT.
				b.rule(sp.name, "-m", "recent", "--name", e.chain, "--set", "-m", sp.proto, "-p", sp.proto, "-j", "DNAT", "--to-destination", e.addr)
			} else {
				// DNAT to the endpoint pod.
				b.rule(sp.name, "-m", sp.proto, "-p", sp.proto, "-j", "DNAT", "--to-destination", e.addr)
			}
		}
	}
	if f := c.Flannel; f != nil {
		renderFlannelPost(b, c, f, markMask)
	}
	b.close()

	r.index = make(map[chainKey]int, len(r.chains))
	for i, ch := range r.chains {
		r.index[ch.chainKey] = i
	}
	r.jumps = jumps(c)
	return r, nil
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
