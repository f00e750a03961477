#!/usr/bin/env bash
# Parse + replay of every shared firmware event log: imgctl against tpm2_eventlog (tpm2-tools),
# in one run. Prints per-log time for one parse+replay each and the ratio, then logs/s for a
# batch of N (default 10000) logs cycled over the corpus. Usage: scripts/bench-eventlog.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
shared=${IMGCTL_SHARED:-../shared}
cargo build --release -q --example bench_eventlog --bin imgctl
bin=target/release/examples/bench_eventlog
mapfile -t logs < <(find "$shared/testdata/eventlogs" -type f \( -name '*.bin' -o -name 'binary_bios_measurements*' -o -name '*_eventlog' \) -size +0 | sort)
ok=()
for f in "${logs[@]}"; do
  # Logs tpm2_eventlog 5.4 refuses or crashes on are not compared.
  if timeout 10 tpm2_eventlog "$f" >/dev/null 2>&1; then ok+=("$f"); fi
done
printf '%-60s %12s %12s %8s %12s %8s\n' log tpm2_eventlog imgctl-lib ratio imgctl-cli ratio
total_t=0; total_o=0
for f in "${ok[@]}"; do
  reps=50
  t0=$(date +%s%N); for _ in $(seq $reps); do tpm2_eventlog "$f" >/dev/null 2>&1; done; t1=$(date +%s%N)
  tt=$(( (t1 - t0) / reps ))
  to=$("$bin" "$f" 2000 | awk '{print $1}')
  [ "$to" = 0 ] && { echo "${f#$shared/testdata/eventlogs/}: rejected by imgctl (see tests/eventlog.rs), skipped"; continue; }
  t0=$(date +%s%N); for _ in $(seq $reps); do target/release/imgctl eventlog replay "$f" --json >/dev/null 2>&1; done; t1=$(date +%s%N)
  tc=$(( (t1 - t0) / reps ))
  total_t=$((total_t + tt)); total_o=$((total_o + to))
  printf '%-60s %10dus %10.1fus %7.0fx %10dus %7.1fx\n' "${f#$shared/testdata/eventlogs/}" $((tt / 1000)) "$(echo "$to/1000" | bc -l)" "$(echo "$tt/$to" | bc -l)" $((tc / 1000)) "$(echo "$tt/$tc" | bc -l)"
done
echo "batch of $n (cycled over ${#ok[@]} logs):"
"$bin" --batch "$n" "${ok[@]}"
per_tool=$(echo "$total_t/${#ok[@]}" | bc -l)
printf 'tpm2_eventlog: %.0f logs/s (one process per log, mean over the corpus)\n' "$(echo "1000000000/$per_tool" | bc -l)"
