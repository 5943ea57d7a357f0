package labs

import (
	"fmt"
	"strings"
	"testing"
)

func TestOutputFoldsLongRulePayloads(t *testing.T) {
	var long strings.Builder
	long.WriteString("ip link add cni0 type bridge\n")
	long.WriteString("ip netns exec klab.demo.node1 iptables-restore --wait <<'EOF'\n*filter\n:KUBE-FORWARD - [0:0]\n")
	for i := range 20 {
		fmt.Fprintf(&long, "-A KUBE-FORWARD -m comment --comment \"klab:demo %d\" -j ACCEPT\n", i)
	}
	long.WriteString("COMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\nEOF\nnode node1: done\n")
	short := "ip netns exec klab.demo.node2 iptables-restore --noflush <<'EOF'\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\nEOF\n"

	var b strings.Builder
	r := &Renderer{W: &b}
	w := r.Output()
	// Written in odd pieces, as a pipe delivers it.
	in := long.String() + short
	for len(in) > 0 {
		n := min(7, len(in))
		w.Write([]byte(in[:n]))
		in = in[n:]
	}
	got := b.String()
	want := "  ip link add cni0 type bridge\n" +
		"  ip netns exec klab.demo.node1 iptables-restore --wait <<'EOF' ... (folded: loads 21 rules into the filter and nat tables; read them with 'klab show node1')\n" +
		"  node node1: done\n" +
		"  ip netns exec klab.demo.node2 iptables-restore --noflush <<'EOF'\n  *nat\n  -A POSTROUTING -j MASQUERADE\n  COMMIT\n  EOF\n"
	if got != want {
		t.Errorf("folded output:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	r.AllRules = true
	io := r.Output()
	io.Write([]byte(long.String()))
	if !strings.Contains(b.String(), "klab:demo 19") || strings.Contains(b.String(), "folded") {
		t.Errorf("AllRules still folds:\n%s", b.String())
	}
}
