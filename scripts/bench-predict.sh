#!/usr/bin/env bash
# Benchmark: `imgctl predict-pcrs` against `systemd-measure calculate` on the same UKI with a
# 64 MiB initrd, all four banks, systemd-measure's default phases; both in one run, interleaved.
# Prints the median wall time of each and the ratio. Usage: scripts/bench-predict.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
cargo build --release -q
imgctl=$PWD/target/release/imgctl
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
head -c $((64 << 20)) /dev/urandom > "$work/initrd.img"
kernel=.cache/demo/vmlinuz; [ -f "$kernel" ] || { head -c $((8 << 20)) /dev/urandom > "$work/vmlinuz"; kernel=$work/vmlinuz; }
cat > "$work/bench.yaml" <<EOR
name: bench
version: "1"
os-release: { ID: bench, VERSION_ID: "1" }
kernel: $PWD/$kernel
initrd: { archives: [initrd.img] }
cmdline: console=ttyS0 quiet
EOR
"$imgctl" build "$work/bench.yaml" -o "$work/out" >/dev/null
uki=$work/out/bench.efi
for s in linux osrel cmdline initrd; do objcopy -O binary --only-section=.$s "$uki" "$work/$s"; done
phases=(--phase=enter-initrd --phase=enter-initrd:leave-initrd --phase=enter-initrd:leave-initrd:sysinit --phase=enter-initrd:leave-initrd:sysinit:ready)
sm() { /lib/systemd/systemd-measure calculate --linux="$work/linux" --osrel="$work/osrel" --cmdline="$work/cmdline" --initrd="$work/initrd" --json=short; }
ours() { "$imgctl" predict-pcrs "$uki" --json "${phases[@]}"; }
python3 - "$(sm)" "$(ours)" <<'EOP'
import json, sys
assert json.loads(sys.argv[1]) == json.loads(sys.argv[2]), "outputs differ"
print("outputs identical (4 banks x 4 phases)")
EOP
t() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
a=(); b=()
for _ in $(seq "$runs"); do a+=("$(t sm)"); b+=("$(t ours)"); done
python3 - "${a[*]}" "${b[*]}" "$(stat -c %s "$uki")" <<'EOP'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]; b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"UKI {int(sys.argv[3]) / 2**20:.1f} MiB; runs: systemd-measure {a} ms, imgctl {b} ms")
print(f"median: systemd-measure {ma:.0f} ms, imgctl predict-pcrs {mb:.0f} ms, ratio imgctl/systemd-measure = {mb / ma:.2f}")
EOP
