package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/probe"
)

// 'klab trace --pcap' on lab points (aliases included) writes a pcapng file
// that tshark reads back with the points as interface names, decoding 8472
// as VXLAN.
func TestTracePcapTshark(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("needs tshark")
	}
	lab := testutil.LabName(t, "t-jny")
	state := t.TempDir()
	c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := cluster.Destroy(state, lab, nil, nil); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	for i, n := range []string{"node1", "node2"} {
		if _, err := c.AddNode(cluster.NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.AddPod(cluster.PodSpec{Name: []string{"pod-a", "pod-c"}[i], Node: n}); err != nil {
			t.Fatal(err)
		}
	}
	dst := c.Lab.Pod("pod-c").IP
	c.Close()

	saved := globals
	t.Cleanup(func() { globals = saved })
	pcap := filepath.Join(t.TempDir(), "t.pcapng")
	root := newRoot()
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	// 2 pings x (request + reply) x 4 points.
	root.SetArgs([]string{"--state-dir", state, "--lab", lab, "trace", "pod-a", "node1:eth0", "underlay:node2", "pod-c:host",
		"--filter", "icmp", "--count", "16", "--duration", "10s", "--pcap", pcap})
	done := make(chan error, 1)
	go func() { done <- root.Execute() }()
	time.Sleep(500 * time.Millisecond)
	res, err := probe.Ping(context.Background(), "klab."+lab+".pod-a", dst, probe.PingOptions{Count: 2, Interval: 50 * time.Millisecond})
	if err != nil || res.Received != 2 {
		t.Fatalf("ping: %+v %v", res, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("klab trace: %v\n%s", err, out.String())
	}
	b, err := exec.Command("tshark", "-r", pcap, "-d", "udp.port==8472,vxlan", "-T", "fields",
		"-e", "frame.interface_name", "-e", "udp.dstport", "-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type").Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, b)
	}
	veth := "node2/" + mustLab(t, state, lab).Pod("pod-c").HostVeth
	count := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 6 {
			t.Fatalf("tshark line %q", line)
		}
		count[f[0]]++
		wire := f[0] == "node1/eth0" || f[0] == "underlay/node2"
		if wire && (f[1] != "8472" || f[2] != "1" || !strings.Contains(f[3], ",10.244.")) {
			t.Errorf("on the wire, not VXLAN vni 1: %q", line)
		}
		if !wire && (f[2] != "" || strings.Contains(f[3], ",")) {
			t.Errorf("inside a node or pod, VXLAN: %q", line)
		}
	}
	for _, p := range []string{"pod-a/eth0", "node1/eth0", "underlay/node2", veth} {
		if count[p] != 4 {
			t.Errorf("tshark: %d packets on interface %s, want 4 (%v)", count[p], p, count)
		}
	}

	// A short capture is an error when --count was not reached in --duration.
	root = newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"--state-dir", state, "--lab", lab, "trace", "node1:eth0", "--filter", "vni 7", "--count", "1", "--duration", "300ms"})
	err = root.Execute()
	if ee, ok := err.(exitError); !ok || ee.code != 1 || !strings.Contains(ee.msg, "captured 0 of the 1 packets asked for") {
		t.Errorf("short capture: %v", err)
	}
	// Bad input: unknown point, bad pcap path.
	for _, args := range [][]string{{"trace", "pod-z:eth0"}, {"trace", "pod-a", "--pcap", "/nonexistent/dir/x.pcapng"}, {"trace", "journey", "pod-a", "nowhere"}} {
		root = newRoot()
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"--state-dir", state, "--lab", lab}, args...))
		if err := root.Execute(); err == nil || err.Error() == "" || strings.Count(strings.TrimSuffix(err.Error(), "."), "\n") != 0 {
			t.Errorf("%v: error %v", args, err)
		}
	}
}

func mustLab(t *testing.T, state, lab string) *cluster.Lab {
	l, err := cluster.Load(state, lab)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
