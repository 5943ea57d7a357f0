package klabtest_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/klab-dev/klab/pkg/klabtest"
)

// exampleT runs an Example's lab under a testing.T of its own: an example
// has no t, and klabtest.New needs one for its cleanups.
func exampleT(fn func(t *testing.T)) {
	if os.Geteuid() != 0 {
		// Keep the example's output right without root; the lab is
		// built by the privileged run.
		return
	}
	// The inner run's progress lines go to stderr, not into the
	// example's checked output.
	stdout := os.Stdout
	os.Stdout = os.Stderr
	defer func() { os.Stdout = stdout }()
	ok := testing.RunTests(func(string, string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: "klabtest-example", F: fn}})
	if !ok {
		fmt.Fprintln(stdout, "the example's lab failed (see above)")
	}
}

// A two-node flannel network: pod-a on node1 pings pod-b on node2 across
// flannel.1, and the ICMP request is seen on node1's eth0 inside VXLAN.
func ExampleNew() {
	fmt.Println("pod-a -> pod-b: answered, inside VXLAN on node1's eth0")
	exampleT(func(t *testing.T) {
		lab := klabtest.New(t, klabtest.Nodes(2), klabtest.PodsPerNode(1))
		a, b := lab.Pod("pod-a"), lab.Pod("pod-b")
		capture := lab.Capture("node1:eth0")
		if err := a.Ping(b.IP); err != nil {
			t.Fatal(err)
		}
		capture.Expect("vni 1 and inner icmp and inner dst host "+b.IP.String(), 3)
	})
	// Output: pod-a -> pod-b: answered, inside VXLAN on node1's eth0
}

// Go code inside a pod: the interfaces a pod's process sees.
func ExamplePod_Do() {
	fmt.Println("pod-a sees lo and eth0")
	exampleT(func(t *testing.T) {
		lab := klabtest.New(t, klabtest.Nodes(1))
		var names []string
		err := lab.Pod("pod-a").Do(func() error {
			ifs, err := net.Interfaces()
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			return err
		})
		if err != nil || fmt.Sprint(names) != "[lo eth0]" {
			t.Fatalf("interfaces %v, %v", names, err)
		}
	})
	// Output: pod-a sees lo and eth0
}
