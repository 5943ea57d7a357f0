// Package etcdserver runs the lab's etcd: the real etcd server, embedded
// in klab (go.etcd.io/etcd/server/v3/embed, the code of the etcd binary),
// as a one-member cluster on the lab's control-plane address. It holds
// flannel's leases under /coreos.com/network, as etcd does in a cluster
// where flanneld uses the etcd subnet manager (seed 003). The data lives
// in the lab's state directory, so an etcd restarted after a crash finds
// its keys again; its log goes to a file beside it, so klab's own log
// says only what a student needs: where it listens.
package etcdserver

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// ClientPort and PeerPort are etcd's registered ports.
const (
	ClientPort = 2379
	PeerPort   = 2380
)

// ClientURL is the URL clients use for an etcd on ip.
func ClientURL(ip netip.Addr) string { return fmt.Sprintf("http://%s:%d", ip, ClientPort) }

// TLS is etcd's TLS client listener, for machines that joined the lab:
// client certificates signed by the lab's CA are required there.
type TLS struct {
	URL                       string // https://IP:PORT
	CertFile, KeyFile, CAFile string
}

// Serve runs etcd on ip with its data in dir until ctx ends; ready, if
// set, is called once it serves clients. tlsl, if not nil, adds a TLS
// listener.
func Serve(ctx context.Context, dir string, ip netip.Addr, ready func(url string), tlsl *TLS) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = "control-plane"
	cfg.Dir = filepath.Join(dir, "data")
	cu, _ := url.Parse(ClientURL(ip))
	pu, _ := url.Parse(fmt.Sprintf("http://%s:%d", ip, PeerPort))
	// Also on the namespace's loopback, as on a kubeadm control-plane
	// node: a plain 'etcdctl' there finds it.
	lo, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ClientPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu, *lo}, []url.URL{*cu}
	if tlsl != nil {
		tu, err := url.Parse(tlsl.URL)
		if err != nil {
			return err
		}
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, *tu)
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: tlsl.CertFile, KeyFile: tlsl.KeyFile, TrustedCAFile: tlsl.CAFile, ClientCertAuth: true}
	}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = "klab"
	// A lab's etcd is one member whose data lives in the lab's state dir
	// (tmpfs /run normally) and does not outlive a reboot anyway, so it
	// skips fsync (etcd's --unsafe-no-fsync): on a busy classroom VM a
	// stalled WAL fsync otherwise times proposals out ("etcdserver:
	// request timed out"). Raft, leases and watches behave the same.
	cfg.UnsafeNoFsync = true
	cfg.Logger, cfg.LogLevel = "zap", "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd on %s: %w", ip, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("etcd on %s did not become ready in 30s: see %s", ip, cfg.LogOutputs[0])
	case <-ctx.Done():
		return ctx.Err()
	}
	if ready != nil {
		ready(cu.String())
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}
