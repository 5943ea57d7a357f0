package trace

import (
	"fmt"
	"io"
	"runtime"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// PcapngWriter writes packets to a pcapng file with one interface per
// capture point, named after the point's label ("node1/eth0"), so that
// Wireshark and tshark show where each packet was seen. Each packet carries
// its direction (epb_flags) and, as a comment, its one-line summary.
// Open such a file with: tshark -r f.pcapng -d udp.port==8472,vxlan
type PcapngWriter struct {
	w        *pcapgo.NgWriter
	comments bool
}

// NewPcapngWriter writes the section header and one interface description
// per point to w. With comments, every packet gets its summary as a comment.
func NewPcapngWriter(w io.Writer, points []Point, snapLen int, comments bool) (*PcapngWriter, error) {
	if len(points) == 0 {
		return nil, fmt.Errorf("pcapng: no capture points")
	}
	intf := func(p Point) pcapgo.NgInterface {
		return pcapgo.NgInterface{
			Name:                p.String(),
			Description:         fmt.Sprintf("%s in network namespace %s", p.Iface, nsOrCurrent(p.NS)),
			OS:                  runtime.GOOS,
			LinkType:            layers.LinkTypeEthernet,
			SnapLength:          uint32(snapLen),
			TimestampResolution: 9,
		}
	}
	opts := pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "klab trace",
	}}
	ng, err := pcapgo.NewNgWriterInterface(w, intf(points[0]), opts)
	if err != nil {
		return nil, fmt.Errorf("pcapng header: %w", err)
	}
	for _, p := range points[1:] {
		if _, err := ng.AddInterface(intf(p)); err != nil {
			return nil, fmt.Errorf("pcapng interface %s: %w", p, err)
		}
	}
	return &PcapngWriter{w: ng, comments: comments}, nil
}

func nsOrCurrent(ns string) string {
	if ns == "" {
		return "(current)"
	}
	return ns
}

// Write adds one packet on interface p.PointID.
func (pw *PcapngWriter) Write(p *Packet) error {
	ci := gopacket.CaptureInfo{
		Timestamp: p.Time, CaptureLength: len(p.Data), Length: max(p.Len, len(p.Data)),
		InterfaceIndex: p.PointID,
	}
	flags := &pcapgo.NgEpbFlags{}
	switch p.Dir {
	case DirIn:
		flags.Direction = pcapgo.NgEpbFlagDirectionInbound
	case DirOut:
		flags.Direction = pcapgo.NgEpbFlagDirectionOutbound
	}
	switch p.PktType {
	case PktHost:
		flags.Reception = pcapgo.NgEpbFlagReceptionTypeUnicast
	case PktBroadcast:
		flags.Reception = pcapgo.NgEpbFlagReceptionTypeBroadcast
	case PktMulticast:
		flags.Reception = pcapgo.NgEpbFlagReceptionTypeMulticast
	case PktOtherHost:
		flags.Reception = pcapgo.NgEpbFlagReceptionTypePromiscuous
	}
	opts := pcapgo.NgPacketOptions{Flags: flags}
	if pw.comments {
		opts.Comments = []string{p.String()}
	}
	if err := pw.w.WritePacketWithOptions(ci, p.Data, opts); err != nil {
		return fmt.Errorf("pcapng write: %w", err)
	}
	return nil
}

// Flush writes buffered data; call it before closing the underlying file.
func (pw *PcapngWriter) Flush() error { return pw.w.Flush() }
