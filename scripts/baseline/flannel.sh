#!/usr/bin/env bash
# The baseline klab's benchmarks compare against: the seed-003 flannel VXLAN
# network written by hand, the way the seed blog posts build it, one
# iproute2 command at a time (ip netns / ip link / ip addr / ip route /
# ip neigh / bridge fdb), plus the same iptables-restore klab runs in every
# new node. It builds exactly what 'klab node add' and 'klab pod add' build
# for lab LAB (same namespace names, interface names, addresses, MACs,
# routes, neighbours, FDB entries and rules; pkg/cluster's
# TestBaselineScriptMatchesKlab diffs the two), so its time is a fair
# reference for klab's.
#
#   flannel.sh up LAB NODES PODS_PER_NODE [STATE_DIR]   build nodes node1..nodeN,
#                                                      pods pod-<n>-<i>
#   flannel.sh down LAB [STATE_DIR]                    remove every namespace of LAB
#
# Needs root. Everything lives in namespaces klab.LAB.*; the host's own
# network namespace is never touched. An interrupted or failed 'up' removes
# what it built.
set -euo pipefail

usage() {
	echo "usage: $0 up LAB NODES PODS_PER_NODE [STATE_DIR] | down LAB [STATE_DIR]" >&2
	exit 2
}
[ $# -ge 2 ] || usage
cmd=$1 LAB=$2
case $LAB in *[!a-z0-9-]* | "") echo "bad lab name: $LAB" >&2; exit 2 ;; esac

UNDERLAY_MTU=1500
MTU=1450                 # flannel.1, cni0 and pods: underlay - 50 (VXLAN)
CLUSTER=10.244.0.0/16    # kubeadm --pod-network-cidr
GW=192.168.1.1           # underlay0: the nodes' gateway
EXT_GW=203.0.113.1 EXT_IP=203.0.113.10

ns() { echo "klab.$LAB.$1"; }

# mac LAB OBJECT ROLE: the locally administered MAC klab pins for a role of
# an object (sha256 of "lab/object/role", first 6 bytes, unicast + local).
mac() {
	local h
	h=$(printf '%s' "$LAB/$1/$2" | sha256sum)
	printf '%02x:%s:%s:%s:%s:%s' $(((0x${h:0:2} | 2) & 0xfe)) "${h:2:2}" "${h:4:2}" "${h:6:2}" "${h:8:2}" "${h:10:2}"
}

# vethname POD: the host-side veth name, veth + 8 hex digits of sha1("lab/pod").
vethname() {
	local h
	h=$(printf '%s' "$LAB/$1" | sha1sum)
	echo "veth${h:0:8}"
}

down() {
	local n
	for n in $(ip netns list | awk '{print $1}' | grep -E "^klab\.$LAB\.[a-z0-9-]+$" || true); do
		ip netns del "$n"
	done
	[ -z "${STATE:-}" ] || rm -rf "${STATE:?}/$LAB"
}

underlay() {
	local u
	u=$(ns underlay)
	ip netns add "$u"
	ip -n "$u" link add underlay0 mtu $UNDERLAY_MTU address "$(mac underlay bridge)" type bridge
	ip -n "$u" addr add $GW/24 brd + dev underlay0
	ip -n "$u" link set underlay0 up
	ip netns exec "$u" sysctl -qw net.ipv4.ip_forward=1
	# The external host beyond the underlay's gateway.
	local e
	e=$(ns external)
	ip netns add "$e"
	ip -n "$u" link add external mtu $UNDERLAY_MTU type veth peer name eth0 txqueuelen 0 address "$(mac external eth0)" netns "$e"
	ip -n "$u" link set external up
	ip -n "$u" addr add $EXT_GW/24 brd + dev external
	ip -n "$e" link set lo up
	ip -n "$e" addr add $EXT_IP/24 brd + dev eth0
	ip -n "$e" link set eth0 up
	ip -n "$e" route add default via $EXT_GW dev eth0
}

# node I: node<I> at 192.168.1.(100+I) with pod subnet 10.244.I.0/24.
node() {
	local i=$1 name=node$1 n u ip
	n=$(ns "$name") u=$(ns underlay) ip=192.168.1.$((100 + i))
	ip netns add "$n"
	ip -n "$u" link add "$name" mtu $UNDERLAY_MTU type veth peer name eth0 txqueuelen 0 address "$(mac "$name" eth0)" netns "$n"
	ip -n "$u" link set "$name" master underlay0
	ip -n "$u" link set "$name" up
	ip -n "$n" link set lo up
	ip -n "$n" addr add "$ip/24" brd + dev eth0
	ip -n "$n" link set eth0 up
	ip -n "$n" route add default via $GW dev eth0
	ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
	ip -n "$n" link add cni0 mtu $MTU address "$(mac "$name" cni0)" type bridge
	ip -n "$n" addr add "10.244.$i.1/24" brd + dev cni0
	ip -n "$n" link set cni0 up
	ip -n "$n" link add flannel.1 mtu $MTU address "$(mac "$name" vtep)" type vxlan id 1 local "$ip" dev eth0 dstport 8472 nolearning
	ip -n "$n" link set flannel.1 up
	ip -n "$n" addr add "10.244.$i.0/32" dev flannel.1
	rules "10.244.$i.0/24" | ip netns exec "$n" iptables-restore --wait
	mkdir -p "$STATE/$LAB/nodes/$name/flannel"
	printf 'FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=10.244.%d.1/24\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n' $CLUSTER "$i" $MTU \
		>"$STATE/$LAB/nodes/$name/flannel/subnet.env"
}

# peer I J: node I learns node J's VTEP (flannel's order: ARP, FDB, route).
peer() {
	local n vtep
	n=$(ns "node$1") vtep=$(mac "node$2" vtep)
	ip -n "$n" neigh replace "10.244.$2.0" lladdr "$vtep" dev flannel.1 nud permanent
	bridge -n "$n" fdb replace "$vtep" dev flannel.1 dst "192.168.1.$((100 + $2))" self permanent
	ip -n "$n" route replace "10.244.$2.0/24" via "10.244.$2.0" dev flannel.1 onlink
}

# pod I K: pod-I-K on node I at 10.244.I.(K+1), as the CNI bridge plugin
# wires it.
pod() {
	local name=pod-$1-$2 n p v
	n=$(ns "node$1") p=$(ns "pod-$1-$2") v=$(vethname "$name")
	ip netns add "$p"
	ip -n "$n" link add "$v" mtu $MTU type veth peer name eth0 mtu $MTU txqueuelen 0 address "$(mac "$name" eth0)" netns "$p"
	ip -n "$n" link set "$v" master cni0
	ip -n "$n" link set "$v" up
	bridge -n "$n" link set dev "$v" hairpin on
	ip -n "$p" link set lo up
	ip -n "$p" addr add "10.244.$1.$(($2 + 1))/24" brd + dev eth0
	ip -n "$p" link set eth0 up
	ip -n "$p" route add default via "10.244.$1.1" dev eth0
	ip -n "$p" route add $CLUSTER via "10.244.$1.1" dev eth0
}

# rules SUBNET: the iptables-restore input klab writes into a new node with
# no services: kube-proxy's base chains and flannel's masquerade
# (pkg/nat TextWithJumps; pkg/cluster's tests check this copy).
rules() {
	local c="klab:$LAB"
	cat <<EOF
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:FLANNEL-FWD - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "$c kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "$c kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "$c kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "$c kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "$c kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m comment --comment "$c flanneld forward" -j FLANNEL-FWD
-A KUBE-FORWARD -m comment --comment "$c" -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "$c kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "$c kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FLANNEL-FWD -m comment --comment "$c flanneld forward" -s $CLUSTER -j ACCEPT
-A FLANNEL-FWD -m comment --comment "$c flanneld forward" -d $CLUSTER -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:FLANNEL-POSTRTG - [0:0]
-A PREROUTING -m comment --comment "$c kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "$c kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "$c kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "$c flanneld masq" -j FLANNEL-POSTRTG
-A KUBE-SERVICES -m comment --comment "$c kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-MARK-MASQ -m comment --comment "$c" -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "$c" -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -m comment --comment "$c" -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "$c kubernetes service traffic requiring SNAT" -j MASQUERADE
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" -m mark --mark 0x4000/0x4000 -j RETURN
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" -s $1 -d $CLUSTER -j RETURN
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" -s $CLUSTER -d $1 -j RETURN
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" ! -s $CLUSTER -d $1 -j RETURN
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" -s $CLUSTER ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG -m comment --comment "$c flanneld masq" ! -s $CLUSTER -d $CLUSTER -j MASQUERADE --random-fully
COMMIT
EOF
}

case $cmd in
up)
	[ $# -ge 4 ] || usage
	NODES=$3 PODS=$4 STATE=${5:-/tmp/klab-baseline}
	[ "$NODES" -ge 1 ] && [ "$NODES" -le 150 ] && [ "$PODS" -ge 0 ] && [ "$PODS" -le 250 ] || usage
	done=
	trap '[ -n "$done" ] || down' EXIT
	trap 'exit 130' INT TERM
	underlay
	for ((i = 1; i <= NODES; i++)); do
		node "$i"
		# Peer the new node with every existing node, both ways, as
		# 'klab node add' does.
		for ((j = 1; j < i; j++)); do
			peer "$i" "$j"
			peer "$j" "$i"
		done
	done
	for ((i = 1; i <= NODES; i++)); do
		for ((k = 1; k <= PODS; k++)); do
			pod "$i" "$k"
		done
	done
	done=1
	;;
down)
	STATE=${3:-}
	trap '' INT TERM # finish removing, even when interrupted
	down
	;;
*) usage ;;
esac
