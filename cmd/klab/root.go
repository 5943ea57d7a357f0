package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// globals are the persistent flags every verb shares.
var globals struct {
	lab      string
	explain  bool
	dryRun   bool   // --dry-run of a mutating verb
	script   string // --script FILE of a mutating verb
	output   string
	stateDir string
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "klab",
		Short: "Rebuild Kubernetes pod networking from Linux primitives, one visible step at a time",
		Long: `klab builds pod networks the way Kubernetes does — network namespaces, veth pairs,
a cni0 bridge, flannel's VXLAN tunnel, kube-proxy's iptables chains — on one Linux
machine, with real kernel objects and real packets, and shows every step.

Everything lives in network namespaces named klab.<lab>.<object>; the host's own
network is never touched. Run 'klab labs' to see the guided labs.`,
		Example: `  sudo klab run flannel-crossnode        # the guided flannel VXLAN lab
  sudo klab node add node1                # or build by hand, one step at a time
  sudo klab pod add pod-a --node node1
  sudo klab exec node1 -- ip route
  sudo klab destroy --all`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&globals.lab, "lab", os.Getenv("KLAB_LAB"), "lab to act on (default: $KLAB_LAB, else the only lab that is up, else \"default\")")
	pf.BoolVar(&globals.explain, "explain", false, "print the equivalent ip/bridge/iptables commands of every change that ran")
	pf.StringVarP(&globals.output, "output", "o", "text", "output format: text or json")
	pf.StringVar(&globals.stateDir, "state-dir", envOr("KLAB_STATE_DIR", "/run/klab"), "where labs keep their state")
	_ = pf.MarkHidden("state-dir")
	// The top-level verbs, in the order a student meets them: the guided
	// labs, building by hand, poking at the result, the lab's life cycle and
	// the tools around them. (cobra sorts the help listing by name.)
	for _, newVerb := range []func() *cobra.Command{
		// guided labs
		newRunCmd, newLabsCmd, newLabCmd,
		// building by hand
		newNodeCmd, newPodCmd, newServiceCmd, newNamespaceCmd,
		// Kubernetes objects from manifests
		newApplyCmd, newDeleteCmd, newGetCmd, newPolicyCmd,
		// poking at the result
		newExecCmd, newEnterCmd, newPingCmd, newTracerouteCmd, newCurlCmd, newServeCmd, newTraceCmd, newShowCmd, newGraphCmd, newUICmd,
		// the lab's life cycle
		newListCmd, newRepairCmd, newDestroyCmd, newProxyModeCmd,
		// the calico backend's BGP
		newCalicoCmd,
		// tools around them
		newDoctorCmd, newBenchCmd,
		// the control plane's node agents, and machines joining the lab
		newAgentCmd, newTokenCmd, newJoinCmd,
		// hidden: the background server 'klab serve' starts, and the agent
		newServeWorkerCmd, newAgentWorkerCmd,
	} {
		root.AddCommand(newVerb())
	}
	// cobra adds 'completion' when it executes; adding it now makes it part
	// of the tree that lab lint validates against and the groups below.
	root.InitDefaultCompletionCmd()
	rejectUnknownSubcommands(root)
	for _, path := range mutating {
		c, _, err := root.Find(strings.Fields(path))
		if err != nil || c.CommandPath() != "klab "+path {
			panic("mutating verb " + path + " is not in the command tree")
		}
		planFlags(c)
	}
	return root
}

// mutating lists the verbs that change a lab: each takes --dry-run (print
// the plan as a script, change nothing) and --script FILE (append what ran
// to FILE); 'klab run' has both too, for a whole lab.
var mutating = []string{
	"node add", "node del", "pod add", "pod del", "pod set-ready",
	"service add", "service del", "service set-endpoints",
	"namespace add", "namespace del", "apply", "delete",
	"serve", "repair", "destroy", "agent start", "agent stop", "proxy-mode set",
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
