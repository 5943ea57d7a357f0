// Command klab-etcd is the etcd server of klab's control-plane labs: the
// real etcd (go.etcd.io/etcd/server/v3/embed), taking etcd's own flag
// names for what klab uses (see etcdserver.Parse), so that Debian's
// /usr/bin/etcd can stand in for it. 'klab __serve --proto etcd' execs it
// in the lab's control-plane namespace. It is a binary of its own so that
// the etcd server's packages are not linked into, and initialised by,
// every klab command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/klab-dev/klab/pkg/etcdserver"
	"github.com/klab-dev/klab/pkg/etcdserver/server"
	"go.etcd.io/etcd/api/v3/version"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		// etcd's own first line, which etcdserver.ParseVersion reads.
		fmt.Printf("etcd Version: %s\nklab-etcd: the etcd server embedded (go.etcd.io/etcd/server/v3)\n", version.Version)
		return
	}
	c, err := etcdserver.Parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Println(err)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = server.Run(ctx, c, func(url string) {
		// What klab's server log shows, and what a caller waiting
		// for the "listening" line reads.
		fmt.Printf("etcd listening on %s (data %s)\n", url, c.DataDir)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "klab-etcd:", err)
		os.Exit(1)
	}
}
