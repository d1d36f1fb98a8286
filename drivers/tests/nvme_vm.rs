//! The user-space NVMe driver on a real (or emulated) controller bound to `vfio-pci`: the
//! conformance suite plus driver-specific checks (MDTS splitting and PRP lists, registered and
//! per-I/O mapped buffers, FUA and flush, NVMe status reporting, one queue pair per thread).
//!
//! Every test is `#[ignore]`d: it needs `BOLIDE_NVME_PCI=DDDD:BB:DD.F` naming a controller whose
//! namespace 1 (at least 1 GiB, all zeros) may be overwritten. `scripts/vm/nvme-vm.sh` runs them
//! with `--ignored` inside a QEMU guest with an emulated NVMe controller behind an emulated IOMMU.
#![cfg(target_os = "linux")]

use bolide_drivers::conformance::{self, pattern_buf, read_sync, reap_n, submit_all, write_sync};
use bolide_drivers::nvme::{NvmeDevice, NvmeOptions, OpenError};
use bolide_drivers::{BlockDevice, BufPool, IoBuf, IoStatus, SECTOR_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the namespace each fresh device gets (never reused within a run, so it reads zeros).
const SLICE: u64 = 16 << 20;

fn pci() -> String {
    std::env::var("BOLIDE_NVME_PCI").expect("BOLIDE_NVME_PCI=DDDD:BB:DD.F names the controller under test")
}

static NEXT_SLICE: AtomicU64 = AtomicU64::new(0);

fn open_slice(slices: u64, fua: bool, qd: u32) -> NvmeDevice {
    let first = NEXT_SLICE.fetch_add(slices, Ordering::Relaxed);
    let opts = NvmeOptions {
        queue_depth: qd,
        fua,
        region: Some((first * SLICE, slices * SLICE)),
        ..Default::default()
    };
    NvmeDevice::open(&pci(), &opts).unwrap_or_else(|e| panic!("open {}: {e}", pci()))
}

/// A fresh 16 MiB device on an unused part of namespace 1.
fn fresh() -> NvmeDevice {
    open_slice(1, false, 64)
}

mod conformance_on_nvme {
    use super::*;
    // The suite's tests, #[ignore]d like the rest of this file.
    macro_rules! checks {
        ($($name:ident),*) => {$(
            #[test]
            #[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
            fn $name() {
                conformance::$name(&mut fresh());
            }
        )*};
    }
    checks!(
        check_info,
        check_write_read_roundtrip,
        check_unwritten_reads_zeros,
        check_many_in_flight,
        check_invalid_refused,
        check_queue_full,
        check_flush,
        check_reap_bounds,
        check_registered_buffers,
        check_in_flight_accounting
    );
}

#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn info_reports_nvme_facts() {
    let dev = fresh();
    let info = dev.info();
    assert!(info.name.starts_with("nvme:"), "{}", info.name);
    assert_eq!(info.capacity_bytes, SLICE);
    let mtb = info.max_transfer_bytes.expect("MDTS-derived limit");
    assert!(mtb >= SECTOR_SIZE && mtb.is_multiple_of(SECTOR_SIZE), "{mtb}");
    assert!([512, 4096].contains(&info.lba_bytes), "{}", info.lba_bytes);
    assert_eq!(info.durable_writes, !info.volatile_write_cache);
}

/// One 8 MiB write (many commands at MDTS, each with a PRP list) reads back in pieces of other
/// sizes, through per-I/O mapped buffers and through a registered pool.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn large_io_split_at_mdts() {
    let mut dev = open_slice(2, false, 16);
    let mdts = dev.info().max_transfer_bytes.unwrap();
    let len = 8 << 20;
    assert!(len > mdts, "the test needs a transfer over MDTS ({mdts})");
    let back = write_sync(&mut dev, 4096, pattern_buf(len, 7, 4096));
    assert_eq!(back.len(), len);
    let mut want = vec![0u8; len];
    conformance::fill_pattern(&mut want, 7, 4096);
    // Unregistered reads of 3 sectors + 1 MiB + the rest.
    let got = read_sync(&mut dev, 4096, len);
    assert!(got.as_slice() == want.as_slice(), "8 MiB read differs");
    let part = read_sync(&mut dev, 4096 + (1 << 20) + 3 * 4096, 5 * 4096);
    assert!(part.as_slice() == &want[(1 << 20) + 3 * 4096..(1 << 20) + 8 * 4096]);
    // Registered pool of 2 MiB buffers, four reads in flight at once.
    let mut pool = BufPool::new(4, 2 << 20);
    dev.register_buffers(&pool).expect("register");
    for i in 0..4u64 {
        let b = pool.take().unwrap();
        dev.submit_read(4096 + i * (2 << 20), b, i).unwrap();
    }
    submit_all(&mut dev, 4);
    for c in reap_n(&mut dev, 4) {
        c.result.as_ref().unwrap();
        let i = c.tag as usize;
        let b = c.buf.unwrap();
        assert!(b.as_slice() == &want[i * (2 << 20)..(i + 1) * (2 << 20)], "pool read {i}");
        pool.put(b);
    }
    // The bytes before and after the write are untouched.
    assert!(read_sync(&mut dev, 0, 4096).as_slice().iter().all(|&b| b == 0));
    assert!(read_sync(&mut dev, 4096 + len as u64, 4096).as_slice().iter().all(|&b| b == 0));
}

/// With FUA every write is durable on completion; flush completes.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn fua_writes_and_flush() {
    let mut dev = open_slice(1, true, 8);
    assert!(dev.info().durable_writes);
    write_sync(&mut dev, 8192, pattern_buf(3 * 4096, 9, 8192));
    dev.submit_flush(1).unwrap();
    submit_all(&mut dev, 1);
    let c = reap_n(&mut dev, 1).pop().unwrap();
    c.result.unwrap();
    let got = read_sync(&mut dev, 8192, 3 * 4096);
    let mut want = vec![0u8; 3 * 4096];
    conformance::fill_pattern(&mut want, 9, 8192);
    assert!(got.as_slice() == want.as_slice());
}

/// A command the controller fails comes back with its NVMe status (SCT/SC), the operation,
/// offset and length; the queue pair keeps working.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn failed_command_reports_nvme_status() {
    let mut dev = fresh();
    dev.inject_invalid_namespace(1);
    dev.submit_write(4096, pattern_buf(4096, 1, 4096), 5).unwrap();
    submit_all(&mut dev, 1);
    let c = reap_n(&mut dev, 1).pop().unwrap();
    let e = c.result.expect_err("a write to an invalid namespace fails");
    assert_eq!(e.status, IoStatus::Nvme { sct: 0, sc: 0x0b }, "{e}");
    assert_eq!((e.offset, e.len), (4096, 4096));
    assert!(e.to_string().contains("sct=0x0 sc=0xb"), "{e}");
    assert!(c.buf.is_some(), "the buffer comes back");
    // The next I/O works and the failed write wrote nothing.
    assert!(read_sync(&mut dev, 4096, 4096).as_slice().iter().all(|&b| b == 0));
}

/// TRIM: a deallocated range reads back as zeros (QEMU's controller reports DLFEAT "reads
/// zeros"; the guest's disk image is attached with discard=unmap so the deallocation reaches
/// it), its neighbours keep their data; a range past the end is refused.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn deallocate_trims_a_range() {
    let mut dev = fresh();
    assert!(dev.identify().dsm, "the emulated controller has Dataset Management");
    assert!(dev.deallocated_reads_zeros(), "the emulated namespace reads deallocated blocks as zeros");
    write_sync(&mut dev, 0, pattern_buf(64 * 4096, 3, 0));
    dev.deallocate(4096, 32 * 4096).unwrap_or_else(|e| panic!("{e}"));
    let got = read_sync(&mut dev, 0, 64 * 4096);
    let mut want = vec![0u8; 64 * 4096];
    conformance::fill_pattern(&mut want, 3, 0);
    want[4096..33 * 4096].fill(0);
    assert!(got.as_slice() == want.as_slice(), "deallocated range reads zeros, the rest is kept");
    assert!(dev.deallocate(SLICE - 4096, 8192).is_err(), "past the end");
}

/// One queue pair per thread: four threads write and read their own regions at once.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn queue_pair_per_thread() {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let mut dev = fresh();
            std::thread::spawn(move || {
                for i in 0..32u64 {
                    let off = i * 64 * 1024;
                    write_sync(&mut dev, off, pattern_buf(64 * 1024, t * 100 + i, off));
                }
                for i in 0..32u64 {
                    let off = i * 64 * 1024;
                    let got = read_sync(&mut dev, off, 64 * 1024);
                    let mut want = vec![0u8; 64 * 1024];
                    conformance::fill_pattern(&mut want, t * 100 + i, off);
                    assert!(got.as_slice() == want.as_slice(), "thread {t} block {i}");
                }
                dev.qid()
            })
        })
        .collect();
    let mut qids: Vec<u16> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    qids.sort();
    qids.dedup();
    assert_eq!(qids.len(), 4, "each device has its own queue pair");
}

#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh)"]
fn open_errors_are_clear() {
    let _keep = fresh();
    let bad_ns = NvmeDevice::open(
        &pci(),
        &NvmeOptions {
            nsid: 77,
            ..Default::default()
        },
    );
    match bad_ns {
        // Past NN, or within it but not attached (QEMU reports NN = 256).
        Err(OpenError::Namespace { nsid: 77, what, .. }) => {
            assert!(what.contains("namespaces 1..=") || what.contains("inactive"), "{what}")
        }
        other => panic!("namespace 77: {:?}", other.err()),
    }
    let e = NvmeDevice::open("0000:7f:1f.7", &NvmeOptions::default()).err().expect("no such device");
    assert!(e.to_string().contains("0000:7f:1f.7"), "{e}");
    let _ = IoBuf::new(4096);
}

/// A command that never completes (its doorbell is never rung) times out: the driver aborts it,
/// then disables the controller, completes the I/O with ETIMEDOUT (buffer back) and refuses new
/// I/O; another queue pair on the same controller fails too. Runs alone in its own process
/// (`--exact`), after the other tests, because it takes the controller down.
#[test]
#[ignore = "needs BOLIDE_NVME_PCI (scripts/vm/nvme-vm.sh); takes the controller down"]
fn command_timeout_resets_the_controller() {
    let first = NEXT_SLICE.fetch_add(2, Ordering::Relaxed) + 40;
    let open = |slice: u64| {
        let opts = NvmeOptions {
            queue_depth: 8,
            region: Some((slice * SLICE, SLICE)),
            timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        };
        NvmeDevice::open(&pci(), &opts).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut dev = open(first);
    let mut other = open(first + 1);
    dev.inject_lost_doorbell(1);
    dev.submit_write(0, pattern_buf(4096, 1, 0), 9).unwrap();
    submit_all(&mut dev, 1);
    let c = reap_n(&mut dev, 1).pop().unwrap();
    let e = c.result.expect_err("the lost command times out");
    assert_eq!(e.status, IoStatus::Os(libc::ETIMEDOUT), "{e}");
    assert_eq!((c.tag, e.offset, e.len), (9, 0, 4096));
    assert!(c.buf.is_some(), "the buffer comes back once the controller is disabled");
    match dev.submit_read(0, IoBuf::new(4096), 1) {
        Err(bolide_drivers::SubmitError::Failed(..)) => {}
        r => panic!("a failed device refuses new I/O: {r:?}"),
    }
    // The other queue pair on the same controller fails its next I/O.
    other.submit_read(0, IoBuf::new(4096), 2).unwrap();
    submit_all(&mut other, 1);
    let c = reap_n(&mut other, 1).pop().unwrap();
    assert!(c.result.is_err(), "I/O on a reset controller fails");
}
