package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/bench"
	"github.com/spf13/cobra"
)

func newBenchCmd() *cobra.Command {
	var pods, maxNodes int
	var budget time.Duration
	var reserveMB int64
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Find how large a lab this machine holds: build growing flannel labs until a time or memory limit",
		Long: `Build flannel VXLAN labs of growing size on this machine — 1, 2, 5, 10, 20, 50,
100, ... nodes with --pods pods each — one at a time: build, measure, destroy,
and wait until the kernel has finished freeing it. Stops at the first build
slower than --budget, before a size whose memory (estimated from the previous
size) would leave less than --reserve-mb available, or at --max-nodes.

For each size it prints the bring-up time and rate, the teardown time (until
'klab destroy' returns, and until the kernel has finished), how much memory
the lab took while it was up (MemAvailable; other programs add noise) and
klab's own peak memory. Everything it builds lives in lab "bench" (or --lab)
and is removed at the end, also on Ctrl-C.

For the side-by-side comparison with hand-written iproute2/iptables scripts,
run 'make bench' in klab's source tree (docs/performance.md).`,
		Example: `  sudo klab bench
  sudo klab bench --pods 4 --budget 5s
  sudo klab bench --max-nodes 20 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			if err := needRoot(); err != nil {
				return err
			}
			if budget <= 0 {
				return fmt.Errorf("--budget %s must be positive, like 10s", budget)
			}
			lab := globals.lab
			if lab == "" {
				lab = "bench"
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			const row = "%6v %6v %10v %9v %7v %9v %11v %8v %8v\n"
			if !jsonOutput() {
				fmt.Printf("klab bench: flannel labs of N nodes x %d pods, lab %q (Ctrl-C stops and cleans up)\n", pods, lab)
				fmt.Printf(row, "NODES", "PODS", "NAMESPACES", "UP", "PODS/S", "DOWN", "KERNEL DONE", "MEMORY", "KLAB RSS")
			}
			setBar, endBar := progressBar("klab bench: building")
			c := bench.Capacity{
				StateDir: globals.stateDir, Lab: lab, PodsPerNode: pods, Nodes: bench.DefaultNodes,
				MaxNodes: maxNodes, TimeBudget: budget, MemReserve: reserveMB << 20,
				BuildProgress: setBar,
				Progress: func(s bench.Step) {
					endBar()
					if jsonOutput() {
						return
					}
					fmt.Printf(row, s.Nodes, s.Pods, s.Namespaces, round(s.Up), fmt.Sprintf("%.0f", s.PodsPerSecond()),
						round(s.Down), round(s.Kernel), fmt.Sprintf("%d MB", s.Memory>>20), fmt.Sprintf("%d MB", s.PeakRSS>>20))
				},
			}
			steps, why, err := c.Run(ctx)
			if jsonOutput() {
				if perr := printJSON(struct {
					Steps []bench.Step `json:"steps"`
					Stop  bench.Stop   `json:"stop"`
				}{steps, why}); perr != nil {
					return perr
				}
				return err
			}
			if err != nil && len(steps) == 0 {
				return err
			}
			fmt.Printf("stopped: %s\n", why.Detail)
			if len(steps) > 0 {
				best := steps[len(steps)-1]
				if why.Reason == "time" && len(steps) > 1 {
					best = steps[len(steps)-2]
				}
				fmt.Printf("this machine builds a lab of %d nodes x %d pods (%d namespaces) in %s; everything was removed again\n",
					best.Nodes, pods, best.Namespaces, round(best.Up))
			}
			if why.Reason == "interrupted" {
				return exitError{code: 130}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&pods, "pods", 10, "pods per node")
	f.IntVar(&maxNodes, "max-nodes", 100, "largest lab to try, in nodes (the default underlay holds 252)")
	f.DurationVar(&budget, "budget", 10*time.Second, "stop after the first build that takes longer than this")
	f.Int64Var(&reserveMB, "reserve-mb", 512, "memory to leave available, in MB")
	return cmd
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Microsecond)
}
