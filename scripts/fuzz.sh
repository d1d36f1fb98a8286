#!/usr/bin/env bash
# Fuzz the request decoders (node/src/proto: proto header, type-4 inflation, AS_MSG, op values,
# batch rows, scan fields) with cargo-fuzz / libFuzzer.
#
#   scripts/fuzz.sh [SECONDS]      default 60
#
# Works on the pinned stable toolchain with `-s none` (no sanitizer: the proto code has no
# unsafe, and libFuzzer's coverage instrumentation uses only stable -C flags). For
# AddressSanitizer, which needs -Zsanitizer, run with FUZZ_ASAN=1 (sets RUSTC_BOOTSTRAP=1 for
# this build only).
#
# The committed seeds (fuzz/corpus/request_decoder, < 1 KiB) are rewritten from
# proto::tests::seeds() first; inputs the fuzzer finds go to target/fuzz-corpus, crashes to
# fuzz/artifacts; the fuzz build goes to fuzz/target (FUZZ_TARGET_DIR to change).
# CI does not run this: `cargo test` runs the same decoder over 6000 mutated inputs
# (proto::tests::decode_request_smoke_never_panics).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

BOLIDE_FUZZ_SEED_DIR="$PWD/fuzz/corpus/request_decoder" \
    cargo test -p bolide-node --lib write_fuzz_seeds -- --ignored --quiet

found="$PWD/target/fuzz-corpus/request_decoder"
mkdir -p "$found"
cd fuzz
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
    export RUSTC_BOOTSTRAP=1
    sanitizer=address
else
    sanitizer=none
fi
CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}" cargo fuzz run -s "$sanitizer" request_decoder \
    "$found" corpus/request_decoder -- \
    -max_total_time="$seconds" -malloc_limit_mb=512 -print_final_stats=1
