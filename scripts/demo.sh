#!/usr/bin/env bash
# The main job on the built-in demo recipe (recipes/demo.yaml): build the UKI, predict its PCRs,
# publish it in a transparency log, boot it under QEMU + OVMF + swtpm, and verify what the
# machine measured against what was predicted and published. Exit 0 only if it all agrees.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q
imgctl=$PWD/target/release/imgctl
out=images/demo
log=images/log

step() { printf '\n== %s\n' "$*"; }

step "build recipes/demo.yaml (and append it to the transparency log $log)"
[ -f images/log.key ] || "$imgctl" log init "$log" --key images/log.key --origin imgctl.example/demo-log
"$imgctl" build recipes/demo.yaml -o "$out" --log "$log" --log-key images/log.key

step "inspect"
"$imgctl" inspect "$out/demo.efi"

step "predict PCR 11 (sha1, sha256) right after the stub and per boot phase"
"$imgctl" predict-pcrs "$out/demo.efi" --bank sha1 --bank sha256

step "the log proves the UKI was published"
"$imgctl" log verify --vkey @images/log.vkey --proof "$out/demo.efi.tlog-proof"

step "boot it (QEMU + OVMF + swtpm) and capture the PCRs and event log the guest saw"
rm -rf "$out/boot"
"$imgctl" vm "$out/demo.efi" --capture "$out/boot" --quiet

step "predicted vs measured"
"$imgctl" eventlog replay "$out/boot/eventlog.bin" --json > "$out/boot/replay.json"
python3 - "$out/pcrs.json" "$out/boot/pcrs.json" "$out/boot/replay.json" <<'EOP'
import json, sys
pred = json.load(open(sys.argv[1])); seen = json.load(open(sys.argv[2])); replay = json.load(open(sys.argv[3]))
rows, bad = [], 0
for bank in ("sha1", "sha256"):
    p = next(v["hash"] for v in pred[bank] if "phase" not in v)
    m = seen.get(bank, {}).get("11", "")
    ok = p == m; bad += not ok
    rows.append(("11", bank, "imgctl predict-pcrs", p, m, ok))
    for pcr, value in sorted(replay.get(bank, {}).items(), key=lambda kv: int(kv[0])):
        m = seen.get(bank, {}).get(pcr, "")
        ok = value == m; bad += not ok
        rows.append((pcr, bank, "event log replay", value, m, ok))
print(f"{'PCR':>3} {'bank':<6} {'expected from':<20} {'expected':<18} {'machine':<18} verdict")
for pcr, bank, src, e, m, ok in rows:
    print(f"{pcr:>3} {bank:<6} {src:<20} {e[:16]+'…':<18} {(m[:16]+'…') if m else '(not read)':<18} {'match' if ok else 'MISMATCH'}")
print("\nall predicted and replayed PCRs match the machine" if not bad else f"\n{bad} MISMATCH(ES)")
sys.exit(1 if bad else 0)
EOP

step "verify the boot against the transparency log alone (every measured artifact must be published there)"
cat > "$out/boot/policy.yaml" <<EOP
pcrs: [4, 11]
banks: [sha1, sha256]
EOP
"$imgctl" verify --eventlog "$out/boot/eventlog.bin" --policy "$out/boot/policy.yaml" \
    --log "$log" --vkey @images/log.vkey --state images/verifier-state.json
printf '\ndemo: the machine booted exactly what was built, predicted and published.\n'
