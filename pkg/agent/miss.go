package agent

// Old flannel's miss mode: answering the kernel's L3MISS and L2MISS
// notifications from the leases (flannel v0.9.x backend/vxlan/device.go
// MonitorMisses/processNeighMsg: an RTM_GETNEIGH on the device is a miss;
// vxlan_network.go handleMiss: no MAC means an L3 miss, no IP an L2 miss).

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/vxlan"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// listenMisses subscribes to the node's neighbour notifications and
// answers the misses of flannel.<VNI> until ctx ends.
func (ag *Agent) listenMisses(ctx context.Context) error {
	h, err := netns.Handle(ag.cfg.NS)
	if err != nil {
		return err
	}
	link, err := h.LinkByName(vxlan.DeviceName(ag.cfg.VNI))
	h.Close()
	if err != nil {
		return fmt.Errorf("miss mode: %s: %v", vxlan.DeviceName(ag.cfg.VNI), err)
	}
	idx := link.Attrs().Index
	nsh, err := netns.Open(ag.cfg.NS)
	if err != nil {
		return err
	}
	ch := make(chan netlink.NeighUpdate, 256)
	done := make(chan struct{})
	if err := netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{Namespace: &nsh,
		ErrorCallback: func(err error) { ag.logf("miss: netlink: %v", err) }}); err != nil {
		nsh.Close()
		return fmt.Errorf("miss mode: subscribe to neighbour notifications: %v", err)
	}
	ag.logf("miss mode: listening for L2MISS/L3MISS on %s (ifindex %d)", vxlan.DeviceName(ag.cfg.VNI), idx)
	go func() {
		<-ctx.Done()
		close(done)
		nsh.Close()
	}()
	go func() {
		for u := range ch {
			if u.Type == unix.RTM_GETNEIGH && u.LinkIndex == idx {
				ag.handleMiss(u.Neigh)
			}
		}
	}()
	return nil
}

func zeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// handleMiss answers one miss from the leases last synced.
func (ag *Agent) handleMiss(n netlink.Neigh) {
	ip, _ := netip.AddrFromSlice(n.IP.To4())
	switch {
	case ip.IsValid() && zeroMAC(n.HardwareAddr):
		ag.mu.Lock()
		ag.misses.L3++
		c := ag.misses.L3
		var peer *vxlanPeer
		for _, p := range ag.peers {
			if p.Subnet.Contains(ip) {
				peer = &vxlanPeer{p.Subnet, p.VtepMAC, p.PublicIP}
			}
		}
		ag.mu.Unlock()
		if peer == nil {
			ag.count(func(m *MissCounters) { m.Unanswered++ })
			ag.logf("L3MISS #%d: who has %s? no lease covers it: not answered", c, ip)
			return
		}
		op := vxlan.L3Answer(ag.cfg.NS, ag.cfg.VNI, ip, peer.mac)
		if ag.apply(fmt.Sprintf("L3MISS #%d: who has %s? lease %s of %s answers", c, ip, SubnetKey(peer.subnet), peer.publicIP), plan.Plan{op}) == nil {
			ag.count(func(m *MissCounters) { m.L3Answered++ })
		}
	case !zeroMAC(n.HardwareAddr) && !ip.IsValid():
		ag.mu.Lock()
		ag.misses.L2++
		c := ag.misses.L2
		var peer *vxlanPeer
		for _, p := range ag.peers {
			if p.VtepMAC.String() == n.HardwareAddr.String() {
				peer = &vxlanPeer{p.Subnet, p.VtepMAC, p.PublicIP}
			}
		}
		ag.mu.Unlock()
		if peer == nil {
			ag.count(func(m *MissCounters) { m.Unanswered++ })
			ag.logf("L2MISS #%d: where is VTEP %s? no lease has that VtepMAC: not answered", c, n.HardwareAddr)
			return
		}
		op := vxlan.L2Answer(ag.cfg.NS, ag.cfg.VNI, peer.mac, peer.publicIP)
		if ag.apply(fmt.Sprintf("L2MISS #%d: where is VTEP %s? lease %s answers %s", c, n.HardwareAddr, SubnetKey(peer.subnet), peer.publicIP), plan.Plan{op}) == nil {
			ag.count(func(m *MissCounters) { m.L2Answered++ })
		}
	}
}

type vxlanPeer struct {
	subnet   netip.Prefix
	mac      net.HardwareAddr
	publicIP netip.Addr
}

func (ag *Agent) count(f func(*MissCounters)) {
	ag.mu.Lock()
	f(&ag.misses)
	ag.mu.Unlock()
}
