package dns

import (
	"context"
	"errors"
	"net"
	"time"

	miekg "github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// MaxTCPConns bounds the TCP connections a server has open at once (see
// Serve).
const MaxTCPConns = 128

// Serve answers DNS queries with h on a UDP socket and a TCP listener
// (either may be nil, not both) until ctx is done, then closes both and
// returns nil; or returns the first error that stops one of them (and
// closes the other). The caller opens the sockets, so they live in
// whichever network namespace the caller made them in (netns.Do): Serve
// itself opens none.
//
// An IPv4 UDP socket (the coredns-* pods' udp4 ":53") is served by the
// fast path of udpfast.go: one worker per CPU, recvmmsg/sendmmsg batches,
// and, when h is a *Server, answers it has given before sent from a cache
// of packed bytes; each datagram gets the same reply as from miekg/dns's
// UDP server, which serves any other packet socket (IPv6, dual-stack, not
// a *net.UDPConn).
//
// TCP connections carry any number of queries (RFC 7766) and are closed
// after 8 s idle; reads and writes time out after 2 s. At most MaxTCPConns
// are open at once (golang.org/x/net/netutil.LimitListener): more clients
// wait in the kernel's accept queue instead of each holding a goroutine
// and buffers here, so a flood of connections that never send a query
// costs bounded memory.
func Serve(ctx context.Context, h miekg.Handler, udp net.PacketConn, tcp net.Listener) error {
	if udp == nil && tcp == nil {
		return errors.New("dns: Serve needs a UDP socket or a TCP listener")
	}
	var srvs []*miekg.Server
	// An IPv4 UDP socket gets the batched fast path (udpfast.go); other
	// packet conns miekg/dns's server.
	fast, ok := fastUDP(udp)
	if ok {
		udp = fast
	} else if udp != nil {
		srvs = append(srvs, &miekg.Server{PacketConn: udp, Handler: h, UDPSize: miekg.MaxMsgSize,
			ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	}
	if tcp != nil {
		tcp = netutil.LimitListener(tcp, MaxTCPConns)
		srvs = append(srvs, &miekg.Server{Listener: tcp, Handler: h,
			ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			IdleTimeout: func() time.Duration { return 8 * time.Second }})
	}
	total := len(srvs)
	if fast != nil {
		total++
	}
	errc := make(chan error, total)
	if fast != nil {
		go func() { errc <- serveBatch(fast, h) }()
	}
	started := make([]chan struct{}, len(srvs))
	for i, srv := range srvs {
		started[i] = make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started[i]) }
		go func() { errc <- srv.ActivateAndServe() }()
	}
	// Shutdown only works on a started server: wait for each to start (or
	// fail) before anything can ask it to stop.
	var first error
	exited := 0
	for i := range srvs {
		select {
		case <-started[i]:
		case err := <-errc:
			exited++
			if first == nil {
				first = err
			}
		}
	}
	if first == nil {
		select {
		case <-ctx.Done():
		case first = <-errc:
			exited++
		}
	}
	for _, srv := range srvs {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		srv.ShutdownContext(sctx) // closes the socket; an error means it had already stopped
		cancel()
	}
	// Closing the sockets also stops a server that had not started when it
	// was told to shut down.
	if udp != nil {
		udp.Close()
	}
	if tcp != nil {
		tcp.Close()
	}
	for ; exited < total; exited++ {
		<-errc
	}
	return first
}

// Serve answers on the given sockets until ctx is done (see the function
// Serve).
func (s *Server) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	return Serve(ctx, s, udp, tcp)
}
