package cluster

import (
	"sync"
	"testing"

	"github.com/klab-dev/klab/pkg/netns"
)

// Build reports its progress, one call per node (and the external host),
// ending at the total; the lab it builds is the one asked for.
func TestBuildReportsProgress(t *testing.T) {
	c := openTestLab(t)
	var mu sync.Mutex
	var calls [][2]int
	c.Progress = func(done, total int) {
		mu.Lock()
		calls = append(calls, [2]int{done, total})
		mu.Unlock()
	}
	spec := Spec{Nodes: []NodeSpec{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}}, Pods: []PodSpec{{Name: "p1", Node: "n1"}, {Name: "p3", Node: "n3"}}}
	if _, _, err := c.Build(spec); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 4 || calls[len(calls)-1] != [2]int{4, 4} {
		t.Errorf("progress calls %v, want 1..4 of 4 (3 nodes and the external host)", calls)
	}
	for _, obj := range []string{"n1", "n2", "n3", "p1", "p3"} {
		if !netns.Exists(netns.Name(c.Lab.Name, obj)) {
			t.Errorf("%s was not built", obj)
		}
	}
}
