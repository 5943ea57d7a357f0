package main

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// commandLine is how the commands of a plan start (see plan.Op.Command).
var commandLine = regexp.MustCompile(`^(ip|bridge|iptables|iptables-restore|sysctl|kill|mkdir|rm|printf) `)

// 'klab repair --explain' prints exactly what it changed: nothing on a
// healthy lab; after one peer ARP entry is deleted by hand, the one
// 'neigh replace' that puts it back; after one KUBE-SERVICES rule is
// deleted, one iptables-restore that rewrites that chain only; and
// nothing again once repaired.
func TestRepairExplainIsExact(t *testing.T) {
	k := newCLI(t)
	requireTools(t, "ip", "iptables", "iptables-save")
	lab := testutil.LabName(t, "rprep")
	k.destroyOnCleanup(lab)
	for _, args := range [][]string{
		{"node", "add", "node1"},
		{"node", "add", "node2"},
		{"pod", "add", "pa", "--node", "node1", "--label", "app=web"},
		{"pod", "add", "pb", "--node", "node2", "--label", "app=web"},
		{"service", "add", "web", "--port", "80", "--target-port", "8080", "--selector", "app=web"},
	} {
		k.must(append(args, "--lab", lab)...)
	}
	node1, node2 := "klab."+lab+".node1", "klab."+lab+".node2"

	// explained returns the command lines repair --explain printed after
	// "# equivalent commands:", with heredocs joined into their command.
	repair := func(when string) (cmds []string) {
		t.Helper()
		out := k.must("repair", lab, "--explain")
		_, after, found := strings.Cut(out, "# equivalent commands:\n")
		if !found {
			return nil
		}
		lines := strings.Split(after, "\n")
		for i := 0; i < len(lines); i++ {
			l := lines[i]
			if !commandLine.MatchString(l) {
				continue // comments (the state file), repair's report
			}
			if strings.HasSuffix(l, "<<'EOF'") {
				for i++; i < len(lines) && lines[i] != "EOF"; i++ {
					l += "\n" + lines[i]
				}
			}
			cmds = append(cmds, l)
		}
		if len(cmds) == 0 {
			t.Errorf("%s: repair --explain printed '# equivalent commands:' and no command:\n%s", when, out)
		}
		return cmds
	}

	if c := repair("healthy lab"); len(c) > 0 {
		t.Fatalf("repair --explain of a healthy lab printed kernel commands:\n%s", strings.Join(c, "\n"))
	}

	// One ARP entry of node1 for node2's VTEP.
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(tool(t, "ip", "-n", node2, "-j", "link", "show", "flannel.1"), &links); err != nil || len(links) != 1 {
		t.Fatalf("node2's flannel.1: %v %v", links, err)
	}
	if out, err := exec.Command("ip", "-n", node1, "neigh", "del", "10.244.2.0", "dev", "flannel.1").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh del: %v: %s", err, out)
	}
	want := "ip -n " + node1 + " neigh replace 10.244.2.0 lladdr " + links[0].Address + " dev flannel.1 nud permanent"
	if c := repair("after ip neigh del"); len(c) != 1 || c[0] != want {
		t.Errorf("repair --explain after deleting node1's ARP entry for node2 printed:\n%s\nwant exactly:\n%s", strings.Join(c, "\n"), want)
	}
	if out := string(tool(t, "ip", "-n", node1, "neigh", "show", "10.244.2.0", "dev", "flannel.1")); !strings.Contains(out, links[0].Address) || !strings.Contains(out, "PERMANENT") {
		t.Errorf("after repair, node1's ARP entry for node2 is %q", out)
	}
	if c := repair("second repair"); len(c) > 0 {
		t.Errorf("a second repair printed kernel commands:\n%s", strings.Join(c, "\n"))
	}

	// One rule of KUBE-SERVICES in node1: the Service's ClusterIP rule.
	saveNat := func(ns string) string { // without counters and the date comments
		var b strings.Builder
		for _, l := range strings.Split(string(tool(t, "ip", "netns", "exec", ns, "iptables-save", "-t", "nat")), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(chainCounters.ReplaceAllString(l, "") + "\n")
			}
		}
		return b.String()
	}
	natBefore := saveNat(node1)
	m := regexp.MustCompile(`(?m)^-A KUBE-SERVICES .* (-j KUBE-SVC-\S+)$`).FindStringSubmatch(natBefore)
	if m == nil {
		t.Fatalf("node1 has no KUBE-SERVICES rule for the service:\n%s", natBefore)
	}
	if out, err := exec.Command("ip", "netns", "exec", node1, "iptables", "-w", "-t", "nat", "-D", "KUBE-SERVICES", "1").CombinedOutput(); err != nil {
		t.Fatalf("iptables -D KUBE-SERVICES 1: %v: %s", err, out)
	}
	if saveNat(node1) == natBefore {
		t.Fatal("deleting rule 1 of KUBE-SERVICES changed nothing")
	}
	c := repair("after deleting a KUBE-SERVICES rule")
	if len(c) != 1 || !strings.HasPrefix(c[0], "ip netns exec "+node1+" iptables-restore") {
		t.Fatalf("repair --explain after deleting a KUBE-SERVICES rule in node1 printed:\n%s\nwant one iptables-restore in node1", strings.Join(c, "\n"))
	}
	var chains, tables []string
	for _, l := range strings.Split(c[0], "\n")[1:] {
		switch {
		case strings.HasPrefix(l, "*"):
			tables = append(tables, l)
		case strings.HasPrefix(l, ":"):
			chains = append(chains, strings.Fields(l)[0])
		case strings.HasPrefix(l, "-A "):
			if f := strings.Fields(l); f[1] != "KUBE-SERVICES" {
				t.Errorf("the restore writes a rule of chain %s:\n%s", f[1], c[0])
			}
		case l == "COMMIT":
		default:
			t.Errorf("unexpected line %q in the restore:\n%s", l, c[0])
		}
	}
	if strings.Join(tables, " ") != "*nat" || strings.Join(chains, " ") != ":KUBE-SERVICES" || !strings.Contains(c[0], "--noflush") {
		t.Errorf("the restore does not rewrite nat/KUBE-SERVICES only (tables %v, chains %v):\n%s", tables, chains, c[0])
	}
	if !regexp.MustCompile(`(?m)^-A KUBE-SERVICES .* ` + m[1] + `$`).MatchString(c[0]) {
		t.Errorf("the restore does not put back the rule that jumps %q:\n%s", m[1], c[0])
	}
	if got := saveNat(node1); got != natBefore {
		t.Errorf("after repair node1's nat table is not what it was:\n%s\nwant:\n%s", got, natBefore)
	}
	if c := repair("repair after the rule was put back"); len(c) > 0 {
		t.Errorf("a second repair printed kernel commands:\n%s", strings.Join(c, "\n"))
	}
}
