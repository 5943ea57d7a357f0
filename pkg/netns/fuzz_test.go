package netns

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzNames: lab, node and pod names from the command line become file
// names under /run/netns and parts of interface names. Valid names never
// escape /run/netns, always parse back, and stay within their lengths;
// Parse accepts exactly the names Name makes.
func FuzzNames(f *testing.F) {
	for _, s := range [][2]string{{"demo", "node1"}, {"a", "b"}, {"flannel-crossnode", "pod-a"}, {"x.y", "z"}, {"../etc", "passwd"}, {"Demo", "Node"}, {"-a", "b-"}, {"a", "underlay"}, {strings.Repeat("a", 33), "n"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, lab, obj string) {
		labErr, objErr := ValidateLab(lab), ValidateObject("node", obj)
		for _, err := range []error{labErr, objErr} {
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		}
		if labErr == nil && (len(lab) > 32 || strings.ContainsAny(lab, "./ ")) {
			t.Fatalf("lab %q accepted", lab)
		}
		if objErr == nil && (len(obj) > 63 || strings.ContainsAny(obj, "./ ")) {
			t.Fatalf("object %q accepted", obj)
		}
		name := Name(lab, obj)
		l, o, ok := Parse(name)
		if labErr == nil && objErr == nil {
			if !ok || l != lab || o != obj {
				t.Fatalf("Name(%q, %q) = %q parses as %q %q %v", lab, obj, name, l, o, ok)
			}
			if filepath.Dir(Path(name)) != RunDir || filepath.Base(Path(name)) != name {
				t.Fatalf("%q escapes %s", name, RunDir)
			}
		}
		// Whatever Parse accepts (any file name found in /run/netns) is a
		// valid lab and object (a namespaced pod's object is two valid
		// names joined by a dot), and is exactly Name of them.
		if l, o, ok := Parse(lab); ok {
			valid := ValidateObject("node", o)
			if ns, pod, dotted := strings.Cut(o, "."); dotted {
				valid = errors.Join(ValidateObject("namespace", ns), ValidateObject("pod", pod))
			}
			if ValidateLab(l) != nil || valid != nil || Name(l, o) != lab {
				t.Fatalf("Parse(%q) = %q %q", lab, l, o)
			}
		}
		// A namespaced pod's key names the namespace of that pod.
		if labErr == nil && objErr == nil {
			if l, o, ok := Parse(Name(lab, "kube-system/"+obj)); !ok || l != lab || o != "kube-system."+obj {
				t.Fatalf("pod kube-system/%s of lab %s: Parse = %q %q %v", obj, lab, l, o, ok)
			}
		}
	})
}
