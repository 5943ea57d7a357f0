package main

import (
	"fmt"

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
