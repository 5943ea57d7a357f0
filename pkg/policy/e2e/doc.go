// Package e2e is the upstream NetworkPolicy conformance model
// (kubernetes/kubernetes test/e2e/network/netpol: model.go,
// reachability.go, network_policy.go) as data: namespaces x, y and z
// (labelled ns=<name> and kubernetes.io/metadata.name=<name>), each with
// pods a, b and c (labelled pod=<name>) spread over two nodes, every pod
// serving TCP and UDP on ports 80 and 81 under the upstream port names
// serve-80-tcp, serve-80-udp, serve-81-tcp and serve-81-udp. Each Case is a
// set of policies (and, for the upstream "updated label" tests, the labels
// after the update) with its expected 9x9 reachability matrix for each of
// the four port/protocol probes, written the way the upstream truth tables
// are written (NewReachability, ExpectPeer, ExpectAllIngress,
// ExpectAllEgress, Expect), never computed by the evaluator.
//
// The same table serves two tests: the unit test here checks that
// policy.Evaluator and the compiled plan (policy.Plan.Simulate) reproduce
// every matrix; a privileged test can build the model in real namespaces
// with Model, apply each Case's policies and compare real connections with
// the same matrices. As upstream, a pod's connection to itself is not
// compared (its behaviour is undefined across implementations: see
// kubernetes/kubernetes issue 95879). Cases whose Upstream field is empty
// are klab's own, written in the same style for what the upstream suite
// does not cover in this form (endPort ranges, egress to DNS, ingress
// ipBlock with except, several policies combined).
package e2e
