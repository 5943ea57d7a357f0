package probe

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
)

// Listen opens a TCP listener inside namespace ns.
func Listen(ns, addr string) (net.Listener, error) {
	var l net.Listener
	err := netns.Do(ns, func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	return l, nil
}

// ListenUDP opens a UDP socket inside namespace ns.
func ListenUDP(ns, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := netns.Do(ns, func() (err error) {
		c, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in %s: %w", addr, ns, err)
	}
	return c, nil
}

// EchoBody is what the echo servers answer: the serving pod's name on the
// first line, then the client address as the server saw it.
func EchoBody(name, remote string) string {
	return fmt.Sprintf("%s\nclient: %s\n", name, remote)
}

// ServeHTTP answers every request on l with EchoBody until ctx ends.
func ServeHTTP(ctx context.Context, l net.Listener, name string) error {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("X-Klab-Pod", name)
			io.WriteString(w, EchoBody(name, r.RemoteAddr))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.Serve(l)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ServeUDP answers every datagram on c with EchoBody until ctx ends.
func ServeUDP(ctx context.Context, c net.PacketConn, name string) error {
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	buf := make([]byte, 65536)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		c.WriteTo([]byte(EchoBody(name, from.String())), from)
	}
}

// Dial connects from inside namespace ns.
func Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(ns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Client returns an HTTP client whose connections start inside ns. Each
// request uses a new connection (no keep-alive), as curl does, so a
// Service's load balancing is visible request by request.
func Client(ns string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return Dial(ctx, ns, network, addr)
			},
		},
	}
}

// Get fetches url from inside ns and returns the body.
func Get(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("URL %q is not valid: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return string(b), nil
}

// UDPRequest sends one datagram from inside ns to addr and returns the
// reply.
func UDPRequest(ctx context.Context, ns, addr string, timeout time.Duration) (string, error) {
	c, err := Dial(ctx, ns, "udp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("klab\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// FirstLine returns the first line of an echo answer: the pod's name.
func FirstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}
