package main

import (
	"fmt"
	"os"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

// exactArgs is cobra.ExactArgs with a message that says what is missing.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %s (got %d argument(s)): see 'klab %s --help'", cmd.CommandPath(), names, len(args), cmd.Name())
		}
		return nil
	}
}

func minArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return fmt.Errorf("%s needs %s: see '%s --help'", cmd.CommandPath(), names, cmd.CommandPath())
		}
		return nil
	}
}

func fixedCompletion(vals ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

// loadForCompletion reads the current lab without locking (completion must
// never wait).
func loadForCompletion() *cluster.Lab {
	name, err := labName()
	if err != nil {
		return nil
	}
	l, err := cluster.Load(globals.stateDir, name)
	if err != nil {
		return nil
	}
	return l
}

func completeNodes(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	var out []string
	if l := loadForCompletion(); l != nil {
		for _, n := range l.Nodes {
			out = append(out, n.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func completePods(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	var out []string
	if l := loadForCompletion(); l != nil {
		for _, p := range l.Pods {
			out = append(out, p.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func completeTargets(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	var out []string
	if l := loadForCompletion(); l != nil {
		out = append(l.Names(), cluster.UnderlayName, cluster.ExternalName)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func completeLabs(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	labs, _ := cluster.Labs(globals.stateDir)
	return labs, cobra.ShellCompDirectiveNoFileComp
}

var _ = os.Stderr
