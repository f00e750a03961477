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
    gpt|verity_superblock|verity_signature)
      # Seeds: the partition table, verity superblock and signature partition of a built sysext.
      img=images/demo-sysext; [ -f $img/manifest.json ] || cargo run -q -- ext build recipes/demo-sysext.yaml >/dev/null || true
      python3 - "$t" "$corpus" "$img" <<'PY' || true
import json, sys
t, corpus, img = sys.argv[1:]
m = json.load(open(f"{img}/manifest.json")); data = open(f"{img}/{m['image']}", "rb").read()
parts = {p["designator"]: p for p in m["partitions"]}
if t == "gpt": seed = data[:17408]
else:
    p = next((p for d, p in parts.items() if d.endswith("verity" if t == "verity_superblock" else "verity-sig")), None)
    seed = p and data[p["offset"]:p["offset"] + (512 if t == "verity_superblock" else p["size"])]
if seed: open(f"{corpus}/seed", "wb").write(seed)
PY
      ;;
    *eventlog*|*tcg*) find "$shared/testdata/eventlogs" -type f -name '*.bin' -size -200k -exec cp -f {} "$corpus/" \; 2>/dev/null || true ;;
  esac
  echo "== fuzz $t for ${secs}s"
  (cd fuzz && cargo +nightly fuzz run "$t" "../$corpus" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^(#[0-9]+.*(DONE|pulse)|Done|==[0-9]+==|SUMMARY)" | tail -3)
done
