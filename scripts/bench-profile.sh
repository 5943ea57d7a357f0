#!/bin/sh
# Where does a klab build's CPU time go? Records BenchmarkFlannel/SIZE/klab
# (default 100x10) with perf and prints the share of the CPU samples spent
# under each kernel entry point and in klab's process vs its children
# (iptables-restore). The measured breakdowns in docs/performance.md come
# from this script. Needs root and perf; everything it builds is removed.
#
#   scripts/bench-profile.sh [SIZE] [ITERATIONS]     e.g. 2x2 20
set -eu
cd "$(dirname "$0")/.."
size=${1:-100x10}
n=${2:-1}
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
command -v perf >/dev/null || { echo "bench-profile: needs perf (apt-get install linux-perf)" >&2; exit 2; }
tmp=$(mktemp -d /tmp/klab-profile.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$GO" test -c -o "$tmp/cluster.test" ./pkg/cluster
(cd pkg/cluster && perf record -q -g -o "$tmp/perf.data" -- "$tmp/cluster.test" -test.run '^$' \
	-test.bench "BenchmarkFlannel/$size/klab\$" -test.benchtime "${n}x" | grep Benchmark)
echo
echo "share of all CPU samples (klab's process and its children; the untimed"
echo "teardown and RTNL probe between iterations are included, and are small):"
perf report --percentage absolute -i "$tmp/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
	awk '/%/ { printf "  %-38s %s\n", "process " $2, $1 }'
perf report --percentage absolute -i "$tmp/perf.data" --no-children --comm cluster.test --sort dso --stdio -g none 2>/dev/null |
	awk '/%/ { printf "  %-38s %s\n", "  (of klab process samples) in " $2, $1 }'
perf report --percentage absolute -i "$tmp/perf.data" --children --comm cluster.test --sort sym --stdio -g none 2>/dev/null >"$tmp/children.txt"
show() { # SYMBOL LABEL
	awk -v s="$1" -v l="$2" '$NF == s || index($NF, s ".") == 1 { printf "  %-38s %s\n", l, $1; exit }' "$tmp/children.txt"
}
show __x64_sys_sendto "netlink requests (sendto)"
show rtnl_newlink "  link create/change (rtnl_newlink)"
show register_netdevice "    register_netdevice"
show veth_newlink "    veth pairs"
show br_dev_newlink "    bridges"
show vxlan_newlink "    vxlan devices"
show do_setlink "  link set (up, master, ...)"
show br_add_if "    bridge ports (master)"
show inet_rtm_newaddr "  addresses"
show inet_rtm_newroute "  routes"
show neigh_add "  ARP entries"
show rtnl_fdb_add "  FDB entries"
show mutex_spin_on_owner "  spinning on the RTNL lock"
show __x64_sys_unshare "namespace creation (unshare)"
show __x64_sys_mount "namespace bind mounts"
show ext4_create "namespace files on ext4 (/run/netns)"
show __x64_sys_openat "all openat"
show __x64_sys_setns "setns (handles, sysctl)"
show asm_exc_page_fault "page faults"
