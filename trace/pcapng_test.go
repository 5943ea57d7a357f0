package trace

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
)

// tsharkCheck runs tshark on a pcapng file with 8472 decoded as VXLAN and
// returns its field output (one line per packet), or skips if tshark is absent.
func tsharkCheck(t *testing.T, path string) []string {
	t.Helper()
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Log("tshark not installed; skipping the tshark check")
		return nil
	}
	out, err := exec.Command("tshark", "-r", path, "-d", "udp.port==8472,vxlan", "-T", "fields",
		"-e", "frame.interface_name", "-e", "vxlan.vni", "-e", "ip.src", "-e", "icmp.type", "-e", "frame.comment",
		"-e", "frame.packet_flags_direction").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, "Running as user") && l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestPcapng(t *testing.T) {
	points := []Point{{Label: "node1/eth0", NS: "klab.x.node1", Iface: "eth0"}, {Label: "pod-a/eth0", NS: "klab.x.pod-a", Iface: "eth0"}}
	path := filepath.Join(t.TempDir(), "f.pcapng")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewPcapngWriter(f, points, DefaultSnapLen, true)
	if err != nil {
		t.Fatal(err)
	}
	p1 := decode(t, icmpFrame(t, macPodA, macCni1, l3spec{"10.244.1.2", "10.244.2.2", 64, 4242}, true, 1, 1))
	p1.Time, p1.Point, p1.PointID, p1.Dir = time.Unix(1700000000, 1000), "pod-a/eth0", 1, DirOut
	p2 := decode(t, crossNodePing(t))
	p2.Time, p2.Point, p2.PointID, p2.Dir = time.Unix(1700000000, 2000), "node1/eth0", 0, DirOut
	for _, p := range []*Packet{&p1, &p2} {
		if err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		data, ci, err := ng.ReadPacketData()
		if err != nil {
			break
		}
		intf, _ := ng.Interface(ci.InterfaceIndex)
		var p Packet
		_ = NewDecoder().Decode(data, &p)
		got = append(got, intf.Name+" "+ci.Timestamp.UTC().Format(time.RFC3339Nano)+" "+p.Innermost().Summary())
	}
	want := []string{
		"pod-a/eth0 2023-11-14T22:13:20.000001Z 10.244.1.2 > 10.244.2.2 icmp echo request id=1 seq=1 ttl=64 id=4242 len 84",
		"node1/eth0 2023-11-14T22:13:20.000002Z 10.244.1.2 > 10.244.2.2 icmp echo request id=1 seq=1 ttl=63 id=4242 len 84",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("read back:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	lines := tsharkCheck(t, path)
	t.Logf("tshark:\n%s", strings.Join(lines, "\n"))
	if lines == nil {
		return
	}
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "pod-a/eth0\t\t10.244.1.2\t8") ||
		!strings.HasPrefix(lines[1], "node1/eth0\t1\t192.168.1.101,10.244.1.2\t8") {
		t.Errorf("tshark output:\n%s", strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, "\t0x00000002") || !strings.Contains(l, "icmp echo request") {
			t.Errorf("tshark line lacks the outbound flag or the comment: %q", l)
		}
	}
}
