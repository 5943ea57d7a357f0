package journey

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/probe"
)

// sendUDP sends the UDP probe: to port 53 a DNS query (dns-version.<zone>
// TXT, which the cluster DNS always answers), to any other port a line of
// text (klab's UDP echo servers answer it with their pod's name), and
// waits for one datagram back.
func sendUDP(ctx context.Context, plan *Plan, timeout time.Duration) (result, src string) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := net.JoinHostPort(plan.Dst.String(), strconv.Itoa(plan.Port))
	conn, err := probe.Dial(dctx, plan.FromNS, "udp4", addr)
	if err != nil {
		return err.Error(), ""
	}
	defer conn.Close()
	src = conn.LocalAddr().String()
	payload := []byte("klab journey probe\n")
	var q *miekg.Msg
	if plan.Port == 53 {
		q = new(miekg.Msg)
		q.SetQuestion("dns-version."+cluster.DNSZone+".", miekg.TypeTXT)
		if payload, err = q.Pack(); err != nil {
			return err.Error(), src
		}
	}
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(payload); err != nil {
		return err.Error(), src
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Sprintf("no answer within %s", timeout), src
	}
	if q != nil {
		var m miekg.Msg
		if err := m.Unpack(buf[:n]); err == nil && m.Id == q.Id {
			return fmt.Sprintf("answered (DNS %s, %d answer(s))", miekg.RcodeToString[m.Rcode], len(m.Answer)), src
		}
	}
	return fmt.Sprintf("answered (%d bytes)", n), src
}
