#!/usr/bin/env bash
# The serve load run (issue 14), loopback only: MACHINES software machines (software EK/AK,
# ActivateCredential and quotes re-signing the captured OVMF + swtpm boot under each nonce)
# attest ROUNDS times each through the HTTP API against two `imgctl serve` replicas sharing one
# private PostgreSQL cluster (initdb + pg_ctl in a temporary folder, unix socket only);
# replica A is killed with SIGKILL halfway and the machines move to B. Then every machine's
# record is checked (no verdict lost or duplicated, no secret released twice for a nonce, every
# machine finished) and the database is asked for consumed nonces without a verdict.
#
# Usage: scripts/bench-serve.sh [--machines N] [--rounds R] [--no-kill] [--row ROWS.jsonl]
#   prints attestations/s, p50/p99 latency, the load average, what happened at the kill;
#   --row appends a row for scripts/bench.sh's table.
# Needs: PostgreSQL (Debian's postgresql: /usr/lib/postgresql/*/bin), python3, ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
machines=200; rounds=5; kill=1; row=""
while [ $# -gt 0 ]; do
  case $1 in
    --machines) machines=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --no-kill) kill=0; shift ;;
    --row) row=$(realpath -m "$2"); shift 2 ;;
    *) echo "usage: scripts/bench-serve.sh [--machines N] [--rounds R] [--no-kill] [--row FILE]" >&2; exit 2 ;;
  esac
done
shared=$(realpath -m "${IMGCTL_SHARED:-../shared}")
cap=$shared/testdata/eventlogs/ovmf-swtpm
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "bench-serve: no PostgreSQL under /usr/lib/postgresql" >&2; exit 1; }
echo "building release binaries ..." >&2
cargo build --release -q --bin imgctl
cargo build --release -q -p imgctl-service --example serve_load
imgctl=${IMGCTL:-$root/target/release/imgctl}

work=$(mktemp -d)
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$pgbin/pg_ctl" -m immediate -D "$work/pg/data" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
mkdir "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work/pg"
as_pg "$pgbin/initdb" -A trust -U imgctl -N -D "$work/pg/data" >/dev/null
as_pg "$pgbin/pg_ctl" -w -D "$work/pg/data" -l "$work/pg/log" \
  -o "-F -k $work/pg -c listen_addresses= -c max_connections=100" start >/dev/null
db="host=$work/pg port=5432 user=imgctl dbname=postgres"

# A policy that accepts the captured boot, as tests/serve.rs writes it: golden SHA-256 values
# the guest read for PCRs 0-7 and 9, PCR 11 through a reference manifest of the booted sections
# with systemd-measure's prediction.
pcrs=0,1,2,3,4,5,6,7,9,11
python3 - "$cap" "$work" "$pcrs" <<'EOF'
import json, sys
cap, work, want = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")]
gold = {}
for line in open(f"{cap}/ovmf-stub252-pcrs.txt"):
    f = line.split()
    if f[1] == "sha256" and int(f[2]) in want and f[2] != "11":
        gold[f[2]] = f[3].lower()
inputs = {}
for line in open(f"{cap}/ovmf-stub252-inputs.sha256"):
    h, n = line.split(" ", 1)
    inputs[n.strip()] = h
sections = [{"name": s, "measured": True, "digests": {"sha256": inputs[f]},
             "offset": 0, "virtual_address": 0, "virtual_size": 0, "size_of_raw_data": 0}
            for s, f in [(".linux", "vmlinuz"), (".osrel", "osrel"), (".cmdline", "cmdline"),
                         (".initrd", "initrd.cpio")]]
none = {"role": "reference", "path": "(reference)", "size": 0, "digests": {}}
manifest = {
    "format": "imgctl-manifest/1", "name": "demo", "version": "0", "builder": "(reference)",
    "source_date_epoch": 0, "recipe": none, "inputs": [], "initrd": None,
    "uki": {"file": "demo.efi", "size": 0, "digests": {}, "authenticode": {},
            "stub": {"path": "(reference)", "sdmagic": None, "semantics": "systemd-252"},
            "sections": sections},
    "pcrs": json.load(open(f"{cap}/ovmf-stub252-systemd-measure.json")),
}
json.dump(manifest, open(f"{work}/demo.manifest.json", "w"))
json.dump({"pcrs": want, "banks": ["sha256"], "expected": {"sha256": gold},
           "manifests": ["demo.manifest.json"]}, open(f"{work}/policy.json", "w"))
EOF
head -c 32 /dev/urandom >"$work/disk.key"
cat >"$work/serve.yaml" <<EOF
listen: 127.0.0.1:0
database: '$db'
nonce_ttl_seconds: 120
policy:
  name: demo
  version: 1
  file: policy.json
  secrets:
    - {name: disk-key, file: disk.key}
EOF
start() {
  "$imgctl" serve --config "$work/serve.yaml" >"$work/$1.url" 2>"$work/$1.err" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/$1.url" ] && break; sleep 0.1; done
  [ -s "$work/$1.url" ] || { cat "$work/$1.err" >&2; exit 1; }
}
start a; pid_a=${pids[0]}
start b
url_a=$(head -1 "$work/a.url"); url_b=$(head -1 "$work/b.url")
total=$((machines * rounds))
kill_args=()
[ $kill = 1 ] && kill_args=(--kill-pid "$pid_a" --kill-after $((total / 2)))
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
set +e
"$root/target/release/examples/serve_load" --server "$url_a" --server "$url_b" \
  --machines "$machines" --rounds "$rounds" --event-log "$cap/ovmf-stub252-eventlog.bin" \
  --pcrs "$pcrs" --secret "disk-key=$work/disk.key" "${kill_args[@]}" --check "$url_b" >"$work/out.json"
rc=$?
set -e
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
orphans=$("$pgbin/psql" -X -tA -c "SELECT count(*) FROM nonces n WHERE used_at IS NOT NULL AND (SELECT count(*) FROM verdicts v WHERE v.nonce = n.nonce) <> 1" "$db")
dups=$("$pgbin/psql" -X -tA -c "SELECT count(*) - count(DISTINCT (nonce, secret)) FROM releases" "$db")
python3 - "$work/out.json" "$load_start" "$load_end" "$orphans" "$dups" "$kill" "$row" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
r, a = o["report"], o["audit"] or {}
print(f"replicas {r['replicas']} (PostgreSQL, pool of 8 each), machines {r['machines']}, "
      f"attestations {r['attestations']} in {r['seconds']:.1f} s = {r['per_second']:.1f}/s; "
      f"latency p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms; "
      f"enrolment of all machines {r['enrol_seconds']:.1f} s")
print(f"load average: start {sys.argv[2]}, end {sys.argv[3]}")
if sys.argv[6] == "1":
    print(f"kill -9 of replica A: {'done' if o['killed'] else 'NOT DONE'}; "
          f"{r['transport_failures']} requests failed in transport and moved to B; "
          f"{r['lost_answers']} evidence answers lost, {a.get('lost_but_recorded', 0)} of them "
          f"committed before the kill (their verdicts on record, their machines attested again)")
print(f"records: {a.get('verdicts')} verdicts, {a.get('releases')} releases; consumed nonces "
      f"without exactly one verdict: {sys.argv[4]}; duplicate releases: {sys.argv[5]}")
for v in (o["violations"] or [])[:20]:
    print("VIOLATION:", v)
if sys.argv[7]:
    with open(sys.argv[7], "a") as f:
        f.write(json.dumps({
            "work": f"serve: {r['machines']} machines x 2 replicas, kill -9 one", "peer": "-",
            "unit": "/s", "target": "invariants hold", "ours_samples": [[r["per_second"]]],
            "note": f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; load {sys.argv[3]}; "
                    f"{r['lost_answers']} answers lost at the kill, none lost on record"}) + "\n")
EOF
[ "$rc" = 0 ] && [ "$orphans" = 0 ] && [ "$dups" = 0 ] || { echo "bench-serve: INVARIANTS FAILED (rc $rc)" >&2; exit 1; }
