#!/usr/bin/env bash
# Installs everything the tests need (scripts/setup.sh) and runs all of them: formatting,
# clippy, and every unit, integration, interop and boot test in the workspace.
# Peer tools and shared test data are required when CI=true; elsewhere a missing one is
# reported loudly and the test that needed it checks nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export IMGCTL_SHARED=${IMGCTL_SHARED:-$(cd .. && pwd)/shared}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets (outside the workspace, run by scripts/fuzz.sh on nightly) must keep compiling.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
cargo test --workspace
