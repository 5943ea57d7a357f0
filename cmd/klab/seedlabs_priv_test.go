package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/labs"
)

// gradeLab runs 'klab lab check' on lab instance inst of name and returns
// the failed checks, in order.
func gradeLab(t *testing.T, c *cli, name, inst string) []labs.CheckResult {
	t.Helper()
	r := c.run(nil, "lab", "check", name, "--lab", inst, "--allow-privileged", "-o", "json")
	var all, failed []labs.CheckResult
	if err := json.Unmarshal([]byte(r.out[strings.Index(r.out, "["):]), &all); err != nil {
		t.Fatalf("klab lab check -o json: %v\n%s", err, r.out)
	}
	for _, cr := range all {
		if !cr.Passed {
			failed = append(failed, cr)
		}
	}
	if (r.code == 0) != (len(failed) == 0) {
		t.Fatalf("klab lab check exit %d with %d failed checks\n%s", r.code, len(failed), r.out)
	}
	return failed
}

// TestSeedLabStepsFailWhenBroken runs the labs that teach seed 003's and
// 001's demonstrations, then breaks what each new step teaches and expects
// 'klab lab check' to name the check that teaches it.
func TestSeedLabStepsFailWhenBroken(t *testing.T) {
	c := newCLI(t)
	for _, tc := range []struct {
		lab     string
		breakIt []string // a klab command that undoes the lesson
		first   string   // the first failing check's command contains this
		why     string   // its reason contains this
	}{
		// A pod built by hand, its default route missing.
		{"pod-netns", []string{"exec", "node1", "--", "sh", "-c", "ip -n klab.$KLAB_LAB.pod-b route del default"},
			"pod-b route'", "default via 10.244.1.1 dev eth0"},
		// host-local's file of pod-a's address gone.
		{"pod-netns", []string{"exec", "node1", "--", "sh", "-c", "rm ${KLAB_STATE_DIR:-/run/klab}/$KLAB_LAB/ipam/node1/10.244.1.2"},
			"grep . *", "10\\.244\\.1\\.2:pod-a"},
		// The sticky Service without affinity.
		{"service-clusterip", []string{"exec", "node1", "--", "sh", "-c", "iptables-save -t nat | grep -v -- '-m recent --rcheck' | iptables-restore"},
			"http://sticky/", "web-[1-6] +30"},
		// web-2 left unready: it is no endpoint, the curl loop misses it.
		{"service-clusterip", []string{"pod", "set-ready", "web-2", "false"},
			"http://web/", "web-2"},
		// The REJECT of the Service without endpoints deleted on node2.
		{"service-nodeport", []string{"exec", "node2", "--", "sh", "-c", "iptables-save -t filter | grep -v 'default/empty has no endpoints' | iptables-restore"},
			"klab curl node2 http://empty/", "connection refused"},
	} {
		t.Run(tc.lab, func(t *testing.T) {
			inst := testutil.LabName(t, "sfsd")
			c.destroyOnCleanup(inst)
			if r := c.run(nil, "run", tc.lab, "--lab", inst, "--yes", "--allow-privileged"); r.code != 0 {
				t.Fatalf("klab run %s: exit %d\n%s", tc.lab, r.code, r.out)
			}
			if f := gradeLab(t, c, tc.lab, inst); len(f) > 0 {
				t.Fatalf("lab check of the lab as built: %d failed, first %s: %s", len(f), f[0].Command, f[0].Reason)
			}
			// The lab's commands get the state directory from the runner as
			// $KLAB_STATE_DIR; so does this one.
			if r := c.run([]string{"KLAB_STATE_DIR=" + c.state}, append([]string{"--lab", inst}, tc.breakIt...)...); r.code != 0 {
				t.Fatalf("%q: exit %d\n%s", strings.Join(tc.breakIt, " "), r.code, r.out)
			}
			f := gradeLab(t, c, tc.lab, inst)
			if len(f) == 0 {
				t.Fatalf("after %q every check still passes", strings.Join(tc.breakIt, " "))
			}
			if !strings.Contains(f[0].Command, tc.first) || !strings.Contains(f[0].Reason+f[0].Output, strings.ReplaceAll(tc.why, "\\", "")) && !strings.Contains(f[0].Reason, tc.why) {
				t.Errorf("after %q the first failed check is %q: %s", strings.Join(tc.breakIt, " "), f[0].Command, f[0].Reason)
			}
		})
	}
}
