package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// HostSnapshot is the state of the host's own network namespace that klab
// must never change, as sorted lines per section: links, addresses, routes
// (every table), policy rules, static neighbours, iptables-save and
// ip6tables-save of every table, and the sysctls klab sets inside its
// namespaces (where a bug could make them land on the host).
//
// Things that change by themselves are left out: packet and byte counters,
// neighbour entries other than PERMANENT ones (REACHABLE, STALE, DELAY,
// PROBE, FAILED, INCOMPLETE are refreshed and expired by the host's own
// traffic, NOARP ones for local and multicast addresses come and go with
// the kernel's garbage collection; the PERMANENT entries klab writes in its
// nodes would show), IPv6 addresses that are not permanent
// (SLAAC, privacy) and IPv6 routes learnt from router advertisements.
type HostSnapshot struct {
	Sections map[string][]string `json:"sections"`
}

// hostSysctls are the sysctls klab writes in its namespaces, plus the
// bridge-netfilter ones (global, and changed by anyone loading
// br_netfilter with other settings). Missing ones are recorded as such.
var hostSysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/forwarding",
	"net/ipv4/conf/default/forwarding",
	"net/ipv6/conf/all/forwarding",
	"net/ipv4/conf/all/rp_filter",
	"net/ipv4/conf/default/rp_filter",
	"net/ipv4/conf/all/proxy_arp",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/bridge/bridge-nf-call-arptables",
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// TakeHostSnapshot records the host network namespace: the namespace of the
// calling thread, which must not be inside a lab (test code runs this from
// TestMain, where no test goroutine is switched into a namespace).
func TakeHostSnapshot() (*HostSnapshot, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := vnetns.GetFromPath(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	s := &HostSnapshot{Sections: map[string][]string{}}
	add := func(sec, format string, args ...any) {
		s.Sections[sec] = append(s.Sections[sec], fmt.Sprintf(format, args...))
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err == nil {
		add("namespace", "net:[%d]", st.Ino)
	}
	links, err := retryDump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, l := range links {
		a := l.Attrs()
		add("links", "%s type=%s mtu=%d up=%v master=%s mac=%s", a.Name, l.Type(), a.MTU, a.Flags&net.FlagUp != 0, names[a.MasterIndex], a.HardwareAddr)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IP.To4() == nil && a.Flags&unix.IFA_F_PERMANENT == 0 {
			continue
		}
		add("addresses", "%s dev %s scope %d", a.IPNet, names[a.LinkIndex], a.Scope)
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_RA {
			continue
		}
		add("routes", "table %d %s via %s dev %s proto %d scope %d type %d src %s", r.Table, r.Dst, r.Gw, names[r.LinkIndex], r.Protocol, r.Scope, r.Type, r.Src)
	}
	rules, err := retryDump(func() ([]netlink.Rule, error) { return h.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	for _, r := range rules {
		add("rules", "%s", r)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(0, fam) })
		if err != nil {
			return nil, fmt.Errorf("neighbours: %w", err)
		}
		for _, n := range neighs {
			if n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			add("neighbours", "%s lladdr %s dev %s state %#x", n.IP, n.HardwareAddr, names[n.LinkIndex], n.State)
		}
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			add(tool, "(not installed)")
			continue
		}
		// Forked from this locked thread: the host namespace.
		var stderr bytes.Buffer
		cmd := exec.Command(tool)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(stderr.String()))
		}
		add(tool, "(%s ran)", tool) // an empty ruleset prints nothing
		// Keep rule order within a table: number the lines.
		for i, line := range strings.Split(string(out), "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			add(tool, "%04d %s", i, counters.ReplaceAllString(line, "[counters]"))
		}
	}
	for _, k := range hostSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		v := strings.TrimSpace(string(b))
		if err != nil {
			v = "(absent)"
		}
		add("sysctls", "%s = %s", strings.ReplaceAll(k, "/", "."), v)
	}
	for k := range s.Sections {
		if !strings.HasSuffix(k, "tables-save") {
			sort.Strings(s.Sections[k])
		}
	}
	return s, nil
}

func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for i := 0; i < 10; i++ {
		if out, err = f(); err == nil || !strings.Contains(err.Error(), "interrupted") {
			return out, err
		}
	}
	return out, err
}

// Diff describes how after differs from s, section by section ("-" lines
// only before, "+" lines only after); "" if they are the same.
func (s *HostSnapshot) Diff(after *HostSnapshot) string {
	keys := map[string]bool{}
	for k := range s.Sections {
		keys[k] = true
	}
	for k := range after.Sections {
		keys[k] = true
	}
	var secs []string
	for k := range keys {
		secs = append(secs, k)
	}
	sort.Strings(secs)
	var b strings.Builder
	for _, k := range secs {
		minus, plus := lineDiff(s.Sections[k], after.Sections[k])
		if len(minus)+len(plus) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s:\n", k)
		for _, l := range minus {
			fmt.Fprintf(&b, "  - %s\n", l)
		}
		for _, l := range plus {
			fmt.Fprintf(&b, "  + %s\n", l)
		}
	}
	return b.String()
}

// lineDiff returns the lines only in a and only in b, as multisets.
func lineDiff(a, b []string) (onlyA, onlyB []string) {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	for _, l := range a {
		if count[l] > 0 {
			onlyA = append(onlyA, l)
			count[l]--
		}
	}
	for _, l := range b {
		if count[l] < 0 {
			onlyB = append(onlyB, l)
			count[l]++
		}
	}
	return onlyA, onlyB
}

// Save writes the snapshot as JSON.
func (s *HostSnapshot) Save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// LoadHostSnapshot reads a snapshot written by Save.
func LoadHostSnapshot(path string) (*HostSnapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s HostSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}
