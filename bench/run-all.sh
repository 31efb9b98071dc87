#!/usr/bin/env bash
# Run every benchmark in sequence, then print one summary table of the issues'
# rows (figure, reference measured in the same run, target, meets/misses).
# Builds only bench/ (and the test helpers it imports) into dist/; the agent,
# CLI and plugin must already be built (bash scripts/build.sh or
# scripts/setup.sh --test).
#   bench/run-all.sh [--quick]        --quick: shorter runs, 20 sequential ADDs, 100 pods in policy-scale
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
count=50
if [ "${1:-}" = "--quick" ]; then quick=(--quick); count=20; fi
[ "$(id -u)" = 0 ] || { echo "run-all: the benchmarks create network namespaces: run as root" >&2; exit 1; }
[ -f dist/src/agent/main.js ] && [ -f bin/membrane-cni ] || { echo "run-all: build first (bash scripts/build.sh)" >&2; exit 1; }
npx --no-install tsc -p bench
mkdir -p test-artifacts
# Every bench appends its rows here (bench/lib.ts reportRow); summarised at the end.
export MEMBRANE_BENCH_ROWS
MEMBRANE_BENCH_ROWS="$PWD/test-artifacts/bench-rows-$(date +%Y%m%dT%H%M%S).jsonl"
: >"$MEMBRANE_BENCH_ROWS"
status=0
echo "=== pod-to-pod $(date -Is)"
node dist/bench/pod-to-pod.js "${quick[@]}" || status=1
echo
echo "=== cni-add-latency $(date -Is)"
node dist/bench/cni-add-latency.js --count "$count" --breakdown || status=1
echo
echo "=== attach-cost $(date -Is)"
node dist/bench/attach-cost.js || status=1
echo
echo "=== policy-scale $(date -Is)"
node dist/bench/policy-scale.js "${quick[@]}" || status=1
echo
echo "=== observe-cost $(date -Is)"
node dist/bench/observe-cost.js "${quick[@]}" || status=1
echo
echo "=== services $(date -Is)"
node dist/bench/services.js "${quick[@]}" || status=1
echo
echo "=== l7-proxy $(date -Is)"
node dist/bench/l7-proxy.js "${quick[@]}" || status=1
echo
echo "=== gateway $(date -Is)"
node dist/bench/gateway.js "${quick[@]}" || status=1
echo "=== dns-proxy $(date -Is)"
node dist/bench/dns-proxy.js "${quick[@]}" || status=1
echo
echo "=== cluster $(date -Is)"
node dist/bench/cluster.js "${quick[@]}" || status=1
echo
echo "=== operator $(date -Is)"
node dist/bench/operator.js "${quick[@]}" || status=1
echo
node dist/bench/summary.js "$MEMBRANE_BENCH_ROWS" || status=1
echo "(rows: ${MEMBRANE_BENCH_ROWS#$PWD/})"
exit "$status"
