package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// TestPodAddCNI drives 'klab pod add --cni' through the CLI: --explain
// shows each plugin's call with the CNI_* environment and the result JSON
// holding the address that ip then finds on the pod's eth0; --ip is
// refused in one sentence; 'klab pod del' (DEL) and 'klab destroy' leave
// nothing.
func TestPodAddCNI(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("/usr/lib/cni/bridge"); err != nil {
		t.Skip("needs the CNI plugins: apt-get install containernetworking-plugins")
	}
	t.Parallel()
	c := newCLI(t)
	lab := testutil.LabName(t, "kt")
	c.destroyOnCleanup(lab)
	c.must("--lab", lab, "node", "add", "node1")
	out := c.must("--lab", lab, "pod", "add", "cni-a", "--node", "node1", "--cni", "--explain")
	for _, want := range []string{
		"CNI_COMMAND=ADD CNI_CONTAINERID=cni-a CNI_NETNS=/run/netns/klab." + lab + ".cni-a CNI_IFNAME=eth0",
		"/usr/lib/cni/loopback <", "/usr/lib/cni/bridge <", "/usr/lib/cni/portmap)",
		`"address": "10.244.1.2/24"`, `"gateway": "10.244.1.1"`,
		"pod cni-a: 10.244.1.2 on node node1",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("klab pod add --cni --explain lacks %q:\n%s", want, out)
		}
	}
	if b, err := exec.Command("ip", "-n", "klab."+lab+".cni-a", "-4", "-o", "addr", "show", "dev", "eth0").Output(); err != nil || !strings.Contains(string(b), "10.244.1.2/24") {
		t.Fatalf("ip addr in cni-a: %s, %v", b, err)
	}
	r := c.run(nil, "--lab", lab, "pod", "add", "cni-b", "--node", "node1", "--cni", "--ip", "10.244.1.9")
	if r.code == 0 || !strings.Contains(r.out, "leave --ip out") || strings.Count(strings.TrimSpace(r.out), "\n") > 0 {
		t.Fatalf("--cni --ip: exit %d, want one sentence:\n%s", r.code, r.out)
	}
	out = c.must("--lab", lab, "pod", "del", "cni-a", "--explain")
	if !strings.Contains(out, "CNI_COMMAND=DEL") {
		t.Fatalf("klab pod del of a CNI pod ran no DEL:\n%s", out)
	}
	if b, _ := exec.Command("ip", "-n", "klab."+lab+".node1", "-o", "link", "show", "master", "cni0").Output(); len(strings.TrimSpace(string(b))) != 0 {
		t.Fatalf("cni0 still has ports after DEL:\n%s", b)
	}
	c.must("--lab", lab, "pod", "add", "cni-c", "--node", "node1", "--cni")
	c.must("destroy", lab)
	if l := c.leftovers(lab); len(l) > 0 {
		t.Fatalf("left after destroy: %v", l)
	}
}
