package cluster

// Test helpers that build part of a lab, as a killed command would leave
// it.

// buildNode plans and applies a node's own objects (no peers, no state).
func (c *Cluster) buildNode(n *Node) error {
	u, err := c.read(UnderlayName)
	if err != nil {
		return err
	}
	st, err := c.read(n.Name, ipForward)
	if err != nil {
		return err
	}
	p, err := c.planNode(n, u, st)
	if err != nil {
		return err
	}
	return c.apply(p)
}

// peer plans and applies node n's entries for node o.
func (c *Cluster) peer(n, o *Node) error {
	st, err := c.read(n.Name)
	if err != nil {
		return err
	}
	return c.apply(c.planPeers(n, []*Node{o}, st))
}
