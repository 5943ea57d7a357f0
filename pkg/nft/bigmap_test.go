package nft

import (
	"encoding/json"
	"testing"
)

// A map of 2,000 elements with ~45-byte goto targets is ~200 KB of
// elements: more than one nested attribute can carry (its length is 16
// bits). Every element must reach the kernel (read back with nft -j),
// from the full sync and from a partial one.
func TestLargeMapReachesKernel(t *testing.T) {
	ns := testNS(t)
	needNft(t)
	tab, err := Render(benchConfig, benchServices(2000))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ns, nil, tab); err != nil {
		t.Fatal(err)
	}
	count := func(kind, name string) int {
		var doc struct {
			Nftables []map[string]struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(nftOut(t, ns, "-j", "list", kind, "ip", TableName, name)), &doc); err != nil {
			t.Fatal(err)
		}
		for _, o := range doc.Nftables {
			if s, ok := o[kind]; ok {
				return len(s.Elem)
			}
		}
		return -1
	}
	if n := count("map", MapServiceIPs); n != 2000 {
		t.Errorf("service-ips holds %d elements after a full sync, want 2000", n)
	}
	if n := count("set", SetClusterIPs); n != 2000 {
		t.Errorf("cluster-ips holds %d elements, want 2000", n)
	}
	// The staged load of a new table (nft.Batch.Staged) ends the same.
	if err := Delete(ns); err != nil {
		t.Fatal(err)
	}
	if err := (&Batch{Changes: []*Change{Diff(nil, tab)}, Staged: true}).Apply(ns); err != nil {
		t.Fatal(err)
	}
	if n := count("map", MapServiceIPs); n != 2000 {
		t.Errorf("service-ips holds %d elements after a staged full sync, want 2000", n)
	}
	sum, err := ReadSummary(ns, TableName)
	if err != nil {
		t.Fatal(err)
	}
	if d := Drift(tab.Summarize(), sum, nil); d != nil {
		t.Errorf("staged full sync differs from the rendering: %v", d)
	}
	more, err := Render(benchConfig, benchServices(4000))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ns, tab, more); err != nil {
		t.Fatal(err)
	}
	if n := count("map", MapServiceIPs); n != 4000 {
		t.Errorf("service-ips holds %d elements after adding 2000 in a partial sync, want 4000", n)
	}
}
