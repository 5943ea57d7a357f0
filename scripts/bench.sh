#!/bin/sh
# 'make bench': runs klab's benchmarks and their baselines in one go on this
# machine and prints one table (internal/benchtable): each klab figure next
# to the hand-written iproute2/iptables baseline measured in the same run,
# the ratio and the target. Needs root (the benchmarks build real
# namespaces, links and rules, all in namespaces named klab.bn-*; nothing
# touches the host's own network namespace) and takes a few minutes.
#
#   BENCH_QUICK=1   skip the slowest baseline (the iproute2 script at 100 x 10,
#                   ~2 minutes); its rows then say "not run"
#   BENCH_RAW=FILE  keep the raw 'go test -bench' output in FILE
#   KLAB_BIN=PATH   the klab binary the CLI benchmark runs (default bin/klab)
#
# Every benchmark removes what it built, also when interrupted (Ctrl-C).
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
KLAB_BIN=${KLAB_BIN:-$PWD/bin/klab}
export KLAB_BIN
if [ "$(id -u)" != 0 ]; then
	echo "bench: needs root (real namespaces, links and iptables rules): run 'sudo make bench'" >&2
	exit 2
fi
if [ ! -x "$KLAB_BIN" ]; then
	echo "bench: $KLAB_BIN is missing: run 'make build' first" >&2
	exit 2
fi
raw=${BENCH_RAW:-$(mktemp /tmp/klab-bench.XXXXXX)}
[ -n "${BENCH_RAW:-}" ] || trap 'rm -f "$raw"' EXIT
: >"$raw"

# run PKG REGEXP BENCHTIME COUNT: one 'go test -bench' invocation, its output
# appended to $raw, progress on stderr.
run() {
	echo "bench: $1 $2 (-benchtime $3 -count $4)" >&2
	CGO_ENABLED=0 "$GO" test -run '^$' -bench "$2" -benchtime "$3" -count "$4" -timeout 30m "$1" >>"$raw" 2>&1 || {
		echo "bench: go test -bench '$2' $1 failed:" >&2
		tail -20 "$raw" >&2
		exit 1
	}
}

run ./trace 'BenchmarkDecodeVsGopacket' 1s 5
run ./pkg/cluster 'BenchmarkFlannel/2x2/' 10x 1
run ./cmd/klab 'BenchmarkFlannel/2x2/klab-cli' 10x 1
run ./cmd/klab 'BenchmarkExecSandbox$' 200x 1
run ./pkg/cluster 'BenchmarkFlannel/10x10/(klab|klab-each)$' 5x 1
run ./pkg/cluster 'BenchmarkFlannel/10x10/iproute2' 3x 1
run ./pkg/cluster 'BenchmarkFlannel/100x10/klab$' 3x 1
if [ -z "${BENCH_QUICK:-}" ]; then
	run ./pkg/cluster 'BenchmarkFlannel/100x10/iproute2' 1x 1
fi
run ./pkg/nat 'BenchmarkServices/.*/(klab|restore)$' 3x 1
run ./pkg/nat 'BenchmarkServices/.*/one-change' 5x 1
run ./pkg/nat 'BenchmarkServices/.*/per-rule' 1x 1
run ./pkg/policy 'BenchmarkPolicies/(change|add-pod)' 20x 1
run ./cmd/klab 'BenchmarkControlPlane/100x10' 1x 1
run ./cmd/klab 'BenchmarkMultiMachine$' 5x 1
# Skips with a sentence without dnsperf and unbound (KLAB_BENCH_DEPS=1
# scripts/install-deps.sh installs them).
run ./pkg/dns 'BenchmarkDNSPerf' 1x 1

echo >&2
"$GO" run ./internal/benchtable <"$raw"
[ -z "${BENCH_RAW:-}" ] || echo "raw results: $raw" >&2
