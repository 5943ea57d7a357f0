// Command klab rebuilds Kubernetes pod networking from Linux primitives.
//
// This package is deliberately thin: each verb lives in its own file, parses
// its flags, calls klab's packages and prints. No netlink here.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "klab:", ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "klab:", err)
		os.Exit(1)
	}
}

// exitError carries a specific exit status (for example 1 for a failed check
// or ping) with an optional message.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }
