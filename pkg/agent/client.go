package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Dial connects to etcd. With ns set, every connection is opened from
// inside that named network namespace (the socket stays there), so klab's
// CLI in the host's namespace reaches an etcd that only the lab's
// underlay can reach, and nothing in the host's namespace changes. The
// connection is checked with a Status call within timeout: an unreachable
// etcd is reported here, once, in one sentence.
//
// tlsc, if given and not nil, is the TLS config for https endpoints (a
// lab that spans machines: the CA and this machine's client certificate,
// see pkg/pki).
func Dial(endpoints []string, ns string, timeout time.Duration, tlsc ...*tls.Config) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second}
	if len(tlsc) > 0 && tlsc[0] != nil {
		cfg.TLS = tlsc[0].Clone()
	}
	if ns != "" {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				return err
			})
			return c, err
		}))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %v: check the endpoints", strings.Join(endpoints, ","), err)
	}
	if err := Ping(cli, endpoints, timeout); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
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
