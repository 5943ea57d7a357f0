#!/bin/sh
# Installs what klab needs from the distribution (Debian/Ubuntu), if missing:
# iptables (klab's only runtime dependency) and, for the tests' cross-checks,
# iproute2, iputils-ping, conntrack, tshark, nft (nftables: reading back
# kube-proxy's nftables table), ipset (NetworkPolicy peer sets), dig/getent
# checks of the cluster DNS (bind9-dnsutils), traceroute (klab traceroute
# is compared with it), etcd-client (etcdctl reads back the control
# plane's leases), etcd-server (Debian's etcd, klab's fallback for
# bin/klab-etcd, which the tests run too) and bird2 (the calico backend
# runs BIRD on every node).
set -eu
need=""
command -v iptables-restore >/dev/null 2>&1 || need="$need iptables"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v bridge >/dev/null 2>&1 || need="$need iproute2"
command -v ping >/dev/null 2>&1 || need="$need iputils-ping"
command -v conntrack >/dev/null 2>&1 || need="$need conntrack"
if [ "${KLAB_WITH_TSHARK:-1}" = 1 ]; then
	command -v tshark >/dev/null 2>&1 || need="$need tshark"
fi
command -v nft >/dev/null 2>&1 || need="$need nftables"
command -v ipset >/dev/null 2>&1 || need="$need ipset"
command -v bird >/dev/null 2>&1 || [ -x /usr/sbin/bird ] || need="$need bird2"
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v etcd >/dev/null 2>&1 || need="$need etcd-server"
command -v etcdctl >/dev/null 2>&1 || need="$need etcd-client"
command -v traceroute >/dev/null 2>&1 || need="$need traceroute"
# klab pod add --cni runs the real CNI plugins; capsh and unshare for the container tests.
[ -x /usr/lib/cni/bridge ] || need="$need containernetworking-plugins"
command -v capsh >/dev/null 2>&1 || need="$need libcap2-bin"
command -v unshare >/dev/null 2>&1 || need="$need util-linux"
command -v make >/dev/null 2>&1 || need="$need make"
# 'make bench' only (not make test): the DNS benchmark's load generator and
# its baseline server.
if [ "${KLAB_BENCH_DEPS:-0}" = 1 ]; then
	command -v dnsperf >/dev/null 2>&1 || need="$need dnsperf"
	command -v unbound >/dev/null 2>&1 || need="$need unbound"
fi
# klab ui's end-to-end test drives a real headless browser (large; opt out with KLAB_WITH_CHROMIUM=0).
if [ "${KLAB_WITH_CHROMIUM:-1}" = 1 ]; then
	command -v chromium >/dev/null 2>&1 || need="$need chromium"
fi
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
	echo "klab: missing$need and no apt-get here: install them with your package manager" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $need >/dev/null
