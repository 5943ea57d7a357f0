package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/klab-dev/klab/pkg/graph"
	"github.com/klab-dev/klab/pkg/ui"
	"github.com/spf13/cobra"
)

func newUICmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Serve a live web view of the lab: topology, kernel state on click, animated journeys",
		Long: `ui serves a local web page showing the lab as the kernel has it (the picture
of 'klab graph -o svg'), redrawn within a second as nodes, pods and services
come and go. Click a node or pod for its links, addresses, routes, neighbours,
FDB and iptables rules; pick a source and a target to run one journey probe
(as 'klab trace journey') and watch the packet cross each capture point with
its rewrites.

The page changes nothing in the lab: its only action is the journey probe.
klab runs as root, so the page listens on 127.0.0.1 by default and every
request needs the random token printed with the URL (then kept in a cookie);
the probe also needs a same-origin request, so no other web site can start it.
--listen may choose another address (the token still guards it). Stop it with
Ctrl-C.`,
		Example: `  sudo klab ui                          # prints http://127.0.0.1:PORT/?token=...
  sudo klab ui --listen 127.0.0.1:8478 --lab flannel`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			name, err := labName()
			if err != nil {
				return err
			}
			if _, err := readTopology(); err != nil {
				return err
			}
			globals.lab = name // the probes act on this lab
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return exitError{code: 1, msg: fmt.Sprintf("klab ui cannot listen on %s (%v): choose another address with --listen 127.0.0.1:PORT", listen, err)}
			}
			s := &ui.Server{StateDir: globals.stateDir, Lab: name, Token: ui.NewToken(), Journey: func(ctx context.Context, from, target string) (*graph.Journey, error) {
				rep, _, err := probeJourney(from, target, "", 0, 2*time.Second)
				if err != nil {
					return nil, err
				}
				return graph.FromReport(rep), nil
			}}
			host := ln.Addr().String()
			if a, ok := ln.Addr().(*net.TCPAddr); ok && a.IP.IsUnspecified() {
				host = net.JoinHostPort("127.0.0.1", fmt.Sprint(a.Port))
			}
			fmt.Fprintf(os.Stdout, "klab ui for lab %s: open\n    http://%s/?token=%s\n(Ctrl-C stops it)\n", name, host, s.Token)
			ctx, cancel := signalContext()
			defer cancel()
			return s.Serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on (`HOST:PORT`; port 0 picks a free one)")
	return cmd
}
