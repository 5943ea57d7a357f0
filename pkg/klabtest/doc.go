// Package klabtest builds a real, multi-node Kubernetes pod network inside a
// Go test, the way net/http/httptest starts a real HTTP server: klabtest.New
// creates a klab lab (nodes as network namespaces on an underlay bridge,
// cni0 bridges, flannel's VXLAN device and peer entries, pods as namespaces
// with veth pairs, kube-proxy's Service chains) in a few milliseconds, hands
// back its nodes and pods, and removes every namespace, link, rule, process
// and file of it when the test ends — also when it fails, panics or the test
// binary is interrupted (SIGINT, SIGTERM).
//
// A CNI plugin, a network controller or a proxy can then be tested against
// a real flannel network: Pod.Do and Node.Do run Go code inside a pod's or a
// node's network namespace (on a fresh OS thread that is thrown away if it
// cannot be switched back), Exec runs a command there, Ping and Get send
// real traffic, Capture records the packets at any interface and Expect
// asserts on them with klab's trace filter language ("inner icmp", "vni 1").
// CNI() wires the pods with the real CNI plugins, and Node.Sandbox runs
// any plugin chain (ADD, CHECK, DEL) against a node, so a plugin author can
// test a plugin on a real flannel network. The tests need root; without it
// they skip with one sentence. The package imports only klab's public
// packages, so any module can use it (testdata/external is such a module).
package klabtest
