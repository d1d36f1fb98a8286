#!/usr/bin/env bash
# Bolide's test command (README, "Test it"). Installs what it needs on a fresh Debian machine
# with Rust, then runs every test: unit, simulation, conformance, end-to-end, and the criterion
# benchmarks in their quick test mode.
#
#   BOLIDE_SIM_SEEDS=N   seeds per crash-recovery mode (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain (rust-toolchain.toml) is installed by rustup on first use.
rustup show active-toolchain >/dev/null

echo "== test dependencies"
# The S3-protocol server of the object-store backup tests (backup/tests/e2e_object_store.rs).
command -v moto_server >/dev/null || python3 -m pip install --quiet 'moto[server]'

echo "== build"
cargo build --workspace --all-targets --locked

echo "== clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --locked --no-fail-fast

echo "== criterion benchmarks (test mode: each runs once)"
cargo test --workspace --benches --locked
