package testutil

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { Main(m) }

// The snapshot sees every kind of change klab could make by mistake. It is
// taken, and the changes made, inside a throwaway namespace standing in for
// the host: this test never touches the host itself.
func TestHostSnapshotSeesChanges(t *testing.T) {
	RequireRoot(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	lab := LabName(t, "rlsnap")
	ns := netns.Name(lab, "host")
	if _, err := netns.Ensure(ns); err != nil {
		t.Fatal(err)
	}
	var before, same, after *HostSnapshot
	err := netns.Do(ns, func() error {
		var err error
		if before, err = TakeHostSnapshot(); err != nil {
			return err
		}
		if same, err = TakeHostSnapshot(); err != nil {
			return err
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "rlsnap0"}}
		if err := h.LinkAdd(br); err != nil {
			return err
		}
		if err := h.LinkSetUp(br); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.99.0.1/24")
		if err := h.AddrAdd(br, addr); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("10.98.0.0/16")
		if err := h.RouteAdd(&netlink.Route{LinkIndex: br.Index, Dst: dst, Gw: net.ParseIP("10.99.0.2")}); err != nil {
			return err
		}
		mac, _ := net.ParseMAC("02:00:00:00:00:09")
		if err := h.NeighAdd(&netlink.Neigh{LinkIndex: br.Index, IP: net.ParseIP("10.99.0.9"), HardwareAddr: mac, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}); err != nil {
			return err
		}
		if out, err := exec.Command("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "klab:"+lab, "-j", "MASQUERADE").CombinedOutput(); err != nil {
			t.Errorf("iptables: %v: %s", err, out)
		}
		if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		after, err = TakeHostSnapshot()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(same); d != "" {
		t.Fatalf("two snapshots of an unchanged namespace differ:\n%s", d)
	}
	d := before.Diff(after)
	for _, want := range []string{"links:", "+ rlsnap0 type=bridge", "addresses:", "+ 10.99.0.1/24 dev rlsnap0", "routes:", "10.98.0.0/16 via 10.99.0.2 dev rlsnap0",
		"neighbours:", "+ 10.99.0.9 lladdr 02:00:00:00:00:09 dev rlsnap0", "iptables-save:", "klab:" + lab, "sysctls:", "- net.ipv4.ip_forward = 0", "+ net.ipv4.ip_forward = 1"} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	t.Logf("diff:\n%s", d)
}

func writeSysctl(key, value string) error {
	return exec.Command("sysctl", "-qw", strings.ReplaceAll(key, "/", ".")+"="+value).Run()
}
