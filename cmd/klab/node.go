package main

import (
	"fmt"
	"net/netip"
	"os"
	"text/tabwriter"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/spf13/cobra"
)

func newNodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Add, delete and list nodes (namespaces on the underlay with cni0 and flannel.1)",
	}
	cmd.AddCommand(newNodeAddCmd(), newNodeDelCmd(), newNodeListCmd())
	return cmd
}

func newNodeAddCmd() *cobra.Command {
	var ip, podCIDR, backend, clusterCIDR, underlayCIDR, serviceCIDR, proxyMode string
	var underlayMTU int
	var withDNS bool
	var calicoOpts cluster.CalicoSettings
	var graceful time.Duration
	var controlPlane, flannelMode, etcdEndpoints string
	var etcd agent.EtcdConfig
	var leaseTTL time.Duration
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a node: a namespace on the underlay, with cni0, flannel.1 and a pod subnet",
		Long: `Add a node to the lab (the lab is created on first use).

A node is a network namespace plugged into the lab's underlay bridge through
its eth0 (192.168.1.101, .102, ... by default). It leases a /24 of the cluster
network (10.244.1.0/24, 10.244.2.0/24, ...), gets a cni0 bridge holding the
subnet's .1 (the pods' gateway) and, with the vxlan backend, a flannel.1 VTEP
(VNI 1, UDP 8472, MTU 1450) plus an ARP entry, an FDB entry and a route for
every other node. Its flannel subnet.env is at /run/flannel/subnet.env inside
'klab exec NAME'.

With --control-plane etcd (chosen by a lab's first node add) the lab runs
flannel's control plane instead of klab programming every node: etcd on a
control-plane node (192.168.1.100) and an agent per node in flanneld's role,
which leases the subnet in etcd (/coreos.com/network/subnets/...), creates
flannel.1 and programs every peer from the leases it watches ('klab agent
log NAME' shows what it did). --flannel-mode miss is old flannel's mode: no
entries in advance, the kernel's L3MISS/L2MISS answered from the leases.

--etcd-endpoints URL,... (flanneld's flag, implies --control-plane etcd)
uses an external etcd cluster instead: no control-plane node and no etcd in
the lab; the CLI and the agents reach it over the machine's network. With
https endpoints, --etcd-cafile, --etcd-certfile and --etcd-keyfile are
flanneld's TLS files; --etcd-prefix moves flannel's keys (default
/coreos.com/network). One lab per etcd: the lab claims it with the key
/klab/lab, and destroy removes what the lab wrote there.

--proxy-mode on the lab's first node chooses kube-proxy's mode for the whole
lab: iptables (the default: KUBE-* chains, flannel's FLANNEL-* chains) or
nftables (table ip kube-proxy and flannel's table ip flannel-ipv4, written
over netlink; no iptables rules at all). ipvs is refused: this kernel has no
IP_VS. 'klab proxy-mode set' switches a running lab.`,
		Example: `  klab node add node1
  klab node add node2 --ip 192.168.1.102 --pod-cidr 10.244.2.0/24 --explain
  klab node add node1 --lab hostgw --backend host-gw
  klab node add node1 --lab cp --control-plane etcd --lease-ttl 10s
  klab node add node1 --lab ext --etcd-endpoints http://10.0.0.5:2379
  klab node add node1 --lab nft --proxy-mode nftables`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := cluster.Options{Backend: backend, DNS: withDNS, ControlPlane: controlPlane, FlannelMode: flannelMode, LeaseTTL: leaseTTL, ProxyMode: proxyMode, Calico: calicoOpts, Etcd: etcd, UnderlayMTU: underlayMTU}
			if cmd.Flags().Changed("etcd-endpoints") {
				eps, err := agent.ParseEndpoints(etcdEndpoints)
				if err != nil {
					return err
				}
				opts.Etcd.Endpoints = eps
			}
			if graceful != 0 {
				if graceful < time.Second || graceful%time.Second != 0 {
					return fmt.Errorf("--bgp-graceful-restart %s is not a whole number of seconds: write it like 5s (calico-node uses 120s)", graceful)
				}
				opts.Calico.GracefulRestart = int(graceful / time.Second)
			}
			var err error
			for _, f := range []struct {
				name, val string
				dst       *netip.Prefix
			}{{"cluster-cidr", clusterCIDR, &opts.ClusterCIDR}, {"underlay-cidr", underlayCIDR, &opts.UnderlayCIDR}, {"service-cidr", serviceCIDR, &opts.ServiceCIDR}} {
				if f.val != "" {
					if *f.dst, err = ipam.ParseCIDR("--"+f.name, f.val); err != nil {
						return err
					}
				}
			}
			spec := cluster.NodeSpec{Name: args[0]}
			if ip != "" {
				if spec.IP, err = netip.ParseAddr(ip); err != nil || !spec.IP.Is4() {
					return fmt.Errorf("--ip %q is not an IPv4 address: write it like 192.168.1.101", ip)
				}
			}
			if podCIDR != "" {
				if spec.PodCIDR, err = netip.ParsePrefix(podCIDR); err != nil || !spec.PodCIDR.Addr().Is4() {
					return fmt.Errorf("--pod-cidr %q is not a valid IPv4 CIDR: write it like 10.244.1.0/24", podCIDR)
				}
			}
			c, err := openLab(&opts)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			if err := c.CheckOptions(opts, cmd.Flags().Changed); err != nil {
				return err
			}
			n, err := c.AddNode(spec)
			if err != nil {
				failed(c.A)
				return interrupted(c, "node "+spec.Name, false, err)
			}
			if err := finish(c.A); err != nil {
				return err
			}
			fmt.Fprintf(out(), "node %s: underlay %s, pod subnet %s, backend %s, proxy mode %s (lab %s)\n", n.Name, n.IP, n.PodCIDR, c.Lab.Backend, c.Lab.Mode(), c.Lab.Name)
			return interrupted(c, "node "+n.Name, true, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&ip, "ip", "", "underlay address (default: next free from .101)")
	f.StringVar(&podCIDR, "pod-cidr", "", "pod subnet (default: next free /24 of the cluster network)")
	f.StringVar(&backend, "backend", "", "for a new lab: vxlan (flannel's default), host-gw, or calico (routed pods, BGP by BIRD)")
	f.IntVar(&calicoOpts.BlockSize, "block-size", 0, "for a new calico lab: the prefix length of the IPAM blocks nodes claim (default 26)")
	f.StringVar(&calicoOpts.Encapsulation, "encapsulation", "", "for a new calico lab: none (routed by BGP, the default) or vxlan (Felix's vxlan.calico, no BIRD); ipip is refused (this kernel has no IPIP)")
	f.BoolVar(&calicoOpts.RouteReflector, "route-reflector", false, "for a new calico lab: no node-to-node mesh; the first node is a route reflector every other node peers with")
	f.DurationVar(&graceful, "bgp-graceful-restart", 0, "for a new calico lab: how long peers keep a dead BIRD's routes (default 120s, calico-node's)")
	f.StringVar(&clusterCIDR, "cluster-cidr", "", "for a new lab: the pod network (default 10.244.0.0/16)")
	f.StringVar(&underlayCIDR, "underlay-cidr", "", "for a new lab: the nodes' network (default 192.168.1.0/24)")
	f.IntVar(&underlayMTU, "underlay-mtu", 0, "for a new lab: the nodes' network MTU (default 1500; 1450 for a lab that spans machines, see 'klab token create')")
	f.StringVar(&serviceCIDR, "service-cidr", "", "for a new lab: the ClusterIP range (default 10.96.0.0/12)")
	f.BoolVar(&withDNS, "dns", false, "for a new lab: cluster DNS (kube-system/kube-dns at the service CIDR's 10th address, two DNS pods, resolv.conf in every pod)")
	f.StringVar(&controlPlane, "control-plane", "", "for a new lab: etcd runs flannel's leases at the control-plane node (.100) and an agent on every node programs it from them (default: klab programs every node directly)")
	f.StringVar(&flannelMode, "flannel-mode", "", "for a new lab with --control-plane etcd: miss is old flannel's mode (flannel.1 with l2miss/l3miss, entries answered on demand)")
	f.DurationVar(&leaseTTL, "lease-ttl", 0, "for a new lab with --control-plane etcd: the subnet leases' TTL (default 24h, flannel's)")
	f.StringVar(&etcdEndpoints, "etcd-endpoints", "", "for a new lab: an external etcd cluster's client URLs, comma-separated (flanneld's flag; implies --control-plane etcd, with no etcd in the lab)")
	f.StringVar(&etcd.CAFile, "etcd-cafile", "", "for a new lab with --etcd-endpoints https://...: the CA certificate that signed etcd's (flanneld's flag)")
	f.StringVar(&etcd.CertFile, "etcd-certfile", "", "for a new lab with --etcd-endpoints https://...: the client certificate etcd checks (flanneld's flag)")
	f.StringVar(&etcd.KeyFile, "etcd-keyfile", "", "for a new lab with --etcd-endpoints https://...: the client certificate's key (flanneld's flag)")
	f.StringVar(&etcd.Prefix, "etcd-prefix", "", "for a new lab with a control plane: the prefix of flannel's keys in etcd (flanneld's flag, default "+agent.DefaultPrefix+")")
	f.StringVar(&proxyMode, "proxy-mode", "", "for a new lab: kube-proxy's mode, iptables (default) or nftables (ipvs needs IP_VS, which this kernel lacks)")
	cmd.RegisterFlagCompletionFunc("backend", fixedCompletion("vxlan", "host-gw", "calico"))
	cmd.RegisterFlagCompletionFunc("control-plane", fixedCompletion("etcd"))
	cmd.RegisterFlagCompletionFunc("flannel-mode", fixedCompletion("miss"))
	cmd.RegisterFlagCompletionFunc("proxy-mode", fixedCompletion(cluster.ProxyModes()...))
	return cmd
}

func newNodeDelCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "del NAME...",
		Aliases:           []string{"delete", "rm"},
		Short:             "Delete nodes, their pods, and every other node's entries for them",
		Example:           "  klab node del node3",
		Args:              minArgs(1, "NAME"),
		ValidArgsFunction: completeNodes,
		RunE: func(cmd *cobra.Command, args []string) error {
			return deleteEach("node", args, func(c *cluster.Cluster, name string) bool { return c.Lab.Node(name) != nil }, (*cluster.Cluster).DelNode)
		},
	}
}

func newNodeListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's nodes",
		Example: "  klab node list\n  klab node list -o json",
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
			if jsonOutput() {
				return printJSON(c.Lab.Nodes)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tUNDERLAY IP\tPOD SUBNET\tVTEP MAC\tPODS\tNAMESPACE")
			for _, n := range c.Lab.Nodes {
				vm := n.VtepMAC
				if vm == "" {
					vm = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, n.IP, n.PodCIDR, vm, len(c.Lab.PodsOn(n.Name)), c.NS(n.Name))
			}
			return w.Flush()
		},
	}
}
