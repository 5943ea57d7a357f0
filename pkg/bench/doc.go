// Package bench measures klab on the machine it runs on: how fast labs come
// up and go away, how much memory they take, and how large a lab the
// machine holds (Capacity, behind 'klab bench').
//
// Timing kernel work needs care. Deleting a namespace returns at once, but
// the kernel frees it later, in a worker that holds the RTNL lock while it
// waits for RCU grace periods (one per bridge and per VXLAN device); until
// it is done every link change on the machine waits. Quiet detects that
// with a probe, so that each measurement starts on a quiet kernel and the
// teardown can be reported both as the command's time and as the kernel's.
// The benchmarks (go test -bench in pkg/cluster, pkg/nat, trace, cmd/klab)
// and 'make bench' use the same helpers; docs/performance.md explains the
// method and the numbers.
package bench
