package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// TestLabInSimulatedContainer runs the whole flannel-crossnode lab the way
// it runs in 'docker run --privileged': in new network, mount and PID
// namespaces (unshare), with a private tmpfs on /run, so /run/netns starts
// empty and unshared, and the lab's namespaces are pinned only inside that
// mount namespace. The lab passes its checks, 'klab doctor' finds nothing
// failing there, and when the "container" ends nothing of it is left on
// the host (the namespaces under the host's /run/netns, processes).
func TestLabInSimulatedContainer(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux) to simulate a container", tool)
		}
	}
	t.Parallel()
	bin := testutil.Klab(t)
	lab := testutil.LabName(t, "kt")
	state := t.TempDir()
	script := `set -e
mount -t tmpfs -o mode=0755 tmpfs /run
ip link set lo up 2>/dev/null || true
K="$KLAB --state-dir $STATE"
$K doctor
$K run flannel-crossnode --yes --lab $LAB
echo "netns in the container: $(ls /run/netns | grep -c "^klab\.$LAB\.")"
$K destroy $LAB
echo "after destroy: $(ls /run/netns | grep -c "^klab\.$LAB\." || true)"`
	cmd := exec.Command("unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "KLAB="+bin, "STATE="+state, "LAB="+lab, "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("flannel-crossnode in a simulated container: %v\n%s", err, out)
	}
	s := string(out)
	// node1, node2, pods, underlay, external: the lab's namespaces lived
	// in the container's own /run/netns.
	if m := regexp.MustCompile(`netns in the container: (\d+)`).FindStringSubmatch(s); m == nil || m[1] == "0" {
		t.Fatalf("no namespace of the lab in the container's /run/netns:\n%s", s)
	}
	if !strings.Contains(s, "after destroy: 0") {
		t.Fatalf("destroy inside the container left namespaces:\n%s", s)
	}
	if strings.Contains(s, "[fail]") {
		t.Fatalf("klab doctor found a failure inside the container:\n%s", s)
	}
	// The host never saw the lab.
	if nss, _ := netns.List(lab); len(nss) > 0 {
		t.Fatalf("the host's /run/netns holds the container's lab: %v", nss)
	}
	if _, err := os.Stat(filepath.Join(state, lab)); err == nil {
		t.Fatalf("the lab's state is left in %s", state)
	}
}

// TestMissingCapabilityRefused runs klab as root with one capability
// dropped (capsh), as an unprivileged container gives: it refuses before
// creating anything, naming the capability and the docker flag that adds
// it.
func TestMissingCapabilityRefused(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("capsh"); err != nil {
		t.Skip("needs capsh: apt-get install libcap2-bin")
	}
	t.Parallel()
	bin := testutil.Klab(t)
	for _, tc := range []struct{ drop, want, flag string }{
		{"cap_net_admin", "CAP_NET_ADMIN", "--cap-add NET_ADMIN"},
		{"cap_sys_admin", "CAP_SYS_ADMIN", "--cap-add SYS_ADMIN"},
	} {
		t.Run(tc.drop, func(t *testing.T) {
			lab := testutil.LabName(t, "kt")
			state := t.TempDir()
			for _, args := range [][]string{
				{"node", "add", "node1"},
				{"run", "flannel-crossnode", "--yes"},
			} {
				argv := append([]string{bin, "--state-dir", state, "--lab", lab}, args...)
				cmd := exec.Command("capsh", "--drop="+tc.drop, "--", "-c", `exec "$@"`, "sh")
				cmd.Args = append(cmd.Args, argv...)
				out, err := cmd.CombinedOutput()
				if err == nil {
					t.Fatalf("klab %s without %s succeeded:\n%s", strings.Join(args, " "), tc.want, out)
				}
				s := strings.TrimSpace(string(out))
				if !strings.Contains(s, tc.want) || !strings.Contains(s, tc.flag) || strings.Count(s, "\n") > 0 {
					t.Fatalf("klab %s without %s: want one line naming it and %q, got:\n%s", strings.Join(args, " "), tc.want, tc.flag, s)
				}
				if nss, _ := netns.List(lab); len(nss) > 0 {
					t.Fatalf("namespaces created before the refusal: %v", nss)
				}
				if ents, _ := os.ReadDir(state); len(ents) > 0 {
					t.Fatalf("state written before the refusal: %v", ents)
				}
			}
		})
	}
}
