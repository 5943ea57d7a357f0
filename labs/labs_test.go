package labs

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

// plannedVerbs are the verbs labs may use (docs/lab-format.md); the real
// command tree is checked by 'klab lab lint' in the cmd layer.
var plannedVerbs = map[string]bool{"node": true, "pod": true, "exec": true, "show": true, "ping": true, "serve": true, "curl": true, "service": true, "trace": true, "traceroute": true, "destroy": true, "apply": true, "delete": true, "get": true, "policy": true, "namespace": true, "agent": true, "proxy-mode": true, "calico": true}

func TestEmbeddedLabs(t *testing.T) {
	names := Names()
	want := []string{"calico", "cluster-dns", "cni-plugins", "flannel-control-plane", "flannel-crossnode", "host-gw", "networkpolicy", "pod-egress", "pod-netns", "pod-same-node", "service-clusterip", "service-nftables", "service-nodeport"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("embedded labs %q, want %q", names, want)
	}
	all, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		if want := "labs/" + l.Name + ".md"; l.File != want {
			t.Errorf("lab %s lives in %s: the file must be named after the lab", l.Name, l.File)
		}
		err := Lint(l, func(args []string) error {
			if !plannedVerbs[args[0]] {
				return fmt.Errorf("verb %q is not one labs may use", args[0])
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		for _, p := range l.Prerequisites {
			if _, ok := Embedded(p); !ok {
				t.Errorf("%s: prerequisite %q is not a lab", l.Name, p)
			}
		}
		if len(l.Checks()) == 0 {
			t.Errorf("%s has no checks", l.Name)
		}
	}
	if _, err := Load("no-such-lab"); err == nil || !strings.Contains(err.Error(), "klab labs") {
		t.Errorf("Load of an unknown lab: %v", err)
	}
	if _, ok := Embedded("../go"); ok {
		t.Error("Embedded accepts a path")
	}
}

var updateDocs = flag.Bool("update", false, "rewrite docs/labs.md")

// TestDocsIndex keeps docs/labs.md in step with the embedded labs; run
// 'go test ./labs -run DocsIndex -update' after changing a lab's front matter.
func TestDocsIndex(t *testing.T) {
	all, err := List()
	if err != nil {
		t.Fatal(err)
	}
	want := IndexMarkdown(all)
	const path = "../docs/labs.md"
	if *updateDocs {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with: go test ./labs -run DocsIndex -update)", err)
	}
	if string(got) != want {
		t.Errorf("docs/labs.md is out of date: run 'go test ./labs -run DocsIndex -update'")
	}
}
