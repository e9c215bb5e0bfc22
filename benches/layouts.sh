#!/bin/bash
# The throughput harness N times over every layout (each run alternates the layouts,
# so the VM's drift hits all alike); prints each layout's median events/s, CPU-s per
# million events and peak RSS, and how far it is from the fastest median.
#
#   cargo bench --bench throughput --no-run   # then copy target/release/deps/throughput-<hash>
#   EVENTIDE_BENCH_INPUT=/tmp/bench-1m benches/layouts.sh 10 /tmp/throughput
set -euo pipefail
n=$1
bin=$2
declare -A rate cpu rss
for _ in $(seq "$n"); do
  out=$(env -u EVENTIDE_BENCH_LAYOUT "$bin" --bench 2>&1)
  while read -r layout eps c r; do
    rate[$layout]="${rate[$layout]:-} $eps"
    cpu[$layout]="${cpu[$layout]:-} $c"
    rss[$layout]="${rss[$layout]:-} $r"
  done < <(awk '/^  (sas|compact|pretty|shuffled) +[0-9]/{print $1, $2, $3, $4}' <<<"$out")
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best=0
for l in sas compact pretty shuffled; do
  m=$(median <<<"${rate[$l]}")
  best=$(awk -v a="$best" -v b="$m" 'BEGIN{print (b>a)?b:a}')
done
printf '%-9s %12s %9s %9s %11s  (%s runs)\n' layout "events/s" "CPU-s/M" "peak RSS" "vs fastest" "$n"
for l in sas compact pretty shuffled; do
  m=$(median <<<"${rate[$l]}")
  printf '%-9s %12.0f %9.3f %5.0f MiB %+10.1f %%\n' "$l" "$m" "$(median <<<"${cpu[$l]}")" \
    "$(median <<<"${rss[$l]}")" "$(awk -v m="$m" -v b="$best" 'BEGIN{print (m/b-1)*100}')"
done
