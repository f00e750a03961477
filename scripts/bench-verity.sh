#!/usr/bin/env bash
# dm-verity tree of a SIZE_MIB (default 1024) file: imgctl (native, rayon, ring SHA-256) against
# `veritysetup format`, same salt and UUID, in one run; checks the outputs are byte-identical.
# Usage: scripts/bench-verity.sh [SIZE_MIB] [RUNS]   (run by hand; needs cryptsetup-bin)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}; runs=${2:-3}
cargo build -q --release
bin=target/release/imgctl
dir=$(mktemp -d /var/tmp/bench-verity.XXXXXX); trap 'rm -rf "$dir"' EXIT
salt=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
uuid=11111111-2222-3333-4444-555555555555
{ openssl enc -aes-128-ctr -pass pass:imgctl -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c $((size << 20)) >"$dir/data"
cat "$dir/data" >/dev/null   # page cache warm for both tools
now() { date +%s.%N; }
best() { sort -g | head -1; }
vs=(); ours=()
for i in $(seq "$runs"); do
  t0=$(now); veritysetup format --salt=$salt --uuid=$uuid "$dir/data" "$dir/vs.hash" >/dev/null; t1=$(now)
  "$bin" ext verity --salt $salt --uuid $uuid "$dir/data" "$dir/ours.hash" >/dev/null; t2=$(now)
  vs+=("$(echo "$t1 - $t0" | bc -l)"); ours+=("$(echo "$t2 - $t1" | bc -l)")
done
cmp "$dir/vs.hash" "$dir/ours.hash" && echo "hash devices identical ($(stat -c %s "$dir/ours.hash") bytes)"
tv=$(printf '%s\n' "${vs[@]}" | best); to=$(printf '%s\n' "${ours[@]}" | best)
gb=$(echo "$size / 1024 * 1.073741824" | bc -l)
printf 'size %d MiB, best of %d, %d cores\n' "$size" "$runs" "$(nproc)"
printf 'veritysetup format: %.3f s  %.2f GB/s\n' "$tv" "$(echo "$gb / $tv" | bc -l)"
printf 'imgctl ext verity:  %.3f s  %.2f GB/s\n' "$to" "$(echo "$gb / $to" | bc -l)"
printf 'speed-up: %.2fx\n' "$(echo "$tv / $to" | bc -l)"
