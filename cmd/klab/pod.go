package main

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

func newPodCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pod",
		Short: "Add, delete and list pods (namespaces wired to a node's cni0)",
	}
	cmd.AddCommand(newPodAddCmd(), newPodDelCmd(), newPodListCmd(), newPodSetReadyCmd())
	return cmd
}

// cniEnv, set to 1, makes --cni the default of 'klab pod add' (a lab's
// front matter "cni: true").
const cniEnv = "KLAB_CNI"

func newPodAddCmd() *cobra.Command {
	var node, ip string
	var labels []string
	var useCNI bool
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a pod: a namespace with eth0 on its node's cni0, like the CNI bridge plugin's ADD",
		Long: `Add a pod to a node.

A pod is a network namespace (the pause container's, in Kubernetes) with lo up
and eth0: one end of a veth pair created directly in the pod and named eth0;
the other end, veth<8 hex>, is plugged into the node's cni0 with hairpin mode
on. eth0 gets the next free address of the node's subnet (host-local style,
from .2) and two routes via cni0's address: the default route and the cluster
network.

With --cni the real CNI plugins wire the pod instead, as kubelet and
containerd do on a flannel node: the chain flannel's CNI plugin delegates to
(bridge with host-local, then portmap, from /usr/lib/cni) runs with ADD
through libcni; --explain shows each plugin's call and the result JSON.`,
		Example: `  klab pod add pod-a --node node1
  klab pod add pod-b --node node1 --cni --explain
  klab pod add web-1 --node node2 --ip 10.244.2.10 --label app=web --explain`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := cluster.PodSpec{Name: args[0], Node: node}
			var err error
			if ip != "" {
				if spec.IP, err = netip.ParseAddr(ip); err != nil || !spec.IP.Is4() {
					return fmt.Errorf("--ip %q is not an IPv4 address: write it like 10.244.1.5", ip)
				}
			}
			if spec.Labels, err = cluster.ParseLabels(labels); err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			add := c.AddPod
			if useCNI {
				add = c.AddPodCNI
			}
			p, err := add(spec)
			if err != nil {
				failed(c.A)
				return interrupted(c, "pod "+spec.Name, false, err)
			}
			if err := finish(c.A); err != nil {
				return err
			}
			if p.HostVeth == "" {
				fmt.Fprintf(out(), "pod %s: %s on node %s (another machine's node: its machine agent built it)\n", p.Name, p.IP, p.Node)
			} else {
				fmt.Fprintf(out(), "pod %s: %s on node %s (host side %s)\n", p.Name, p.IP, p.Node, p.HostVeth)
			}
			return interrupted(c, "pod "+p.Name, true, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "node to run the pod on (may be left out when the lab has one node)")
	f.StringVar(&ip, "ip", "", "pod address (default: next free in the node's subnet)")
	f.StringSliceVarP(&labels, "label", "l", nil, "label key=value (repeatable), for service selectors")
	f.BoolVar(&useCNI, "cni", os.Getenv(cniEnv) == "1", "wire the pod with the real CNI plugins (bridge, host-local, portmap) through libcni (default $"+cniEnv+"=1, a lab's \"cni: true\")")
	cmd.RegisterFlagCompletionFunc("node", completeNodes)
	return cmd
}

func newPodDelCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "del NAME...",
		Aliases:           []string{"delete", "rm"},
		Short:             "Delete pods: their servers, veth pair, namespace and address",
		Example:           "  klab pod del pod-b",
		Args:              minArgs(1, "NAME"),
		ValidArgsFunction: completePods,
		RunE: func(cmd *cobra.Command, args []string) error {
			return deleteEach("pod", args, (*cluster.Cluster).HasPod, (*cluster.Cluster).DelPod)
		},
	}
}

func newPodListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's pods",
		Example: "  klab pod list\n  klab pod list -o json",
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
				return printJSON(c.Lab.Pods)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "POD\tIP\tNODE\tHOST VETH\tLABELS\tNAMESPACE")
			for _, p := range c.Lab.Pods {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.IP, p.Node, p.HostVeth, labelString(p.Labels), c.NS(p.Name))
			}
			return w.Flush()
		},
	}
}

func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func newPodSetReadyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "set-ready POD true|false",
		Short: "Mark a pod ready or not, as a passing or failing readiness probe does",
		Long: `Mark a pod ready or unready. An unready pod leaves the endpoints of every
Service that selects it, on every node at once (one iptables-restore per node
rewriting only that service's chains), as the endpoints controller and
kube-proxy do when a readiness probe fails; 'klab get endpoints' lists it under
notReadyAddresses. Marking it ready brings it back.`,
		Example:           "  klab pod set-ready web-2 false\n  klab get endpoints web\n  klab pod set-ready web-2 true",
		Args:              exactArgs(2, "POD and true or false"),
		ValidArgsFunction: completePods,
		RunE: func(cmd *cobra.Command, args []string) error {
			ready, err := strconv.ParseBool(args[1])
			if err != nil {
				return fmt.Errorf("%q is neither true nor false: write klab pod set-ready %s true (or false)", args[1], args[0])
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			if err := c.SetReady(args[0], ready); err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil {
				return err
			}
			state := "ready"
			if !ready {
				state = "not ready: it left its services' endpoints"
			}
			fmt.Fprintf(out(), "pod %s %s\n", args[0], state)
			return nil
		},
	}
}
