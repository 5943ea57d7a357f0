// Package nsexec runs a command in a lab object's namespaces the way
// 'ip netns exec' does: in the object's network namespace, in a mount
// namespace of its own where /sys is remounted to show that network
// namespace's devices, and, on a node, with the node's own flannel directory
// bound on /run/flannel so /run/flannel/subnet.env is that node's file, as on
// a real node. The command runs with the host's filesystem otherwise; its
// exit status (128+N when killed by signal N) is returned to the caller.
//
// It takes two processes, because a mount namespace is per thread and Go
// cannot unshare one safely in a running program: Spec.Run re-executes the
// klab binary with the hidden verb EnterCommand from a thread inside the
// network namespace, and that child calls Enter, which unshares the mount
// namespace, makes its mounts slaves of the host's (so 'klab destroy' still
// unmounts a lab's namespaces inside it, and nothing it mounts reaches the
// host) and replaces itself with the command. ForTarget says where a lab's
// node, pod, "underlay" or "external" runs.
package nsexec
