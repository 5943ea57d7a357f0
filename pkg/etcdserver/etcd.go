// Package etcdserver describes the lab's etcd: the real etcd server as a
// one-member cluster on the lab's control-plane address. It holds
// flannel's leases under /coreos.com/network, as etcd does in a cluster
// where flanneld uses the etcd subnet manager (seed 003). The data lives
// in the lab's state directory, so an etcd restarted after a crash finds
// its keys again; its log goes to a file beside it, so klab's own log
// says only what a student needs: where it listens.
//
// The server itself is a second binary, klab-etcd (cmd/klab-etcd, the
// embedded go.etcd.io/etcd/server/v3 in package etcdserver/server), so
// that the etcd server's packages, and the time their init takes, stay
// out of every other klab command. This package is what klab needs to
// start it: the Config, the etcd command line it becomes (etcd's own flag
// names, so Debian's /usr/bin/etcd is a drop-in, see Find), the URLs and
// ports. It imports no etcd package.
package etcdserver

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ClientPort and PeerPort are etcd's registered ports.
const (
	ClientPort = 2379
	PeerPort   = 2380
)

// MemberName is the lab's one etcd member.
const MemberName = "control-plane"

// LoopbackIP is where the lab's etcd also listens, in plain http, inside
// the control-plane node's namespace.
const LoopbackIP = "127.0.0.1"

// ClientURL is the URL clients use for an etcd on ip.
func ClientURL(ip netip.Addr) string { return fmt.Sprintf("http://%s:%d", ip, ClientPort) }

// PeerURL is the URL of the member on ip for its peers.
func PeerURL(ip netip.Addr) string { return fmt.Sprintf("http://%s:%d", ip, PeerPort) }

// Config is what an etcd server is started with: each field is one of
// etcd's own flags (named in its comment; see etcd's
// server/embed/config.go AddFlags), and Args writes them as such.
type Config struct {
	Name    string // --name
	DataDir string // --data-dir
	// ListenClientURLs (--listen-client-urls, with
	// ExtraListenClientURLs after them) may mix http and https URLs: TLS
	// (CertFile, KeyFile, TrustedCAFile, ClientCertAuth) applies to the
	// https ones only, as in etcd.
	ListenClientURLs []string
	// ExtraListenClientURLs are listeners beyond the lab's own (an https
	// one for machines joining over the network, say).
	ExtraListenClientURLs    []string
	AdvertiseClientURLs      []string // --advertise-client-urls
	ListenPeerURLs           []string // --listen-peer-urls
	InitialAdvertisePeerURLs []string // --initial-advertise-peer-urls
	InitialCluster           string   // --initial-cluster: name=peerURL,...
	InitialClusterToken      string   // --initial-cluster-token
	InitialClusterState      string   // --initial-cluster-state: new or existing
	UnsafeNoFsync            bool     // --unsafe-no-fsync
	HeartbeatInterval        uint     // --heartbeat-interval, ms: raft's tick
	ElectionTimeout          uint     // --election-timeout, ms
	LogOutputs               []string // --log-outputs: files, or stdout/stderr
	LogLevel                 string   // --log-level
	CertFile                 string   // --cert-file: the server's certificate for https clients
	KeyFile                  string   // --key-file
	TrustedCAFile            string   // --trusted-ca-file: the CA client certificates must chain to
	ClientCertAuth           bool     // --client-cert-auth: https clients need a certificate from TrustedCAFile
}

// Lab is the etcd of a lab's control-plane node at ip, with its data and
// log under dir (the lab's state directory's etcd/): what klab starts.
func Lab(lab, dir string, ip netip.Addr) Config {
	return Config{
		Name:    MemberName,
		DataDir: filepath.Join(dir, "data"),
		// Also on the namespace's loopback, as on a kubeadm control-plane
		// node: a plain 'etcdctl' there finds it.
		ListenClientURLs:         []string{ClientURL(ip), fmt.Sprintf("http://%s:%d", LoopbackIP, ClientPort)},
		AdvertiseClientURLs:      []string{ClientURL(ip)},
		ListenPeerURLs:           []string{PeerURL(ip)},
		InitialAdvertisePeerURLs: []string{PeerURL(ip)},
		InitialCluster:           MemberName + "=" + PeerURL(ip),
		// The token names the lab: it is how 'klab destroy' knows this
		// etcd's command line as the lab's (LabOf) even after its
		// namespace is gone. It only matters when the data is new.
		InitialClusterToken: TokenPrefix + lab,
		InitialClusterState: "new",
		// A lab's etcd is one member whose data lives in the lab's state
		// dir (tmpfs /run normally) and does not outlive a reboot anyway,
		// so it skips fsync: on a busy classroom VM a stalled WAL fsync
		// otherwise times proposals out ("etcdserver: request timed
		// out"). Raft, leases and watches behave the same.
		UnsafeNoFsync: true,
		// A fresh one-member etcd fast-forwards all but one tick of its
		// election timeout, then waits raft's randomised rest, one tick
		// to one whole timeout (etcd-io/etcd server/etcdserver/server.go
		// adjustTicks, "started as single-node"): 0.1 to 1 s with etcd's
		// 100 ms ticks and 1 s timeout, most of a control-plane lab's
		// start. A lone member has no peer to miss heartbeats from, so
		// ticks of 10 ms and a 100 ms timeout cost nothing but make it
		// leader within 100 ms.
		HeartbeatInterval: 10,
		ElectionTimeout:   100,
		LogOutputs:        []string{filepath.Join(dir, "etcd.log")},
		LogLevel:          "warn",
	}
}

// TokenPrefix starts the --initial-cluster-token of a lab's etcd.
const TokenPrefix = "klab."

// ClientURLs are every client listener: ListenClientURLs, then
// ExtraListenClientURLs.
func (c Config) ClientURLs() []string {
	return slices.Concat(c.ListenClientURLs, c.ExtraListenClientURLs)
}

// Args is c as etcd's flags ("--flag=value", the form both etcd and
// klab-etcd parse for every flag, booleans included). Empty fields are
// left out, so etcd's defaults apply.
func (c Config) Args() []string {
	var a []string
	add := func(flag, v string) {
		if v != "" {
			a = append(a, "--"+flag+"="+v)
		}
	}
	list := func(flag string, v []string) { add(flag, strings.Join(v, ",")) }
	on := func(flag string, v bool) {
		if v {
			a = append(a, "--"+flag+"=true")
		}
	}
	add("name", c.Name)
	add("data-dir", c.DataDir)
	list("listen-client-urls", c.ClientURLs())
	list("advertise-client-urls", c.AdvertiseClientURLs)
	list("listen-peer-urls", c.ListenPeerURLs)
	list("initial-advertise-peer-urls", c.InitialAdvertisePeerURLs)
	add("initial-cluster", c.InitialCluster)
	add("initial-cluster-token", c.InitialClusterToken)
	add("initial-cluster-state", c.InitialClusterState)
	on("unsafe-no-fsync", c.UnsafeNoFsync)
	if c.HeartbeatInterval != 0 {
		add("heartbeat-interval", strconv.FormatUint(uint64(c.HeartbeatInterval), 10))
	}
	if c.ElectionTimeout != 0 {
		add("election-timeout", strconv.FormatUint(uint64(c.ElectionTimeout), 10))
	}
	if len(c.LogOutputs) > 0 {
		// etcd 3.4 logs through capnslog, to stderr only, unless told
		// to use zap; 3.5 and later know zap only and take the flag.
		add("logger", "zap")
	}
	list("log-outputs", c.LogOutputs)
	add("log-level", c.LogLevel)
	add("cert-file", c.CertFile)
	add("key-file", c.KeyFile)
	add("trusted-ca-file", c.TrustedCAFile)
	on("client-cert-auth", c.ClientCertAuth)
	return a
}

// Parse reads etcd's flags (the ones Args writes, in etcd's syntax:
// --flag=value or --flag value, -flag too) into a Config; etcd's
// defaults fill what is not given. A flag klab-etcd does not know, a
// positional argument or a malformed URL is an error in one sentence;
// -h or --help an error wrapping flag.ErrHelp that lists the flags.
func Parse(args []string) (Config, error) {
	c := Config{Name: "default", InitialClusterToken: "etcd-cluster", InitialClusterState: "new", LogLevel: "info", HeartbeatInterval: 100, ElectionTimeout: 1000}
	fs := flag.NewFlagSet("klab-etcd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var lcu, acu, lpu, apu, outs urlList
	var logger string
	fs.StringVar(&c.Name, "name", c.Name, "")
	fs.StringVar(&c.DataDir, "data-dir", "", "")
	fs.Var(&lcu, "listen-client-urls", "")
	fs.Var(&acu, "advertise-client-urls", "")
	fs.Var(&lpu, "listen-peer-urls", "")
	fs.Var(&apu, "initial-advertise-peer-urls", "")
	fs.StringVar(&c.InitialCluster, "initial-cluster", "", "")
	fs.StringVar(&c.InitialClusterToken, "initial-cluster-token", c.InitialClusterToken, "")
	fs.StringVar(&c.InitialClusterState, "initial-cluster-state", c.InitialClusterState, "")
	fs.BoolVar(&c.UnsafeNoFsync, "unsafe-no-fsync", false, "")
	fs.UintVar(&c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "")
	fs.UintVar(&c.ElectionTimeout, "election-timeout", c.ElectionTimeout, "")
	fs.StringVar(&logger, "logger", "zap", "")
	outs.plain = true
	fs.Var(&outs, "log-outputs", "")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "")
	fs.StringVar(&c.CertFile, "cert-file", "", "")
	fs.StringVar(&c.KeyFile, "key-file", "", "")
	fs.StringVar(&c.TrustedCAFile, "trusted-ca-file", "", "")
	fs.BoolVar(&c.ClientCertAuth, "client-cert-auth", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, helpError("klab-etcd runs the etcd server with these flags of etcd's: " + strings.Join(flagNames(fs), " "))
		}
		return c, fmt.Errorf("klab-etcd: %v: it takes only these flags of etcd's: %s (run Debian's /usr/bin/etcd for the others)", err, strings.Join(flagNames(fs), " "))
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("klab-etcd takes flags only, not %q: write every setting as --flag=value", fs.Arg(0))
	}
	if logger != "zap" {
		return c, fmt.Errorf("--logger %q is not known: klab-etcd logs with zap only (leave --logger out)", logger)
	}
	if c.HeartbeatInterval == 0 {
		return c, fmt.Errorf("--heartbeat-interval 0 is no tick: give it in milliseconds, 1 or more (etcd's default: 100)")
	}
	if c.ElectionTimeout < 5*c.HeartbeatInterval {
		// etcd's own rule (embed Config.Validate): at least 5 ticks.
		return c, fmt.Errorf("--election-timeout %d ms is under 5 heartbeats of %d ms: make it at least %d", c.ElectionTimeout, c.HeartbeatInterval, 5*c.HeartbeatInterval)
	}
	if c.InitialClusterState != "new" && c.InitialClusterState != "existing" {
		return c, fmt.Errorf("--initial-cluster-state %q is not known: use new or existing", c.InitialClusterState)
	}
	c.ListenClientURLs, c.AdvertiseClientURLs = lcu.v, acu.v
	c.ListenPeerURLs, c.InitialAdvertisePeerURLs, c.LogOutputs = lpu.v, apu.v, outs.v
	// etcd's defaults (server/embed/config.go).
	if c.DataDir == "" {
		c.DataDir = c.Name + ".etcd"
	}
	if len(c.ListenClientURLs) == 0 {
		c.ListenClientURLs = []string{"http://localhost:2379"}
	}
	if len(c.AdvertiseClientURLs) == 0 {
		c.AdvertiseClientURLs = []string{"http://localhost:2379"}
	}
	if len(c.ListenPeerURLs) == 0 {
		c.ListenPeerURLs = []string{"http://localhost:2380"}
	}
	if len(c.InitialAdvertisePeerURLs) == 0 {
		c.InitialAdvertisePeerURLs = []string{"http://localhost:2380"}
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + strings.Join(c.InitialAdvertisePeerURLs, ","+c.Name+"=")
	}
	if len(c.LogOutputs) == 0 {
		c.LogOutputs = []string{"stderr"}
	}
	for _, u := range c.ClientURLs() {
		if strings.HasPrefix(u, "https://") && (c.CertFile == "" || c.KeyFile == "") {
			return c, fmt.Errorf("client URL %s is https: give its certificate and key with --cert-file and --key-file", u)
		}
	}
	if c.ClientCertAuth && c.TrustedCAFile == "" {
		return c, fmt.Errorf("--client-cert-auth checks client certificates against a CA: give it with --trusted-ca-file")
	}
	return c, nil
}

// helpError is the answer to -h: the flags, as an error that is
// flag.ErrHelp.
type helpError string

func (e helpError) Error() string { return string(e) }
func (e helpError) Unwrap() error { return flag.ErrHelp }

func flagNames(fs *flag.FlagSet) []string {
	var n []string
	fs.VisitAll(func(f *flag.Flag) { n = append(n, "--"+f.Name) })
	return n
}

// urlList is a comma-separated flag value: URLs (http, https), or with
// plain set any words (log outputs).
type urlList struct {
	v     []string
	plain bool
}

func (l *urlList) String() string { return strings.Join(l.v, ",") }

func (l *urlList) Set(s string) error {
	l.v = nil
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !l.plain {
			u, err := url.Parse(p)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%q is not an http:// or https:// URL with a host", p)
			}
		}
		l.v = append(l.v, p)
	}
	return nil
}

// LabOf returns the lab of an etcd command line that klab started (see
// Lab: --name=control-plane, --initial-cluster-token=klab.LAB and the
// data in LAB's state directory) and that state directory, or "" if argv
// is not one.
func LabOf(argv []string) (lab, stateDir string) {
	var name, token, data string
	for _, a := range argv[min(1, len(argv)):] {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "--name":
			name = v
		case "--initial-cluster-token":
			token = v
		case "--data-dir":
			data = v
		}
	}
	lab, ok := strings.CutPrefix(token, TokenPrefix)
	if name != MemberName || !ok || lab == "" {
		return "", ""
	}
	stateDir, ok = strings.CutSuffix(data, "/"+lab+"/etcd/data")
	if !ok {
		return "", ""
	}
	return lab, stateDir
}

// Healthy asks etcd's /health over conn (a connection to addr, made in
// the right namespace by the caller) and reports whether it answered
// healthy ({"health":"true"}, etcd 3.4 and later) within timeout.
func Healthy(conn net.Conn, addr string, timeout time.Duration) bool {
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(conn, 4096))
	return strings.HasPrefix(string(b), "HTTP/1.") && strings.Contains(string(b), `"health":"true"`)
}
