#!/usr/bin/env bash
# bolide probe in the emulated machine of scripts/vm/nvme-vm.sh, through the user-space NVMe
# driver (nvme:PCI) and through the kernel's nvme driver with io_uring (/dev/nvme0n1), on the
# same emulated controller, interleaved, 3 repeats (BOLIDE_PROBE_REPEATS). Release build.
# Emulation says nothing about real device speed: the figures are relative (same guest, same
# controller, same workload). Results: target/vm/nvme-vm.log (PROBE-BEGIN/END blocks).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p bolide-bench --bin bolide-probe
BOLIDE_VM_BINS="$PWD/target/release/bolide-probe" BOLIDE_VM_EXTRA="$PWD/scripts/vm/guest-probe.sh" \
    scripts/vm/nvme-vm.sh
