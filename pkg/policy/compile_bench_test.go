package policy_test

import (
	"testing"

	"github.com/klab-dev/klab/pkg/policy"
)

// BenchmarkCompileChange is the CPU part of one policy change at 1,000
// policies over 300 pods, without root: compile the changed state, and
// render what the applier would get (sets and the changed chains).
func BenchmarkCompileChange(b *testing.B) {
	st := benchState()
	prev, err := policy.Compile(st, policy.CompileOptions{Lab: "bench", Node: "node1"})
	if err != nil {
		b.Fatal(err)
	}
	changed := benchState()
	changed.Policies[0] = benchPolicy(0, 8080)
	b.Run("compile", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := policy.Compile(changed, policy.CompileOptions{Lab: "bench", Node: "node1"}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compile/incremental", func(b *testing.B) {
		var cc policy.Compiler
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			// The agent saw the state before, then the change.
			if _, err := cc.Compile(st, policy.CompileOptions{Lab: "bench", Node: "node1"}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := cc.Compile(changed, policy.CompileOptions{Lab: "bench", Node: "node1"}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
		}
		b.StartTimer()
	})
	next, _ := policy.Compile(changed, policy.CompileOptions{Lab: "bench", Node: "node1"})
	b.Run("plan", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			policy.PlanApply("x", prev, next, nil)
		}
	})
}
