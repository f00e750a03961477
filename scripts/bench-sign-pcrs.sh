#!/usr/bin/env bash
# Benchmark: `imgctl sign-pcrs` against `systemd-measure sign` (Debian 252 needs a TPM for
# the policy digests: it gets a swtpm on a unix socket) on the same UKI with a 64 MiB initrd,
# an RSA-2048 key, all four banks and the default phases; outputs must be byte-identical.
# Prints the median wall and CPU time of each. Usage: scripts/bench-sign-pcrs.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release -q
imgctl=$PWD/target/release/imgctl
work=$(mktemp -d)
swtpm socket --tpm2 --server type=unixio,path="$work/sock" --ctrl type=unixio,path="$work/sock.ctrl" \
  --tpmstate dir="$work" --flags not-need-init,startup-clear >/dev/null 2>&1 &
swtpm_pid=$!
trap 'kill $swtpm_pid 2>/dev/null; rm -rf "$work"' EXIT
head -c $((64 << 20)) /dev/urandom > "$work/initrd.img"
head -c $((8 << 20)) /dev/urandom > "$work/vmlinuz"
cat > "$work/bench.yaml" <<EOR
name: bench
version: "1"
os-release: { ID: bench, VERSION_ID: "1" }
kernel: $work/vmlinuz
initrd: { archives: [initrd.img] }
cmdline: console=ttyS0 quiet
EOR
"$imgctl" build "$work/bench.yaml" -o "$work/out" >/dev/null
uki=$work/out/bench.efi
for s in linux osrel cmdline initrd; do objcopy -O binary --only-section=.$s "$uki" "$work/$s"; done
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/pub.pem"
sm() { /lib/systemd/systemd-measure sign --linux="$work/linux" --osrel="$work/osrel" --cmdline="$work/cmdline" \
  --initrd="$work/initrd" --private-key="$work/key.pem" --public-key="$work/pub.pem" --tpm2-device="swtpm:path=$work/sock" 2>/dev/null; }
ours() { "$imgctl" sign-pcrs "$uki" --private-key "$work/key.pem"; }
cmp <(sm) <(ours) && echo "outputs byte-identical (4 banks x 4 phases)"
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
print(f"median wall: systemd-measure sign {med(a,0):.0f} ms, imgctl sign-pcrs {med(b,0):.0f} ms, ratio {med(b,0)/med(a,0):.2f}")
print(f"median CPU:  systemd-measure sign {med(a,1):.0f} ms, imgctl sign-pcrs {med(b,1):.0f} ms, ratio {med(b,1)/med(a,1):.2f}")
EOP
