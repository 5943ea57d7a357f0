package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/klab-dev/klab/pkg/ipam"
)

// ErrInterrupted is wrapped by the error of a build stopped through
// Cluster.Ctx (Ctrl-C). What the interrupted call had created is removed
// again before it returns; the lab is as it was before the call.
var ErrInterrupted = errors.New("interrupted")

// interrupted returns an error wrapping ErrInterrupted once c.Ctx is done.
func (c *Cluster) interrupted() error {
	if c.Ctx != nil && c.Ctx.Err() != nil {
		return fmt.Errorf("lab %s: %w", c.Lab.Name, ErrInterrupted)
	}
	return nil
}

// rollbackNode undoes a failed or interrupted AddNode: the node's kernel
// objects and files, and, when the call was creating the lab (no state
// saved yet), the lab-wide namespaces and the lab directory too, so that a
// failed first 'klab node add' leaves nothing behind.
func (c *Cluster) rollbackNode(n *Node) {
	c.teardownNode(n)
	removeAll(filepath.Join(c.Dir(), "nodes", n.Name))
	removeAll(filepath.Join(c.Dir(), "ipam", n.Name))
	if len(c.Lab.Nodes) > 0 {
		return
	}
	if _, err := os.Stat(StateFile(c.StateDir, c.Lab.Name)); !errors.Is(err, os.ErrNotExist) {
		return
	}
	c.deleteNS(UnderlayName)
	c.deleteNS(ExternalName)
	removeAll(c.Dir())
}

// releaseStale frees addresses of a node's store held by pods the state
// does not know: what a build killed between allocating and saving left.
// Callers hold the lab lock, so no other command is allocating.
func (c *Cluster) releaseStale(store ipam.Store) {
	used, err := store.Used()
	if err != nil {
		return
	}
	for _, owner := range used {
		if c.Lab.Pod(owner) == nil {
			store.Release(owner)
		}
	}
}
