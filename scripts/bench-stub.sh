#!/usr/bin/env bash
# Firmware hand-over to kernel start, per stub: boots each UKI N times (default 3) from a FAT ESP
# under OVMF (TCG) + swtpm, one at a time, and prints the milliseconds between OVMF's
# "BdsDxe: starting Boot" line and the kernel EFI stub's first line ("EFI stub: ...").
# Usage: scripts/bench-stub.sh UKI... [-n N]     (run by hand; not part of the tests)
set -euo pipefail
N=3; ukis=()
while [ $# -gt 0 ]; do
    case $1 in -n) N=$2; shift 2 ;; *) ukis+=("$1"); shift ;; esac
done
ms() { date +%s%3N; }
for uki in "${ukis[@]}"; do
    for i in $(seq "$N"); do
        d=$(mktemp -d)
        swtpm socket --tpm2 --tpmstate dir="$d" --ctrl type=unixio,path="$d/sock" --flags startup-clear &
        tpm=$!
        while [ ! -S "$d/sock" ]; do sleep 0.05; done
        cp /usr/share/OVMF/OVMF_VARS_4M.fd "$d/vars.fd"
        truncate -s 64M "$d/esp.img"; mkfs.vfat -F 32 "$d/esp.img" >/dev/null
        mmd -i "$d/esp.img" ::/EFI ::/EFI/BOOT; mcopy -i "$d/esp.img" "$uki" ::/EFI/BOOT/BOOTX64.EFI
        timeout 180 qemu-system-x86_64 -machine q35 -m 1024 -accel tcg -nographic -no-reboot -net none \
            -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
            -drive if=pflash,format=raw,file="$d/vars.fd" -drive if=virtio,format=raw,file="$d/esp.img" \
            -chardev socket,id=chrtpm,path="$d/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
            -device tpm-tis,tpmdev=tpm0 >"$d/console" 2>&1 </dev/null &
        qemu=$!
        start=""; result=""
        while kill -0 "$qemu" 2>/dev/null; do
            if [ -z "$start" ] && grep -aq "BdsDxe: starting Boot" "$d/console"; then start=$(ms); fi
            if [ -n "$start" ] && grep -aq "EFI stub: " "$d/console"; then result=$(( $(ms) - start )); break; fi
            sleep 0.02
        done
        kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true
        kill "$tpm" 2>/dev/null || true; wait "$tpm" 2>/dev/null || true
        rm -rf "$d"
        echo "$uki run $i: hand-over to kernel EFI stub ${result:-?} ms"
    done
done
