package klabuser

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/klab-dev/klab/pkg/klabtest"
)

// TestAbort is run by klab's TestRemovedOnAbort only (KLABUSER_ABORT set):
// it builds a lab, prints its name, then panics or waits to be interrupted,
// to show that klabtest removes the lab either way.
func TestAbort(t *testing.T) {
	mode := os.Getenv("KLABUSER_ABORT")
	if mode == "" {
		t.Skip("run by klab's TestRemovedOnAbort")
	}
	lab := klabtest.New(t, klabtest.Nodes(2), klabtest.Prefix("kt"))
	fmt.Printf("lab %s up\n", lab.Name)
	switch mode {
	case "panic":
		panic("the test panics with its lab up")
	case "interrupt":
		time.Sleep(time.Minute)
	}
}
