package main

import (
	"fmt"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/inspect"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/spf13/cobra"
)

// showSections are the sections 'klab show' prints after the links,
// addresses, routes, neighbours and FDB, in order. Each returns a title and
// lines, or nothing.
var showSections = []func(c *cluster.Cluster, target, ns string) (title string, lines []string, err error){
	ownedRulesSection, // service.go
}

func newShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show TARGET",
		Short: "Show a node's or pod's links, addresses, routes, neighbours and FDB, read from the kernel",
		Long: `Show the network state of a node, pod, "underlay" or "external", read back from
the kernel through netlink (not from klab's own records): links with their
type, MTU, MAC, master and VXLAN attributes, IPv4 addresses, routes, ARP
neighbours and FDB entries — and, on nodes, the iptables rules klab owns.`,
		Example: `  klab show node1
  klab show pod-a -o json`,
		Args:              exactArgs(1, "TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			ns, err := c.TargetNS(args[0])
			if err != nil {
				return err
			}
			if !netns.Exists(ns) {
				return fmt.Errorf("namespace %s is missing (a damaged lab?): see 'klab list'", ns)
			}
			h, err := netns.Handle(ns)
			if err != nil {
				return err
			}
			defer h.Close()
			snap, err := inspect.Take(h)
			if err != nil {
				return fmt.Errorf("read %s: %w", ns, err)
			}
			type extra struct {
				Title string   `json:"title"`
				Lines []string `json:"lines"`
			}
			var extras []extra
			for _, f := range showSections {
				t, ls, err := f(c, args[0], ns)
				if err != nil {
					return err
				}
				if t != "" {
					extras = append(extras, extra{t, ls})
				}
			}
			if jsonOutput() {
				return printJSON(struct {
					Target    string `json:"target"`
					Namespace string `json:"namespace"`
					*inspect.Snapshot
					Extra []extra `json:"extra,omitempty"`
				}{args[0], ns, snap, extras})
			}
			fmt.Printf("%s (namespace %s)\n", args[0], ns)
			lines := snap.Lines()
			for _, k := range inspect.Kinds {
				title := strings.ToUpper(k[:1]) + k[1:]
				if k == "fdb" {
					title = "FDB"
				}
				fmt.Printf("\n%s:\n", title)
				if len(lines[k]) == 0 {
					fmt.Println("  (none)")
				}
				for _, l := range lines[k] {
					fmt.Println("  " + l)
				}
			}
			for _, e := range extras {
				fmt.Printf("\n%s:\n", e.Title)
				for _, l := range e.Lines {
					fmt.Println("  " + l)
				}
			}
			return nil
		},
	}
}
