#!/bin/bash
# Same-moment A/B of throughput-harness binaries: runs each binary N times, alternating,
# on the same input, and prints the median events/s and CPU-s per million events.
# The VM's speed drifts by up to a third over a day; alternating runs cancel the drift.
#
#   cargo bench --bench throughput --no-run   # then copy target/release/deps/throughput-<hash>
#   EVENTIDE_BENCH_INPUT=/tmp/bench-1m.ndjson benches/ab.sh 8 /tmp/throughput-a /tmp/throughput-b
set -euo pipefail
# One layout per run (the harness runs every layout when none is named).
export EVENTIDE_BENCH_LAYOUT=${EVENTIDE_BENCH_LAYOUT:-sas}
n=$1
shift
declare -A rate cpu
for _ in $(seq "$n"); do
  for b in "$@"; do
    out=$("$b" --bench 2>&1)
    rate[$b]="${rate[$b]:-} $(awk '/throughput:/{print $2}' <<<"$out")"
    cpu[$b]="${cpu[$b]:-} $(awk '/cpu:/{print $2}' <<<"$out")"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for b in "$@"; do
  echo "$b: median $(median <<<"${rate[$b]}") events/s, $(median <<<"${cpu[$b]}") CPU-s/M;" \
    "runs:${rate[$b]} |${cpu[$b]}"
done
