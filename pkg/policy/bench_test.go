package policy_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/klab-dev/klab/pkg/policy"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// benchState is 300 pods in 10 namespaces (30 each: app a0..a9 three
// pods apiece, role r0..r2) on one node, and 1,000 policies: policy j in
// namespace j%10 selects the three pods of app a((j/10)%10) and admits on
// TCP port 80+j%50 (1) its namespace's pods of role r(j%3), (2) every pod
// of namespace (j+1)%10, (3) monitoring pods of any namespace; every
// fourth also isolates egress, to 10.0.0.0/8 except one /24. Each pod is
// selected by about ten policies: ~6,000 rules over 45 sets.
func benchState(extra ...policy.Pod) policy.State {
	st := policy.State{NodeIPs: map[string][]netip.Addr{"node1": {netip.MustParseAddr("192.168.1.101")}}}
	for n := range 10 {
		name := fmt.Sprintf("ns%d", n)
		st.Namespaces = append(st.Namespaces, policy.Namespace{Name: name, Labels: map[string]string{"team": fmt.Sprintf("t%d", n%3)}})
	}
	for i := range 300 {
		st.Pods = append(st.Pods, policy.Pod{
			Namespace: fmt.Sprintf("ns%d", i/30), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("a%d", (i%30)/3), "role": fmt.Sprintf("r%d", i%3)},
			IP:     netip.AddrFrom4([4]byte{10, 244, byte(1 + i/250), byte(1 + i%250)}), Node: "node1",
			Ports: []policy.Port{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		})
	}
	st.Pods = append(st.Pods, extra...)
	for j := range 1000 {
		st.Policies = append(st.Policies, benchPolicy(j, int32(80+j%50)))
	}
	return st
}

func benchPolicy(j int, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np%d", j), Namespace: fmt.Sprintf("ns%d", j%10)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", (j/10)%10)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": fmt.Sprintf("r%d", j%3)}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: fmt.Sprintf("ns%d", (j+1)%10)}}},
					{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"monitoring": "true"}}},
				},
			}},
		},
	}
	if j%4 == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{fmt.Sprintf("10.%d.0.0/24", j%5)}}},
		}}}
	}
	return np
}

// monitor is the pod of the "adding one pod" benchmark: a peer of all
// 1,000 policies (monitoring=true) and itself selected by the ten policies
// of ns0 that select app a0.
var monitor = policy.Pod{Namespace: "ns0", Name: "monitor", Labels: map[string]string{"app": "a0", "role": "r0", "monitoring": "true"},
	IP: netip.MustParseAddr("10.244.9.9"), Node: "node1"}

func compile(b *testing.B, st policy.State) *policy.Plan {
	p, err := policy.Compile(st, policy.CompileOptions{Lab: "bench", Node: "node1"})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// run execs a rule loader inside ns with input on stdin.
func run(b *testing.B, ns, input string, argv ...string) {
	err := netns.Do(ns, func() error {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader(input)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

func peakMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkPolicies measures NetworkPolicy enforcement in one node's
// namespace, beside a baseline in the same run:
//
//	program/klab      1,000 policies over 300 pods on a fresh node: compile,
//	                  PlanApply, the applier (sysctl, ipset restore,
//	                  iptables-restore --noflush, FORWARD jump)
//	program/baseline  the same ipset and iptables-restore texts loaded
//	                  by hand: ipset restore + iptables-restore --noflush
//	add-pod/klab      one pod joins, a peer of all 1,000 policies and
//	                  selected by ten: compile, diff, apply
//	change/klab       one policy's port changes: compile, diff, apply
//	change/baseline   the same change as a bare iptables-restore of the
//	                  rewritten chains
//	*/klab-incremental  add-pod and change with a policy.Compiler that
//	                  compiled the state before (a long-running agent):
//	                  only the changed policy and the chains of the pods
//	                  it selects are recompiled
//
// Each reports ms per operation; program reports ratio (klab/baseline,
// both means of the same run), rules and peak-MB (this process's peak
// RSS, VmHWM).
func BenchmarkPolicies(b *testing.B) {
	testutil.RequireRoot(b)
	for _, tool := range []string{"ipset", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s (scripts/install-deps.sh installs it)", tool)
		}
	}
	lab := testutil.LabName(b, "npbench")
	st := benchState()
	next := compile(b, st)
	sets := policy.RenderIPSets(nil, next)
	rules := policy.RenderIPTables(nil, next)
	nrules := strings.Count(rules, "\n-A ")
	fresh := func(i int) string {
		ns := netns.Name(lab, fmt.Sprintf("n%d", i))
		netns.Delete(ns)
		if _, err := netns.Ensure(ns); err != nil {
			b.Fatal(err)
		}
		return ns
	}
	var base, klab time.Duration
	b.Run("program/baseline", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			ns := fresh(i)
			t0 := time.Now()
			run(b, ns, sets, "ipset", "restore")
			run(b, ns, rules, "iptables-restore", "--noflush", "--wait")
			total += time.Since(t0)
			netns.Delete(ns)
		}
		base = total / time.Duration(b.N)
		b.ReportMetric(float64(base.Microseconds())/1000, "ms/op")
		b.ReportMetric(float64(nrules), "rules")
	})
	b.Run("program/klab", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			ns := fresh(i)
			t0 := time.Now()
			a := &plan.Applier{Discard: true}
			p := policy.PlanApply(ns, nil, compile(b, benchState()), nil)
			if err := a.Apply(p); err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			a.Close()
			netns.Delete(ns)
		}
		klab = total / time.Duration(b.N)
		b.ReportMetric(float64(klab.Microseconds())/1000, "ms/op")
		if base > 0 {
			b.ReportMetric(float64(klab)/float64(base), "ratio")
		}
		b.ReportMetric(peakMB(), "peak-MB")
	})

	// The incremental changes, on one programmed node.
	ns := fresh(0)
	defer netns.Delete(ns)
	a := &plan.Applier{Discard: true}
	defer a.Close()
	if err := a.Apply(policy.PlanApply(ns, nil, next, nil)); err != nil {
		b.Fatal(err)
	}
	withPod := benchState(monitor)
	changed := benchState()
	changed.Policies[0] = benchPolicy(0, 8080)
	// With a Compiler the way a long-running agent keeps one: it has
	// compiled the current state before the change.
	var cc *policy.Compiler
	step := func(b *testing.B, to policy.State) {
		var total time.Duration
		compileTo := func(s policy.State) *policy.Plan {
			if cc == nil {
				return compile(b, s)
			}
			p, err := cc.Compile(s, policy.CompileOptions{Lab: "bench", Node: "node1"})
			if err != nil {
				b.Fatal(err)
			}
			return p
		}
		for i := 0; i < b.N; i++ {
			if cc != nil {
				compileTo(st) // the agent's view before the change, untimed
			}
			t0 := time.Now()
			after := compileTo(to)
			if err := a.Apply(policy.PlanApply(ns, next, after, nil)); err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			// Back, untimed.
			if err := a.Apply(policy.PlanApply(ns, after, next, nil)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64((total/time.Duration(b.N)).Microseconds())/1000, "ms/op")
		b.ReportMetric(peakMB(), "peak-MB")
	}
	b.Run("add-pod/klab", func(b *testing.B) { step(b, withPod) })
	b.Run("change/klab", func(b *testing.B) { step(b, changed) })
	cc = new(policy.Compiler)
	b.Run("add-pod/klab-incremental", func(b *testing.B) { step(b, withPod) })
	b.Run("change/klab-incremental", func(b *testing.B) { step(b, changed) })
	cc = nil
	b.Run("change/baseline", func(b *testing.B) {
		after := compile(b, changed)
		fw := policy.RenderIPTables(nil, after)
		bw := policy.RenderIPTables(nil, next)
		// Only the chains that differ, as a hand-written restore would.
		fwc, bwc := onlyChanged(fw, bw), onlyChanged(bw, fw)
		var total time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			run(b, ns, fwc, "iptables-restore", "--noflush", "--wait")
			total += time.Since(t0)
			run(b, ns, bwc, "iptables-restore", "--noflush", "--wait")
		}
		b.ReportMetric(float64((total/time.Duration(b.N)).Microseconds())/1000, "ms/op")
	})
}

// onlyChanged keeps the chains of restore text a whose rules differ from
// those in b.
func onlyChanged(a, b string) string {
	chains := func(s string) map[string][]string {
		m := map[string][]string{}
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "-A ") {
				c := strings.Fields(l)[1]
				m[c] = append(m[c], l)
			}
		}
		return m
	}
	ca, cb := chains(a), chains(b)
	var out strings.Builder
	out.WriteString("*filter\n")
	var body strings.Builder
	for c, ls := range ca {
		if strings.Join(ls, "\n") == strings.Join(cb[c], "\n") {
			continue
		}
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
		body.WriteString(strings.Join(ls, "\n") + "\n")
	}
	return out.String() + body.String() + "COMMIT\n"
}
