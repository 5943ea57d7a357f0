package calico

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
)

// PeerStatus is one row of calicoctl node status: a BGP protocol of the
// node's BIRD as `birdc show protocols` lists it.
type PeerStatus struct {
	Address netip.Addr
	Type    string // node-to-node mesh, node specific, global
	State   string // BIRD's protocol state: up, start, down
	Since   string
	Info    string // the BGP state: Established, Active, Connect, ...
}

// ParseProtocols reads `birdc show protocols` output and returns its BGP
// sessions, as calicoctl's node status does (it matches protocol names
// Mesh_, Node_ and Global_ and turns the underscores back into dots).
func ParseProtocols(out string) []PeerStatus {
	var peers []PeerStatus
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[1] != "BGP" {
			continue
		}
		var typ, rest string
		for prefix, t := range map[string]string{"Mesh_": "node-to-node mesh", "Node_": "node specific", "Global_": "global"} {
			if r, ok := strings.CutPrefix(f[0], prefix); ok {
				typ, rest = t, r
			}
		}
		if typ == "" {
			continue
		}
		ip, err := netip.ParseAddr(strings.ReplaceAll(strings.SplitN(rest, "_port_", 2)[0], "_", "."))
		if err != nil {
			continue
		}
		p := PeerStatus{Address: ip, Type: typ, State: f[3], Since: f[4]}
		if len(f) > 5 {
			p.Info = strings.Join(f[5:], " ")
		}
		peers = append(peers, p)
	}
	return peers
}

// RenderStatus prints peers as calicoctl node status does.
func RenderStatus(running bool, peers []PeerStatus) string {
	var b strings.Builder
	if !running {
		b.WriteString("Calico process is not running.\n")
		return b.String()
	}
	b.WriteString("Calico process is running.\n\nIPv4 BGP status\n")
	if len(peers) == 0 {
		b.WriteString("No IPv4 peers found.\n")
		return b.String()
	}
	head := []string{"PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"}
	rows := [][]string{}
	for _, p := range peers {
		rows = append(rows, []string{p.Address.String(), p.Type, p.State, p.Since, p.Info})
	}
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len(h)
		for _, r := range rows {
			width[i] = max(width[i], len(r[i]))
		}
	}
	line := func() {
		b.WriteString("+")
		for _, w := range width {
			b.WriteString(strings.Repeat("-", w+2) + "+")
		}
		b.WriteString("\n")
	}
	row := func(cells []string, center bool) {
		b.WriteString("|")
		for i, c := range cells {
			if center {
				pad := width[i] - len(c)
				c = strings.Repeat(" ", pad/2) + c + strings.Repeat(" ", pad-pad/2)
			}
			fmt.Fprintf(&b, " %-*s |", width[i], c)
		}
		b.WriteString("\n")
	}
	line()
	row(head, true)
	line()
	for _, r := range rows {
		row(r, false)
	}
	line()
	b.WriteString("\nIPv6 BGP status\nNo IPv6 peers found.\n")
	return b.String()
}
