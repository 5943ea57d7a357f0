// Package dns is the cluster DNS of a lab: the server that, in a real
// cluster, CoreDNS runs behind the kube-dns Service, answering the names of
// the Kubernetes DNS-based service discovery specification (kubernetes/dns,
// docs/specification.md, schema 1.1.0). A ClusterIP service is one A (or
// AAAA) record, <svc>.<ns>.svc.<zone>, with SRV records for its named ports
// and a PTR record for its address; a headless service is the addresses of
// its ready endpoints, each also under its own hostname, with SRV records
// pointing at those hostnames; an ExternalName service is a CNAME; and
// dns-version.<zone> says the schema version. Names that do not exist are
// NXDOMAIN and names without the asked type are NODATA, both with the
// zone's SOA so resolvers cache the miss; answers too big for a client's
// UDP buffer come back truncated (TC) and the client asks again over TCP.
// Everything outside the zone is forwarded to an upstream (in a lab, the
// external host running an Authority for a small static zone), or refused.
//
// The records are data computed from a Snapshot of the lab's services,
// endpoints and pods: Update builds an immutable index of every name and
// swaps it in with one atomic pointer store, so the next query sees the new
// lab and no query ever sees half of an update. The server is a miekg/dns
// Handler and opens no socket of its own: Serve runs it on a UDP socket and
// a TCP listener the caller opened inside a lab network namespace (with
// netns.Do), and forwarding dials through a DialFunc that does the same
// (DialIn), so nothing ever listens or sends from the host's namespace.
//
// UDP on an IPv4 socket takes a fast path (udpfast.go): a fixed pool of
// workers reads and writes datagrams in batches (recvmmsg/sendmmsg) and
// answers repeated queries from a size-capped cache of packed answers that
// belongs to one index, so an Update empties it at once. TCP, and UDP on
// other sockets, is miekg/dns's server.
package dns
