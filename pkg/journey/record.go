package journey

// Recording: the capture half of a journey, shared by Run and 'klab trace
// --journey': capture at the points, keep the packets, write pcapng, then
// follow the probe.

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/klab-dev/klab/trace"
)

// Recorder captures at a set of points, writing every packet to a pcapng
// stream if asked, and keeping the packets for a journey if asked.
type Recorder struct {
	points []trace.Point
	c      *trace.Capture
	pw     *trace.PcapngWriter
	keep   bool

	mu   sync.Mutex
	pkts []trace.Packet
}

// Record opens capture at points with o; pcap, if not nil, receives every
// packet as pcapng (one interface per point); keep keeps the packets (see
// Packets, Follow). Close the Recorder after Run.
func Record(points []trace.Point, o trace.Options, pcap io.Writer, keep bool) (*Recorder, error) {
	r := &Recorder{points: points, keep: keep}
	if pcap != nil {
		var err error
		if r.pw, err = trace.NewPcapngWriter(pcap, points, trace.DefaultSnapLen, true); err != nil {
			return nil, err
		}
	}
	c, err := trace.Open(points, o)
	if err != nil {
		return nil, err
	}
	r.c = c
	return r, nil
}

// Run captures until ctx ends or the options' Count or Duration is reached
// (see trace.Capture.Run), passing each packet to each (if not nil) after
// keeping and writing it, and flushes the pcapng stream. It returns the
// first error: each's, a socket's, or the pcapng stream's.
func (r *Recorder) Run(ctx context.Context, each func(p *trace.Packet) error) error {
	err := r.c.Run(ctx, func(p *trace.Packet) error {
		if r.keep {
			r.mu.Lock()
			r.pkts = append(r.pkts, p.Clone())
			r.mu.Unlock()
		}
		if r.pw != nil {
			if err := r.pw.Write(p); err != nil {
				return err
			}
		}
		if each != nil {
			return each(p)
		}
		return nil
	})
	if r.pw != nil {
		if ferr := r.pw.Flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	return err
}

// Packets are the packets kept so far.
func (r *Recorder) Packets() []trace.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pkts
}

// Stats are the capture's per-point counters.
func (r *Recorder) Stats() []trace.Stats { return r.c.Stats() }

// Close closes the capture sockets.
func (r *Recorder) Close() error { return r.c.Close() }

// ErrNoPacket is returned by Recorder.Follow when no packet that can be
// followed was captured.
var ErrNoPacket = errors.New("no IP packet was captured, so there is no journey to show; send traffic while trace runs")

// Follow follows the earliest kept packet that can be followed across the
// points, in the order they were given (see FindProbeMatching and Follow).
func (r *Recorder) Follow() (*Journey, error) {
	pkts := r.Packets()
	probe := FindProbeMatching(pkts, nil)
	if probe < 0 {
		return nil, ErrNoPacket
	}
	return Follow(pkts, probe, pointLabels(r.points))
}

func pointLabels(ps []trace.Point) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
