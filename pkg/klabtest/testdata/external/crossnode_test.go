// Package klabuser is a module outside klab that tests against a klab lab,
// as a CNI plugin's or a controller's own tests would: it proves the
// klabtest API is usable from another module.
package klabuser

import (
	"net"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/klabtest"
)

// Two nodes, one pod each: Go code in pod-b listens, Go code in pod-a
// dials it across flannel's VXLAN tunnel, and the capture on node1's eth0
// shows the TCP handshake inside VXLAN (VNI 1).
func TestCrossNode(t *testing.T) {
	lab := klabtest.New(t, klabtest.Nodes(2), klabtest.Prefix("kt"))
	a, b := lab.Pod("pod-a"), lab.Pod("pod-b")
	var ln net.Listener
	if err := b.Do(func() (err error) {
		ln, err = net.Listen("tcp4", ":9000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello from " + b.Name + "\n"))
			c.Close()
		}
	}()
	capture := lab.Capture("node1:eth0")
	var got string
	if err := a.Do(func() error {
		c, err := net.Dial("tcp4", b.IP.String()+":9000")
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		got = string(buf[:n])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "hello from pod-b") {
		t.Fatalf("pod-a read %q", got)
	}
	capture.Expect("vni 1 and inner (tcp and port 9000 and src host "+a.IP.String()+")", 1)
	if err := a.Ping(b.IP); err != nil {
		t.Fatal(err)
	}
}
