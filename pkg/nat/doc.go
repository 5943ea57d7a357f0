// Package nat turns Kubernetes Services into the iptables rules kube-proxy
// (iptables mode) and flannel program on a node, and applies them inside a
// node's network namespace. Services and their endpoints are plain data
// (Service, Config); Render validates them and produces a Ruleset: every
// chain kube-proxy v1.28+ would write (KUBE-SERVICES, KUBE-NODEPORTS,
// KUBE-SVC-/KUBE-SEP-/KUBE-EXT- with kube-proxy's exact sha256/base32 chain
// names and 1/(n-i) "%0.10f" probabilities, KUBE-MARK-MASQ and
// KUBE-POSTROUTING with mark 0x4000, session affinity with -m recent, and in
// the filter table KUBE-SERVICES/KUBE-EXTERNAL-SERVICES REJECTs for services
// without endpoints and KUBE-FORWARD) plus flannel's FLANNEL-POSTRTG and
// FLANNEL-FWD (current flannel; flannel before v0.15 wrote the same rules
// straight into POSTROUTING/FORWARD). Not modelled: LoadBalancer, external
// IPs, Local traffic policies, KUBE-PROXY-FIREWALL and nfacct counters.
// Every rule, jumps from the built-in chains included, carries the comment
// "klab:<lab> <kube-proxy's comment>", so `iptables-save | grep 'klab:<lab>'`
// finds all of a lab's rules, and ParseRules/Simulate follow a packet
// through the rendered text without root.
//
// Apply writes a Ruleset the way kube-proxy does: ONE iptables-restore
// transaction (run inside the namespace from a locked OS thread, always with
// --wait), in which a ":CHAIN - [0:0]" line flushes a chain under --noflush
// and stale chains are removed with -X. Given the previously applied
// Ruleset, only chains whose text changed are rewritten, so the counters of
// all other chains survive; without it, Plan reads the namespace with
// iptables-save and compares rule by rule (Canon: the kernel prints rules
// back in its own order and spelling), so only what differs is rewritten
// and a namespace that matches gets nothing. The jumps from PREROUTING,
// OUTPUT, POSTROUTING, INPUT and FORWARD live in chains shared with the rest
// of the node, so they are never rewritten: missing ones are inserted (in
// the same transaction when the kernel was read, else checked one by one
// with coreos/go-iptables). PlanDelete removes everything a lab owns,
// Backend tells iptables-nft from iptables-legacy for `klab doctor`. Like
// every building block, this package computes plans (pkg/plan) and never
// executes them itself.
package nat
