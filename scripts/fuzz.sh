#!/usr/bin/env bash
# Fuzz a decoder with cargo-fuzz / libFuzzer. Targets (fuzz/fuzz_targets):
#   request_decoder  node/src/proto: proto header, type-4 inflation, AS_MSG, op values, batch, scan
#   cdt_ops          list/map/bit/HLL operations
#   record_decoder   records read back from a device (with a checksum fix-up pass)
#   disk_headers     region header, wblock header, index image block and entries
#   backup_reader    backup files as `bolide restore` reads them
#
#   scripts/fuzz.sh [SECONDS] [TARGET]      default 60 request_decoder
#
# Works on the pinned stable toolchain with `-s none` (no sanitizer: the proto code has no
# unsafe, and libFuzzer's coverage instrumentation uses only stable -C flags). For
# AddressSanitizer, which needs -Zsanitizer, run with FUZZ_ASAN=1 (sets RUSTC_BOOTSTRAP=1 for
# this build only).
#
# request_decoder's committed seeds (fuzz/corpus/request_decoder, < 1 KiB) are rewritten from
# proto::tests::seeds() first; inputs the fuzzer finds go to target/fuzz-corpus/<target>, crashes to
# fuzz/artifacts; the fuzz build goes to fuzz/target (FUZZ_TARGET_DIR to change).
# CI does not run this: `cargo test` runs the same decoder over 6000 mutated inputs
# (proto::tests::decode_request_smoke_never_panics).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
target="${2:-request_decoder}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

corpora=()
if [ "$target" = request_decoder ]; then
    BOLIDE_FUZZ_SEED_DIR="$PWD/fuzz/corpus/request_decoder" \
        cargo test -p bolide-node --lib write_fuzz_seeds -- --ignored --quiet
    corpora+=(corpus/request_decoder)
fi

found="$PWD/target/fuzz-corpus/$target"
mkdir -p "$found"
cd fuzz
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
    export RUSTC_BOOTSTRAP=1
    sanitizer=address
else
    sanitizer=none
fi
CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}" cargo fuzz run -s "$sanitizer" "$target" \
    "$found" "${corpora[@]}" -- \
    -max_total_time="$seconds" -malloc_limit_mb=512 -print_final_stats=1
