// Command hostsnap records the host's network namespace before a test run
// and compares it afterwards (the Makefile's test target wraps the whole
// suite, labs included, with it):
//
//	go run ./internal/hostsnap save FILE
//	go run ./internal/hostsnap compare FILE   # exit 1 and a diff if changed
//
// What is recorded, and what is left out because it changes by itself, is
// described at testutil.HostSnapshot.
package main

import (
	"fmt"
	"os"

	"github.com/klab-dev/klab/internal/testutil"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "save" && os.Args[1] != "compare") {
		fmt.Fprintln(os.Stderr, "usage: hostsnap save|compare FILE")
		os.Exit(2)
	}
	now, err := testutil.TakeHostSnapshot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostsnap:", err)
		os.Exit(1)
	}
	if os.Args[1] == "save" {
		if err := now.Save(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "hostsnap:", err)
			os.Exit(1)
		}
		return
	}
	before, err := testutil.LoadHostSnapshot(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostsnap:", err)
		os.Exit(1)
	}
	if d := before.Diff(now); d != "" {
		fmt.Fprintf(os.Stderr, "hostsnap: the HOST network namespace changed during the run:\n%s", d)
		os.Exit(1)
	}
	fmt.Println("hostsnap: host network namespace unchanged")
}
