package dns

import (
	"context"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// TestFloodBoundedMemory floods the server for two seconds from 32 UDP
// clients that send without waiting, 16 TCP clients asking in a loop and
// 600 TCP clients that connect and never send, and checks that the
// goroutines stay within what the clients plus MaxTCPConns connections
// account for, that the heap stays under 64 MB above where it started, and
// that dig (an independent client) is answered during the flood and
// after it.
func TestFloodBoundedMemory(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (bind9-dnsutils; scripts/install-deps.sh installs it)")
	}
	ns := netns.Name(testutil.LabName(t, "dp"), "flood")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(ns) })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	s := newServer(t, Config{}, labObjects(1000))
	const addr = "127.0.0.1:5353"
	var pc net.PacketConn
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) {
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, s, pc, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	dial := func(network string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(ns, func() (err error) {
			c, err = net.DialTimeout(network, addr, time.Second)
			return err
		})
		return c, err
	}
	dig := func(extra ...string) string {
		// +short prints the answer last, after any retry's complaint.
		out, _ := exec.Command("ip", append([]string{"netns", "exec", ns, "dig", "@127.0.0.1", "-p", "5353", "svc7.ns7.svc.cluster.local", "+tries=3", "+time=1", "+short"}, extra...)...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return lines[len(lines)-1]
	}
	if got := dig(); got != "10.96.0.7" {
		t.Fatalf("dig before the flood: %q", got)
	}
	q := new(miekg.Msg)
	q.SetQuestion("svc7.ns7.svc.cluster.local.", miekg.TypeA)
	wire, _ := q.Pack()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap0, g0 := ms.HeapInuse, runtime.NumGoroutine()

	const udpClients, tcpClients, idle = 32, 16, 600
	// The silent connections first: the server holds at most MaxTCPConns
	// of them, the rest wait in the accept queue.
	var idleConns []net.Conn
	for range idle {
		if c, err := dial("tcp"); err == nil {
			idleConns = append(idleConns, c)
		}
	}
	flood, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var sent, answered atomic.Int64
	for range udpClients {
		c, err := dial("udp")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { // send without waiting
			defer wg.Done()
			for flood.Err() == nil {
				if _, err := c.Write(wire); err == nil {
					sent.Add(1)
				}
			}
		}()
		go func() { // and drain what comes back
			defer wg.Done()
			buf := make([]byte, 4096)
			for flood.Err() == nil {
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := c.Read(buf); err == nil {
					answered.Add(1)
				}
			}
			c.Close()
		}()
	}
	for range tcpClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for flood.Err() == nil {
				c, err := dial("tcp")
				if err != nil {
					continue
				}
				co := &miekg.Conn{Conn: c}
				for i := 0; i < 20 && flood.Err() == nil; i++ {
					co.SetDeadline(time.Now().Add(500 * time.Millisecond))
					if co.WriteMsg(q) != nil {
						break
					}
					if _, err := co.ReadMsg(); err == nil {
						answered.Add(1)
					}
				}
				c.Close()
			}
		}()
	}
	// Sample while the flood runs; dig must be answered in the middle.
	var maxG int
	var maxHeap uint64
	digDuring := make(chan string, 1)
	go func() { time.Sleep(time.Second); digDuring <- dig() }()
	for flood.Err() == nil {
		runtime.ReadMemStats(&ms)
		maxG, maxHeap = max(maxG, runtime.NumGoroutine()), max(maxHeap, ms.HeapInuse)
		time.Sleep(50 * time.Millisecond)
	}
	during := <-digDuring
	wg.Wait()
	for _, c := range idleConns {
		c.Close()
	}
	// The clients' goroutines (2 per UDP client, 1 per TCP client, this
	// sampler's dig) plus at most MaxTCPConns connection servers (600
	// silent connections would be 600 goroutines without the limit), and
	// the UDP side: on this udp4 socket the fast path's fixed workers
	// (udpfast.go); the margin is for miekg/dns's server, which other
	// sockets get and which starts one goroutine per datagram (a few
	// hundred to ~900 in this flood; nothing in klab caps them).
	limit := g0 + 2*udpClients + tcpClients + MaxTCPConns + 2048
	t.Logf("%d UDP queries sent, %d answers; %d idle TCP connections; goroutines %d -> max %d (limit %d); heap in use %.1f -> max %.1f MB",
		sent.Load(), answered.Load(), len(idleConns), g0, maxG, limit, float64(heap0)/1e6, float64(maxHeap)/1e6)
	if maxG > limit {
		t.Errorf("goroutines reached %d during the flood, want at most %d", maxG, limit)
	}
	if maxHeap > heap0+64<<20 {
		t.Errorf("heap in use grew from %.1f to %.1f MB", float64(heap0)/1e6, float64(maxHeap)/1e6)
	}
	if during != "10.96.0.7" {
		t.Errorf("dig during the flood: %q", during)
	}
	if got := dig(); got != "10.96.0.7" {
		t.Errorf("dig after the flood: %q", got)
	}
	if got := dig("+tcp"); got != "10.96.0.7" {
		t.Errorf("dig +tcp after the flood: %q", got)
	}
	if answered.Load() == 0 {
		t.Error("no answer during the flood")
	}
}
