#!/bin/sh
# Lab-host setup for Bolide's user-space NVMe driver (docs/HARDWARE.md, "User-space NVMe").
# POSIX sh (it also runs in the emulated machine's busybox); idempotent; every refusal says why.
#
#   nvme-setup.sh check                 the IOMMU is on, vfio-pci is loadable, hugepages
#   nvme-setup.sh bind PCI [--force]    hand controller PCI (DDDD:BB:DD.F) to vfio-pci; refuses
#                                       when one of its namespaces is mounted or in use (--force:
#                                       bind anyway)
#   nvme-setup.sh unbind PCI            give it back to the kernel's nvme driver
#   nvme-setup.sh hugepages N           reserve N 2 MiB hugepages (0 frees them)
#   nvme-setup.sh status [PCI]          the driver of each NVMe controller (or of PCI)
#
# Exit codes: 0 done (or already so), 1 refused or failed, 2 bad usage.
set -eu

die() { echo "nvme-setup: $*" >&2; exit 1; }
usage() { sed -n '4,13p' "$0" >&2; exit 2; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

dev_dir() {
    case $1 in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) ;;
        *) die "$1 is not a PCI address DDDD:BB:DD.F (lower-case hex)";;
    esac
    [ -d "/sys/bus/pci/devices/$1" ] || die "no PCI device $1"
    echo "/sys/bus/pci/devices/$1"
}

driver_of() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }

check_iommu() {
    n=$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)
    [ "$n" -gt 0 ] || die "the IOMMU is off (no /sys/kernel/iommu_groups): enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on)"
    echo "iommu: $n groups"
}

load_vfio() {
    [ -d /sys/bus/pci/drivers/vfio-pci ] && return 0
    command -v modprobe >/dev/null && modprobe vfio-pci 2>/dev/null || true
    [ -d /sys/bus/pci/drivers/vfio-pci ] || die "the vfio-pci driver is not available (modprobe vfio-pci failed)"
}

hugepages() {
    f=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    [ -w "$f" ] || die "no 2 MiB hugepage support ($f)"
    echo "$1" > "$f"
    got=$(cat "$f")
    [ "$got" -ge "$1" ] || die "asked for $1 hugepages of 2 MiB, the kernel reserved $got (memory fragmented? reserve at boot with hugepages=$1)"
    echo "hugepages: $got x 2 MiB"
}

in_use() { # prints the mounted or held block devices of controller dir $1
    for ns in "$1"/nvme/nvme*/nvme*n*; do
        [ -e "$ns" ] || continue
        b=$(basename "$ns")
        grep -q "^/dev/$b" /proc/mounts && echo "/dev/$b (mounted)"
        for h in "$ns"/holders/* "$ns"/nvme*n*p*/holders/*; do [ -e "$h" ] && echo "/dev/$b (held by $(basename "$h"))"; done
    done
    return 0
}

bind_to() { # bind_to DIR DRIVER
    d=$1; pci=$(basename "$1")
    cur=$(driver_of "$d")
    [ "$cur" = "$2" ] && { echo "$pci: already bound to $2"; return 0; }
    [ "$cur" = none ] || echo "$pci" > "$d/driver/unbind"
    echo "$2" > "$d/driver_override"
    echo "$pci" > /sys/bus/pci/drivers_probe || true
    echo > "$d/driver_override"
    now=$(driver_of "$d")
    [ "$now" = "$2" ] || die "$pci: binding to $2 failed (now: $now)"
    echo "$pci: $cur -> $2"
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case $cmd in
    check)
        check_iommu
        load_vfio && echo "vfio-pci: available"
        echo "hugepages: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages 2>/dev/null || echo 0) x 2 MiB"
        ;;
    bind)
        [ $# -ge 1 ] || usage
        need_root
        d=$(dev_dir "$1")
        [ "$(cat "$d/class")" = 0x010802 ] || die "$1 is not an NVMe controller (class $(cat "$d/class"))"
        check_iommu >/dev/null
        load_vfio
        busy=$(in_use "$d")
        if [ -n "$busy" ] && [ "${2:-}" != --force ]; then
            die "$1 is in use: $busy; unmount it first (or --force)"
        fi
        group=$(basename "$(readlink "$d/iommu_group")")
        for other in "$d"/iommu_group/devices/*; do
            o=$(basename "$other")
            [ "$o" = "$1" ] && continue
            od=$(driver_of "$other")
            case $od in vfio-pci|none|pcieport) ;; *) die "IOMMU group $group also holds $o (driver $od): bind it to vfio-pci too, or move the controller to another slot";; esac
        done
        bind_to "$d" vfio-pci
        echo "$1: IOMMU group $group: /dev/vfio/$group"
        ;;
    unbind)
        [ $# -ge 1 ] || usage
        need_root
        d=$(dev_dir "$1")
        bind_to "$d" nvme
        ;;
    hugepages)
        [ $# -ge 1 ] || usage
        need_root
        case $1 in *[!0-9]*|'') die "hugepages: $1 is not a count";; esac
        hugepages "$1"
        ;;
    status)
        for d in /sys/bus/pci/devices/*; do
            [ -n "${1:-}" ] && [ "$(basename "$d")" != "$1" ] && continue
            [ "$(cat "$d/class")" = 0x010802 ] || continue
            echo "$(basename "$d"): $(driver_of "$d")"
        done
        ;;
    *) usage;;
esac
