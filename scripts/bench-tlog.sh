#!/bin/sh
# Transparency-log store benchmark: appends/s batched and per-entry durable, proof latency,
# storage per entry. Usage: scripts/bench-tlog.sh [ENTRIES] [BATCH] [PER_ENTRY_N]
# Writes to a temporary folder on the same file system as $TMPDIR (default /tmp).
set -eu
cd "$(dirname "$0")/.."
dir=$(mktemp -d "${TMPDIR:-/tmp}/imgctl-bench-tlog.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cargo run --release -q -p imgctl-tlog --example bench -- "$dir" "${1:-1000000}" "${2:-10000}" "${3:-2000}"
