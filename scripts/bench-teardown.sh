#!/bin/sh
# What does the kernel wait for after a lab is destroyed? Runs
# 'klab bench' (growing labs, each destroyed before the next) and meanwhile
# samples the kernel stacks of the namespace-cleanup workers (kworker
# threads running cleanup_net) as often as a shell can, then prints the
# most frequent stacks of the busy samples (idle workers left out), with
# their share: where the teardown that continues after 'klab destroy'
# returns spends its time. Needs root; the labs are removed by klab bench.
#
#   scripts/bench-teardown.sh [MAX_NODES]     (default 50)
set -eu
cd "$(dirname "$0")/.."
KLAB=${KLAB:-bin/klab}
[ -x "$KLAB" ] || { echo "bench-teardown: $KLAB is missing: run 'make build'" >&2; exit 2; }
tmp=$(mktemp -d /tmp/klab-teardown.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$KLAB" --lab "bn-teardown-$$" bench --max-nodes "${1:-50}" >"$tmp/bench.txt" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
	for c in /proc/[0-9]*/comm; do
		case $(cat "$c" 2>/dev/null) in
		*netns*) d=${c%/comm}; head -4 "$d/stack" 2>/dev/null | awk '{ sub(/\+.*/, "", $2); printf "%s<", $2 } END { print "" }' ;;
		esac
	done >>"$tmp/stacks.txt"
	sleep 0.005
done
wait "$pid"
cat "$tmp/bench.txt"
echo
echo "netns cleanup worker while busy: most frequent kernel stacks (innermost first)"
grep -v -e '^<*$' -e '^rescuer_thread<' -e '^worker_thread<' "$tmp/stacks.txt" | sort | uniq -c | sort -rn |
	awk '{ n[NR] = $1; l[NR] = $2; t += $1 } END { for (i = 1; i <= NR && i <= 8; i++) printf "  %5.1f%%  %s\n", 100 * n[i] / t, l[i]; printf "  (%d busy samples)\n", t }'
