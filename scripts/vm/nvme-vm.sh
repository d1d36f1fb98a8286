#!/usr/bin/env bash
# The user-space NVMe driver's test machine: a QEMU guest in software emulation (no KVM needed)
# with an emulated NVMe controller (two namespaces) behind an emulated Intel IOMMU, booted from Debian's kernel
# package with a busybox initramfs that carries the test binaries and the vfio modules.
#
#   scripts/vm/nvme-vm.sh            build the guest, boot it, run the nvme tests inside
#                                    (drivers/tests/nvme_vm.rs with --ignored), print
#                                    "N passed, M failed" and exit non-zero on any failure
#                                    then scripts/vm/guest-serve.sh: `bolide serve` on the nvme
#                                    driver loaded by the official Rust client, clean restart,
#                                    kill -9 and cold start
#   BOLIDE_VM_EXTRA="FILE..."        guest scripts to run after the tests instead of
#                                    guest-serve.sh, with the binaries of BOLIDE_VM_BINS
#                                    (space-separated paths) in /bin (nvme-bench.sh uses this)
#   BOLIDE_VM_CACHE=DIR              where the kernel package, the initramfs and the disk image
#                                    go (default target/vm)
#
# Needs qemu-system-x86, busybox-static and cpio (scripts/test.sh installs them) and apt access
# to download the kernel package (cached after the first run). Nothing from the host's kernel
# is used, so it runs on a host without VFIO, NVMe or KVM.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cache=${BOLIDE_VM_CACHE:-$root/target/vm}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

need() { command -v "$1" >/dev/null || { echo "nvme-vm: $1 not found (apt-get install $2)" >&2; exit 2; }; }
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need dpkg-deb dpkg
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --help 2>/dev/null | grep -q insmod || { echo "nvme-vm: a static busybox with insmod is needed (apt-get install busybox-static)" >&2; exit 2; }

# --- the guest kernel: Debian's linux-image package, downloaded once and unpacked (not installed).
kdir=$cache/kernel
if [ ! -f "$kdir/ok" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$pkg" ] || { echo "nvme-vm: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 2; }
    rm -rf "$kdir" && mkdir -p "$kdir"
    (cd "$cache" && rm -f linux-image-*.deb && apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
    dpkg-deb -x "$cache"/"$pkg"_*.deb "$kdir"
    rm -f "$cache"/"$pkg"_*.deb
    touch "$kdir/ok"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver

# --- the test binaries.
echo "== nvme-vm: building the test binaries"
tests_bin=$(cargo test -p bolide-drivers --test nvme_vm --no-run --locked --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$tests_bin" ] || { echo "nvme-vm: could not build the nvme_vm test binary" >&2; exit 1; }

# --- the initramfs.
ird=$cache/initramfs
rm -rf "$ird" && mkdir -p "$ird"/{bin,sbin,proc,sys,dev,tmp,lib/modules,etc,mnt}
cp "$busybox" "$ird/bin/busybox"
cp scripts/lab/nvme-setup.sh "$ird/bin/nvme-setup"
add_bin() { # copies a binary and the shared libraries it needs
    cp "$1" "$ird/bin/"
    ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$ird$(dirname "$lib")"
        cp -L "$lib" "$ird$lib"
    done
}
add_bin "$tests_bin"
mv "$ird/bin/$(basename "$tests_bin")" "$ird/bin/nvme_vm"
if [ -z "${BOLIDE_VM_EXTRA:-}" ]; then
    echo "== nvme-vm: building bolide and bolide-bench"
    cargo build --locked -p bolide-node --bin bolide -p bolide-bench --bin bolide-bench
    BOLIDE_VM_BINS="$root/target/debug/bolide $root/target/debug/bolide-bench"
    BOLIDE_VM_EXTRA=$root/scripts/vm/guest-serve.sh
fi
for b in ${BOLIDE_VM_BINS:-}; do add_bin "$b"; done
mkdir -p "$ird/extra"
i=0
for f in $BOLIDE_VM_EXTRA; do i=$((i + 1)); cp "$f" "$ird/extra/$i-$(basename "$f")"; done
# BOLIDE_PROBE_* settings reach the guest's scripts through /env.
for v in $(compgen -v BOLIDE_PROBE_ || true); do printf 'export %s=%q\n' "$v" "${!v}"; done > "$ird/env"

# Modules in dependency order (each .ko's own "depends=" list), uncompressed for busybox insmod.
declare -A seen=()
order=()
modpath() { find "$moddir/kernel" -name "$1.ko" -o -name "${1//_/-}.ko" -o -name "${1//-/_}.ko" | head -1; }
addmod() {
    local name=$1 f deps d
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    f=$(modpath "$name")
    [ -n "$f" ] || { grep -q "/$name.ko" "$moddir/modules.builtin" 2>/dev/null && return; echo "nvme-vm: module $name not found" >&2; exit 1; }
    deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -1 | cut -d= -f2)
    for d in ${deps//,/ }; do addmod "$d"; done
    cp "$f" "$ird/lib/modules/"
    order+=("$(basename "$f")")
}
for m in vfio vfio_iommu_type1 vfio-pci crct10dif_generic crc64_rocksoft_generic nvme; do addmod "$m"; done
printf '%s\n' "${order[@]}" > "$ird/lib/modules/order"

cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
ifconfig lo 127.0.0.1 up
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null || echo "insmod $m failed"; done
echo 64 > /proc/sys/vm/nr_hugepages
# The controller(s): PCI class 01:08:02 (NVM Express).
ctrls=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] && ctrls="$ctrls ${d##*/}"
done
echo "guest: NVMe controllers:$ctrls; IOMMU groups: $(ls /sys/kernel/iommu_groups | wc -l)"
export BOLIDE_NVME_PCI=${ctrls# }; BOLIDE_NVME_PCI=${BOLIDE_NVME_PCI%% *}
bind() { # bind <pci> vfio-pci|nvme, with the lab host script
    if [ $2 = vfio-pci ]; then nvme-setup bind $1; else nvme-setup unbind $1; fi
}
bind $BOLIDE_NVME_PCI vfio-pci
echo "guest: $BOLIDE_NVME_PCI bound to $(basename $(readlink /sys/bus/pci/devices/$BOLIDE_NVME_PCI/driver))"
[ -f /env ] && . /env
cd /tmp
/bin/nvme_vm --ignored --test-threads=2 --skip command_timeout 2>&1; rc=$?
# The timeout test takes the controller down: alone, in its own process, last.
/bin/nvme_vm --ignored --exact command_timeout_resets_the_controller 2>&1 || rc=1
echo "BOLIDE-VM-TESTS rc=$rc"
for f in /extra/*; do (. $f); echo "BOLIDE-VM-EXTRA $f rc=$?"; done
echo BOLIDE-VM-DONE
poweroff -f
INIT
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$cache/initramfs.cpio.gz"

# --- the namespaces: fresh sparse files (they read zeros): 1 GiB for the driver tests and the
# probe (nsid 1), 128 MiB for bolide serve (nsid 2).
img=$cache/nvme0.img
img2=$cache/nvme1.img
rm -f "$img" "$img2" && truncate -s 1G "$img" && truncate -s 128M "$img2"

echo "== nvme-vm: booting $kver (TCG, q35, intel-iommu, emulated nvme)"
log=$cache/nvme-vm.log
start=$(date +%s)
# A heavily loaded host can make the emulated guest's early boot fail (a kernel panic before
# /init runs): boot once more then, never after the tests have started.
for attempt in 1 2; do
    set +e
    timeout "${BOLIDE_VM_TIMEOUT_S:-480}" qemu-system-x86_64 \
        -accel tcg -cpu max -smp 2 -m 2048 \
        -machine q35,kernel-irqchip=split \
        -device intel-iommu,intremap=on,caching-mode=on \
        -drive file="$img",if=none,id=nvm0,format=raw,cache=unsafe,discard=unmap \
        -drive file="$img2",if=none,id=nvm1,format=raw,cache=unsafe \
        -device nvme,id=nvme0,serial=bolide0 \
        -device nvme-ns,bus=nvme0,drive=nvm0,nsid=1,logical_block_size=4096,physical_block_size=4096 \
        -device nvme-ns,bus=nvme0,drive=nvm1,nsid=2,logical_block_size=4096,physical_block_size=4096 \
        -kernel "$vmlinuz" -initrd "$cache/initramfs.cpio.gz" \
        -append "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet loglevel=3" \
        -nographic -no-reboot -nic none >"$log" 2>&1 < /dev/null
    qrc=$?
    set -e
    grep -q 'BOLIDE-VM-TESTS\|guest: ' "$log" && break
    grep -q 'Kernel panic' "$log" || break
    echo "== nvme-vm: the guest kernel panicked during boot (attempt $attempt); booting again"
done
echo "== nvme-vm: guest ran $(( $(date +%s) - start )) s (qemu exit $qrc); log: $log"
grep -E '^(test |guest:|insmod|BOLIDE-|SERVE|failures:|---- |thread |  left|  right|panicked)|test result' "$log" | grep -v '^test .* \.\.\. ok$' || true
passed=$(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed' "$log" | awk '{s+=$4} END{print s+0}')
failed=$(grep -o '[0-9]* failed;' "$log" | awk '{s+=$1} END{print s+0}')
if ! grep -q 'BOLIDE-VM-TESTS rc=0' "$log"; then
    [ "$failed" -eq 0 ] && failed=1
fi
for f in $BOLIDE_VM_EXTRA; do
    if grep -q "BOLIDE-VM-EXTRA .*$(basename "$f") rc=0" "$log"; then
        passed=$((passed + 1))
    else
        echo "nvme-vm: guest script $(basename "$f") failed"; failed=$((failed + 1))
    fi
done
echo "nvme-vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
