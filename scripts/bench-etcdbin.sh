#!/bin/sh
# What linking the etcd server into klab costs every command: compares two
# builds, OLD (a klab with the server linked in, e.g. main before klab-etcd)
# and NEW (a klab whose etcd is klab-etcd beside it), interleaved in the
# same run on the same machine, and prints each number beside its baseline
# as a ratio NEW/OLD. Needs root (it builds labs, named eb-bench-*, and
# destroys them again, also on Ctrl-C).
#
#   scripts/bench-etcdbin.sh OLD_KLAB NEW_KLAB [RUNS_LABS [RUNS_LAB]]
#
# NEW_KLAB's directory must hold klab-etcd ('make build' puts both in bin/).
# Measured: binary sizes; Go package init (GODEBUG=inittrace=1, the sum of
# every package's init clock time, median of 10); 'klab labs' wall time
# (median of RUNS_LABS, default 30) and its peak RSS (/usr/bin/time, median
# of 10); a direct-mode 2-node x 2-pod lab built with 7 CLI commands (node
# add x2, pod add x4, destroy: median of RUNS_LAB, default 10); a
# control-plane lab (--control-plane etcd, 2 nodes: the two node adds, then
# destroy on its own), median of RUNS_LAB; and, with perf, the CPU time
# (task-clock) of 'klab labs' and of the direct-mode lab's 7 commands.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OLD_KLAB NEW_KLAB [RUNS_LABS [RUNS_LAB]]" >&2; exit 2; }
OLD=$1 NEW=$2 N1=${3:-30} N2=${4:-10}
for b in "$OLD" "$NEW"; do
	[ -x "$b" ] || { echo "bench-etcdbin: $b is not an executable klab" >&2; exit 2; }
done
[ -x "$(dirname "$NEW")/klab-etcd" ] || { echo "bench-etcdbin: no klab-etcd beside $NEW: build both with 'make build'" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench-etcdbin: /usr/bin/time is missing: apt-get install time" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-etcdbin: the lab builds need root: run it with sudo" >&2; exit 2; }
tmp=$(mktemp -d /tmp/eb-bench.XXXXXX)
cleanup() {
	for v in old new; do
		for l in $(ls "$tmp/state-$v" 2>/dev/null | grep -v '\.lock$'); do
			[ "$v" = old ] && k=$OLD || k=$NEW
			"$k" --state-dir "$tmp/state-$v" destroy "$l" >/dev/null 2>&1 || true
		done
	done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
mkdir -p "$tmp/state-old" "$tmp/state-new" "$tmp/old" "$tmp/new"
# Both run from copies made the same way: how a binary's pages came into
# the page cache (written by the linker, copied, read) changes how much of
# it a process maps, by 5 MB of RSS for one and the same file.
cp "$OLD" "$tmp/old/klab"
cp "$NEW" "$tmp/new/klab"
cp "$(dirname "$NEW")/klab-etcd" "$tmp/new/klab-etcd"
OLD=$tmp/old/klab NEW=$tmp/new/klab

us() { echo $(($(date +%s%N) / 1000)); } # microseconds
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
row() { # name unit old new
	awk -v n="$1" -v u="$2" -v o="$3" -v w="$4" 'BEGIN { printf "%-44s %10.1f %-3s %10.1f %-3s  %5.2fx\n", n, o, u, w, u, (o > 0 ? w / o : 0) }'
}
run() { # variant cmd...: run klab, fail loudly on a failed command
	v=$1
	shift
	[ "$v" = old ] && k=$OLD || k=$NEW
	if ! "$k" --state-dir "$tmp/state-$v" "$@" >"$tmp/out" 2>&1; then
		echo "bench-etcdbin: $v klab $*: failed:" >&2
		cat "$tmp/out" >&2
		exit 1
	fi
}

printf "%-44s %14s %14s  %6s\n" "" "old" "new" "new/old"
sz() { stat -c %s "$1" | awk '{ printf "%.1f", $1 / 1e6 }'; }
row "binary size: klab" MB "$(sz "$OLD")" "$(sz "$NEW")"
printf "%-44s %14s %10s MB\n" "binary size: klab-etcd (new only)" "-" "$(sz "$(dirname "$NEW")/klab-etcd")"

for i in $(seq 10); do
	for v in old new; do
		[ "$v" = old ] && k=$OLD || k=$NEW
		GODEBUG=inittrace=1 "$k" labs 2>&1 >/dev/null | awk '/^init / { s += $5 } END { print s }' >>"$tmp/init-$v"
		/usr/bin/time -f %M "$k" labs 2>>"$tmp/rss-$v" >/dev/null
	done
done
row "Go init, every package (inittrace)" ms "$(median <"$tmp/init-old")" "$(median <"$tmp/init-new")"
row "klab labs: peak RSS" MB "$(median <"$tmp/rss-old" | awk '{ print $1 / 1024 }')" "$(median <"$tmp/rss-new" | awk '{ print $1 / 1024 }')"

for i in $(seq "$N1"); do
	for v in old new; do
		[ "$v" = old ] && k=$OLD || k=$NEW
		t0=$(us)
		"$k" labs >/dev/null
		echo $(($(us) - t0)) >>"$tmp/labs-$v"
	done
done
row "klab labs: wall time (median of $N1)" ms "$(median <"$tmp/labs-old" | awk '{ print $1 / 1000 }')" "$(median <"$tmp/labs-new" | awk '{ print $1 / 1000 }')"

for i in $(seq "$N2"); do
	for v in old new; do
		lab=eb-bench-$v$i
		t0=$(us)
		run $v node add node1 --lab "$lab"
		run $v node add node2 --lab "$lab"
		run $v pod add pod-a --node node1 --lab "$lab"
		run $v pod add pod-b --node node1 --lab "$lab"
		run $v pod add pod-c --node node2 --lab "$lab"
		run $v pod add pod-d --node node2 --lab "$lab"
		run $v destroy "$lab"
		echo $(($(us) - t0)) >>"$tmp/lab-$v"
	done
done
row "direct 2x2 lab, 7 commands (median of $N2)" ms "$(median <"$tmp/lab-old" | awk '{ print $1 / 1000 }')" "$(median <"$tmp/lab-new" | awk '{ print $1 / 1000 }')"

# CPU time (perf's task-clock: every thread, and the child processes of the
# 7-command build), which a loaded machine disturbs less than wall time.
if command -v perf >/dev/null 2>&1 && perf stat -x, -e task-clock true >/dev/null 2>&1; then
	cpu() { # variant out cmd...
		v=$1 o=$2
		shift 2
		perf stat -x, -e task-clock -o "$tmp/perf" "$@" >/dev/null 2>&1 || { echo "bench-etcdbin: $v $*: failed" >&2; exit 1; }
		awk -F, '$3 == "task-clock" { print $1 }' "$tmp/perf" >>"$tmp/$o-$v"
	}
	for i in $(seq "$N1"); do
		cpu old labscpu "$OLD" labs
		cpu new labscpu "$NEW" labs
	done
	row "klab labs: CPU, task-clock (median of $N1)" ms "$(median <"$tmp/labscpu-old")" "$(median <"$tmp/labscpu-new")"
	for i in $(seq "$N2"); do
		for v in old new; do
			[ "$v" = old ] && k=$OLD || k=$NEW
			lab=eb-bench-cpu$v$i
			cpu $v labcpu sh -ec 'k=$1 s=$2 l=$3
				"$k" --state-dir "$s" node add node1 --lab "$l"
				"$k" --state-dir "$s" node add node2 --lab "$l"
				for p in pod-a:node1 pod-b:node1 pod-c:node2 pod-d:node2; do
					"$k" --state-dir "$s" pod add "${p%:*}" --node "${p#*:}" --lab "$l"
				done
				"$k" --state-dir "$s" destroy "$l"' sh "$k" "$tmp/state-$v" "$lab"
		done
	done
	row "direct 2x2 lab: CPU, task-clock (median of $N2)" ms "$(median <"$tmp/labcpu-old")" "$(median <"$tmp/labcpu-new")"
else
	echo "(no CPU rows: perf is missing or not allowed: apt-get install linux-perf, run as root)"
fi

for i in $(seq "$N2"); do
	for v in old new; do
		lab=eb-bench-cp$v$i
		t0=$(us)
		run $v node add node1 --lab "$lab" --control-plane etcd
		run $v node add node2 --lab "$lab"
		t1=$(us)
		run $v destroy "$lab"
		echo $((t1 - t0)) >>"$tmp/cp-$v"
		echo $(($(us) - t1)) >>"$tmp/cpd-$v"
	done
done
row "control-plane lab: 2 node adds (median of $N2)" ms "$(median <"$tmp/cp-old" | awk '{ print $1 / 1000 }')" "$(median <"$tmp/cp-new" | awk '{ print $1 / 1000 }')"
row "control-plane lab: destroy (median of $N2)" ms "$(median <"$tmp/cpd-old" | awk '{ print $1 / 1000 }')" "$(median <"$tmp/cpd-new" | awk '{ print $1 / 1000 }')"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
