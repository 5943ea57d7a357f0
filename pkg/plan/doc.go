// Package plan holds klab's kernel changes as values, and the one applier
// that carries them out.
//
// A building block (pkg/veth, pkg/bridge, pkg/vxlan, pkg/nat, ...) never
// touches the kernel: given the desired state of an object and the state
// the kernel has now (a State, read back once per namespace), it returns the
// operations that take the one to the other, as a Plan. Each Op is plain
// data — the object it creates, changes or deletes (a namespace, link,
// address, route, neighbour, FDB entry, sysctl, iptables-restore payload,
// file) and how to execute it over netlink (or by exec for the rule
// loaders). Its equivalent iproute2, bridge, sysctl or iptables command line
// is rendered from the same data (Op.Command), so what klab prints cannot
// drift from what it does. An object that already matches yields no
// operation, which is where idempotence comes from: `klab repair` on a
// healthy lab runs nothing.
//
// The Applier is the only code that executes operations. It runs a plan
// serially, or several independent plans on workers, batching consecutive
// neighbour, FDB and route requests of one namespace into a few sendmsg
// calls. It alone knows about the crash-test points (KLAB_CRASH_AFTER, see
// crash.go), Ctrl-C (it stops between operations and rolls back what this
// apply created), and output: the operations that ran (--explain), the plan
// as a runnable POSIX sh script (--dry-run), and the operations that ran
// appended to a script file (--script). It is modelled on Terraform's
// plan/apply and on `ip -batch`; kube-proxy's rules-as-data is the same idea
// for iptables.
package plan
