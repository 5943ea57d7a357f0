package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/explain"
	"github.com/klab-dev/klab/pkg/netns"
)

// labName resolves which lab a command acts on: --lab, then $KLAB_LAB,
// then the only lab that is up, then "default".
func labName() (string, error) {
	if globals.lab != "" {
		return globals.lab, netns.ValidateLab(globals.lab)
	}
	labs, err := cluster.Labs(globals.stateDir)
	if err != nil {
		return "", err
	}
	switch len(labs) {
	case 0:
		return "default", nil
	case 1:
		return labs[0], nil
	}
	for _, l := range labs {
		if l == "default" {
			return l, nil
		}
	}
	return "", fmt.Errorf("several labs are up (%v): choose one with --lab or KLAB_LAB", labs)
}

// needRoot fails early, with the fix, when not running as root.
func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("klab needs root to create network namespaces and links: run it with sudo")
	}
	return nil
}

// openLab locks and opens the current lab; create, if not nil, creates it
// when missing. The returned cluster records equivalent commands when
// --explain is set.
func openLab(create *cluster.Options) (*cluster.Cluster, error) {
	if err := needRoot(); err != nil {
		return nil, err
	}
	name, err := labName()
	if err != nil {
		return nil, err
	}
	c, err := cluster.Open(globals.stateDir, name, create, os.Stderr)
	if err != nil {
		return nil, err
	}
	if globals.explain {
		c.Log = &explain.Log{}
	}
	return c, nil
}

// printExplain prints the recorded equivalent commands, if --explain.
func printExplain(log *explain.Log) {
	if globals.explain && log.Len() > 0 {
		fmt.Println("# equivalent commands:")
		log.WriteTo(os.Stdout, "  ")
	}
}

// newExplainLog returns a log when --explain is set, else nil.
func newExplainLog() *explain.Log {
	if globals.explain {
		return &explain.Log{}
	}
	return nil
}

func jsonOutput() bool { return globals.output == "json" }

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkOutput() error {
	if globals.output != "text" && globals.output != "json" {
		return fmt.Errorf("output format %q is not known: use -o text or -o json", globals.output)
	}
	return nil
}

// deleteEach is the body of 'klab node|pod|service del NAME...': every name
// is checked first (a typo deletes nothing), then each object is deleted in
// turn; Ctrl-C stops between two objects, saying what is left.
func deleteEach(kind string, names []string, exists func(*cluster.Cluster, string) bool, del func(*cluster.Cluster, string) error) error {
	c, err := openLab(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, n := range names {
		if !exists(c, n) {
			return fmt.Errorf("%s %q does not exist in lab %s: see 'klab %s list'", kind, n, c.Lab.Name, kind)
		}
	}
	defer guardBuild(c)()
	for i, n := range names {
		if wasInterrupted(c) {
			return exitError{code: 130, msg: fmt.Sprintf("interrupted before deleting %s(s) %s. %s", kind, strings.Join(names[i:], " "), labSummary(c))}
		}
		if err := del(c, n); err != nil {
			return err
		}
		fmt.Printf("%s %s deleted\n", kind, n)
	}
	printExplain(c.Log)
	return nil
}
