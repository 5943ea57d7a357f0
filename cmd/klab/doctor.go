package main

import (
	"fmt"

	"github.com/klab-dev/klab/pkg/doctor"
	"github.com/spf13/cobra"
)

func newDoctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that this machine can run klab labs, and say how to fix what is missing",
		Long: `Check root, the kernel features klab uses (network namespaces, veth, bridge,
vxlan — tried for real in a throwaway namespace), the iptables binaries and
their backend (nf_tables or legacy), br_netfilter, conntrack and IPVS. Every
problem comes with the command that fixes it. Exits 1 if something klab
needs is missing.`,
		Example: "  klab doctor\n  klab doctor -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			checks := doctor.Run()
			if jsonOutput() {
				if err := printJSON(checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					mark := "ok  "
					switch c.Status {
					case doctor.Warn:
						mark = "warn"
					case doctor.Fail:
						mark = "FAIL"
					}
					fmt.Printf("[%s] %-22s %s\n", mark, c.Name, c.Detail)
					if c.Fix != "" {
						fmt.Printf("       %-22s fix: %s\n", "", c.Fix)
					}
				}
			}
			if doctor.Failed(checks) {
				return exitError{code: 1}
			}
			return nil
		},
	}
}
