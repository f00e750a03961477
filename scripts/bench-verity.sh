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
# wall and CPU (user+sys) seconds of one command
timed() { /usr/bin/time -f "%e %U %S" "$@" 2>&1 >/dev/null | tail -1; }
best() { sort -g | head -1; }
vs=(); ours=(); vs_cpu=(); ours_cpu=()
for i in $(seq "$runs"); do
  read -r w u s < <(timed veritysetup format --salt=$salt --uuid=$uuid "$dir/data" "$dir/vs.hash")
  vs+=("$w"); vs_cpu+=("$(echo "$u + $s" | bc -l)")
  read -r w u s < <(timed "$bin" ext verity --salt $salt --uuid $uuid "$dir/data" "$dir/ours.hash")
  ours+=("$w"); ours_cpu+=("$(echo "$u + $s" | bc -l)")
done
cmp "$dir/vs.hash" "$dir/ours.hash" && echo "hash devices identical ($(stat -c %s "$dir/ours.hash") bytes)"
tv=$(printf '%s\n' "${vs[@]}" | best); to=$(printf '%s\n' "${ours[@]}" | best)
cv=$(printf '%s\n' "${vs_cpu[@]}" | best); co=$(printf '%s\n' "${ours_cpu[@]}" | best)
gb=$(echo "$size / 1024 * 1.073741824" | bc -l)
printf 'size %d MiB, best of %d, %d cores, load %s\n' "$size" "$runs" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
printf 'veritysetup format: %.3f s  %.2f GB/s  (%.2f CPU-s)\n' "$tv" "$(echo "$gb / $tv" | bc -l)" "$cv"
printf 'imgctl ext verity:  %.3f s  %.2f GB/s  (%.2f CPU-s)\n' "$to" "$(echo "$gb / $to" | bc -l)" "$co"
printf 'speed-up (wall): %.2fx\n' "$(echo "$tv / $to" | bc -l)"
