package e2e

import (
	"testing"

	"github.com/klab-dev/klab/pkg/policy"
)

func TestCasesReproduced(t *testing.T) {
	cases := Cases()
	if len(cases) < 20 {
		t.Fatalf("%d cases, want at least 20", len(cases))
	}
	seen := map[string]bool{}
	for _, name := range sortedNames(cases) {
		if seen[name] {
			t.Errorf("duplicate case %s", name)
		}
		seen[name] = true
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			st := State(c)
			ev, err := policy.NewEvaluator(st)
			if err != nil {
				t.Fatal(err)
			}
			plans := map[string]*policy.Plan{}
			for _, n := range Nodes {
				plans[n] = ev.Compile(policy.CompileOptions{Lab: "e2e", Node: n})
			}
			if len(c.Probes) != 4 {
				t.Errorf("%d probes, want 4", len(c.Probes))
			}
			for _, pr := range c.Probes {
				r := pr.Reachability
				eval := func(f, to PodString) bool {
					v, err := ev.Evaluate(policy.Connection{Src: policy.PodEndpoint(string(f)), Dst: policy.PodEndpoint(string(to)), Protocol: pr.Protocol, Port: pr.Port})
					if err != nil {
						t.Fatal(err)
					}
					return v.Allowed
				}
				kernel := func(f, to PodString) bool {
					src, dst := IPOf(f), IPOf(to)
					a, _ := plans[NodeOf(f)].Simulate(src, dst, pr.Protocol, pr.Port)
					b, _ := plans[NodeOf(to)].Simulate(src, dst, pr.Protocol, pr.Port)
					return a && b
				}
				want := func(f, to PodString) bool { return r.Expected[f][to] }
				for name, got := range map[string]func(f, to PodString) bool{"evaluator": eval, "compiled plan": kernel} {
					bad := 0
					for _, f := range r.Pods {
						for _, to := range r.Pods {
							if f != to && got(f, to) != want(f, to) {
								bad++
							}
						}
					}
					if bad > 0 {
						t.Errorf("%s: %s: %d of 72 pairs differ\nexpected:\n%s\ngot:\n%s", pr, name, bad, r.Table(want), r.Table(got))
					}
				}
			}
		})
	}
}
