// Package nft is kube-proxy's nftables mode as data: Render turns the same
// nat.Config and nat.Service inputs as pkg/nat's iptables renderer into the
// `table ip kube-proxy` that kube-proxy's nftables proxier programs after a
// full sync, as a Table value (chains with their rules as statement values,
// sets and verdict maps with their elements, kube-proxy's comments), and
// Table.Text writes it as `nft -f` input in knftables' style. It mirrors
// kubernetes/kubernetes pkg/proxy/nftables/proxier.go at commit b0f823e6
// (the layout of v1.31-v1.33: filter-prerouting/-input/-forward/-output at
// dstnat-10, filter-output-post-dnat at dstnat+10, nat-* at dstnat/srcnat,
// service-endpoints-check, nodeport-endpoints-check, cluster-ips-check,
// nftElementStorage partial syncs), with sigs.k8s.io/knftables objects.go
// for the text; later upstream commits moved the filter chains to
// filter-*-pre-dnat at -110 and plain filter-* at 0 and dropped the port
// match from the service chain's masquerade rule. Names are kube-proxy's
// hashAndTruncate (8 characters of base32(sha256)), checked against the
// names upstream's proxier_test.go expects. Both external traffic
// policies are rendered (Local per node, from nat.Config.NodeName);
// nat.Service has no external IPs or load balancers, so firewall- chains
// never appear and firewall-ips stays empty.
//
// partial.go starts a partial sync from the changed services, as
// kube-proxy does: ChangedServices finds them, DiffServices renders only
// them (before and after) and diffs those small renderings, RenderChanged
// also patches the previous table. policy.go holds the statements of klab's
// NetworkPolicy table (pkg/policy RenderNFT) and RuleCounters, which reads
// rule counters back over netlink.
//
// Diff compares two renderings the way kube-proxy's partial sync does: map
// and set elements added, removed or re-added with a new value, changed
// chains flushed and refilled, new chains and affinity sets added, stale
// ones deleted (kube-proxy defers deleting stale chains by a second for
// kernels before 6.2; klab flushes them all, then deletes them in the same
// transaction), so a one-service change touches only that service's
// elements and chains. ApplyChange sends a Change to a network namespace
// over netlink with github.com/google/nftables as ONE nf_tables batch (one
// Flush), building the expressions nft itself would send for each statement;
// no `nft` binary is needed. google/nftables v0.3 cannot set table or chain
// comments, so the kernel copy lacks those two (rule, set and element
// comments are kept).
//
// In a lab in nftables mode (pkg/cluster, --proxy-mode nftables) the tables
// reach the kernel as a Batch — changes to several tables and tables
// deleted, one transaction — carried by a plan.NFT operation, whose command
// is Batch.Text (`nft -f` input) and whose apply is Batch.Apply; a new
// table can load in stages (Batch.Staged, see batch.go for why).
// RenderFlannel is flannel's own `table ip flannel-ipv4` (flannel's
// EnableNFTables, pkg/trafficmngr/nftables). ReadSummary and Drift compare a
// table in the kernel with a rendering by rules per chain and elements per
// set (drift checks, repair); ServiceObjects picks what serves one Service
// (klab service show). trace.go is klab's own tracing for journeys:
// RenderTrace's klab-trace table sets nftrace on the probe, ListenTrace
// decodes the kernel's trace events, Describe names their rules.
package nft
