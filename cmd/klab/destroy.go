package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

// labPrefix is the hidden --prefix flag of destroy --all and list: only labs
// whose name starts with it. It exists for tests, which run while other labs
// are up on the same machine and must never destroy those.
func matchPrefix(prefix string) func(string) bool {
	if prefix == "" {
		return nil
	}
	return func(lab string) bool { return strings.HasPrefix(lab, prefix) }
}

func newDestroyCmd() *cobra.Command {
	var all bool
	var prefix string
	cmd := &cobra.Command{
		Use:   "destroy [LAB]",
		Short: "Remove a lab completely: processes, namespaces (and everything in them), state",
		Long: `Remove everything a lab created. Namespaces are found in the kernel by their
names (klab.<lab>.*), so destroy works after a crash, a Ctrl-C or a lost state
directory. Processes still running inside the lab's namespaces (servers,
shells) are stopped first. Destroying a lab that does not exist is not an
error. --all removes every klab lab and nothing else.`,
		Example: `  klab destroy flannel-crossnode
  klab destroy               # the current lab (--lab, $KLAB_LAB, or the only one)
  klab destroy --all`,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeLabs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			a := newApplier()
			defer guardDestroy()()
			if all {
				if len(args) > 0 {
					return fmt.Errorf("give either a LAB or --all, not both")
				}
				done, err := cluster.DestroyMatching(globals.stateDir, matchPrefix(prefix), a, os.Stderr)
				if ferr := finish(a); err == nil {
					err = ferr
				}
				if len(done) == 0 && err == nil {
					fmt.Fprintln(out(), "no klab labs found")
				}
				for _, d := range done {
					fmt.Fprintf(out(), "lab %s destroyed\n", d)
				}
				return err
			}
			name := globals.lab
			if len(args) == 1 {
				name = args[0]
			}
			if name == "" {
				var err error
				if name, err = labName(); err != nil {
					return err
				}
			}
			if err := cluster.Destroy(globals.stateDir, name, a, os.Stderr); err != nil {
				failed(a)
				return err
			}
			if err := finish(a); err != nil {
				return err
			}
			fmt.Fprintf(out(), "lab %s destroyed\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "destroy every klab lab")
	cmd.Flags().StringVar(&prefix, "prefix", "", "with --all: only labs whose name starts with this (for tests)")
	_ = cmd.Flags().MarkHidden("prefix")
	return cmd
}

func newListCmd() *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List labs, their nodes, pods and services, and flag damaged ones",
		Long: `List every lab on this machine — found in the state directory, in the
kernel's namespace names (klab.<lab>.*) and in the servers' command lines — with
its nodes, pods, services and servers. A lab whose state and kernel disagree
(a build that was killed, a state directory that was deleted, a namespace
removed by hand) is marked DAMAGED, with each problem and the command that
repairs or removes it.`,
		Example: "  klab list\n  klab list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			all, err := cluster.List(globals.stateDir)
			if err != nil {
				return err
			}
			infos := []cluster.LabInfo{}
			for _, i := range all {
				if m := matchPrefix(prefix); m == nil || m(i.Name) {
					infos = append(infos, i)
				}
			}
			if jsonOutput() {
				return printJSON(infos)
			}
			if len(infos) == 0 {
				fmt.Println("no labs are up: try 'klab labs' and 'klab run flannel-crossnode'")
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "LAB\tBACKEND\tPROXY\tNODES\tPODS\tSERVICES\tSERVERS\tSTATUS")
			for _, i := range infos {
				status := "ok"
				if i.Damaged() {
					status = "DAMAGED"
				}
				nodes := strings.Join(i.Nodes, ",")
				if len(i.RemoteNodes) > 0 {
					nodes += " + " + strings.Join(i.RemoteNodes, ",")
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", i.Name, dash(i.Backend), dash(i.ProxyMode), dash(nodes), dash(strings.Join(i.Pods, ",")), dash(strings.Join(i.Services, ",")), len(i.Servers), status)
			}
			w.Flush()
			for _, i := range infos {
				if !i.Damaged() {
					continue
				}
				fmt.Printf("\n%s is damaged:\n", i.Name)
				for _, p := range i.Problems {
					fmt.Printf("  - %s\n", p)
				}
				if i.Repair != "" {
					fmt.Printf("  rebuild it from its state with: %s\n", i.Repair)
				}
				fmt.Printf("  remove it completely with: %s\n", i.Fix)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "only labs whose name starts with this (for tests)")
	_ = cmd.Flags().MarkHidden("prefix")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
