// Package policy is Kubernetes NetworkPolicy (networking.k8s.io/v1) for
// klab, in two forms that must agree. The Evaluator decides a connection
// from the policies alone and says why — "allowed by default/db-allow
// ingress rule 1 (podSelector role=frontend)", "dropped at node2 ingress of
// default/db: selected by policy default/db-allow (ingress), no rule admits
// other/client:tcp/6379" — with the semantics of the API's doc comments
// (k8s.io/api networking/v1 types.go) and of the upstream conformance model
// (kubernetes/kubernetes test/e2e/network/netpol, reproduced in
// pkg/policy/e2e): a pod is isolated for a direction only once a policy
// selecting it has that policyType (default: Ingress, plus Egress when
// spec.egress is given); egress at the source AND ingress at the
// destination must admit; rules and policies are ORed; within one peer,
// namespaceSelector and podSelector are ANDed; named ports resolve on the
// target pod. Compile turns the same policies into a Plan the way
// kube-router and Calico's Felix do — per-pod filter chains whose rules
// match ipsets of peer addresses (hash:ip for selected pods, hash:net for
// ipBlocks with except entries as nomatch), all names derived from hashes
// (sets ≤ 31 characters, chains ≤ 28) — and renders it as `ipset restore`
// and `iptables-restore` text; Plan.Simulate walks those rules as the
// kernel would, and tests check it against the Evaluator. Where the API
// leaves the choice to the implementation, klab chooses: an ipBlock matches
// any address in it, pod addresses included (Calico and kube-router do; the
// e2e CIDR tests expect it); a pod's traffic to itself and traffic between
// a pod and its own node (kubelet probes; in the kernel that traffic is
// INPUT/OUTPUT, never FORWARD where the chains hang) is never filtered;
// other nodes' addresses are plain addresses that only an ipBlock matches.
//
// Applying a change without a window: sets are named by what they select,
// not by policy, so a pod appearing or changing labels changes only set
// membership. PlanApply (apply.go) turns the previous and the next Plan of
// a node into a plan.Plan for pkg/plan's applier: (1) sysctl
// net.bridge.bridge-nf-call-iptables=1 in the node's namespace (per
// namespace on current kernels), so same-node traffic bridged on cni0
// crosses FORWARD; (2) one `ipset restore` of RenderIPSets: a new set is
// built under a temporary name and swapped in (create T; flush T; add T
// ...; create S -exist; swap T S; destroy T — the swap is atomic, and the
// set is not referenced yet anyway); changes to existing sets are all
// removals first, then all additions, so at every instant each set is a
// subset of its old or of its new content and, sets being only peers of
// allow rules, nothing passes that both the old and the new policies
// refuse; (3) one `iptables-restore --noflush`, one kernel transaction,
// rewriting only the pod chains whose rules changed, adding and deleting
// single jumps in the dispatch lists (KLAB-NETPOL -> KLAB-NETPOL-E, the
// egress jumps by source, then KLAB-NETPOL-I, the ingress jumps by
// destination), deleting stale chains, and (when the kernel was read back
// with ReadKernel and lacks it) inserting FORWARD -> KLAB-NETPOL at
// position 1, ahead of kube-proxy's and flannel's accepts; otherwise the
// jump is a go-iptables check-or-insert; (4) one `ipset restore` of the
// destroys of sets no rule names any more. PlanRemove undoes it all; a
// node's namespace going takes its sets and chains with it. Conntrack
// ESTABLISHED,RELATED is accepted first, so replies and established
// connections never depend on a set.
// Each pod chain ends in NFLOG (a group the caller picks) and DROP, both
// commented "klab <lab> drop ingress|egress ns/pod", so a drop is confirmed
// from counters or NFLOG, never from the policy text alone. The plan is
// IPv4; a node's plan holds the pods it hosts (egress of its pods, ingress
// to them), which is where kube-router and Felix enforce too.
//
// On a node in kube-proxy's nftables mode the same Plan is rendered by
// RenderNFT (nftables.go) as `table ip klab-policy` — the same chain and
// set names, pod peers in named nftables sets, ipBlocks as interval sets in
// their rules, a counted drop — and applied as one nf_tables transaction
// per change (PlanApplyNFT: nft.Diff of two renderings), so such a node
// holds no iptables rule and no ipset.
package policy
