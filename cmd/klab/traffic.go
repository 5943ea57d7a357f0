package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/nsexec"
	"github.com/klab-dev/klab/pkg/probe"
	"github.com/spf13/cobra"
)

// hostResolvers turn a name that is not a pod, node or "external" into an
// address, in order.
var hostResolvers = []func(c *cluster.Cluster, name string) (netip.Addr, bool){
	serviceClusterIP, // service.go
}

// resolveHost turns a pod, node or external name, or an IPv4 literal, into
// an address.
func resolveHost(c *cluster.Cluster, name string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil && a.Is4() {
		return a, nil
	}
	if p := c.Lab.Pod(name); p != nil {
		return p.IP, nil
	}
	if n := c.Lab.Node(name); n != nil {
		return n.IP, nil
	}
	if name == cluster.ExternalName {
		return cluster.ExternalIP, nil
	}
	// NAME.NAMESPACE: a pod or service of another namespace, the way a
	// cluster's DNS search path spells it.
	if n, ns, ok := strings.Cut(name, "."); ok && !strings.Contains(ns, ".") {
		if p := c.Lab.Pod(ns + "/" + n); p != nil {
			return p.IP, nil
		}
		if s := c.Lab.Service(ns + "/" + n); s != nil && s.ClusterIP.IsValid() {
			return s.ClusterIP, nil
		}
	}
	for _, r := range hostResolvers {
		if a, ok := r(c, name); ok {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address nor a pod, node or service of lab %s: use one of %v or an address", name, c.Lab.Name, c.Lab.Names())
}

// resolveFrom resolves a URL's host for a client in target: with cluster
// DNS on, a name goes through the cluster DNS from the client's namespace,
// as the client's own resolver would ask it (the same answers as dig
// there), and klab's names (pods, nodes, external) are the fallback.
func resolveFrom(c *cluster.Cluster, target, name string) (netip.Addr, error) {
	if _, err := netip.ParseAddr(name); err == nil || !c.Lab.DNS {
		return resolveHost(c, name)
	}
	ns, err := c.TargetNS(target)
	if err != nil {
		return netip.Addr{}, err
	}
	podNS := cluster.DefaultNamespace
	if p := c.Lab.Pod(target); p != nil {
		podNS = p.Namespace()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if a, ok, err := c.Lab.LookupHost(ctx, ns, podNS, name); err == nil && ok {
		return a, nil
	}
	return resolveHost(c, name)
}

// sourceAndTarget opens the lab just long enough to find the namespace of
// the traffic's source and the address of its target (resolveFrom), and to
// run also (when not nil) on it: the lab lock is not held while traffic
// flows.
func sourceAndTarget(from, to string, also func(*cluster.Cluster)) (string, netip.Addr, error) {
	c, err := openLab(nil)
	if err != nil {
		return "", netip.Addr{}, err
	}
	defer c.Close()
	ns, err := c.TargetNS(from)
	if err != nil {
		return "", netip.Addr{}, err
	}
	dst, err := resolveFrom(c, from, to)
	if err != nil {
		return "", netip.Addr{}, err
	}
	if also != nil {
		also(c)
	}
	return ns, dst, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newPingCmd() *cobra.Command {
	var count int
	var interval, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ping FROM TARGET",
		Short: "Send ICMP echo requests from a pod or node to a pod, node or address",
		Long: `Ping from inside a pod's or node's namespace with klab's own ICMP pinger
(nothing needs to be installed). Reports each reply with its TTL — every
routing hop lowers it by one — then loss and round-trip times. Exits 0 if any
reply came back, 1 if none did.`,
		Example: `  klab ping pod-a pod-b          # cross-node, through flannel.1
  klab ping pod-a 10.244.2.2 -c 5
  klab ping node2 pod-a`,
		Args:              exactArgs(2, "FROM and TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, dst, err := sourceAndTarget(args[0], args[1], nil)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			fmt.Printf("PING %s (%s) from %s\n", args[1], dst, args[0])
			res, err := probe.Ping(ctx, ns, dst, probe.PingOptions{Count: count, Interval: interval, Timeout: timeout,
				OnReply: func(seq int, from netip.Addr, ttl int, rtt time.Duration) {
					if rtt < 0 {
						fmt.Printf("no reply from %s: seq=%d (timeout %s)\n", dst, seq, timeout)
						return
					}
					fmt.Printf("reply from %s: seq=%d ttl=%d time=%.3f ms\n", from, seq, ttl, float64(rtt.Microseconds())/1000)
				}})
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			fmt.Printf("--- %s: %d sent, %d received, %.0f%% loss", dst, res.Sent, res.Received, res.Loss()*100)
			if res.Received > 0 {
				fmt.Printf(", rtt min/avg/max = %.3f/%.3f/%.3f ms", ms(res.Min), ms(res.Avg), ms(res.Max))
			}
			fmt.Println()
			if res.Received == 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVarP(&count, "count", "c", 3, "echo requests to send")
	f.DurationVarP(&interval, "interval", "i", 200*time.Millisecond, "time between requests")
	f.DurationVarP(&timeout, "timeout", "W", time.Second, "time to wait for each reply")
	return cmd
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func newServeCmd() *cobra.Command {
	var port int
	var udp, stop bool
	cmd := &cobra.Command{
		Use:   "serve TARGET --port P",
		Short: "Start a background HTTP (or UDP) echo server in a pod that answers with the pod's name",
		Long: `Start klab's echo server in the background inside a pod (or node, or the
external host). Every HTTP request gets two lines back: the name of the pod
that served it, and the client address it saw — which shows a Service's load
balancing and any NAT on the way. The server is recorded in the lab and
stopped by 'klab pod del', 'klab serve --stop' and 'klab destroy'.`,
		Example: `  klab serve pod-a --port 8080
  klab serve pod-b --port 5353 --udp
  klab serve pod-a --port 8080 --stop`,
		Args:              exactArgs(1, "TARGET"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			if port < 1 || port > 65535 {
				return fmt.Errorf("--port %d is out of range: use 1-65535", port)
			}
			proto := "tcp"
			if udp {
				proto = "udp"
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			defer guardBuild(c)()
			if _, err := c.TargetNS(args[0]); err != nil {
				return err
			}
			if stop {
				if err := c.StopServer(args[0], proto, port); err != nil {
					return err
				}
				fmt.Printf("stopped %s server on %s port %d\n", proto, args[0], port)
				return nil
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			argv := []string{self, "__serve", "--name", args[0], "--port", strconv.Itoa(port), "--proto", proto, "--lab", c.Lab.Name}
			var clone uintptr
			if nsexec.Sandboxed() {
				// A lab's server runs in the sandbox its commands run in.
				spec, err := nsexec.ForTarget(c, args[0])
				if err != nil {
					return err
				}
				spec.Sandbox = true
				argv, clone = append([]string{self}, spec.EnterArgs(argv)...), spec.SysProcAttr().Cloneflags
			}
			s, err := c.StartServerWith(args[0], proto, port, argv, clone)
			if err != nil {
				failed(c.A)
				return err
			}
			if err := finish(c.A); err != nil || globals.dryRun {
				return err
			}
			fmt.Printf("%s echo server on %s port %d (pid %d, log %s)\n", strings.ToUpper(proto), args[0], port, s.PID, s.Log)
			return interrupted(c, "the server on "+args[0], true, nil)
		},
	}
	f := cmd.Flags()
	f.IntVarP(&port, "port", "p", 8080, "port to listen on")
	f.BoolVar(&udp, "udp", false, "serve UDP instead of HTTP over TCP")
	f.BoolVar(&stop, "stop", false, "stop the server on that port instead")
	return cmd
}

// newServeWorkerCmd is the background server process itself; StartServer
// forks it from inside the target's namespace.
func newServeWorkerCmd() *cobra.Command {
	var name, proto string
	var port int
	cmd := &cobra.Command{
		Use:    "__serve",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			switch proto {
			case "etcd", "agent":
				return serveControlPlane(ctx, proto, name)
			case "join":
				return cluster.ServeJoin(ctx, globals.stateDir, globals.lab, os.Stdout)
			case "machine":
				serve, err := serverArgv(globals.lab, globals.stateDir)
				if err != nil {
					return err
				}
				return cluster.RunMachineAgent(ctx, globals.stateDir, globals.lab, serve, os.Stdout)
			case "dns":
				return cluster.ServeDNS(ctx, globals.stateDir, globals.lab)
			case "dns-authority":
				return cluster.ServeExternalDNS(ctx)
			}
			if proto == "readiness" {
				fmt.Printf("listening for nothing: the readiness prober of lab %s\n", globals.lab)
				return cluster.RunProber(ctx, globals.stateDir, globals.lab)
			}
			addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(port))
			if proto == "udp" {
				pc, err := net.ListenPacket("udp4", addr)
				if err != nil {
					return err
				}
				fmt.Printf("listening on udp %s as %s\n", addr, name)
				return probe.ServeUDP(ctx, pc, name)
			}
			l, err := net.Listen("tcp4", addr)
			if err != nil {
				return err
			}
			fmt.Printf("listening on tcp %s as %s\n", addr, name)
			return probe.ServeHTTP(ctx, l, name)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "name to answer with")
	f.StringVar(&proto, "proto", "tcp", "tcp or udp")
	f.IntVar(&port, "port", 8080, "port")
	return cmd
}

func newCurlCmd() *cobra.Command {
	var count int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "curl FROM URL",
		Short: "Send HTTP requests (or a UDP datagram) from a pod or node and print the answers",
		Long: `Fetch a URL from inside a pod's or node's namespace with klab's own client.
The URL's host may be an address or the name of a pod, node or service. Each
request opens a new connection, so with --count N you see a Service spread
connections over its endpoints: the answers are tallied by the pod that
served them. udp://HOST:PORT sends one datagram to a UDP echo server.`,
		Example: `  klab curl pod-a http://pod-b:8080/
  klab curl pod-a http://10.96.0.10/ --count 60
  klab curl node1 http://web/ -n 600 -o json
  klab curl pod-a udp://10.96.0.53:53`,
		Args:              exactArgs(2, "FROM and URL"),
		ValidArgsFunction: completeTargets,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(); err != nil {
				return err
			}
			if count < 1 {
				return fmt.Errorf("--count %d must be at least 1", count)
			}
			raw := args[1]
			if !strings.Contains(raw, "://") {
				raw = "http://" + raw
			}
			u, err := url.Parse(raw)
			if err != nil || u.Host == "" {
				return fmt.Errorf("URL %q is not valid: write it like http://10.96.0.10:80/", args[1])
			}
			if u.Scheme != "http" && u.Scheme != "udp" {
				return fmt.Errorf("URL scheme %q is not supported: use http:// or udp://", u.Scheme)
			}
			host, port := u.Hostname(), u.Port()
			ns, addr, err := sourceAndTarget(args[0], host, nil)
			if err != nil {
				return err
			}
			if port == "" {
				if u.Scheme == "udp" {
					return fmt.Errorf("URL %q needs a port: write it like udp://10.96.0.53:53", args[1])
				}
				port = "80"
			}
			u.Host = net.JoinHostPort(addr.String(), port)
			ctx, cancel := signalContext()
			defer cancel()
			client := probe.Client(ns, timeout)
			tally := map[string]int{}
			var lastErr error
			failed := 0
			for i := 0; i < count && ctx.Err() == nil; i++ {
				var body string
				var err error
				if u.Scheme == "udp" {
					body, err = probe.UDPRequest(ctx, ns, u.Host, timeout)
				} else {
					body, err = probe.Get(ctx, client, u.String())
				}
				if err != nil {
					failed++
					lastErr = err
					if count == 1 && !jsonOutput() {
						return exitError{code: 1, msg: fmt.Sprintf("%s from %s: %v", u, args[0], err)}
					}
					continue
				}
				if count == 1 && !jsonOutput() {
					fmt.Print(body)
					return nil
				}
				tally[probe.FirstLine(body)]++
			}
			if jsonOutput() {
				out := map[string]any{"url": u.String(), "from": args[0], "requests": count, "failed": failed, "answers": tally}
				if lastErr != nil {
					out["lastError"] = lastErr.Error()
				}
				if err := printJSON(out); err != nil {
					return err
				}
			} else {
				names := make([]string, 0, len(tally))
				for k := range tally {
					names = append(names, k)
				}
				sort.Strings(names)
				fmt.Printf("%d requests to %s from %s:\n", count, u, args[0])
				for _, n := range names {
					fmt.Printf("  %-20s %5d  %s\n", n, tally[n], strings.Repeat("#", tally[n]*40/count))
				}
				if failed > 0 {
					fmt.Printf("  %-20s %5d  (last error: %v)\n", "failed", failed, lastErr)
				}
			}
			if failed == count {
				return exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVarP(&count, "count", "n", 1, "number of requests; answers are tallied by serving pod")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "timeout of each request")
	return cmd
}
