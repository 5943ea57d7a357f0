package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/spf13/cobra"
)

// serviceClusterIP resolves a service's name to its ClusterIP in
// ping/curl/trace (one of hostResolvers).
func serviceClusterIP(c *cluster.Cluster, name string) (netip.Addr, bool) {
	if s := c.Lab.Service(name); s != nil {
		return s.ClusterIP, true
	}
	return netip.Addr{}, false
}

// ownedRulesSection makes 'klab show NODE' list the rules klab owns there,
// in packet order (one of showSections).
func ownedRulesSection(c *cluster.Cluster, target, ns string) (string, []string, error) {
	if c.Lab.Node(target) == nil {
		return "", nil, nil
	}
	if c.Lab.NFTables() {
		return nftRulesSection(c, c.Lab.Node(target), ns)
	}
	chains, err := nat.ReadOwned(ns, c.Lab.Name)
	if err != nil {
		return "", nil, err
	}
	return "iptables rules klab owns (packet order)", chainLines(chains), nil
}

// chainLines prints chains as "table CHAIN:" headers and their rules.
func chainLines(chains []nat.Chain) []string {
	var out []string
	for _, ch := range chains {
		out = append(out, fmt.Sprintf("%s %s:", ch.Table, ch.Name))
		for _, r := range ch.Rules {
			out = append(out, "  "+r)
		}
	}
	return out
}

func newServiceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "service",
		Aliases: []string{"svc"},
		Short:   "Add, delete, list and show Services (kube-proxy's iptables chains in every node)",
		Long: `A Service is a virtual address (its ClusterIP, from 10.96.0.0/12) in front of a
set of pods. kube-proxy in iptables mode implements it entirely with NAT rules
on every node: KUBE-SERVICES matches the ClusterIP and port, a KUBE-SVC chain
picks an endpoint at random (probability 1/n, 1/(n-1), ... 1/2, then the last
one unconditionally), and a KUBE-SEP chain DNATs to that pod. klab writes the
same chains, with kube-proxy's chain names, into every node's namespace.
In a lab with --control-plane etcd it writes the Service and its
EndpointSlice to etcd instead (/registry/services/specs/NS/NAME,
/registry/endpointslices/NS/NAME), and every node's agent writes the chains.

In a lab created with --proxy-mode nftables (or switched with 'klab
proxy-mode set nftables') the same Service is kube-proxy's nftables mode: an
element of the service-ips verdict map, a service-... chain whose numgen vmap
picks the endpoint, and an endpoint-... chain per pod doing the DNAT, in
'table ip kube-proxy', sent over netlink as one transaction per change.`,
	}
	cmd.AddCommand(newServiceAddCmd(), newServiceDelCmd(), newServiceListCmd(), newServiceShowCmd(), newServiceSetEndpointsCmd())
	return cmd
}

// parsePortSpec parses --tcp/--udp values: PORT or PORT:TARGETPORT. The
// port is named "<port>-<target>", as 'kubectl create service' names it.
func parsePortSpec(flag, v string, proto nat.Protocol) (nat.ServicePort, error) {
	ps, ts, hasTarget := strings.Cut(v, ":")
	port, err := parsePort(ps)
	if err != nil {
		return nat.ServicePort{}, fmt.Errorf("--%s %q: %v: write it like 80 or 80:8080 (port:target-port)", flag, v, err)
	}
	target := port
	if hasTarget {
		if target, err = parsePort(ts); err != nil {
			return nat.ServicePort{}, fmt.Errorf("--%s %q: target %v: write it like 80 or 80:8080 (port:target-port)", flag, v, err)
		}
	}
	return nat.ServicePort{Name: fmt.Sprintf("%d-%d", port, target), Protocol: proto, Port: port, TargetPort: target}, nil
}

// parsePort parses a port number 1-65535.
func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return n, nil
}

// parseNodePort parses --node-port: empty (none), "auto", or a number.
func parseNodePort(s string) (int, error) {
	switch s {
	case "":
		return 0, nil
	case "auto":
		return cluster.AutoNodePort, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < nat.NodePortMin || n > nat.NodePortMax {
		return 0, fmt.Errorf("--node-port %q is not valid: give a port in %d-%d, or auto", s, nat.NodePortMin, nat.NodePortMax)
	}
	return n, nil
}

// parseNames splits a comma-separated list of pod names.
func parseNames(flag string, vals []string) ([]string, error) {
	var out []string
	for _, v := range vals {
		for _, n := range strings.Split(v, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				return nil, fmt.Errorf("--%s %q has an empty name: write it like pod-a,pod-b", flag, strings.Join(vals, ","))
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// serviceFlags are the options of 'klab service add', turned into a spec
// by spec(); kept apart from cobra so they can be tested and fuzzed.
type serviceFlags struct {
	port, targetPort   int
	protocol, nodePort string
	svcType            string
	clusterIP          string
	tcp, udp           []string
	endpoints          []string
	selector           []string
	affinity           string
	trafficPolicy      string
}

func (f serviceFlags) spec(name string, portSet bool) (cluster.ServiceSpec, error) {
	s := cluster.ServiceSpec{Name: name}
	_, short := cluster.SplitKey(name)
	if err := netns.ValidateObject("service", short); err != nil {
		return s, err
	}
	proto := nat.Protocol(strings.ToLower(f.protocol))
	if proto != nat.TCP && proto != nat.UDP {
		return s, fmt.Errorf("--protocol %q is not known: use tcp or udp", f.protocol)
	}
	nodePort, err := parseNodePort(f.nodePort)
	if err != nil {
		return s, err
	}
	switch strings.ToLower(f.svcType) {
	case "", "clusterip":
		if nodePort != 0 {
			f.svcType = "NodePort" // --node-port implies it
		}
	case "nodeport":
		if nodePort == 0 {
			nodePort = cluster.AutoNodePort
		}
	default:
		return s, fmt.Errorf("--type %q is not supported: use ClusterIP or NodePort", f.svcType)
	}
	multi := len(f.tcp)+len(f.udp) > 0
	switch {
	case multi && portSet:
		return s, fmt.Errorf("service %s: give its ports either with --port (one port) or with --tcp/--udp (several), not both", name)
	case multi:
		if f.targetPort != 0 {
			return s, fmt.Errorf("service %s: --target-port goes with --port; with --tcp/--udp write PORT:TARGET, like --tcp 80:8080", name)
		}
		if nodePort > 0 && len(f.tcp)+len(f.udp) > 1 {
			return s, fmt.Errorf("service %s: --node-port %d cannot serve several ports: use --type NodePort to allocate one per port", name, nodePort)
		}
		for _, pv := range []struct {
			flag  string
			vals  []string
			proto nat.Protocol
		}{{"tcp", f.tcp, nat.TCP}, {"udp", f.udp, nat.UDP}} {
			for _, v := range pv.vals {
				p, err := parsePortSpec(pv.flag, v, pv.proto)
				if err != nil {
					return s, err
				}
				p.NodePort = nodePort
				s.Ports = append(s.Ports, p)
			}
		}
	default:
		if !portSet {
			return s, fmt.Errorf("service %s needs a port: add --port 80 (and --target-port 8080 if the pods listen elsewhere)", name)
		}
		if f.port < 1 || f.port > 65535 {
			return s, fmt.Errorf("--port %d is out of range: use 1-65535", f.port)
		}
		if f.targetPort < 0 || f.targetPort > 65535 {
			return s, fmt.Errorf("--target-port %d is out of range: use 1-65535", f.targetPort)
		}
		s.Ports = []nat.ServicePort{{Protocol: proto, Port: f.port, TargetPort: f.targetPort, NodePort: nodePort}}
	}
	if f.clusterIP != "" {
		a, err := netip.ParseAddr(f.clusterIP)
		if err != nil || !a.Is4() {
			return s, fmt.Errorf("--cluster-ip %q is not an IPv4 address: write it like 10.96.0.10, or leave it out", f.clusterIP)
		}
		s.ClusterIP = a
	}
	if s.Endpoints, err = parseNames("endpoints", f.endpoints); err != nil {
		return s, err
	}
	if len(f.selector) > 0 {
		var kvs []string
		for _, v := range f.selector {
			kvs = append(kvs, strings.Split(v, ",")...)
		}
		if s.Selector, err = cluster.ParseLabels(kvs); err != nil {
			return s, err
		}
	}
	if len(s.Endpoints) == 0 && s.Selector == nil {
		return s, fmt.Errorf("service %s needs endpoints: add --endpoints pod-a,pod-b or --selector app=web", name)
	}
	switch strings.ToLower(f.affinity) {
	case "", "none":
		s.Affinity = nat.AffinityNone
	case "clientip":
		s.Affinity = nat.AffinityClientIP
	default:
		return s, fmt.Errorf("--affinity %q is not known: use none or clientip", f.affinity)
	}
	switch strings.ToLower(f.trafficPolicy) {
	case "", "cluster":
	case "local":
		if nodePort == 0 {
			return s, fmt.Errorf("service %s: --external-traffic-policy Local applies to NodePort traffic: add --type NodePort (or --node-port N)", name)
		}
		s.ExternalTrafficPolicy = nat.PolicyLocal
	default:
		return s, fmt.Errorf("--external-traffic-policy %q is not known: use Cluster or Local", f.trafficPolicy)
	}
	return s, nil
}

func newServiceAddCmd() *cobra.Command {
	var f serviceFlags
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a Service: a ClusterIP, and kube-proxy's chains for it in every node",
		Long: `Add a Service in front of pods, named with --endpoints or chosen by label with
--selector. klab allocates a ClusterIP from the lab's service CIDR (10.96.0.0/12)
unless --cluster-ip is given, and writes kube-proxy's chains into every node with
one iptables-restore each. With --node-port (or --type NodePort) the service is
also reachable on every node's address at that port, from outside the cluster.

The endpoints follow the pods: delete a pod and it leaves the service; add a pod
with a matching label (or a listed name) and it joins.`,
		Example: `  klab service add web --port 80 --target-port 8080 --endpoints web-1,web-2,web-3
  klab service add web --port 80 --target-port 8080 --selector app=web --node-port 30080
  klab service add dns --udp 53:5353 --tcp 53:5353 --selector app=dns --cluster-ip 10.96.0.10
  klab service add sticky --port 80 --target-port 8080 -l app=web --affinity clientip --explain`,
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.spec(args[0], cmd.Flags().Changed("port"))
			if err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			svc, err := c.AddService(spec)
			if err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil || globals.dryRun {
				return err
			}
			if jsonOutput() {
				return printJSON(serviceView(c.Lab, svc))
			}
			printService(c.Lab, svc)
			return interrupted(c, "service "+svc.Name, true, nil)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.port, "port", 0, "the service port on the ClusterIP")
	fl.IntVar(&f.targetPort, "target-port", 0, "the port the pods listen on (default: --port)")
	fl.StringVar(&f.protocol, "protocol", "tcp", "tcp or udp (with --port)")
	fl.StringVar(&f.nodePort, "node-port", "", "expose the port on every node at this port (30000-32767), or auto")
	fl.StringVar(&f.svcType, "type", "ClusterIP", "ClusterIP or NodePort (NodePort allocates node ports unless --node-port is given)")
	fl.StringVar(&f.clusterIP, "cluster-ip", "", "the ClusterIP (default: the lowest free address of the service CIDR after .1)")
	fl.StringArrayVar(&f.tcp, "tcp", nil, "a TCP port as PORT[:TARGET], repeatable for several ports")
	fl.StringArrayVar(&f.udp, "udp", nil, "a UDP port as PORT[:TARGET], repeatable for several ports")
	fl.StringSliceVar(&f.endpoints, "endpoints", nil, "the pods behind the service, comma separated")
	fl.StringSliceVarP(&f.selector, "selector", "l", nil, "choose the pods by label, key=value[,key=value]")
	fl.StringVar(&f.affinity, "affinity", "none", "session affinity: none or clientip (a client keeps its endpoint for 3 h)")
	_ = cmd.RegisterFlagCompletionFunc("protocol", fixedCompletion("tcp", "udp"))
	_ = cmd.RegisterFlagCompletionFunc("type", fixedCompletion("ClusterIP", "NodePort"))
	_ = cmd.RegisterFlagCompletionFunc("affinity", fixedCompletion("none", "clientip"))
	fl.StringVar(&f.trafficPolicy, "external-traffic-policy", "Cluster", "NodePort traffic: Cluster (any endpoint, client masqueraded) or Local (only the receiving node's endpoints, client address kept, dropped on nodes without one)")
	_ = cmd.RegisterFlagCompletionFunc("external-traffic-policy", fixedCompletion("Cluster", "Local"))
	_ = cmd.RegisterFlagCompletionFunc("endpoints", completePods)
	return cmd
}

func newServiceDelCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "del NAME...",
		Aliases:           []string{"delete", "rm"},
		Short:             "Delete Services: their chains go from every node",
		Example:           "  klab service del web\n  klab service del web dns --explain",
		Args:              minArgs(1, "NAME"),
		ValidArgsFunction: completeServices,
		RunE: func(cmd *cobra.Command, args []string) error {
			return deleteEach("service", args, func(c *cluster.Cluster, name string) bool { return c.Lab.Service(name) != nil }, (*cluster.Cluster).DelService)
		},
	}
}

func newServiceSetEndpointsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "set-endpoints NAME POD...",
		Short: "Replace the pods behind a Service (only its chains are rewritten)",
		Long: `Replace the pods behind a Service with the pods given. Only that service's
KUBE-SVC chain and the KUBE-SEP chains of endpoints that come or go are
rewritten, in one iptables-restore per node; every other chain, and its
packet counters, stays as it is (see --explain).`,
		Example:           "  klab service set-endpoints web web-1 web-3 --explain",
		Args:              minArgs(2, "NAME and at least one POD"),
		ValidArgsFunction: completeServices,
		RunE: func(cmd *cobra.Command, args []string) error {
			pods, err := parseNames("endpoints", args[1:])
			if err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			if err := c.SetEndpoints(args[0], pods); err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil || globals.dryRun {
				return err
			}
			printService(c.Lab, c.Lab.Service(args[0]))
			return interrupted(c, "the endpoints of service "+args[0], true, nil)
		},
	}
}

func newServiceListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's Services, like kubectl get services",
		Example: "  klab service list\n  klab service list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			// In a lab that spans machines, the other machines' Services
			// too, from etcd, named SERVICE@MACHINE.
			others, machine, err := c.OtherServices()
			if err != nil {
				return err
			}
			type entry struct {
				l    *cluster.Lab
				s    *cluster.Service
				name string
			}
			var all []entry
			for _, s := range c.Lab.Services {
				all = append(all, entry{c.Lab, s, s.Name})
			}
			if others != nil {
				for _, s := range others.Services {
					all = append(all, entry{others, s, s.Name + "@" + machine[s.Name]})
				}
			}
			if jsonOutput() {
				out := []serviceJSON{}
				for _, e := range all {
					v := serviceView(e.l, e.s)
					v.Name = e.name
					out = append(out, v)
				}
				return printJSON(out)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tTYPE\tCLUSTER-IP\tPORT(S)\tENDPOINTS\tSELECTOR")
			for _, e := range all {
				s := e.s
				v := serviceView(e.l, s)
				var eps []string
				for _, e := range v.Endpoints {
					eps = append(eps, e.Pod)
				}
				if len(eps) == 0 {
					eps = []string{"<none>"}
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.name, v.Type, s.ClusterIP, strings.Join(v.Ports, ","), strings.Join(eps, ","), labelString(s.Selector))
			}
			return w.Flush()
		},
	}
}

func newServiceShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a Service, its endpoints, and its chains and rules in every node, read from the kernel",
		Long: `Show a Service and, for every node, the rules that implement it as the kernel
holds them (iptables-save inside the node): its KUBE-SERVICES and KUBE-NODEPORTS
entries, its KUBE-SVC chain with the random choice between endpoints, its KUBE-EXT
chain for NodePort traffic and one KUBE-SEP chain (DNAT) per endpoint.`,
		Example:           "  klab service show web\n  klab service show web -o json",
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: completeServices,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			s := c.Lab.Service(args[0])
			if s == nil {
				return fmt.Errorf("service %q does not exist in lab %s: see 'klab service list'", args[0], c.Lab.Name)
			}
			v := serviceView(c.Lab, s)
			svc, _ := c.Lab.NATService(s.Name)
			if c.Lab.NFTables() {
				return showServiceNFT(c, s, v, svc)
			}
			perNode := map[string][]nat.Chain{}
			for _, n := range c.Lab.Nodes {
				chains, err := nat.ReadOwned(c.NS(n.Name), c.Lab.Name)
				if err != nil {
					return err
				}
				perNode[n.Name] = nat.ServiceRules(chains, svc)
			}
			if jsonOutput() {
				return printJSON(struct {
					serviceJSON
					Rules map[string][]nat.Chain `json:"rules"`
				}{v, perNode})
			}
			printService(c.Lab, s)
			for _, n := range c.Lab.Nodes {
				fmt.Printf("\nnode %s (namespace %s):\n", n.Name, c.NS(n.Name))
				for _, l := range chainLines(perNode[n.Name]) {
					fmt.Println("  " + l)
				}
			}
			return nil
		},
	}
}

// serviceJSON is a service as 'klab service' prints it.
type serviceJSON struct {
	Name      string       `json:"name"`
	Type      string       `json:"type"`
	ClusterIP netip.Addr   `json:"clusterIP"`
	Ports     []string     `json:"ports"`
	Affinity  nat.Affinity `json:"affinity"`
	// ExternalTrafficPolicy is Cluster or Local.
	ExternalTrafficPolicy nat.TrafficPolicy `json:"externalTrafficPolicy"`
	Selector              map[string]string `json:"selector,omitempty"`
	Endpoints             []endpointJSON    `json:"endpoints"`
	// Missing lists named endpoints whose pod does not exist (now).
	Missing []string `json:"missing,omitempty"`
	Chains  []string `json:"chains"`
}

type endpointJSON struct {
	Pod  string     `json:"pod"`
	Node string     `json:"node"`
	IP   netip.Addr `json:"ip"`
}

func serviceView(l *cluster.Lab, s *cluster.Service) serviceJSON {
	v := serviceJSON{Name: s.Name, Type: "ClusterIP", ClusterIP: s.ClusterIP, Affinity: s.Affinity, Selector: s.Selector, Endpoints: []endpointJSON{}}
	if v.Affinity == "" {
		v.Affinity = nat.AffinityNone
	}
	v.ExternalTrafficPolicy = nat.PolicyCluster
	if s.ExternalTrafficPolicy == nat.PolicyLocal {
		v.ExternalTrafficPolicy = nat.PolicyLocal
	}
	for _, p := range l.EndpointPods(s) {
		v.Endpoints = append(v.Endpoints, endpointJSON{p.Name, p.Node, p.IP})
	}
	for _, name := range s.Endpoints {
		if l.Pod(name) == nil {
			v.Missing = append(v.Missing, name)
		}
	}
	for _, p := range s.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = nat.TCP
		}
		target := p.TargetPort
		if target == 0 {
			target = p.Port
		}
		ps := fmt.Sprintf("%d/%s->%d", p.Port, proto, target)
		if p.NodePort != 0 {
			v.Type = "NodePort"
			ps = fmt.Sprintf("%d:%d/%s->%d", p.Port, p.NodePort, proto, target)
		}
		if p.Name != "" {
			ps = p.Name + "=" + ps
		}
		v.Ports = append(v.Ports, ps)
	}
	ns, _ := l.NATService(s.Name)
	v.Chains = nat.ServiceChains(ns)
	return v
}

func printService(l *cluster.Lab, s *cluster.Service) {
	v := serviceView(l, s)
	fmt.Printf("service %s: %s %s, port(s) %s, affinity %s\n", s.Name, v.Type, s.ClusterIP, strings.Join(v.Ports, ", "), v.Affinity)
	if v.ExternalTrafficPolicy == nat.PolicyLocal {
		fmt.Println("  external traffic policy Local: NodePort clients keep their address and reach only the receiving node's endpoints")
	}
	if len(v.Endpoints) == 0 {
		fmt.Println("  endpoints: none (connections are rejected)")
	}
	for _, e := range v.Endpoints {
		fmt.Printf("  endpoint %-12s %-15s on %s\n", e.Pod, e.IP, e.Node)
	}
	for _, m := range v.Missing {
		fmt.Printf("  endpoint %-12s (no such pod now: it joins when added)\n", m)
	}
}

func completeServices(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	var out []string
	if l := loadForCompletion(); l != nil && len(args) == 0 {
		for _, s := range l.Services {
			out = append(out, s.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
