package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// A manifest with a namespace, a Deployment, a NodePort Service with named
// target ports and pods in another namespace: 'klab apply' builds it (the
// pods' network namespaces named klab.<lab>[.<namespace>].<pod>, read back
// with ip netns), the pods answer on their containerPorts through the
// Service, the selector stays inside the service's namespace, 'klab get -o
// json' is a Kubernetes List with status, and 'klab delete -f' removes it
// all; an invalid manifest changes nothing.
func TestApplyGetDelete(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "ob")
	k.destroyOnCleanup(lab)
	k.must("--lab", lab, "node", "add", "node1")
	k.must("--lab", lab, "node", "add", "node2")
	out := k.must("--lab", lab, "apply", "-f", "testdata/manifests/web.yaml")
	for _, want := range []string{"namespace/other created", "pod/other/client created", "service/web created"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s", want, out)
		}
	}
	nss, _ := netns.List(lab)
	for _, want := range []string{netns.Name(lab, "other.client"), netns.Name(lab, "other.web-0")} {
		if !slices.Contains(nss, want) {
			t.Errorf("no namespace %s among %v", want, nss)
		}
	}
	// get -o json: a List of Pods with status.
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Kind     string `json:"kind"`
			Metadata struct{ Name, Namespace string }
			Spec     struct{ NodeName string }
			Status   struct{ PodIP string }
		}
	}
	if err := json.Unmarshal(k.stdout(t, "--lab", lab, "get", "pods", "-A", "-o", "json"), &list); err != nil {
		t.Fatal(err)
	}
	var web []string
	for _, it := range list.Items {
		if it.Kind != "Pod" || it.Status.PodIP == "" || it.Spec.NodeName == "" {
			t.Errorf("item %+v", it)
		}
		if it.Metadata.Namespace == "default" {
			web = append(web, it.Metadata.Name)
		}
	}
	if list.Kind != "List" || len(list.Items) != 5 || len(web) != 3 {
		t.Fatalf("get pods -A -o json: kind %s, %d items, default pods %v", list.Kind, len(list.Items), web)
	}
	// Real traffic: the Service (named targetPort http -> 8080) spreads
	// over the three Deployment pods and never reaches other/web-0, which
	// has the label but lives in another namespace.
	seen := map[string]bool{}
	for range 12 {
		r := k.run(nil, "--lab", lab, "curl", "other/client", "http://web.default:80/")
		if r.code != 0 {
			r = k.run(nil, "--lab", lab, "curl", "other/client", "http://"+clusterIP(t, k, lab)+"/")
		}
		if r.code != 0 {
			t.Fatalf("curl through the service: %s", r.out)
		}
		seen[strings.SplitN(strings.TrimSpace(r.out), "\n", 2)[0]] = true
	}
	for name := range seen {
		if !slices.Contains(web, name) {
			t.Errorf("the service reached %q, not one of its pods %v", name, web)
		}
	}
	// NodePort from the external host.
	if r := k.run(nil, "--lab", lab, "curl", "external", "http://192.168.1.101:30000/"); r.code != 0 {
		t.Errorf("NodePort: %s", r.out)
	}
	// An invalid manifest changes nothing.
	before := k.must("--lab", lab, "get", "pods", "-A", "-o", "json")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: fine}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 70000}]}\n"), 0o644)
	r := k.run(nil, "--lab", lab, "apply", "-f", bad)
	if r.code == 0 || !strings.Contains(r.out, "document 2") || !strings.Contains(r.out, "70000") {
		t.Errorf("bad manifest: exit %d\n%s", r.code, r.out)
	}
	if after := k.must("--lab", lab, "get", "pods", "-A", "-o", "json"); after != before {
		t.Error("a rejected apply changed the pods")
	}
	// delete -f removes every object and network namespace it made.
	k.must("--lab", lab, "delete", "-f", "testdata/manifests/web.yaml")
	nss, _ = netns.List(lab)
	if len(nss) != 4 { // underlay, external, node1, node2
		t.Errorf("after delete -f: %v", nss)
	}
}

func clusterIP(t *testing.T, k *cli, lab string) string {
	var svc struct {
		Items []struct{ Spec struct{ ClusterIP string } }
	}
	if err := json.Unmarshal(k.stdout(t, "--lab", lab, "get", "svc", "-o", "json"), &svc); err != nil || len(svc.Items) == 0 {
		t.Fatalf("get svc: %v", err)
	}
	return svc.Items[0].Spec.ClusterIP
}

// Readiness: pods with a readinessProbe start unready and become ready
// when the probe (an HTTP GET from the node, as the kubelet's) passes;
// when a pod's server stops, the probe fails and the pod leaves the
// Service's endpoints — in the kernel's rules (iptables-save on the node)
// and for real traffic — and comes back once the server runs again.
// 'klab pod set-ready' does the same by hand.
func TestReadiness(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "obr")
	k.destroyOnCleanup(lab)
	k.must("--lab", lab, "node", "add", "node1")
	k.must("--lab", lab, "apply", "-f", "testdata/manifests/ready.yaml")
	pods := func() map[string]string { // name -> IP, ready ones
		var list struct {
			Items []struct {
				Metadata struct{ Name string }
				Status   struct {
					PodIP      string
					Conditions []struct{ Type, Status string }
				}
			}
		}
		if err := json.Unmarshal(k.stdout(t, "--lab", lab, "get", "pods", "-o", "json"), &list); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, it := range list.Items {
			for _, c := range it.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					out[it.Metadata.Name] = it.Status.PodIP
				}
			}
		}
		return out
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting: %s", what)
			}
		}
	}
	waitFor("both pods ready", func() bool { return len(pods()) == 2 })
	ready := pods()
	var victim, other string
	for name := range ready {
		if victim == "" {
			victim = name
		} else {
			other = name
		}
	}
	nodeRules := func() string {
		out, _ := exec.Command("ip", "netns", "exec", netns.Name(lab, "node1"), "iptables-save", "-t", "nat").Output()
		return string(out)
	}
	k.must("--lab", lab, "serve", victim, "--port", "8080", "--stop")
	waitFor(victim+" unready after its server stopped", func() bool { _, ok := pods()[victim]; return !ok })
	if rules := nodeRules(); strings.Contains(rules, ready[victim]+":8080") || !strings.Contains(rules, ready[other]+":8080") {
		t.Errorf("node1's rules after %s went unready:\n%s", victim, rules)
	}
	for range 6 {
		if r := k.run(nil, "--lab", lab, "curl", "node1", "http://"+clusterIP(t, k, lab)+"/"); r.code != 0 || !strings.HasPrefix(r.out, other) {
			t.Fatalf("traffic to the service while %s is unready: %s", victim, r.out)
		}
	}
	k.must("--lab", lab, "serve", victim, "--port", "8080")
	waitFor(victim+" ready again", func() bool { _, ok := pods()[victim]; return ok })
	// By hand.
	k.must("--lab", lab, "pod", "set-ready", other, "false")
	if rules := nodeRules(); strings.Contains(rules, ready[other]+":8080") {
		t.Errorf("set-ready false left %s in the rules", other)
	}
	if r := k.run(nil, "--lab", lab, "pod", "set-ready", other, "maybe"); r.code == 0 || !strings.Contains(r.out, "neither true nor false") {
		t.Errorf("set-ready maybe: %s", r.out)
	}
}

// stdout runs klab and returns its standard output only (a command may
// say on stderr that it waits for the lab's lock).
func (c *cli) stdout(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := c.cmd(nil, args...).Output()
	if err != nil {
		t.Fatalf("klab %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// A NetworkPolicy applied from a manifest is enforced by the nodes' rules:
// the pods it admits (namespaceSelector AND podSelector) connect, others
// are dropped, 'klab policy explain' names the verdict and the kernel
// confirms it (the drop rule's counter), and deleting the policy lets
// everyone in again.
func TestApplyNetworkPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	k := newCLI(t)
	lab := testutil.LabName(t, "obp")
	k.destroyOnCleanup(lab)
	k.must("--lab", lab, "node", "add", "node1")
	k.must("--lab", lab, "node", "add", "node2")
	k.must("--lab", lab, "apply", "-f", "testdata/manifests/web.yaml")
	k.must("--lab", lab, "pod", "add", "intruder", "--node", "node2")
	if out := k.must("--lab", lab, "apply", "-f", "testdata/manifests/np.yaml"); !strings.Contains(out, "networkpolicy/web-allow-blue-clients created") {
		t.Fatalf("apply: %s", out)
	}
	var list struct {
		Items []struct {
			Kind     string
			Metadata struct{ Name string }
			Status   struct{ PodIP string }
		}
	}
	json.Unmarshal(k.stdout(t, "--lab", lab, "get", "pods", "-o", "json"), &list)
	var web string
	for _, it := range list.Items {
		if strings.HasPrefix(it.Metadata.Name, "web-") {
			web = it.Metadata.Name
		}
	}
	if out := k.must("--lab", lab, "policy", "explain", "other/client", web+":8080"); !strings.Contains(out, "allowed by default/web-allow-blue-clients ingress rule 1") || !strings.Contains(out, "(confirmed") {
		t.Errorf("explain allowed: %s", out)
	}
	for _, from := range []string{"intruder", "other/web-0"} {
		out := k.must("--lab", lab, "policy", "explain", from, web+":8080")
		if !strings.Contains(out, "dropped at ") || !strings.Contains(out, "confirmed: drop rule counter +") {
			t.Errorf("explain %s: %s", from, out)
		}
		if r := k.run(nil, "--lab", lab, "curl", from, "http://"+web+":8080/", "--timeout", "500ms"); r.code == 0 {
			t.Errorf("%s reached %s through the policy: %s", from, web, r.out)
		}
	}
	if r := k.run(nil, "--lab", lab, "curl", "other/client", "http://"+web+":8080/"); r.code != 0 {
		t.Errorf("other/client is refused: %s", r.out)
	}
	// The journey of a dropped probe names the verdict, confirmed by the
	// drop rule's counter it raised.
	r := k.run(nil, "--lab", lab, "trace", "journey", "intruder", web, "--port", "8080")
	if !strings.Contains(r.out, "policy: dropped at ") || !strings.Contains(r.out, "(confirmed: drop rule ") {
		t.Errorf("journey of a dropped probe:\n%s", r.out)
	}
	out := string(k.stdout(t, "--lab", lab, "get", "netpol", "-o", "json"))
	if !strings.Contains(out, `"kind": "NetworkPolicy"`) || !strings.Contains(out, `"apiVersion": "networking.k8s.io/v1"`) {
		t.Errorf("get netpol -o json:\n%s", out)
	}
	if r := k.run(nil, "--lab", lab, "repair", "--explain"); strings.Contains(r.out, "# equivalent commands:") {
		t.Errorf("repair of a healthy lab with policies ran commands:\n%s", r.out)
	}
	k.must("--lab", lab, "delete", "-f", "testdata/manifests/np.yaml")
	if r := k.run(nil, "--lab", lab, "curl", "intruder", "http://"+web+":8080/"); r.code != 0 {
		t.Errorf("after delete -f, intruder is still refused: %s", r.out)
	}
}
