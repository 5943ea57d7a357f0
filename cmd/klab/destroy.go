package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/spf13/cobra"
)

func init() {
	register(newDestroyCmd)
	register(newListCmd)
}

func newDestroyCmd() *cobra.Command {
	var all bool
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
			log := newExplainLog()
			if all {
				if len(args) > 0 {
					return fmt.Errorf("give either a LAB or --all, not both")
				}
				done, err := cluster.DestroyAll(globals.stateDir, log, os.Stderr)
				printExplain(log)
				if len(done) == 0 && err == nil {
					fmt.Println("no klab labs found")
				}
				for _, d := range done {
					fmt.Printf("lab %s destroyed\n", d)
				}
				if err == nil {
					err = cluster.CleanupHostDirs(globals.stateDir)
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
			if err := cluster.Destroy(globals.stateDir, name, log, os.Stderr); err != nil {
				return err
			}
			printExplain(log)
			fmt.Printf("lab %s destroyed\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "destroy every klab lab")
	return cmd
}

func newListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List labs, their nodes and pods, and flag damaged ones",
		Example: "  klab list\n  klab list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			infos, err := cluster.List(globals.stateDir)
			if err != nil {
				return err
			}
			if jsonOutput() {
				if infos == nil {
					infos = []cluster.LabInfo{}
				}
				return printJSON(infos)
			}
			if len(infos) == 0 {
				fmt.Println("no labs are up: try 'klab labs' and 'klab run flannel-crossnode'")
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "LAB\tBACKEND\tNODES\tPODS\tSTATUS")
			for _, i := range infos {
				status := "ok"
				if len(i.Problems) > 0 {
					status = "DAMAGED"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", i.Name, dash(i.Backend), dash(strings.Join(i.Nodes, ",")), dash(strings.Join(i.Pods, ",")), status)
			}
			w.Flush()
			for _, i := range infos {
				for _, p := range i.Problems {
					fmt.Printf("%s: %s\n", i.Name, p)
				}
			}
			return nil
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
