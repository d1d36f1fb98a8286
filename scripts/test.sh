#!/usr/bin/env bash
# Bolide's test command (README, "Test it"). Installs what it needs on a fresh Debian machine
# with Rust, then runs every test: unit, simulation, conformance, end-to-end, and the criterion
# benchmarks in their quick test mode.
#
#   BOLIDE_SIM_SEEDS=N   seeds per crash-recovery mode (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."

# No incremental caches: they are most of a debug target's size, and CI builds from scratch anyway.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free under $(pwd)"

# The pinned toolchain (rust-toolchain.toml) is installed by rustup on first use.
rustup show active-toolchain >/dev/null

# The DPDK backend's build and tests (issue 15): Debian's libdpdk 22.11, libclang for bindgen,
# and the tools the namespace tests use.
need=()
pkg-config --exists libdpdk 2>/dev/null || need+=(libdpdk-dev pkg-config)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v ping >/dev/null || need+=(iputils-ping)
command -v ethtool >/dev/null || need+=(ethtool)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== test dependencies"
# The S3-protocol server of the object-store backup tests (backup/tests/e2e_object_store.rs).
command -v moto_server >/dev/null || python3 -m pip install --quiet 'moto[server]'

echo "== build"
cargo build --workspace --all-targets --locked

echo "== clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --locked --no-fail-fast

echo "== end-to-end tests again: every core its own node (per-core listeners), epoll sockets"
BOLIDE_TEST_LISTEN_MODE=per-core BOLIDE_TEST_NETWORK=epoll \
    cargo test -p bolide-tests --locked --no-fail-fast

echo "== criterion benchmarks (test mode: each runs once)"
cargo test --workspace --benches --locked

echo "== user-space NVMe driver in an emulated machine (QEMU TCG, intel-iommu, emulated nvme)"
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null || ! dpkg -s busybox-static >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 busybox-static cpio >/dev/null
fi
scripts/vm/nvme-vm.sh

echo "== DPDK backend (net_af_packet on veth pairs in network namespaces the tests create)"
cargo clippy -p bolide-dpdk-sys -p bolide-drivers -p bolide-tests --features bolide-tests/dpdk --all-targets --locked -- -D warnings
start=$(date +%s)
cargo test -p bolide-tests --features dpdk --locked --test dpdk_net -- --nocapture
echo "DPDK tests: $(( $(date +%s) - start )) s"
echo "== target directory: $(du -sh target 2>/dev/null | cut -f1)"
