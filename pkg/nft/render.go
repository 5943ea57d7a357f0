package nft

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"

	"github.com/klab-dev/klab/pkg/nat"
)

// Names of kube-proxy's own objects (pkg/proxy/nftables/proxier.go).
const (
	TableFamily = "ip"
	TableName   = "kube-proxy"

	chainFilterPrerouting     = "filter-prerouting"
	chainFilterInput          = "filter-input"
	chainFilterForward        = "filter-forward"
	chainFilterOutput         = "filter-output"
	chainFilterOutputPostDNAT = "filter-output-post-dnat"
	chainNatPrerouting        = "nat-prerouting"
	chainNatOutput            = "nat-output"
	chainNatPostrouting       = "nat-postrouting"

	chainServices               = "services"
	chainServiceEndpointsCheck  = "service-endpoints-check"
	chainNodePortEndpointsCheck = "nodeport-endpoints-check"
	chainReject                 = "reject-chain"
	chainClusterIPsCheck        = "cluster-ips-check"
	chainFirewallCheck          = "firewall-check"
	chainMarkMasq               = "mark-for-masquerade"
	chainMasquerading           = "masquerading"

	SetClusterIPs          = "cluster-ips"
	SetNodePortIPs         = "nodeport-ips"
	MapServiceIPs          = "service-ips"
	MapServiceNodePorts    = "service-nodeports"
	MapNoEndpointServices  = "no-endpoint-services"
	MapNoEndpointNodePorts = "no-endpoint-nodeports"
	MapFirewallIPs         = "firewall-ips"
)

// Netfilter hook priorities knftables resolves "dstnat" and "srcnat" to.
const (
	priDstNAT = -100
	priSrcNAT = 100
)

// baseChains is kube-proxy's nftablesBaseChains: "${type}-${hook}", the
// filter chains 10 before DNAT (they see pre-DNAT addresses) except
// filter-output-post-dnat 10 after it.
var baseChains = []Chain{
	{Name: chainFilterPrerouting, Type: "filter", Hook: "prerouting", Priority: priDstNAT - 10},
	{Name: chainFilterInput, Type: "filter", Hook: "input", Priority: priDstNAT - 10},
	{Name: chainFilterForward, Type: "filter", Hook: "forward", Priority: priDstNAT - 10},
	{Name: chainFilterOutput, Type: "filter", Hook: "output", Priority: priDstNAT - 10},
	{Name: chainFilterOutputPostDNAT, Type: "filter", Hook: "output", Priority: priDstNAT + 10},
	{Name: chainNatPrerouting, Type: "nat", Hook: "prerouting", Priority: priDstNAT},
	{Name: chainNatOutput, Type: "nat", Hook: "output", Priority: priDstNAT},
	{Name: chainNatPostrouting, Type: "nat", Hook: "postrouting", Priority: priSrcNAT},
}

// jumpChains is kube-proxy's nftablesJumpChains: the regular chains the base
// chains jump to, in kube-proxy's order (rules are appended in this order).
var jumpChains = []struct {
	dst, src string
	newOnly  bool
}{
	{chainNodePortEndpointsCheck, chainFilterInput, true},
	{chainServiceEndpointsCheck, chainFilterInput, true},
	{chainServiceEndpointsCheck, chainFilterForward, true},
	{chainServiceEndpointsCheck, chainFilterOutput, true},
	{chainFirewallCheck, chainFilterPrerouting, true},
	{chainFirewallCheck, chainFilterOutput, true},
	{chainServices, chainNatOutput, false},
	{chainServices, chainNatPrerouting, false},
	{chainMasquerading, chainNatPostrouting, false},
	{chainClusterIPsCheck, chainFilterForward, true},
	{chainClusterIPsCheck, chainFilterOutputPostDNAT, true},
}

const (
	addrType      = "ipv4_addr"
	addrProtoPort = "ipv4_addr . inet_proto . inet_service : verdict"
	protoPort     = "inet_proto . inet_service : verdict"
)

// Option changes a rendering.
type Option func(*options)

type options struct{ nodePortIPs []netip.Addr }

// NodePortAddresses limits NodePorts to these node addresses, as
// kube-proxy's --nodeport-addresses does (kube-proxy's nftables default is
// the node's primary IP): the nodeport-ips set holds them and the services
// chain matches `ip daddr @nodeport-ips`. Without it every local address
// accepts NodePorts (`fib daddr type local ip daddr != 127.0.0.0/8`), like
// iptables mode's `-m addrtype --dst-type LOCAL`, and there is no
// nodeport-ips set.
func NodePortAddresses(ips ...netip.Addr) Option {
	return func(o *options) { o.nodePortIPs = append(o.nodePortIPs, ips...) }
}

// Render turns a service set into the `table ip kube-proxy` that kube-proxy's
// nftables proxier programs on a node after a full sync (see doc.go for the
// upstream version mirrored). It validates the input with nat.Validate and
// changes nothing. Services are rendered sorted by namespace/name, ports and
// endpoints in the given order, so equal inputs give equal tables.
// Both external traffic policies are rendered; a Local service's
// local- chain holds the endpoints on cfg.NodeName, so the table is per
// node. nat.Service has no external IPs or load balancers, so there are no
// firewall- chains and firewall-ips stays empty, as on such a node.
func Render(cfg nat.Config, services []nat.Service, opts ...Option) (*Table, error) {
	if err := nat.Validate(cfg, services); err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	c := withDefaults(cfg)
	mark := uint32(1) << uint(c.MasqueradeBit)
	clusterCIDR := c.ClusterCIDR

	t := &Table{Family: TableFamily, Name: TableName, Comment: "rules for kube-proxy"}
	chain := func(ch Chain) *Chain {
		p := &ch
		t.Chains = append(t.Chains, p)
		return p
	}
	byName := map[string]*Chain{}
	for _, bc := range baseChains {
		byName[bc.Name] = chain(bc)
	}
	ensure := func(name, comment string) *Chain {
		if ch := byName[name]; ch != nil {
			return ch
		}
		ch := chain(Chain{Name: name, Comment: comment})
		byName[name] = ch
		return ch
	}
	for _, j := range jumpChains {
		ensure(j.dst, "")
		var r Rule
		if j.newOnly {
			r.Stmts = append(r.Stmts, CtStateNew{})
		}
		r.Stmts = append(r.Stmts, Jump(j.dst))
		byName[j.src].Rules = append(byName[j.src].Rules, r)
	}
	for _, n := range []string{chainServices, chainClusterIPsCheck, chainMasquerading, chainMarkMasq} {
		ensure(n, "")
	}
	rule := func(ch string, comment string, s ...Stmt) {
		byName[ch].Rules = append(byName[ch].Rules, Rule{Stmts: s, Comment: comment})
	}
	rule(chainMarkMasq, "", MarkSet{Mark: mark})
	rule(chainMasquerading, "", MarkClear{Mark: mark}, Verdict{Kind: "return"})
	rule(chainMasquerading, "", MarkSet{Xor: true, Mark: mark})
	rule(chainMasquerading, "", Masquerade{FullyRandom: true})

	set := func(s Set) *Set {
		p := &s
		t.Sets = append(t.Sets, p)
		return p
	}
	clusterIPs := set(Set{Name: SetClusterIPs, Type: addrType, Comment: "Active ClusterIPs"})
	rule(chainClusterIPsCheck, "Reject traffic to invalid ports of ClusterIPs", IPInSet{Daddr, SetClusterIPs}, Verdict{Kind: "reject"})
	rule(chainClusterIPsCheck, "Drop traffic to unallocated ClusterIPs", IPInPrefixes{Daddr, c.ServiceCIDR}, Verdict{Kind: "drop"})

	matchAll := len(o.nodePortIPs) == 0
	if !matchAll {
		np := set(Set{Name: SetNodePortIPs, Type: addrType, Comment: "IPs that accept NodePort traffic"})
		for _, ip := range o.nodePortIPs {
			if !ip.IsLoopback() {
				np.Elements = append(np.Elements, Element{Key: []string{ip.String()}})
			}
		}
	}
	noEPServices := set(Set{Name: MapNoEndpointServices, Type: addrProtoPort, IsMap: true, Comment: "vmap to drop or reject packets to services with no endpoints"})
	noEPNodePorts := set(Set{Name: MapNoEndpointNodePorts, Type: protoPort, IsMap: true, Comment: "vmap to drop or reject packets to service nodeports with no endpoints"})
	ensure(chainReject, "helper for @no-endpoint-services / @no-endpoint-nodeports")
	rule(chainReject, "", Verdict{Kind: "reject"})
	rule(chainServiceEndpointsCheck, "", VmapLookup{AddrProtoPort, MapNoEndpointServices})
	notLocalhost := IPMatch{Field: Daddr, Not: true, Prefix: netip.MustParsePrefix("127.0.0.0/8")}
	if matchAll {
		rule(chainNodePortEndpointsCheck, "", notLocalhost, VmapLookup{ProtoPort, MapNoEndpointNodePorts})
	} else {
		rule(chainNodePortEndpointsCheck, "", IPInSet{Daddr, SetNodePortIPs}, VmapLookup{ProtoPort, MapNoEndpointNodePorts})
	}
	set(Set{Name: MapFirewallIPs, Type: addrProtoPort, IsMap: true, Comment: "destinations that are subject to LoadBalancerSourceRanges"})
	rule(chainFirewallCheck, "", VmapLookup{AddrProtoPort, MapFirewallIPs})
	serviceIPs := set(Set{Name: MapServiceIPs, Type: addrProtoPort, IsMap: true, Comment: "ClusterIP, ExternalIP and LoadBalancer IP traffic"})
	serviceNodePorts := set(Set{Name: MapServiceNodePorts, Type: protoPort, IsMap: true, Comment: "NodePort traffic"})
	rule(chainServices, "", VmapLookup{AddrProtoPort, MapServiceIPs})
	if matchAll {
		rule(chainServices, "", FibLocal{Daddr}, notLocalhost, VmapLookup{ProtoPort, MapServiceNodePorts})
	} else {
		rule(chainServices, "", IPInSet{Daddr, SetNodePortIPs}, VmapLookup{ProtoPort, MapServiceNodePorts})
	}

	// Per service port, as syncProxyRules' loop over svcPortMap (either
	// traffic policy, no masqueradeAll, local detector by cluster CIDR).
	order := make([]int, len(services))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		sa, sb := &services[a], &services[b]
		return cmp.Or(cmp.Compare(ns(sa), ns(sb)), cmp.Compare(sa.Name, sb.Name))
	})
	seenIP := map[netip.Addr]bool{}
	for _, i := range order {
		s := &services[i]
		n := ns(s)
		cip := s.ClusterIP.String()
		if !seenIP[s.ClusterIP] {
			seenIP[s.ClusterIP] = true
			clusterIPs.Elements = append(clusterIPs.Elements, Element{Key: []string{cip}})
		}
		affinity := s.Affinity == nat.AffinityClientIP
		for _, p := range s.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = nat.TCP
			}
			pr := string(proto)
			port := strconv.Itoa(p.Port)
			base := PortChainBase(n, s.Name, proto, p.Name)
			svcChain, extChain := ServicePrefix+base, ExternalPrefix+base
			portName := s.PortName(p)
			if len(s.Endpoints) == 0 {
				// No endpoints: reject at the ClusterIP and the NodePort.
				noEPServices.Elements = append(noEPServices.Elements, Element{Key: []string{cip, pr, port}, Value: "goto " + chainReject, Comment: portName})
				if p.NodePort != 0 {
					noEPNodePorts.Elements = append(noEPNodePorts.Elements, Element{Key: []string{pr, strconv.Itoa(p.NodePort)}, Value: "goto " + chainReject, Comment: portName})
				}
				continue
			}
			tp := p.TargetPort
			if tp == 0 {
				tp = p.Port
			}
			eps := make([]string, len(s.Endpoints))
			var epChains []*Chain
			for j, e := range s.Endpoints {
				ap := netip.AddrPortFrom(e.IP, uint16(tp))
				eb := EndpointChainBase(n, s.Name, proto, p.Name, ap)
				eps[j] = EndpointPrefix + eb
				ec := &Chain{Name: eps[j]}
				ec.Rules = append(ec.Rules, Rule{Stmts: []Stmt{IPMatch{Field: Saddr, Prefix: netip.PrefixFrom(e.IP, 32)}, Jump(chainMarkMasq)}})
				if affinity {
					aff := AffinityPrefix + eb
					set(Set{Name: aff, Type: addrType, Flags: []string{"dynamic", "timeout"}, Timeout: affinityTimeout(s)})
					ec.Rules = append(ec.Rules, Rule{Stmts: []Stmt{UpdateSet{aff}}})
				}
				ec.Rules = append(ec.Rules, Rule{Stmts: []Stmt{L4Proto{pr}, DNAT{ap}}})
				epChains = append(epChains, ec)
			}
			sc := chain(Chain{Name: svcChain})
			sc.Rules = append(sc.Rules, Rule{Stmts: []Stmt{
				IPMatch{Field: Daddr, Prefix: netip.PrefixFrom(s.ClusterIP, 32)}, PortMatch{pr, uint16(p.Port)},
				IPMatch{Field: Saddr, Not: true, Prefix: clusterCIDR}, Jump(chainMarkMasq)}})
			if affinity {
				for _, ec := range eps {
					sc.Rules = append(sc.Rules, Rule{Stmts: []Stmt{IPInSet{Saddr, AffinityPrefix + ec[len(EndpointPrefix):]}, Goto(ec)}})
				}
			}
			sc.Rules = append(sc.Rules, Rule{Stmts: []Stmt{NumgenVmap{eps}}})
			switch {
			case p.NodePort != 0 && s.ExternalLocal():
				// The Local policy, as proxier.go's "If we are only using
				// same-node endpoints, we can retain the source IP": pods
				// and the node itself go to any endpoint (the node
				// masqueraded), everyone else only to this node's
				// endpoints, unmasqueraded, or is dropped by
				// no-endpoint-nodeports when there is none here.
				xc := chain(Chain{Name: extChain})
				xc.Rules = append(xc.Rules,
					Rule{Stmts: []Stmt{IPMatch{Field: Saddr, Prefix: clusterCIDR}, Goto(svcChain)}, Comment: "short-circuit pod traffic"},
					Rule{Stmts: []Stmt{FibLocal{Saddr}, Jump(chainMarkMasq)}, Comment: "masquerade local traffic"},
					Rule{Stmts: []Stmt{FibLocal{Saddr}, Goto(svcChain)}, Comment: "short-circuit local traffic"})
				var local []string
				for j, e := range s.Endpoints {
					if e.NodeName != "" && e.NodeName == c.NodeName {
						local = append(local, eps[j])
					}
				}
				if len(local) == 0 {
					noEPNodePorts.Elements = append(noEPNodePorts.Elements, Element{Key: []string{pr, strconv.Itoa(p.NodePort)}, Value: "drop", Comment: portName})
					break
				}
				localChain := LocalPrefix + base
				xc.Rules = append(xc.Rules, Rule{Stmts: []Stmt{Goto(localChain)}})
				lc := chain(Chain{Name: localChain})
				if affinity {
					for _, ec := range local {
						lc.Rules = append(lc.Rules, Rule{Stmts: []Stmt{IPInSet{Saddr, AffinityPrefix + ec[len(EndpointPrefix):]}, Goto(ec)}})
					}
				}
				lc.Rules = append(lc.Rules, Rule{Stmts: []Stmt{NumgenVmap{local}}})
			case p.NodePort != 0:
				xc := chain(Chain{Name: extChain})
				xc.Rules = append(xc.Rules, Rule{Stmts: []Stmt{Jump(chainMarkMasq)}}, Rule{Stmts: []Stmt{Goto(svcChain)}})
			}
			t.Chains = append(t.Chains, epChains...)
			serviceIPs.Elements = append(serviceIPs.Elements, Element{Key: []string{cip, pr, port}, Value: "goto " + svcChain})
			if p.NodePort != 0 {
				serviceNodePorts.Elements = append(serviceNodePorts.Elements, Element{Key: []string{pr, strconv.Itoa(p.NodePort)}, Value: "goto " + extChain})
			}
		}
	}
	t.index()
	return t, nil
}

func ns(s *nat.Service) string {
	if s.Namespace == "" {
		return nat.DefaultNamespace
	}
	return s.Namespace
}

func affinityTimeout(s *nat.Service) int {
	if s.AffinityTimeout == 0 {
		return nat.DefaultAffinityTimeout
	}
	return s.AffinityTimeout
}

func withDefaults(c nat.Config) nat.Config {
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = nat.DefaultClusterCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = nat.DefaultServiceCIDR
	}
	c.ClusterCIDR = c.ClusterCIDR.Masked()
	c.ServiceCIDR = c.ServiceCIDR.Masked()
	if c.MasqueradeBit == 0 {
		c.MasqueradeBit = nat.DefaultMasqueradeBit
	}
	return c
}
