// Command klab rebuilds Kubernetes pod networking from Linux primitives.
//
// This package is deliberately thin: each verb lives in its own file, parses
// its flags, calls klab's packages and prints. No netlink here.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run executes klab's command line args and returns the exit status: 0, an
// exitError's code, or 1 for any other error, printed to stderr as
// "klab: ..." (cobra's own printing is silenced, see newRoot).
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(stderr, "klab:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(stderr, "klab:", err)
		return 1
	}
	return 0
}

// exitError carries a specific exit status (for example 1 for a failed check
// or ping) with an optional message.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }
