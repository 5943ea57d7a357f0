package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/plan"
)

// ErrInterrupted is wrapped by the error of a build stopped through
// Cluster.Ctx (Ctrl-C). What the interrupted call had created is removed
// again before it returns; the lab is as it was before the call.
var ErrInterrupted = plan.ErrInterrupted

// interrupted returns an error wrapping ErrInterrupted once c.Ctx is done.
func (c *Cluster) interrupted() error {
	if c.Ctx != nil && c.Ctx.Err() != nil {
		return fmt.Errorf("lab %s: %w", c.Lab.Name, ErrInterrupted)
	}
	return nil
}

// rollbackNode finishes undoing a failed or interrupted AddNode once the
// applier has removed what it created: the node's directories and, when
// the call was creating the lab (no state saved yet), the lab directory.
func (c *Cluster) rollbackNode(n *Node) {
	removeAll(filepath.Join(c.Dir(), "nodes", n.Name))
	removeAll(filepath.Join(c.Dir(), "ipam", n.Name))
	if len(c.Lab.Nodes) > 0 {
		return
	}
	if _, err := os.Stat(StateFile(c.StateDir, c.Lab.Name)); !errors.Is(err, os.ErrNotExist) {
		return
	}
	removeAll(c.Dir())
}

// releaseStale plans freeing (and names the owners of) the addresses of a node's store held by pods
// the state does not know: what a build killed between allocating and
// saving left. Callers hold the lab lock, so no other command is
// allocating.
func (c *Cluster) releaseStale(store ipam.Store) (plan.Plan, map[string]bool, error) {
	used, err := store.Used()
	if err != nil {
		return nil, nil, err
	}
	var owners []string
	for _, owner := range used {
		if c.Lab.Pod(owner) == nil && !slices.Contains(owners, owner) {
			owners = append(owners, owner)
		}
	}
	slices.Sort(owners)
	var p plan.Plan
	stale := map[string]bool{}
	for _, o := range owners {
		rp, err := store.ReleaseOps(o)
		if err != nil {
			return nil, nil, err
		}
		p.Add(rp...)
		stale[o] = true
	}
	return p, stale, nil
}
