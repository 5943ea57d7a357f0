package klabtest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/trace"
)

// Capture records the packets seen at some interfaces of a lab, with klab's
// trace package (AF_PACKET sockets inside the namespaces, VXLAN on 8472
// decoded), from Lab.Capture until the test ends or Stop.
type Capture struct {
	lab    *Lab
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	pkts   []trace.Packet
	err    error
}

// Capture starts capturing at points, each "target:iface" where target is a
// node, a pod or "underlay" (node1:eth0, node1:flannel.1, pod-a:eth0,
// underlay:underlay0). A bridge (cni0, underlay0) is captured in
// promiscuous mode, to see the frames it switches between its ports.
// Packets sent after Capture returns are recorded.
func (l *Lab) Capture(points ...string) *Capture {
	l.t.Helper()
	var pts []trace.Point
	for _, s := range points {
		target, iface, ok := strings.Cut(s, ":")
		if !ok || iface == "" {
			l.t.Fatalf("klabtest: capture point %q: write it as target:iface, like node1:eth0", s)
		}
		l.mu.Lock()
		known := target == cluster.UnderlayName || l.nodes[target] != nil || l.pods[target] != nil
		l.mu.Unlock()
		if !known {
			l.t.Fatalf("klabtest: capture point %q: %s is not a node or pod of lab %s", s, target, l.Name)
		}
		pts = append(pts, trace.Point{Label: target + "/" + iface, NS: netns.Name(l.Name, target), Iface: iface,
			Promisc: iface == "cni0" || iface == cluster.UnderlayBridge})
	}
	c, err := trace.Open(pts, trace.Options{})
	if err != nil {
		l.t.Fatalf("klabtest: capture: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &Capture{lab: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cp.done)
		defer c.Close()
		err := c.Run(ctx, func(p *trace.Packet) error {
			cp.mu.Lock()
			cp.pkts = append(cp.pkts, p.Clone())
			cp.mu.Unlock()
			return nil
		})
		cp.mu.Lock()
		cp.err = err
		cp.mu.Unlock()
	}()
	l.t.Cleanup(func() { cp.Stop() })
	return cp
}

// Stop ends the capture (idempotent) and returns every packet recorded.
func (c *Capture) Stop() []trace.Packet {
	c.cancel()
	<-c.done
	return c.Packets()
}

// Packets returns a copy of the packets recorded so far.
func (c *Capture) Packets() []trace.Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]trace.Packet(nil), c.pkts...)
}

// Matching returns the recorded packets that match a trace filter
// expression ("inner icmp", "vni 1 and inner host 10.244.2.2", "arp"; see
// trace/FILTERS.md).
func (c *Capture) Matching(filter string) ([]trace.Packet, error) {
	f, err := trace.ParseFilter(filter)
	if err != nil {
		return nil, err
	}
	var out []trace.Packet
	for _, p := range c.Packets() {
		if f.Match(&p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// Expect waits up to two seconds until at least min recorded packets match
// filter, and fails the test (listing what was seen) if they never do. It
// returns the matching packets.
func (c *Capture) Expect(filter string, min int) []trace.Packet {
	t := c.lab.t
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, err := c.Matching(filter)
		if err != nil {
			t.Fatalf("klabtest: filter %q: %v", filter, err)
		}
		if len(got) >= min {
			return got
		}
		c.mu.Lock()
		cerr := c.err
		c.mu.Unlock()
		if cerr != nil || time.Now().After(deadline) {
			var b bytes.Buffer
			for _, p := range c.Packets() {
				fmt.Fprintf(&b, "  %s\n", p.String())
			}
			t.Fatalf("klabtest: %d packets match %q, want at least %d (capture error: %v); recorded:\n%s", len(got), filter, min, cerr, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ExpectNone fails the test if any recorded packet matches filter.
func (c *Capture) ExpectNone(filter string) {
	t := c.lab.t
	t.Helper()
	got, err := c.Matching(filter)
	if err != nil {
		t.Fatalf("klabtest: filter %q: %v", filter, err)
	}
	if len(got) > 0 {
		t.Fatalf("klabtest: %d packets match %q, want none; first: %s", len(got), filter, got[0].String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a process's stdout and stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.b.Bytes()...)
}
