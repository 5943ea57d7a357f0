package policy_test

import (
	"encoding/json"
	"os/exec"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/nft"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
	"github.com/klab-dev/klab/pkg/policy/e2e"
)

// The kernel accepts every conformance case's table, applied one after the
// other in one namespace as PlanApplyNFT's diffs from the previous case
// (the first one whole), and `nft -j` (an independent client) reads back
// the rendering's rules per chain and elements per set.
func TestPlanApplyNFTEveryCase(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to read the table back (scripts/install-deps.sh installs it)")
	}
	ns := netns.Name(testutil.LabName(t, "n2"), "node1")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	var prev *policy.Plan
	a := &plan.Applier{Discard: true}
	for _, k := range e2e.Cases() {
		next := compileCase(t, k.Name, "node1")
		p, err := policy.PlanApplyNFT(ns, prev, next, prev != nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", k.Name, err)
		}
		if err := a.Apply(p); err != nil {
			t.Fatalf("%s: %v", k.Name, err)
		}
		want, _ := policy.RenderNFT(next)
		// The plan's `nft -f` text (--dry-run, --script) loads in nft too.
		if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "nft -c -f - <<'EOF'\n"+want.Text()+"EOF\n").CombinedOutput(); err != nil {
			t.Errorf("%s: nft -c -f of the rendering: %v\n%s", k.Name, err, out)
		}
		if got := nftCounts(t, ns); !sameCounts(want.Summarize(), got) {
			t.Errorf("%s: nft -j shows %v, the rendering %v", k.Name, got, want.Summarize())
		}
		prev = next
	}
}

func nftCounts(t *testing.T, ns string) nft.Summary {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", policy.NFTTable).Output()
	if err != nil {
		t.Fatalf("nft -j list table: %v", err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	s := nft.Summary{}
	for _, o := range doc.Nftables {
		var x struct {
			Name, Chain string
			Elem        []json.RawMessage
		}
		switch {
		case o["chain"] != nil:
			json.Unmarshal(o["chain"], &x)
			s["chain "+x.Name] += 0
		case o["rule"] != nil:
			json.Unmarshal(o["rule"], &x)
			s["chain "+x.Chain]++
		case o["set"] != nil:
			json.Unmarshal(o["set"], &x)
			s["set "+x.Name] = len(x.Elem)
		}
	}
	return s
}

func sameCounts(a, b nft.Summary) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
