# Sourced by the guest's /init (scripts/vm/nvme-vm.sh, BOLIDE_VM_EXTRA): bolide probe on the
# emulated controller through the user-space NVMe driver and through the kernel's nvme driver
# plus io_uring, interleaved, BOLIDE_PROBE_REPEATS times. Prints PROBE-BEGIN/PROBE-END markers
# around each run's tables for scripts/vm/nvme-bench.sh.
args="--step-s ${BOLIDE_PROBE_STEP_S:-2} --seq-queue-depths 8 --max-queue-depth 32"
rc=0
for r in $(seq 1 ${BOLIDE_PROBE_REPEATS:-3}); do
    bind $BOLIDE_NVME_PCI vfio-pci
    echo "PROBE-BEGIN nvme $r"
    bolide-probe nvme:$BOLIDE_NVME_PCI $args || rc=1
    echo "PROBE-END nvme $r"
    bind $BOLIDE_NVME_PCI nvme
    for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
    echo "PROBE-BEGIN uring $r"
    bolide-probe /dev/nvme0n1 $args || rc=1
    echo "PROBE-END uring $r"
done
bind $BOLIDE_NVME_PCI vfio-pci
[ $rc = 0 ]
