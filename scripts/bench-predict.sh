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
ours() { "$imgctl" predict-pcrs "$uki" --json --phase=enter-initrd --phase=enter-initrd:leave-initrd --phase=enter-initrd:leave-initrd:sysinit --phase=enter-initrd:leave-initrd:sysinit:ready; }
python3 - "$(sm)" "$(ours)" <<'EOP'
import json, sys
assert json.loads(sys.argv[1]) == json.loads(sys.argv[2]), "outputs differ"
print("outputs identical (4 banks x 4 phases)")
EOP
# Wall and CPU (user+sys) milliseconds of one run, via GNU time.
t() { /usr/bin/time -f "%e %U %S" -o "$work/t" "$@" >/dev/null; awk '{printf "%d,%d\n", $1*1000, ($2+$3)*1000}' "$work/t"; }
export -f sm ours; export work uki imgctl
a=(); b=()
for _ in $(seq "$runs"); do a+=("$(t bash -c sm)"); b+=("$(t bash -c ours)"); done
python3 - "${a[*]}" "${b[*]}" "$(stat -c %s "$uki")" "$(cat /proc/loadavg)" <<'EOP'
import statistics, sys
a = [tuple(map(int, x.split(","))) for x in sys.argv[1].split()]
b = [tuple(map(int, x.split(","))) for x in sys.argv[2].split()]
med = lambda xs, i: statistics.median(x[i] for x in xs)
print(f"UKI {int(sys.argv[3]) / 2**20:.1f} MiB, load average {sys.argv[4]}")
print(f"wall ms  systemd-measure {[x[0] for x in a]}  imgctl {[x[0] for x in b]}")
print(f"median wall: systemd-measure {med(a,0):.0f} ms, imgctl predict-pcrs {med(b,0):.0f} ms, ratio {med(b,0)/med(a,0):.2f}")
print(f"median CPU:  systemd-measure {med(a,1):.0f} ms, imgctl predict-pcrs {med(b,1):.0f} ms, ratio {med(b,1)/med(a,1):.2f}")
EOP
