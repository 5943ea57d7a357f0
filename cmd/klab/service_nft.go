package main

import (
	"fmt"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/nft"
)

// showServiceNFT is 'klab service show' in nftables mode: per node, the
// service's elements in kube-proxy's maps and sets and its chains, each
// confirmed against the kernel over netlink.
func showServiceNFT(c *cluster.Cluster, s *cluster.Service, v serviceJSON, svc nat.Service) error {
	perNode := map[string]nft.ServiceObjects{}
	for _, n := range c.Lab.Nodes {
		kp, _, err := c.Lab.NFTTables(n)
		if err != nil {
			return err
		}
		o := kp.ServiceObjects(svc)
		if err := o.Check(c.NS(n.Name), kp); err != nil {
			return err
		}
		perNode[n.Name] = o
	}
	if jsonOutput() {
		return printJSON(struct {
			serviceJSON
			ProxyMode string                        `json:"proxyMode"`
			NFTables  map[string]nft.ServiceObjects `json:"nftables"`
		}{v, c.Lab.Mode(), perNode})
	}
	printService(c.Lab, s)
	for _, n := range c.Lab.Nodes {
		fmt.Printf("\nnode %s (namespace %s), table ip %s:\n", n.Name, c.NS(n.Name), nft.TableName)
		for _, l := range perNode[n.Name].Lines() {
			fmt.Println("  " + l)
		}
	}
	return nil
}

// nftRulesSection is 'klab show NODE's rules section in nftables mode:
// kube-proxy's and flannel's tables as rendered (the kernel's own copy has
// no comments on tables and chains, and nft prints it differently), each
// checked against the kernel by rules per chain and elements per set.
func nftRulesSection(c *cluster.Cluster, n *cluster.Node, ns string) (string, []string, error) {
	kp, fl, err := c.Lab.NFTTables(n)
	if err != nil {
		return "", nil, err
	}
	var lines []string
	for _, t := range []*nft.Table{kp, fl} {
		have, err := nft.ReadSummary(ns, t.Name)
		if err != nil {
			return "", nil, err
		}
		switch d := nft.Drift(t.Summarize(), have, nil); {
		case have == nil:
			lines = append(lines, "# table ip "+t.Name+" is NOT in the kernel: 'klab repair "+c.Lab.Name+"'")
		case d != nil:
			lines = append(lines, "# table ip "+t.Name+" differs from the lab's state ("+strings.Join(d, ", ")+"): 'klab repair "+c.Lab.Name+"'")
		default:
			lines = append(lines, "# table ip "+t.Name+": the kernel holds it (same rules per chain, elements per set)")
		}
		lines = append(lines, strings.Split(strings.TrimSpace(t.Text()), "\n")...)
	}
	return "nftables tables klab owns (kube-proxy's nftables mode, flannel's; 'nft list ruleset' inside the node prints the kernel's copy)", lines, nil
}
