package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// TestSoak builds and destroys the flannel-crossnode network (2 nodes, a
// pod on each plus a second pod, a server, a ping across, a 'klab exec')
// KLAB_SOAK times in a row through the CLI binary, and compares counts at
// the end with the start: what belongs to the lab (namespaces, mounts,
// processes, state files) must be zero, the host's links and this
// process's file descriptors must not grow. System-wide numbers (all
// network namespaces, mounts, processes, open files, kernel memory) are
// reported: other labs may come and go on the machine meanwhile. Not in
// the default suite: 'make soak' (KLAB_SOAK=200).
func TestSoak(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("KLAB_SOAK"))
	if n <= 0 {
		t.Skip("soak test: run it with KLAB_SOAK=200 (make soak)")
	}
	k := newCLI(t)
	lab := testutil.LabName(t, "rlsoak")
	k.destroyOnCleanup(lab)
	cycle := func() {
		for _, step := range append(crossnodeBuild,
			[]string{"pod", "add", "pod-b", "--node", "node1"},
			[]string{"ping", "pod-a", "pod-c", "-c", "1"},
			[]string{"exec", "node1", "--", "true"},
		) {
			k.must(append([]string{"--lab", lab}, step...)...)
		}
		k.must("destroy", lab)
	}
	cycle() // first-time effects (/run/netns mount, modules, caches) out of the way
	start := takeSoakCounts(t, k, lab, nil)
	t.Logf("start:  %s", start)
	began := time.Now()
	for i := 1; i <= n; i++ {
		cycle()
		if i%50 == 0 || i == n {
			t.Logf("after %d cycles (%s): %s", i, time.Since(began).Round(time.Second), takeSoakCounts(t, k, lab, nil))
		}
	}
	end := takeSoakCounts(t, k, lab, start)
	t.Logf("end:    %s", end)
	t.Logf("%d build+destroy cycles in %s (%.2f s each)", n, time.Since(began).Round(time.Second), time.Since(began).Seconds()/float64(n))
	if end.labNS+end.labMounts+end.labProcs+end.stateFiles != 0 {
		t.Errorf("the lab left namespaces %d, mounts %d, processes %d, state files %d", end.labNS, end.labMounts, end.labProcs, end.stateFiles)
	}
	if end.hostLinks != start.hostLinks {
		t.Errorf("host links: %d -> %d", start.hostLinks, end.hostLinks)
	}
	if end.selfFDs > start.selfFDs {
		t.Errorf("this process's file descriptors grew: %d -> %d", start.selfFDs, end.selfFDs)
	}
	k.assertClean(lab, "soak")
}

type soakCounts struct {
	labNS, labMounts, labProcs, stateFiles     int // must be 0 between cycles
	hostLinks, selfFDs                         int // must not grow
	allNS, netnsSlab, mounts, procs, openFiles int // system-wide, reported
	memAvailKB, slabKB                         int
}

func (c soakCounts) String() string {
	return fmt.Sprintf("lab: ns=%d mounts=%d procs=%d files=%d | host links=%d, test fds=%d | system: /run/netns=%d net_namespace objs=%d mounts=%d procs=%d open files=%d MemAvailable=%dMiB Slab=%dMiB",
		c.labNS, c.labMounts, c.labProcs, c.stateFiles, c.hostLinks, c.selfFDs, c.allNS, c.netnsSlab, c.mounts, c.procs, c.openFiles, c.memAvailKB/1024, c.slabKB/1024)
}

// takeSoakCounts measures; with a start, it first lets the kernel finish
// freeing namespaces (asynchronous) for up to a few seconds.
func takeSoakCounts(t *testing.T, k *cli, lab string, start *soakCounts) *soakCounts {
	t.Helper()
	if start != nil {
		for i := 0; i < 50 && netnsSlabObjects() > start.netnsSlab; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	var c soakCounts
	nss, _ := netns.List(lab)
	c.labNS = len(nss)
	for _, l := range k.leftovers(lab) {
		switch {
		case strings.HasPrefix(l, "mount "):
			c.labMounts++
		case strings.HasPrefix(l, "process "):
			c.labProcs++
		}
	}
	filepath.Walk(k.state, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != k.state {
			c.stateFiles++
		}
		return nil
	})
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	c.hostLinks = len(links)
	fds, _ := os.ReadDir("/proc/self/fd")
	c.selfFDs = len(fds)
	all, _ := os.ReadDir(netns.RunDir)
	c.allNS = len(all)
	c.netnsSlab = netnsSlabObjects()
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	c.mounts = strings.Count(string(mi), "\n")
	procs, _ := filepath.Glob("/proc/[0-9]*")
	c.procs = len(procs)
	if b, err := os.ReadFile("/proc/sys/fs/file-nr"); err == nil {
		c.openFiles, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	c.memAvailKB = meminfo("MemAvailable")
	c.slabKB = meminfo("Slab")
	return &c
}

// netnsSlabObjects is the number of live network namespaces the kernel's
// slab allocator holds (every namespace on the machine), or -1.
func netnsSlabObjects() int {
	f, err := os.Open("/proc/slabinfo")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 2 && fs[0] == "net_namespace" {
			n, _ := strconv.Atoi(fs[1])
			return n
		}
	}
	return -1
}

func meminfo(key string) int {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}
