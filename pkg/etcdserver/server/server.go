// Package server runs an etcdserver.Config with the real etcd server,
// embedded (go.etcd.io/etcd/server/v3/embed, the code of the etcd
// binary). Only cmd/klab-etcd imports it: linking the etcd server costs
// every klab command about 10 ms of package init and 20 MB of binary,
// whether it runs etcd or not.
package server

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/klab-dev/klab/pkg/etcdserver"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config is c as the embedded server's configuration.
func Config(c etcdserver.Config) (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = c.Name, c.DataDir
	var err error
	urls := func(flag string, ss []string) []url.URL {
		var out []url.URL
		for _, s := range ss {
			u, perr := url.Parse(s)
			if perr != nil && err == nil {
				err = fmt.Errorf("--%s %q: %v", flag, s, perr)
			}
			if u != nil {
				out = append(out, *u)
			}
		}
		return out
	}
	cfg.ListenClientUrls = urls("listen-client-urls", c.ClientURLs())
	cfg.AdvertiseClientUrls = urls("advertise-client-urls", c.AdvertiseClientURLs)
	cfg.ListenPeerUrls = urls("listen-peer-urls", c.ListenPeerURLs)
	cfg.AdvertisePeerUrls = urls("initial-advertise-peer-urls", c.InitialAdvertisePeerURLs)
	if err != nil {
		return nil, err
	}
	cfg.InitialCluster, cfg.InitialClusterToken, cfg.ClusterState = c.InitialCluster, c.InitialClusterToken, c.InitialClusterState
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	if c.HeartbeatInterval != 0 {
		cfg.TickMs = c.HeartbeatInterval
	}
	if c.ElectionTimeout != 0 {
		cfg.ElectionMs = c.ElectionTimeout
	}
	cfg.Logger, cfg.LogLevel, cfg.LogOutputs = "zap", c.LogLevel, c.LogOutputs
	// TLS for the https client listeners; etcd serves the http ones
	// in the clear (embed's configureClientListeners, per URL).
	cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = c.CertFile, c.KeyFile
	cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = c.TrustedCAFile, c.ClientCertAuth
	return cfg, nil
}

// Run serves c until ctx ends; ready, if set, is called with the first
// advertised client URL once etcd serves clients.
func Run(ctx context.Context, c etcdserver.Config, ready func(url string)) error {
	cfg, err := Config(c)
	if err != nil {
		return err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd %s: %w", c.Name, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("etcd %s did not become ready in 30s: see its log (%v)", c.Name, c.LogOutputs)
	case <-ctx.Done():
		return ctx.Err()
	case err := <-e.Err():
		return err
	}
	if ready != nil {
		u := ""
		if len(c.AdvertiseClientURLs) > 0 {
			u = c.AdvertiseClientURLs[0]
		}
		ready(u)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}
