package main

import (
	"strings"
	"testing"
)

// FuzzValidateKlabArgs: the words of a lab command (or of a command line),
// checked against the real verbs, flags and argument rules without running
// anything. Never panics, never leaves the global flags changed, and a
// rejection is a message on one line.
func FuzzValidateKlabArgs(f *testing.F) {
	for _, s := range []string{
		"node add node1", "node add node2 --ip 192.168.1.102 --pod-cidr 10.244.2.0/24", "pod add pod-a --node node1 --label app=web",
		"exec node1 -- ip route", "ping pod-a pod-b -c 3", "serve pod-a --port 99999", "curl pod-a http://pod-b:8080/",
		"trace node1:eth0 --filter 'vni 1'", "destroy --all --prefix rl", "list -o json", "nodez", "--explain labs",
		"node add --ip", "pod add p --label =x", "run x --step=maybe", "-- --", "lab check x --no-retry",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Fields(s)
		if len(args) == 0 {
			return
		}
		saved := globals
		err := validateKlabArgs(args)
		if globals != saved {
			t.Fatalf("%q changed the global flags", s)
		}
		if err != nil && strings.Contains(strings.TrimSpace(err.Error()), "\n") {
			t.Fatalf("%q: error on several lines: %q", s, err)
		}
	})
}
