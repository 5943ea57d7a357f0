package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

// Capacity describes a run that builds ever larger flannel labs on this
// machine, to find how large a lab it holds.
type Capacity struct {
	StateDir string
	// Lab names the labs built (one at a time, each destroyed before the
	// next); Lab+"-q" holds the RTNL probe. Neither may exist.
	Lab         string
	PodsPerNode int
	// Nodes are the sizes tried, in increasing order; sizes above MaxNodes
	// are skipped.
	Nodes    []int
	MaxNodes int
	// TimeBudget stops the run after the first build that takes longer.
	TimeBudget time.Duration
	// MemReserve is memory to leave available: a size whose estimated
	// memory use (from the previous size) would eat into it is not built.
	MemReserve int64
	// Progress, if set, is called after each size.
	Progress func(Step)
	// BuildProgress, when not nil, is told how far each build has got.
	BuildProgress func(done, total int)
}

// DefaultNodes are the sizes Capacity tries by default.
var DefaultNodes = []int{1, 2, 5, 10, 20, 50, 100, 150, 200, 250}

// Step is one size of a capacity run.
type Step struct {
	Nodes      int           `json:"nodes"`
	Pods       int           `json:"pods"`
	Namespaces int           `json:"namespaces"`
	Up         time.Duration `json:"upNs"`
	Down       time.Duration `json:"downNs"`
	// Kernel is the time from the start of the teardown until the kernel
	// had finished freeing the lab (see Quiet).
	Kernel time.Duration `json:"kernelNs"`
	// Memory is how much MemAvailable dropped while the lab was up (kernel
	// objects and klab's own memory; other programs add noise).
	Memory int64 `json:"memoryBytes"`
	// PeakRSS is klab's own resident-set high-water mark during the build.
	PeakRSS int64 `json:"peakRSSBytes"`
}

// PodsPerSecond is the bring-up rate.
func (s Step) PodsPerSecond() float64 {
	if s.Up <= 0 {
		return 0
	}
	return float64(s.Pods) / s.Up.Seconds()
}

// Stop says why a capacity run ended.
type Stop struct {
	Reason string `json:"reason"` // "time", "memory", "max", "interrupted" or "error"
	Detail string `json:"detail"`
}

// Run builds a lab of each size in turn — build, measure, destroy, wait for
// the kernel to finish the teardown — until a limit is reached. Every lab
// and the probe are removed before it returns, also when ctx is cancelled
// (cancellation is checked between steps; a build under way is finished
// first) or a build fails.
func (c Capacity) Run(ctx context.Context) ([]Step, Stop, error) {
	probeLab := c.Lab + "-q"
	for _, l := range []string{c.Lab, probeLab} {
		if err := netns.ValidateLab(l); err != nil {
			return nil, Stop{}, fmt.Errorf("lab name %q is too long or not valid for klab bench (it also uses %q): %w", c.Lab, probeLab, err)
		}
		if nss, _ := netns.List(l); len(nss) > 0 {
			return nil, Stop{}, fmt.Errorf("lab %s already exists: klab bench builds and destroys its own labs, so pick another name with --lab, or remove it with 'klab destroy %s'", l, l)
		}
		if labs, _ := cluster.Labs(c.StateDir); contains(labs, l) {
			return nil, Stop{}, fmt.Errorf("lab %s already exists: klab bench builds and destroys its own labs, so pick another name with --lab, or remove it with 'klab destroy %s'", l, l)
		}
	}
	if c.PodsPerNode < 0 || c.PodsPerNode > 250 {
		return nil, Stop{}, fmt.Errorf("%d pods per node is out of range: use 0-250 (a node leases a /24)", c.PodsPerNode)
	}
	q, err := NewQuiet(probeLab)
	if err != nil {
		return nil, Stop{}, err
	}
	defer q.Close()
	if _, err := q.Wait(time.Now()); err != nil {
		return nil, Stop{}, err
	}
	var steps []Step
	for _, n := range c.Nodes {
		if n > c.MaxNodes {
			return steps, Stop{"max", fmt.Sprintf("reached --max-nodes %d", c.MaxNodes)}, nil
		}
		if ctx.Err() != nil {
			return steps, Stop{"interrupted", "interrupted"}, nil
		}
		if len(steps) > 0 {
			last := steps[len(steps)-1]
			avail, err := MemAvailable()
			if err == nil && last.Memory > 0 {
				need := last.Memory / int64(last.Namespaces) * int64(namespaces(n, c.PodsPerNode))
				if avail-need < c.MemReserve {
					return steps, Stop{"memory", fmt.Sprintf("%d nodes would need about %d MB, and only %d MB are available above the %d MB reserve", n, need>>20, (avail-c.MemReserve)>>20, c.MemReserve>>20)}, nil
				}
			}
		}
		s, err := c.step(q, n)
		if err != nil {
			return steps, Stop{"error", err.Error()}, err
		}
		steps = append(steps, s)
		if c.Progress != nil {
			c.Progress(s)
		}
		if c.TimeBudget > 0 && s.Up > c.TimeBudget {
			return steps, Stop{"time", fmt.Sprintf("%d nodes took %s to build, over the %s budget", n, s.Up.Round(time.Millisecond), c.TimeBudget)}, nil
		}
	}
	return steps, Stop{"max", "tried every size"}, nil
}

func namespaces(nodes, pods int) int { return 2 + nodes*(1+pods) } // + underlay, external

// step builds, measures and destroys one lab.
func (c Capacity) step(q *Quiet, nodes int) (s Step, err error) {
	spec := FlannelSpec(nodes, c.PodsPerNode)
	s = Step{Nodes: nodes, Pods: len(spec.Pods), Namespaces: namespaces(nodes, c.PodsPerNode)}
	defer func() {
		// Whatever happened, the lab goes.
		if derr := cluster.Destroy(c.StateDir, c.Lab, nil, nil); err == nil && derr != nil {
			err = derr
		}
	}()
	before, _ := MemAvailable()
	ResetPeakRSS()
	cl, err := cluster.Open(c.StateDir, c.Lab, &cluster.Options{}, nil)
	if err != nil {
		return s, err
	}
	cl.Progress = c.BuildProgress
	t0 := time.Now()
	_, _, err = cl.Build(spec)
	s.Up = time.Since(t0)
	cl.Close()
	if err != nil {
		return s, fmt.Errorf("build %d nodes x %d pods: %w", nodes, c.PodsPerNode, err)
	}
	s.PeakRSS, _ = PeakRSS()
	if after, err := MemAvailable(); err == nil && before > 0 {
		s.Memory = max(0, before-after)
	}
	t1 := time.Now()
	if err := cluster.Destroy(c.StateDir, c.Lab, nil, nil); err != nil {
		return s, err
	}
	s.Down = time.Since(t1)
	k, err := q.Wait(t1)
	if err != nil {
		return s, err
	}
	s.Kernel = max(k, s.Down)
	return s, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
