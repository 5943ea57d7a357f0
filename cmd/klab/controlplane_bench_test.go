package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// BenchmarkControlPlane builds the same 100-node x 10-pod flannel lab in
// direct mode (cluster.Build programs every node) and in control-plane
// mode (Build starts etcd and one agent per node, and returns when every
// node's kernel has a route to every other node's subnet, read back by
// Build's own check and again here with netlink), in the same run. The
// control-plane rows also report how long one new lease, put into etcd,
// takes to reach all nodes (lease-ms: until the route is in every node's
// kernel, polled with netlink route lookups), the agents' mean private
// memory and etcd's (see controlPlaneRSS). Run it with -benchtime 1x; -bench
// 'ControlPlane/10x10' for a quick one.
func BenchmarkControlPlane(b *testing.B) {
	testutil.RequireRoot(b)
	bin := testutil.Klab(b)
	for _, sz := range []struct{ nodes, pods int }{{10, 10}, {100, 10}} {
		for _, mode := range []string{"direct", "etcd"} {
			b.Run(fmt.Sprintf("%dx%d/%s", sz.nodes, sz.pods, mode), func(b *testing.B) {
				var up, lease, agentRSS, etcdRSS []float64
				for i := 0; i < b.N; i++ {
					state := b.TempDir()
					lab := testutil.LabName(b, "cp")
					opts := &cluster.Options{}
					if mode == "etcd" {
						opts.ControlPlane = cluster.ControlPlaneEtcd
					}
					c, err := cluster.Open(state, lab, opts, nil)
					if err != nil {
						b.Fatal(err)
					}
					c.Serve = func(target, proto string, port int) []string {
						return []string{bin, "__serve", "--name", target, "--port", strconv.Itoa(port), "--proto", proto, "--lab", lab, "--state-dir", state}
					}
					t0 := time.Now()
					_, _, err = c.Build(bench.FlannelSpec(sz.nodes, sz.pods))
					d := time.Since(t0)
					if err == nil {
						err = everyPeer(c)
					}
					if err == nil && mode == "etcd" {
						var l time.Duration
						if l, err = newLeaseEverywhere(c); err == nil {
							lease = append(lease, ms(l))
							a, e := controlPlaneRSS(c)
							agentRSS, etcdRSS = append(agentRSS, a), append(etcdRSS, e)
						}
					}
					c.Close()
					cluster.Destroy(state, lab, nil, nil)
					if err != nil {
						b.Fatal(err)
					}
					up = append(up, ms(d))
				}
				b.ReportMetric(median(up), "up-ms")
				if mode == "etcd" {
					b.ReportMetric(median(lease), "lease-ms")
					b.ReportMetric(median(agentRSS), "agent-anon-MB")
					b.ReportMetric(median(etcdRSS), "etcd-anon-MB")
				}
			})
		}
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// everyPeer checks with netlink that every node routes every other
// node's subnet.
func everyPeer(c *cluster.Cluster) error {
	for _, n := range c.Lab.Nodes {
		h, err := netns.Handle(c.NS(n.Name))
		if err != nil {
			return err
		}
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		h.Close()
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, r := range routes {
			if r.Dst != nil {
				have[r.Dst.String()] = true
			}
		}
		for _, o := range c.Lab.Nodes {
			if o != n && !have[o.PodCIDR.String()] {
				return fmt.Errorf("node %s has no route to %s (node %s)", n.Name, o.PodCIDR, o.Name)
			}
		}
	}
	return nil
}

// newLeaseEverywhere puts a hand-made lease into etcd and returns how long
// it takes until every node's kernel routes its subnet.
func newLeaseEverywhere(c *cluster.Cluster) (time.Duration, error) {
	var handles []*netlink.Handle
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	for _, n := range c.Lab.Nodes {
		h, err := netns.Handle(c.NS(n.Name))
		if err != nil {
			return 0, err
		}
		handles = append(handles, h)
	}
	cli, err := agent.Dial(c.Lab.ControlPlane.Endpoints, c.NS(cluster.ControlPlaneName), 3*time.Second)
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	sn := netip.MustParsePrefix("10.244.250.0/24")
	dst := &netlinkDst{sn}
	t0 := time.Now()
	if _, err := cli.Put(context.Background(), agent.DefaultPrefix+"/subnets/"+agent.SubnetKey(sn),
		`{"PublicIP":"192.168.1.250","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:fa"}}`); err != nil {
		return 0, err
	}
	left := handles
	for len(left) > 0 {
		if time.Since(t0) > 10*time.Second {
			return 0, fmt.Errorf("a new lease reached %d of %d nodes in 10s", len(handles)-len(left), len(handles))
		}
		var next []*netlink.Handle
		for _, h := range left {
			rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst.ipnet()}, netlink.RT_FILTER_DST)
			if err != nil || len(rs) == 0 {
				next = append(next, h)
			}
		}
		left = next
	}
	return time.Since(t0), nil
}

type netlinkDst struct{ p netip.Prefix }

func (d *netlinkDst) ipnet() *net.IPNet {
	return &net.IPNet{IP: d.p.Addr().AsSlice(), Mask: net.CIDRMask(d.p.Bits(), 32)}
}

// controlPlaneRSS returns the agents' mean memory and etcd's, in MB: the
// anonymous (private) part of the RSS, from /proc/PID/smaps_rollup (the
// agents found by their command line). The rest of an agent's RSS is the
// klab binary's pages, shared by every agent.
func controlPlaneRSS(c *cluster.Cluster) (agentMB, etcdMB float64) {
	rss := func(pid int) float64 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Anonymous:"); ok {
				kb, _ := strconv.Atoi(strings.Fields(v)[0])
				return float64(kb) / 1024
			}
		}
		return 0
	}
	var sum float64
	var n int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == "__agent" && strings.Contains(string(b), "\x00"+c.Lab.Name+"\x00") {
			sum += rss(pid)
			n++
		}
	}
	for _, s := range c.Lab.Servers {
		if s.Proto == "etcd" {
			etcdMB = rss(s.PID)
		}
	}
	if n > 0 {
		agentMB = sum / float64(n)
	}
	return agentMB, etcdMB
}
