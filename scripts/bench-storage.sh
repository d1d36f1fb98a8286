#!/usr/bin/env bash
# Storage-engine benchmark in its standard configuration (bench/README.md, "Storage engine"):
# one shard over io_uring next to fio on the same file, written as JSON under
# bench/results/<date>-<hostname>/. Installs fio if it is missing (Debian/Ubuntu, apt-get).
#
#   BOLIDE_BENCH_DIR=DIR   where the scratch data file goes (default /var/tmp/bolide-bench); it
#                          must be on the disk to measure, on a filesystem that takes O_DIRECT,
#                          with about 3 GB free. The file is deleted at the end.
#   BOLIDE_BENCH_OUT=DIR   where the JSON goes (default bench/results/<date>-<hostname>)
#
# Runs, about 100 s on a 2-core VM (plus the release build):
#   storage-1m-1k.json        1 M records of 1 KiB: write (5 reps), cold start and fast restart
#                             (3 reps each)
#   storage-10m-100b.json     10 M records of 100 bytes: write (2 reps), cold start and fast
#                             restart (3 reps each) -- the fast-restart figure at 10 M records
#   storage-commit-200k-1k.json  200 k records of 1 KiB with commit_to_device and O_DSYNC: write
#                             throughput and acknowledgement latency (3 reps)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fio >/dev/null; then
    echo "== installing fio"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq fio
fi

scratch="${BOLIDE_BENCH_DIR:-/var/tmp/bolide-bench}"
out="${BOLIDE_BENCH_OUT:-bench/results/$(date -u +%Y-%m-%d)-$(hostname -s)}"
mkdir -p "$scratch" "$out"
data="$scratch/storage_bench.dat"
trap 'rm -f "$data"' EXIT

echo "== build"
cargo build --release --locked -p bolide-bench --bin storage_bench

bench() {
    local name="$1"
    shift
    echo "== $name: storage_bench $*"
    cargo run --release --locked -q -p bolide-bench --bin storage_bench -- \
        --path "$data" --json-out "$out/$name.json" "$@" >/dev/null
    rm -f "$data"
}

start=$(date +%s)
bench storage-1m-1k --records 1000000 --record-bytes 1024 --write-reps 5 --restart-reps 3
bench storage-10m-100b --records 10000000 --record-bytes 100 --write-reps 2 --restart-reps 3
bench storage-commit-200k-1k --records 200000 --record-bytes 1024 --commit-to-device --dsync \
    --write-reps 3 --skip-cold-start
echo "== done in $(($(date +%s) - start)) s; results in $out"
