package agent

// Reaching etcd: which etcd (flanneld's --etcd-* flags) and from which
// network namespace the client's sockets are opened.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	vnetns "github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdConfig is how a client finds etcd, with flanneld's flags
// (flannel-io/flannel main.go: --etcd-endpoints, --etcd-prefix,
// --etcd-cafile, --etcd-certfile, --etcd-keyfile; newEtcdClient in
// pkg/subnet/etcd/registry.go turns the three files into the client's TLS
// config, as TLS below does). The files are paths on the machine; with
// none set the endpoints are plain http.
type EtcdConfig struct {
	Endpoints []string `json:"endpoints"`
	CAFile    string   `json:"caFile,omitempty"`   // the CA that signed etcd's serving certificate
	CertFile  string   `json:"certFile,omitempty"` // the client certificate (etcd's --client-cert-auth)
	KeyFile   string   `json:"keyFile,omitempty"`  // its key
	Prefix    string   `json:"prefix,omitempty"`   // flannel's keys' prefix (DefaultPrefix when empty)
}

// KeyPrefix is the prefix of flannel's keys: Prefix, or DefaultPrefix.
func (e EtcdConfig) KeyPrefix() string {
	if e.Prefix == "" {
		return DefaultPrefix
	}
	return e.Prefix
}

// Secure reports whether the config has TLS files.
func (e EtcdConfig) Secure() bool { return e.CAFile != "" || e.CertFile != "" || e.KeyFile != "" }

// ParseEndpoints splits a comma-separated --etcd-endpoints value and checks
// each URL: http or https, a host and a port, nothing else.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, ep := range strings.Split(s, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("--etcd-endpoints %q is not an etcd client URL: write it like http://10.0.0.5:2379 (scheme http or https, a host and a port, comma-separated for several)", ep)
		}
		out = append(out, strings.TrimSuffix(ep, "/"))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--etcd-endpoints %q names no endpoint: write it like http://10.0.0.5:2379", s)
	}
	return out, nil
}

// Validate checks the config without dialing: endpoints well formed, the
// TLS files complete, readable and matching each other, the prefix an
// absolute key path. Paths are made absolute (agents run elsewhere).
func (e *EtcdConfig) Validate() error {
	for _, ep := range e.Endpoints {
		if _, err := ParseEndpoints(ep); err != nil {
			return err
		}
	}
	if e.Prefix != "" && (!strings.HasPrefix(e.Prefix, "/") || strings.HasSuffix(e.Prefix, "/") || strings.Contains(e.Prefix, "//")) {
		return fmt.Errorf("--etcd-prefix %q is not a key prefix: write it like /coreos.com/network (a leading slash, no trailing one)", e.Prefix)
	}
	if !e.Secure() {
		for _, ep := range e.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				return fmt.Errorf("--etcd-endpoints %s is https, but no --etcd-cafile is given: add --etcd-cafile (and --etcd-certfile/--etcd-keyfile if etcd checks client certificates)", ep)
			}
		}
		return nil
	}
	for _, ep := range e.Endpoints {
		if !strings.HasPrefix(ep, "https://") {
			return fmt.Errorf("--etcd-cafile/--etcd-certfile/--etcd-keyfile are set, but endpoint %s is plain http: write https://", ep)
		}
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		return fmt.Errorf("--etcd-certfile and --etcd-keyfile go together (a client certificate and its key): give both or neither")
	}
	for _, f := range []*string{&e.CAFile, &e.CertFile, &e.KeyFile} {
		if *f != "" {
			abs, err := filepath.Abs(*f)
			if err != nil {
				return err
			}
			*f = abs
		}
	}
	_, err := e.TLS()
	return err
}

// TLS is the client's TLS config (nil without TLS files): the CA pool
// from CAFile, the client certificate from CertFile and KeyFile.
func (e EtcdConfig) TLS() (*tls.Config, error) {
	if !e.Secure() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CAFile != "" {
		b, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cafile %s: %v: give the CA certificate that signed etcd's --cert-file (PEM)", e.CAFile, errors.Unwrap(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--etcd-cafile %s holds no PEM certificate: give the CA certificate that signed etcd's --cert-file", e.CAFile)
		}
		cfg.RootCAs = pool
	}
	if e.CertFile != "" {
		for _, f := range []struct{ flag, path string }{{"--etcd-certfile", e.CertFile}, {"--etcd-keyfile", e.KeyFile}} {
			if _, err := os.Stat(f.path); err != nil {
				return nil, fmt.Errorf("%s %s: %v: give an existing PEM file", f.flag, f.path, errors.Unwrap(err))
			}
		}
		cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-certfile %s and --etcd-keyfile %s do not make a client certificate (%v): give a certificate and its own key, PEM", e.CertFile, e.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Via says from which network namespace a client's sockets to etcd are
// opened. The zero Via is the caller's own (the process's namespace).
// Only the sockets are opened there: nothing else happens in that
// namespace, and the calling process stays where it is.
type Via struct {
	netns string   // a named namespace (/run/netns/NAME)
	fd    *os.File // an open namespace file (/proc/.../ns/net)
}

// ViaCaller dials from the caller's namespace.
func ViaCaller() Via { return Via{} }

// ViaNetns dials from inside the named namespace: the CLI on the machine
// reaches the lab's embedded etcd on the lab's underlay this way.
func ViaNetns(name string) Via { return Via{netns: name} }

// ViaFile dials from the namespace f refers to (an open /proc/PID/ns/net,
// or one inherited as a file descriptor): an agent in a node's namespace
// reaches an external etcd on the machine's network this way, through the
// machine's namespace its supervisor handed down (MachineNetnsFD).
func ViaFile(f *os.File) Via { return Via{fd: f} }

// MachineNetnsFD is the file descriptor on which an agent supervisor and
// its agent inherit the machine's network namespace (the CLI's, opened from
// /proc/thread-self/ns/net before forking into the node's namespace), when
// the lab's etcd is external: as 'ip netns exec NODE klab ... 3</proc/self/ns/net'.
const MachineNetnsFD = 3

// InheritedMachineNetns returns the machine's namespace inherited on
// MachineNetnsFD, checked to be a network namespace.
func InheritedMachineNetns() (*os.File, error) {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", MachineNetnsFD))
	if err != nil || !strings.HasPrefix(link, "net:[") {
		return nil, fmt.Errorf("file descriptor %d is not the machine's network namespace (%q): the agent reaches the external etcd through it; start agents with 'klab agent start NODE' or 'klab repair', which pass it", MachineNetnsFD, link)
	}
	return os.NewFile(MachineNetnsFD, "machine-netns"), nil
}

// OpenCallerNetns opens the calling thread's network namespace (for
// ViaFile, or to hand to a child process with exec.Cmd.ExtraFiles).
func OpenCallerNetns() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return os.Open("/proc/thread-self/ns/net")
}

// dialer is the gRPC dialer of via: a TCP connection opened on a thread
// switched into the namespace for the connect only.
func (v Via) dialer() func(context.Context, string) (net.Conn, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	switch {
	case v.netns != "":
		return func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = netns.Do(v.netns, func() error { c, err = dial(ctx, addr); return err })
			return c, err
		}
	case v.fd != nil:
		return func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = netns.DoHandle(vnetns.NsHandle(v.fd.Fd()), func() error { c, err = dial(ctx, addr); return err })
			return c, err
		}
	}
	return dial
}

// Dial connects to etcd with the config's endpoints and TLS, every
// connection opened from via's namespace. The connection is checked with
// a Status call within timeout: an unreachable etcd, or one whose TLS does
// not match the files, is reported here, once, in one sentence.
func (e EtcdConfig) Dial(via Via, timeout time.Duration) (*clientv3.Client, error) {
	tc, err := e.TLS()
	if err != nil {
		return nil, err
	}
	cfg := clientv3.Config{Endpoints: e.Endpoints, DialTimeout: timeout, Logger: zap.NewNop(), TLS: tc,
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(via.dialer())}}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %v: check the endpoints", strings.Join(e.Endpoints, ","), err)
	}
	ping := make(chan error, 1)
	go func() { ping <- Ping(cli, e.Endpoints, timeout) }()
	// With TLS, a handshake of its own runs beside the ping: a certificate
	// that does not match is reported at once, with its reason, instead of
	// as a ping that times out.
	hs := make(chan error, 1)
	if tc != nil {
		go func() { hs <- e.handshake(via, tc, timeout) }()
	} else {
		hs <- nil
	}
	var perr, herr error
	select {
	case perr = <-ping:
		if perr != nil {
			herr = <-hs
		}
	case herr = <-hs:
		if herr == nil {
			perr = <-ping
		}
	}
	if herr != nil {
		perr = herr
	}
	if perr != nil {
		cli.Close()
		return nil, perr
	}
	return cli, nil
}

// handshake explains a failed TLS connection: it runs the handshake with
// the first endpoint that accepts TCP and returns its error in one sentence
// (nil if it succeeds, or none accepts).
func (e EtcdConfig) handshake(via Via, tc *tls.Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, ep := range e.Endpoints {
		u, _ := url.Parse(ep)
		raw, err := via.dialer()(ctx, u.Host)
		if err != nil {
			continue
		}
		c := tls.Client(raw, &tls.Config{RootCAs: tc.RootCAs, Certificates: tc.Certificates, ServerName: u.Hostname(), MinVersion: tc.MinVersion, NextProtos: []string{"h2"}})
		c.SetDeadline(time.Now().Add(timeout))
		err = c.HandshakeContext(ctx)
		if err == nil {
			// TLS 1.3 reports a rejected client certificate on the first read.
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var b [1]byte
			if _, rerr := c.Read(b[:]); rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
				err = rerr
			}
		}
		c.Close()
		if err != nil && e.CertFile == "" && strings.Contains(err.Error(), "certificate") && !strings.Contains(err.Error(), "x509") {
			return fmt.Errorf("etcd at %s refuses the TLS connection (%v): it checks client certificates (--client-cert-auth): add --etcd-certfile and --etcd-keyfile", ep, err)
		}
		if err != nil {
			return fmt.Errorf("etcd at %s refuses the TLS connection (%v): check that --etcd-cafile signed etcd's certificate and --etcd-certfile is signed by etcd's --trusted-ca-file", ep, err)
		}
	}
	return nil
}

// Dial connects to etcd at endpoints over plain http, from inside the named
// namespace ns if set (the socket stays there: klab's CLI reaches an etcd
// only the lab's underlay can reach, and nothing in the caller's namespace
// changes), else from the caller's (see EtcdConfig.Dial).
func Dial(endpoints []string, ns string, timeout time.Duration) (*clientv3.Client, error) {
	via := ViaCaller()
	if ns != "" {
		via = ViaNetns(ns)
	}
	return EtcdConfig{Endpoints: endpoints}.Dial(via, timeout)
}

// Ping checks that one of the endpoints answers within timeout.
func Ping(cli *clientv3.Client, endpoints []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for _, ep := range endpoints {
		if _, err := cli.Status(ctx, ep); err == nil {
			return nil
		} else {
			last = err
		}
	}
	return fmt.Errorf("etcd at %s is unreachable (%v): start it, or point --etcd-endpoints at a running etcd", strings.Join(endpoints, ","), last)
}
