#!/usr/bin/env bash
# `imgctl build` of a large generated initrd tree against GNU `find | cpio -o -H newc` on the same
# tree, in one run: wall time, CPU time and peak RSS (GNU time's %M) of each. The tree (random,
# incompressible files: 10 of 8 MiB, the rest spread over N files) is generated in a temporary
# folder and removed afterwards. Usage: scripts/bench-build.sh [MIB [FILES [none|gzip]]]
# (default: 1024 MiB, 20000 files, none). Set IMGCTL=path to time another imgctl binary.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
files=${2:-20000}
compression=${3:-none}
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
[ -e "$stub" ] || { echo "no $stub (Debian package systemd-boot-efi)" >&2; exit 1; }
if [ -z "${IMGCTL:-}" ]; then
  cargo build --release -q --bin imgctl
  IMGCTL=$PWD/target/release/imgctl
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/tree" "$mib" "$files" <<'EOF'
import os, random, sys
root, total, count = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3])
random.seed(11)
big = min(8 << 20, total // 20)
os.makedirs(f"{root}/large")
for i in range(10):
    with open(f"{root}/large/l{i}.bin", "wb") as f:
        f.write(os.urandom(big))
rest, n = total - 10 * big, count - 10
sizes = [random.uniform(0, 2) for _ in range(n)]
scale = rest / sum(sizes)
sizes = [int(s * scale) for s in sizes]
sizes[-1] += rest - sum(sizes)
for i, s in enumerate(sizes):
    d = f"{root}/d{i // 100:04d}"
    if i % 100 == 0:
        os.makedirs(d)
    with open(f"{d}/f{i:06d}", "wb") as f:
        f.write(os.urandom(s))
EOF
printf 'kernel\n' > "$work/vmlinuz"
printf 'name: bench\nversion: 1\nos-release:\n  ID: bench\nkernel: vmlinuz\nuname: 6.1.0\ninitrd:\n  tree: tree\n  compression: %s\n' \
  "$compression" > "$work/recipe.yaml"
echo "tree: $(du -sm "$work/tree" | cut -f1) MiB in $(find "$work/tree" -type f | wc -l) files, compression $compression"
fmt='%e s wall, %U s user, %S s sys, peak RSS %M KiB'
/usr/bin/time -f "imgctl build:        $fmt" "$IMGCTL" build "$work/recipe.yaml" -o "$work/out" >/dev/null
rm -rf "$work/out"
gz=cat
[ "$compression" = gzip ] && gz='gzip -9n'
(cd "$work/tree" && /usr/bin/time -f "find | cpio -H newc: $fmt" sh -c "find . | cpio -o -H newc --quiet | $gz > '$work/gnu.cpio'")
