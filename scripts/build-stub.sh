#!/usr/bin/env bash
# Builds imgctl-stub, the Rust UEFI stub, into target/uki-stub/imgctl-stub.efi (or $1):
# the no_std program in uki-stub/efi is compiled for the host target with PIC, no red zone and
# fat LTO, linked by ld as a shared object, checked (red zone, relocation types) and converted to
# PE32+ by imgctl-build-stub. Needs binutils (ld, objdump). Use it in a recipe with `stub: imgctl`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p imgctl-uki-stub --bin imgctl-build-stub -- "$@"
