package cluster

import (
	"sync/atomic"

	"github.com/klab-dev/klab/pkg/plan"
)

// counted wraps Build's per-job planner to report each job as it is
// handed to a worker, to c.Progress (a progress bar for bulk builds).
func (c *Cluster) counted(total int, f func(int) (plan.Plan, error)) func(int) (plan.Plan, error) {
	if c.Progress == nil {
		return f
	}
	var n atomic.Int64
	return func(i int) (plan.Plan, error) {
		p, err := f(i)
		c.Progress(int(n.Add(1)), total)
		return p, err
	}
}
