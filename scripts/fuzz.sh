#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 120) on the nightly toolchain, seeding each
# corpus from real data (the systemd stub, a built UKI, recipes, shared test data) in
# .cache/fuzz/ (not committed). Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
shared=${IMGCTL_SHARED:-../shared}
for t in "${targets[@]}"; do
  corpus=.cache/fuzz/corpus/$t
  mkdir -p "$corpus"
  case $t in
    pe) cp -f /usr/lib/systemd/boot/efi/linuxx64.efi.stub "$corpus/" 2>/dev/null || true ;;
    recipe) cp -f recipes/*.yaml "$corpus/" ;;
    *eventlog*|*tcg*) find "$shared/testdata/eventlogs" -type f -name '*.bin' -size -200k -exec cp -f {} "$corpus/" \; 2>/dev/null || true ;;
  esac
  echo "== fuzz $t for ${secs}s"
  (cd fuzz && cargo +nightly fuzz run "$t" "../$corpus" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^(#[0-9]+.*(DONE|pulse)|Done|==[0-9]+==|SUMMARY)" | tail -3)
done
