package policy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
)

// BenchmarkPoliciesNFT is BenchmarkPolicies' workload (1,000 policies over
// 300 pods, one node) in nftables form, beside the iptables form and a
// bare `nft -f` of the same table text, in the same run:
//
//	program/nft-f     nft -f of RenderNFT's text into a fresh namespace
//	program/nftables  compile + PlanApplyNFT + the applier (netlink)
//	program/iptables  compile + PlanApply + the applier (ipset restore,
//	                  iptables-restore --noflush, FORWARD jump)
//	add-pod/nftables  one pod joins (set elements): compile, diff, apply
//	add-pod/iptables  the same in the iptables form
//	change/nftables   one policy's port changes (chains rewritten)
//	change/iptables   the same in the iptables form
//
// Each reports ms/op; the nftables rows report ratio against the iptables
// row of the same operation.
func BenchmarkPoliciesNFT(b *testing.B) {
	testutil.RequireRoot(b)
	for _, tool := range []string{"nft", "ipset", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s (scripts/install-deps.sh installs it)", tool)
		}
	}
	lab := testutil.LabName(b, "n2")
	next := compile(b, benchState())
	tab, err := policy.RenderNFT(next)
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "policy.nft")
	if err := os.WriteFile(file, []byte(tab.Text()), 0o644); err != nil {
		b.Fatal(err)
	}
	fresh := func(i int) string {
		ns := netns.Name(lab, fmt.Sprintf("n%d", i))
		netns.Delete(ns)
		if _, err := netns.Ensure(ns); err != nil {
			b.Fatal(err)
		}
		return ns
	}
	ms := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	var ipt = map[string]time.Duration{}
	program := func(name string, apply func(ns string)) {
		b.Run("program/"+name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				ns := fresh(i)
				t0 := time.Now()
				apply(ns)
				total += time.Since(t0)
				netns.Delete(ns)
			}
			b.ReportMetric(ms(total, b.N), "ms/op")
			ipt["program/"+name] = total / time.Duration(b.N)
		})
	}
	program("iptables", func(ns string) {
		a := &plan.Applier{Discard: true}
		defer a.Close()
		if err := a.Apply(policy.PlanApply(ns, nil, compile(b, benchState()), nil)); err != nil {
			b.Fatal(err)
		}
	})
	program("nft-f", func(ns string) {
		if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-f", file).CombinedOutput(); err != nil {
			b.Fatalf("nft -f: %v: %s", err, out)
		}
	})
	program("nftables", func(ns string) {
		a := &plan.Applier{Discard: true}
		defer a.Close()
		p, err := policy.PlanApplyNFT(ns, nil, compile(b, benchState()), false, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Apply(p); err != nil {
			b.Fatal(err)
		}
	})
	changed := benchState()
	changed.Policies[0] = benchPolicy(0, 8080)
	for _, op := range []struct {
		name string
		to   policy.State
	}{{"add-pod", benchState(monitor)}, {"change", changed}} {
		for _, form := range []string{"iptables", "nftables"} {
			ns := fresh(100)
			a := &plan.Applier{Discard: true}
			planFor := func(prev, next *policy.Plan, first bool) plan.Plan {
				if form == "iptables" {
					if first {
						return policy.PlanApply(ns, nil, next, nil)
					}
					return policy.PlanApply(ns, prev, next, nil)
				}
				p, err := policy.PlanApplyNFT(ns, prev, next, !first, nil)
				if err != nil {
					b.Fatal(err)
				}
				return p
			}
			if err := a.Apply(planFor(nil, next, true)); err != nil {
				b.Fatal(err)
			}
			b.Run(op.name+"/"+form, func(b *testing.B) {
				var total time.Duration
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					after := compile(b, op.to)
					if err := a.Apply(planFor(next, after, false)); err != nil {
						b.Fatal(err)
					}
					total += time.Since(t0)
					if err := a.Apply(planFor(after, next, false)); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(ms(total, b.N), "ms/op")
				key := op.name + "/" + form
				ipt[key] = total / time.Duration(b.N)
				if base := ipt[op.name+"/iptables"]; form == "nftables" && base > 0 {
					b.ReportMetric(float64(ipt[key])/float64(base), "ratio")
				}
			})
			a.Close()
			netns.Delete(ns)
		}
	}
	_ = ipt
}
