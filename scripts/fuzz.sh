#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/, one per parser of untrusted bytes) for
# SECONDS each (default 120) on the nightly toolchain. Each corpus is seeded from real data
# generated here into .cache/fuzz/ (not committed): the systemd stub, a small UKI built by imgctl
# with its pcrs.json, manifest.json, .pcrsig and log entry/proof, a transparency log, keys made by
# openssl, the shared event logs, quote and capture (../shared/testdata), and a built sysext.
# A crash does not stop the run: every crashing target is listed at the end with its artifact
# (also in .cache/fuzz/summary.txt, with the execs per target) and the script exits 1.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (FUZZ_KEEP_GOING=1: keep fuzzing past crashes)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-120}
shift || true
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
shared=$(cd "${IMGCTL_SHARED:-../shared}" 2>/dev/null && pwd || echo /nonexistent)
testdata=$shared/testdata
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
work=$root/.cache/fuzz/work
seeds=$root/.cache/fuzz/seeds

# --- Seed material, made once (rm -rf .cache/fuzz/work to redo). ---
make_seeds() {
    [ -f "$work/.done" ] && return 0
    rm -rf "$work" "$seeds"
    mkdir -p "$work" "$seeds"
    cargo build -q --bin imgctl
    local imgctl=$root/target/debug/imgctl w=$work
    # A small UKI: the real stub, the first 64 KiB of a real kernel (setup header + PE header).
    mkdir -p "$w/tree/etc"
    if [ -f "$testdata/eventlogs/ovmf-swtpm/ovmf-stub252-vmlinuz" ]; then
        head -c 65536 "$testdata/eventlogs/ovmf-swtpm/ovmf-stub252-vmlinuz" >"$w/vmlinuz"
    else
        head -c 65536 /dev/urandom >"$w/vmlinuz"
    fi
    printf '#!/bin/sh\necho hi\n' >"$w/tree/init"
    printf 'motd\n' >"$w/tree/etc/motd"
    printf 'name: t\nversion: "1.10"\nos-release:\n  ID: t\n  VERSION_ID: "1.10"\nkernel: vmlinuz\ninitrd:\n  tree: tree\ncmdline: console=ttyS0 quiet\nuname: 6.1.0-test\n' >"$w/recipe.yaml"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/rsa.pem" 2>/dev/null || true
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$w/ec.pem" 2>/dev/null || true
    openssl pkey -in "$w/rsa.pem" -pubout -out "$w/rsa.pub.pem" 2>/dev/null || true
    openssl pkey -in "$w/ec.pem" -pubout -out "$w/ec.pub.pem" 2>/dev/null || true
    openssl pkey -in "$w/ec.pem" -pubout -outform DER -out "$w/ec.pub.der" 2>/dev/null || true
    openssl ec -in "$w/ec.pem" -out "$w/ec.sec1.pem" 2>/dev/null || true
    openssl rsa -in "$w/rsa.pem" -traditional -out "$w/rsa.pkcs1.pem" 2>/dev/null || true
    "$imgctl" log init "$w/log" --key "$w/log.key" --origin example.com/fuzz >/dev/null 2>&1 || true
    SOURCE_DATE_EPOCH=0 "$imgctl" build "$w/recipe.yaml" -o "$w/uki" --log "$w/log" --log-key "$w/log.key" >/dev/null 2>&1 ||
        SOURCE_DATE_EPOCH=0 "$imgctl" build "$w/recipe.yaml" -o "$w/uki" >/dev/null 2>&1 || true
    [ -f "$w/uki/t.efi" ] && "$imgctl" sign-pcrs "$w/uki/t.efi" --private-key "$w/ec.pem" --bank sha256 -o "$w/t.pcrsig" >/dev/null 2>&1 || true
    [ -f "$w/uki/t.efi" ] && "$imgctl" sign-pcrs "$w/uki/t.efi" --private-key "$w/rsa.pem" --bank sha1 --bank sha256 -o "$w/t.rsa.pcrsig" >/dev/null 2>&1 || true
    "$imgctl" ext build recipes/demo-sysext.yaml -o "$w/sysext" >/dev/null 2>&1 || true
    python3 - "$w" "$testdata" <<'PY' || true
import base64, hashlib, json, os, sys
w, testdata = sys.argv[1:]
def put(name, data):
    with open(os.path.join(w, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
# The quote, its signature and the AK of go-attestation's Windows GCE bundle.
try:
    j = json.load(open(f"{testdata}/eventlogs/go-attestation/windows_gcp_shielded_vm.json"))
    put("quote.attest", base64.b64decode(j["Quote"]["Quote"]))
    put("quote.sig", base64.b64decode(j["Quote"]["Signature"]))
    put("ak.tpm2b", base64.b64decode(j["AK"]["Public"]))
    put("quote.json", json.dumps({"quote": j["Quote"]["Quote"], "signature": j["Quote"]["Signature"]}))
except Exception as e:
    print(f"fuzz.sh: no quote seeds: {e}", file=sys.stderr)
# systemd's userspace log: phase records as systemd-pcrphase writes them.
log = b""
for word in ["enter-initrd", "leave-initrd", "sysinit", "ready"]:
    digests = [{"hashAlg": a, "digest": hashlib.new(a, word.encode()).hexdigest()} for a in ("sha1", "sha256")]
    rec = {"pcr": 11, "digests": digests, "content_type": "systemd",
           "content": {"string": word, "bootId": "0" * 32, "timestamp": 1, "eventType": "phase"}}
    log += b"\x1e" + json.dumps(rec, separators=(",", ":")).encode() + b"\n"
put("userspace.log", log)
# Policies (YAML and JSON) as tests/verify.rs writes them.
policy = {"pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 9, 11], "banks": ["sha1", "sha256"],
          "manifests": ["uki/manifest.json"], "expected": {"sha256": {"0": "00" * 32}},
          "allow_break_glass": False}
put("policy.json", json.dumps(policy))
put("policy.yaml", "pcrs: [0, 7, 11]\nbanks: [sha256]\nmanifests: [uki/manifest.json]\nexpected:\n  sha256:\n    '7': " + "11" * 32 + "\n")
# A log entry in its JSON form (log append --entry).
entry = {"kind": "uki", "name": "t", "version": "1.10", "digests": {"sha256": "ab" * 32},
         "pcrs": [{"pcr": 11, "bank": "sha256", "phase": "enter-initrd", "value": "cd" * 32}],
         "recipe": "sha256:" + "ef" * 32, "builder": "imgctl 0.1.0"}
put("entry.json", json.dumps(entry))
# The log's tiles: the entry bundle and hash tile, and the entries they hold.
for dp, _, files in os.walk(os.path.join(w, "log", "tile")):
    for f in files:
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, os.path.join(w, "log")).replace("/", "_")
        data = open(p, "rb").read()
        put("tile-" + rel, data)
        if "entries" in p:
            i = 0
            while i + 2 <= len(data):
                n = int.from_bytes(data[i:i + 2], "big")
                put(f"entry-{i}.bin", data[i + 2:i + 2 + n])
                i += 2 + n
# PCR values as `eventlog replay --json` prints them and `audit --pcrs` reads them.
put("pcr-values.json", json.dumps({"sha1": {"0": "00" * 20, "7": "ab" * 20}, "sha256": {"11": "cd" * 32}}))
# Partition table, verity superblock and signature partition of the built sysext.
try:
    m = json.load(open(f"{w}/sysext/manifest.json"))
    data = open(f"{w}/sysext/{m['image']}", "rb").read()
    put("sysext.gpt", data[:17408])
    for p in m["partitions"]:
        d = p["designator"]
        if d.endswith("verity-sig"):
            put("sysext.verity-sig", data[p["offset"]:p["offset"] + p["size"]])
        elif d.endswith("verity"):
            put("sysext.verity-sb", data[p["offset"]:p["offset"] + 512])
except Exception as e:
    print(f"fuzz.sh: no sysext seeds: {e}", file=sys.stderr)
# An unsigned sysext has no signature partition: write one as systemd-repart lays it out.
if not os.path.exists(f"{w}/sysext.verity-sig"):
    sig = json.dumps({"rootHash": "ab" * 32, "signature": base64.b64encode(b"\x30\x82" + bytes(64)).decode()})
    put("sysext.verity-sig", sig.encode().ljust(4096, b"\0"))
PY
    touch "$work/.done"
}

# seed TARGET FILE...: copies the files that exist into the target's corpus.
seed() {
    local t=$1 f
    shift
    mkdir -p "$seeds/$t"
    for f in "$@"; do
        [ -f "$f" ] && cp -f "$f" "$seeds/$t/"
    done
    return 0
}

seed_target() {
    local t=$1 w=$work el=$testdata/eventlogs
    case $t in
        pe | stub_image) seed "$t" "$stub" "$w/uki/t.efi" ;;
        kernel_release) head -c 32768 "$el/ovmf-swtpm/ovmf-stub252-vmlinuz" >"$w/vmlinuz.head" 2>/dev/null || true
            seed "$t" "$w/vmlinuz.head" ;;
        recipe) seed "$t" recipes/demo.yaml "$w/recipe.yaml" ;;
        ext_recipe) seed "$t" recipes/*.yaml ;;
        eventlog_tcg)
            mkdir -p "$seeds/$t"
            find "$el" -type f -size -200k ! -name '*.json' ! -name '*.md' ! -name '*.yaml' ! -name '*.txt' \
                ! -name '*.sha256' ! -name '*.b64' ! -name '*.warn' ! -name '*vmlinuz' -exec cp -f {} "$seeds/$t/" \; ;;
        eventlog_userspace) seed "$t" "$w/userspace.log" ;;
        tpms_attest | tpmt_signature | ak_public)
            seed "$t" "$w/quote.attest" "$w/quote.sig" "$w/ak.tpm2b" "$w/ec.pub.pem" "$w/rsa.pub.pem" "$w/ec.pub.der" ;;
        pem_key) seed "$t" "$w"/*.pem ;;
        pcrsig) seed "$t" "$w/t.pcrsig" "$w/t.rsa.pcrsig" ;;
        policy) seed "$t" "$w/policy.json" "$w/policy.yaml" ;;
        pcrs_json) seed "$t" "$w/uki/pcrs.json" "$el/ovmf-swtpm/ovmf-stub252-systemd-measure.json" ;;
        manifest_json) seed "$t" "$w/uki/manifest.json" ;;
        pcr_values) seed "$t" "$w/pcr-values.json" ;;
        dtb) mkdir -p "$seeds/$t"
            printf '/dts-v1/;\n/ { compatible = "imgctl,a", "soc"; cpus { }; };\n' | dtc -I dts -O dtb -o "$seeds/$t/a.dtb" - 2>/dev/null || true ;;
        quote_json) seed "$t" "$testdata/eventlogs/go-attestation/windows_gcp_shielded_vm.json" "$w/quote.json" ;;
        log_entry) seed "$t" "$w/entry.json" "$w"/entry-*.bin ;;
        tlog_proof) seed "$t" "$w/uki/t.efi.tlog-proof" ;;
        checkpoint | tlog_note) seed "$t" "$w/log/checkpoint" "$testdata/tlog/signed-note-example.txt" "$w/uki/t.efi.tlog-proof" ;;
        tlog_tiles)
            # The target reads the tile width from the first byte (width = byte + 1).
            mkdir -p "$seeds/$t"
            for f in "$w"/tile-*; do
                [ -f "$f" ] && { printf '\000'; cat "$f"; } >"$seeds/$t/$(basename "$f")"
            done
            seed "$t" "$w"/entry-*.bin ;;
        gpt) seed "$t" "$w/sysext.gpt" ;;
        verity_superblock) seed "$t" "$w/sysext.verity-sb" ;;
        verity_signature) seed "$t" "$w/sysext.verity-sig" ;;
        guest_report) seed "$t" fuzz/corpus/guest_report/* ;;
        smbios) seed "$t" fuzz/corpus/smbios/* ;;
        *) mkdir -p "$seeds/$t" ;;
    esac
}

make_seeds
(cd fuzz && cargo +nightly fuzz build >/dev/null)
keep_going=${FUZZ_KEEP_GOING:+1}
summary=$root/.cache/fuzz/summary.txt
: >"$summary"
crashed=()
for t in "${targets[@]}"; do
    seed_target "$t"
    corpus=$root/.cache/fuzz/corpus/$t
    mkdir -p "$corpus"
    cp -f "$seeds/$t"/* "$corpus/" 2>/dev/null || true
    log=$root/.cache/fuzz/$t.log
    echo "== fuzz $t for ${secs}s ($(find "$corpus" -type f | wc -l) inputs in the corpus)"
    status=0
    # FUZZ_KEEP_GOING=1: run in fork mode past crashes (a known crash no longer ends the run).
    (cd fuzz && cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" \
        -rss_limit_mb=2048 -timeout=10 ${keep_going:+-fork=1 -ignore_crashes=1} >"$log" 2>&1) || status=$?
    if [ -n "$keep_going" ] && grep -qE "Test unit written to|artifacts/$t/crash-" "$log"; then status=1; fi
    runs=$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -n 1)
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        artifact=$(sed -n -e 's/.*Test unit written to \(.*\)$/\1/p' -e "s|^[[:space:]]*\(artifacts/$t/crash-[0-9a-f]*\)\$|fuzz/\1|p" "$log" | tail -n 1)
        why=$(grep -m1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" || echo "exit $status")
        echo "   CRASH after ${runs:-?} execs: $why"
        echo "   artifact: ${artifact:-none} (log: $log)"
        echo "$t crash execs=${runs:-?} artifact=${artifact:-none} $why" >>"$summary"
        crashed+=("$t")
    else
        echo "   ok: ${runs:-?} execs"
        echo "$t ok execs=${runs:-?}" >>"$summary"
    fi
done
if [ ${#crashed[@]} -gt 0 ]; then
    echo "crashed: ${crashed[*]} (see .cache/fuzz/summary.txt)" >&2
    exit 1
fi
