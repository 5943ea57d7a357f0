package vxlan

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// batchSize bounds the requests sent in one sendmsg: the acknowledgement of
// a failed request carries a copy of it, and the socket's receive buffer
// must hold them all.
const batchSize = 128

// AddPeers programs several peers, each in flannel's order (ARP, FDB,
// route), leaving the same entries as AddPeer for each. The requests are
// batched: up to batchSize of them go to the kernel in one sendmsg on a
// netlink socket in ns (the device's namespace), and only the last of a
// batch asks for an acknowledgement (the kernel reports failures anyway).
// A node learning 99 peers makes a few system calls instead of 600.
func (d *Device) AddPeers(ns vnetns.NsHandle, peers []Peer) error {
	if len(peers) == 0 {
		return nil
	}
	var reqs []*nl.NetlinkRequest
	var what []string
	for _, p := range peers {
		reqs = append(reqs,
			neighReq(&netlink.Neigh{LinkIndex: d.link.Index, State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: p.Gateway(), HardwareAddr: p.VtepMAC, Family: netlink.FAMILY_V4}),
			neighReq(fdbEntry(d.link.Index, p)),
			routeReq(d.route(p)))
		what = append(what,
			fmt.Sprintf("add ARP entry %s lladdr %s dev %s in %s", p.Gateway(), p.VtepMAC, d.Name(), d.ns),
			fmt.Sprintf("add FDB entry %s dst %s dev %s in %s", p.VtepMAC, p.PublicIP, d.Name(), d.ns),
			fmt.Sprintf("add route %s via %s dev %s onlink in %s", p.Subnet, p.Gateway(), d.Name(), d.ns))
	}
	s, err := nl.GetNetlinkSocketAt(ns, vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", d.ns, err)
	}
	defer s.Close()
	if err := sendBatches(s, reqs, what); err != nil {
		return err
	}
	for _, p := range peers {
		d.log.IP(d.ns, "neigh replace %s lladdr %s dev %s nud permanent", p.Gateway(), p.VtepMAC, d.Name())
		d.log.Add("bridge -n %s fdb replace %s dev %s dst %s self permanent", d.ns, p.VtepMAC, d.Name(), p.PublicIP)
		d.log.IP(d.ns, "route replace %s via %s dev %s onlink", p.Subnet, p.Gateway(), d.Name())
	}
	return nil
}

// neighReq is the request netlink.Handle.NeighSet sends for n (the
// attributes klab uses: destination and link-layer address).
func neighReq(n *netlink.Neigh) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	req.AddData(&netlink.Ndmsg{Family: uint8(n.Family), Index: uint32(n.LinkIndex), State: uint16(n.State), Type: uint8(n.Type), Flags: uint8(n.Flags)})
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, ip4or16(n.IP)))
	req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, []byte(n.HardwareAddr)))
	return req
}

// routeReq is the request netlink.Handle.RouteReplace sends for r (the
// fields klab's tunnel routes use: IPv4 destination, gateway, device,
// flags, scope; main table, protocol boot).
func routeReq(r *netlink.Route) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	msg := nl.NewRtMsg()
	ones, _ := r.Dst.Mask.Size()
	msg.Dst_len = uint8(ones)
	msg.Family = unix.AF_INET
	msg.Flags = uint32(r.Flags)
	msg.Scope = uint8(r.Scope)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, r.Dst.IP.To4()))
	req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, r.Gw.To4()))
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(r.LinkIndex))
	req.AddData(nl.NewRtAttr(unix.RTA_OIF, oif))
	return req
}

func ip4or16(ip net.IP) []byte {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip.To16()
}

// sendBatches sends reqs in batches and returns the first failure, named
// by what[i].
func sendBatches(s *nl.NetlinkSocket, reqs []*nl.NetlinkRequest, what []string) error {
	seq := uint32(0)
	for start := 0; start < len(reqs); start += batchSize {
		batch := reqs[start:min(start+batchSize, len(reqs))]
		first := seq + 1
		var buf []byte
		for i, r := range batch {
			seq++
			r.Seq = seq
			if i == len(batch)-1 {
				r.Flags |= unix.NLM_F_ACK
			}
			buf = append(buf, r.Serialize()...)
		}
		if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("%s: send: %w", what[start], err)
		}
		var failed error
		for done := false; !done; {
			msgs, from, err := s.Receive()
			if err != nil {
				return fmt.Errorf("%s: receive: %w", what[start], err)
			}
			if from.Pid != 0 {
				continue // not from the kernel
			}
			for _, m := range msgs {
				if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq < first || m.Header.Seq > seq || len(m.Data) < 4 {
					continue
				}
				i := start + int(m.Header.Seq-first)
				if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 && failed == nil {
					failed = fmt.Errorf("%s: %w", what[i], syscall.Errno(-code))
				}
				if m.Header.Seq == seq {
					done = true
				}
			}
		}
		if failed != nil {
			return failed
		}
	}
	return nil
}
