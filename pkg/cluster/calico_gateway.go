package cluster

// The underlay's router as a BGP peer of the cluster (seed 001: "when
// containers need to talk to the outside, add the physical gateway router
// to the cluster by BGP, so the outside reaches container IPs directly,
// without NAT"). klab runs a BIRD of its own in the underlay namespace,
// the lab's gateway, peering with every node; the nodes get it as a global
// BGPPeer. The external host, routed by the underlay, then reaches pod IPs.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/klab-dev/klab/pkg/calico"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SetGatewayBGP turns the underlay router's BGP peering on or off.
func (c *Cluster) SetGatewayBGP(on bool) error {
	l := c.Lab
	if l.Backend != BackendCalico {
		return fmt.Errorf("lab %s uses the %s backend, which runs no BGP: create a lab with --backend calico", l.Name, l.Backend)
	}
	if err := l.noBGPInVXLAN(); err != nil {
		return err
	}
	gw := l.UnderlayGateway
	s := l.calico()
	has := slices.ContainsFunc(s.Peers, func(p calico.Peer) bool { return p.IP == gw })
	switch {
	case on && !has:
		if err := c.AddBGPPeer(gw, calico.GatewayAS); err != nil {
			return err
		}
	case !on && has:
		if err := c.DelBGPPeer(gw); err != nil {
			return err
		}
	}
	s = l.calico()
	s.Gateway = on
	l.Calico = &s
	p := c.planGatewayBird()
	if !on && c.BirdPID(UnderlayName) != 0 {
		p.Add(c.birdStopOp(UnderlayName))
		// The learned routes stay in the kernel after a SIGKILL: remove
		// them with the daemon, as a router withdrawing its BGP routes.
		p.Add(c.gatewayFlushOp())
	}
	p.Add(c.savePlan()...)
	return c.apply(p)
}

// planGatewayBird plans the underlay router's BIRD when the gateway peers:
// its configuration (every node a neighbour), started or reloaded.
func (c *Cluster) planGatewayBird() plan.Plan {
	if !c.Lab.calico().Gateway {
		return nil
	}
	var nodes []netip.Addr
	for _, n := range c.Lab.Nodes {
		nodes = append(nodes, n.IP)
	}
	cfg := calico.GatewayConfig{RouterID: c.Lab.UnderlayGateway, Pool: c.Lab.ClusterCIDR, Nodes: nodes}
	path := filepath.Join(c.BirdDir(UnderlayName), "bird.conf")
	data := []byte(cfg.Render())
	old, err := os.ReadFile(path)
	changed := err != nil || !bytes.Equal(old, data)
	var p plan.Plan
	if changed {
		p.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: path, Data: data, Mode: 0o600, Atomic: true}, Why: "bird.conf of the underlay's router"})
	}
	switch running := !c.A.Simulate && c.BirdPID(UnderlayName) != 0; {
	case !running:
		p.Add(c.birdStartOp(UnderlayName))
	case changed:
		p.Add(c.birdConfigureOp(UnderlayName))
	}
	return p
}

// gatewayFlushOp removes the routes the underlay's BIRD installed.
func (c *Cluster) gatewayFlushOp() plan.Op {
	ns := c.NS(UnderlayName)
	return plan.Op{Verb: plan.Exec, NS: ns, Proc: &plan.Proc{
		Cmd: "ip -n " + ns + " route flush proto bird",
		Run: func() error {
			h, err := c.A.Handle(ns)
			if err != nil {
				return err
			}
			rs, err := h.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.Protocol == unix.RTPROT_BIRD {
					h.RouteDel(&r)
				}
			}
			return nil
		},
	}}
}
