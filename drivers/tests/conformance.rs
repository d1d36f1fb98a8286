//! Runs the conformance suite on every backend available here, plus backend-specific tests of
//! the io_uring device (open errors, durability through the file, drop with I/O in flight).

use bolide_drivers::conformance::{self, pattern_buf, read_sync, reap_n, submit_all, write_sync};
use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_drivers::{BlockDevice, SECTOR_SIZE};

const CAPACITY: u64 = 16 << 20;

fn sim_plain() -> SimDevice {
    SimDevice::new(SimConfig::new("sim-plain", CAPACITY, 1))
}

fn sim_slow() -> SimDevice {
    let mut cfg = SimConfig::new("sim-slow", CAPACITY, 2);
    cfg.latency_polls_max = 5;
    SimDevice::new(cfg)
}

fn sim_small_queue() -> SimDevice {
    let mut cfg = SimConfig::new("sim-small-queue", CAPACITY, 3);
    cfg.max_in_flight = conformance::MIN_IN_FLIGHT;
    cfg.latency_polls_min = 1;
    cfg.latency_polls_max = 4;
    SimDevice::new(cfg)
}

bolide_drivers::conformance_suite!(sim_no_faults, sim_plain());
bolide_drivers::conformance_suite!(sim_random_latency, sim_slow());
bolide_drivers::conformance_suite!(sim_min_queue, sim_small_queue());

#[cfg(target_os = "linux")]
mod uring {
    use super::*;
    use bolide_drivers::uring::{OpenError, UringDevice, UringOptions};
    use std::path::Path;

    /// A device on a fresh sparse file in the target's temp dir (a disk filesystem, so
    /// `O_DIRECT` works). The file is unlinked once open: the descriptor keeps it alive.
    fn uring_in(dir: &Path, direct: bool, dsync: bool) -> UringDevice {
        let tmp = tempfile::tempdir_in(dir).expect("temp dir");
        let opts = UringOptions {
            direct,
            dsync,
            create_size_bytes: Some(CAPACITY),
            ..Default::default()
        };
        let dev = UringDevice::open(&tmp.path().join("dev.img"), &opts).unwrap_or_else(|e| panic!("{e}"));
        drop(tmp);
        dev
    }

    fn target_tmp() -> &'static Path {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
    }

    pub fn uring_direct() -> UringDevice {
        uring_in(target_tmp(), true, false)
    }

    pub fn uring_dsync() -> UringDevice {
        uring_in(target_tmp(), true, true)
    }

    /// Buffered I/O on tmpfs, where it exists.
    pub fn uring_tmpfs() -> Option<UringDevice> {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| uring_in(shm, false, false))
    }

    /// The completion eventfd is signalled by a completion and cleared by `reap`.
    #[test]
    fn completion_fd_signals_completions() {
        use std::io::Read;
        let mut dev = uring_direct();
        let mut probe = std::fs::File::from(
            dev.completion_fd()
                .expect("uring has a completion fd")
                .try_clone_to_owned()
                .unwrap(),
        );
        let mut counter = [0u8; 8];
        assert!(probe.read(&mut counter).is_err(), "signalled before any I/O");
        dev.submit_write(0, pattern_buf(SECTOR_SIZE, 1, 0), 7).unwrap();
        dev.submit().unwrap();
        let mut out = Vec::new();
        // Wait for the CQE without reaping it, then check the eventfd fired.
        while out.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if probe.read(&mut counter).is_ok() {
                assert!(u64::from_ne_bytes(counter) >= 1);
                dev.reap(&mut out, 1).unwrap();
            }
        }
        assert_eq!(out[0].tag, 7);
        assert!(probe.read(&mut counter).is_err(), "reap must leave the eventfd cleared");
    }

    bolide_drivers::conformance_suite!(direct, uring_direct());
    bolide_drivers::conformance_suite!(direct_dsync, uring_dsync());

    #[test]
    fn tmpfs_buffered_conformance() {
        if uring_tmpfs().is_none() {
            eprintln!("no /dev/shm; skipped");
            return;
        }
        conformance::check_all(|| uring_tmpfs().expect("tmpfs device"));
    }

    /// Runs the whole suite on the block device named by `BOLIDE_TEST_BLOCK_DEVICE`, which must
    /// be a zero-filled scratch device of at least 8 MiB (e.g. `losetup --find --show` over a
    /// fresh sparse file). DESTROYS its contents. Skipped when the variable is unset.
    #[test]
    fn block_device_from_env() {
        let Some(path) = std::env::var_os("BOLIDE_TEST_BLOCK_DEVICE") else {
            eprintln!("BOLIDE_TEST_BLOCK_DEVICE not set; skipped");
            return;
        };
        let path = std::path::PathBuf::from(path);
        let open = || UringDevice::open(&path, &UringOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let cap = open().info().capacity_bytes;
        assert!(
            cap >= conformance::MIN_CAPACITY_BYTES,
            "{} is too small",
            path.display()
        );
        // Each check expects a zeroed device: zero what the checks touch (the first 8 MiB and the
        // last 64 KiB) before each.
        let zero = || {
            let mut dev = open();
            for offset in (0..conformance::MIN_CAPACITY_BYTES).step_by(1 << 20) {
                write_sync(&mut dev, offset, bolide_drivers::IoBuf::new(1 << 20));
            }
            write_sync(&mut dev, cap - (64 << 10), bolide_drivers::IoBuf::new(64 << 10));
            write_sync(
                &mut dev,
                (cap / 2) / 4096 * 4096,
                bolide_drivers::IoBuf::new(SECTOR_SIZE),
            );
            dev
        };
        conformance::check_all(zero);
    }

    #[test]
    fn info_reflects_options() {
        let dev = uring_dsync();
        assert_eq!(dev.info().capacity_bytes, CAPACITY);
        assert_eq!(dev.info().max_in_flight, 128);
        assert!(dev.info().durable_writes);
        assert!(!uring_direct().info().durable_writes);
    }

    /// With completion signals off the eventfd stays quiet while completions still arrive and
    /// are seen without a system call; turned back on, the next completion signals it.
    #[test]
    fn completion_signals_off_and_on() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut dev = uring_direct();
        let fd_count = |dev: &UringDevice| {
            let fd = dev.completion_fd().expect("uring has a completion fd").as_raw_fd();
            // SAFETY: dup of a live descriptor; the File owns the copy and closes it.
            let dup = unsafe { libc::dup(fd) };
            assert!(dup >= 0);
            // SAFETY: `dup` is a fresh descriptor nothing else owns.
            let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(dup) };
            let mut b = [0u8; 8];
            match f.read(&mut b) {
                Ok(8) => u64::from_ne_bytes(b),
                _ => 0,
            }
        };
        let mut out = Vec::new();
        dev.set_completion_signals(false);
        // Clear whatever the open left.
        dev.reap(&mut out, 0).expect("reap");
        dev.submit_read(0, bolide_drivers::IoBuf::new(4096), 1).expect("read queued");
        dev.submit().expect("submitted");
        let t0 = std::time::Instant::now();
        while !dev.has_completions() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "no completion");
            std::thread::yield_now();
        }
        assert_eq!(fd_count(&dev), 0, "signals off: the eventfd was not signalled");
        assert_eq!(dev.reap(&mut out, 0).expect("reap"), 1);
        assert!(!dev.has_completions());
        dev.set_completion_signals(true);
        dev.submit_read(4096, bolide_drivers::IoBuf::new(4096), 2).expect("read queued");
        dev.submit().expect("submitted");
        assert_eq!(dev.reap(&mut out, 1).expect("reap waits"), 1);
        // reap clears the count before it drains, so signal again and look directly.
        dev.submit_read(8192, bolide_drivers::IoBuf::new(4096), 3).expect("read queued");
        dev.submit().expect("submitted");
        let t0 = std::time::Instant::now();
        while !dev.has_completions() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "no completion");
            std::thread::yield_now();
        }
        assert!(fd_count(&dev) >= 1, "signals on: the eventfd was signalled");
    }

    #[test]
    fn open_errors_are_clear() {
        let tmp = tempfile::tempdir_in(target_tmp()).expect("temp dir");
        let missing = tmp.path().join("missing.img");
        let e = UringDevice::open(&missing, &UringOptions::default()).unwrap_err();
        assert!(matches!(e, OpenError::Io { action: "open", .. }), "{e}");
        assert!(e.to_string().contains("missing.img"), "{e}");

        let e = UringDevice::open(tmp.path(), &UringOptions::default()).unwrap_err();
        assert!(
            matches!(e, OpenError::Io { .. } | OpenError::NotFileOrBlockDevice { .. }),
            "{e}"
        );

        let small = tmp.path().join("small.img");
        std::fs::write(&small, [1u8; 100]).expect("write small file");
        let e = UringDevice::open(
            &small,
            &UringOptions {
                direct: false,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, OpenError::TooSmall { bytes: 100, .. }), "{e}");

        let opts = UringOptions {
            queue_depth: 0,
            create_size_bytes: Some(CAPACITY),
            ..Default::default()
        };
        let e = UringDevice::open(&tmp.path().join("q.img"), &opts).unwrap_err();
        assert!(matches!(e, OpenError::Options { .. }), "{e}");

        let e = OpenError::DirectUnsupported { path: missing };
        assert!(e.to_string().contains("direct = false"), "{e}");
    }

    #[test]
    fn capacity_rounds_down_and_file_grows() {
        let tmp = tempfile::tempdir_in(target_tmp()).expect("temp dir");
        let path = tmp.path().join("odd.img");
        std::fs::write(&path, vec![0u8; 3 * SECTOR_SIZE + 100]).expect("write file");
        let dev = UringDevice::open(&path, &UringOptions::default()).expect("open");
        assert_eq!(dev.info().capacity_bytes, 3 * SECTOR_SIZE as u64);
        drop(dev);
        let opts = UringOptions {
            create_size_bytes: Some(1 << 20),
            ..Default::default()
        };
        let dev = UringDevice::open(&path, &opts).expect("open and grow");
        assert_eq!(dev.info().capacity_bytes, 1 << 20);
        // Never shrinks.
        drop(dev);
        let opts = UringOptions {
            create_size_bytes: Some(SECTOR_SIZE as u64),
            ..Default::default()
        };
        let dev = UringDevice::open(&path, &opts).expect("open");
        assert_eq!(dev.info().capacity_bytes, 1 << 20);
    }

    #[test]
    fn writes_reach_the_file_and_drop_waits_for_in_flight_io() {
        let tmp = tempfile::tempdir_in(target_tmp()).expect("temp dir");
        let path = tmp.path().join("dev.img");
        let opts = UringOptions {
            create_size_bytes: Some(CAPACITY),
            ..Default::default()
        };
        let mut dev = UringDevice::open(&path, &opts).expect("open");
        write_sync(&mut dev, 0, pattern_buf(SECTOR_SIZE, 1, 0));
        // Submitted but never reaped: the drop must wait for them, not free their buffers.
        for i in 1..33u64 {
            let offset = i * 64 * 1024;
            dev.submit_write(offset, pattern_buf(64 * 1024, i, offset), i)
                .expect("submit");
        }
        submit_all(&mut dev, 32);
        // Queued but never submitted: dropped without being written.
        dev.submit_write(CAPACITY - SECTOR_SIZE as u64, pattern_buf(SECTOR_SIZE, 99, 0), 99)
            .expect("submit");
        drop(dev);

        let data = std::fs::read(&path).expect("read file");
        let mut want = vec![0u8; 64 * 1024];
        conformance::fill_pattern(&mut want[..SECTOR_SIZE], 1, 0);
        assert_eq!(&data[..SECTOR_SIZE], &want[..SECTOR_SIZE]);
        for i in 1..33u64 {
            let offset = i * 64 * 1024;
            conformance::fill_pattern(&mut want, i, offset);
            assert!(
                data[offset as usize..][..64 * 1024] == want[..],
                "write {i} missing from the file"
            );
        }
        assert!(
            data[data.len() - SECTOR_SIZE..].iter().all(|&b| b == 0),
            "unsubmitted write executed"
        );
    }

    #[test]
    fn registered_pool_uses_the_fixed_path_and_several_pools_register() {
        let mut dev = uring_direct();
        let mut a = bolide_drivers::BufPool::new(4, SECTOR_SIZE);
        let b = bolide_drivers::BufPool::new(3, 2 * SECTOR_SIZE);
        dev.register_buffers(&a).expect("register a");
        dev.register_buffers(&a).expect("register a again");
        dev.register_buffers(&b).expect("register b");
        assert_eq!(dev.registered_buffers(), 7);
        let mut buf = a.take().expect("buffer");
        conformance::fill_pattern(buf.as_mut_slice(), 5, 0);
        let buf = write_sync(&mut dev, 0, buf);
        a.put(buf);
        assert_eq!(
            read_sync(&mut dev, 0, SECTOR_SIZE).as_slice(),
            pattern_buf(SECTOR_SIZE, 5, 0).as_slice()
        );
    }

    #[test]
    fn a_short_read_is_reported_as_short() {
        let tmp = tempfile::tempdir_in(target_tmp()).expect("temp dir");
        let path = tmp.path().join("shrinks.img");
        let opts = UringOptions {
            create_size_bytes: Some(1 << 20),
            ..Default::default()
        };
        let mut dev = UringDevice::open(&path, &opts).expect("open");
        // Someone shrinks the file under the device: a read across the new end is short.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(4 * SECTOR_SIZE as u64))
            .expect("shrink");
        dev.submit_read(2 * SECTOR_SIZE as u64, bolide_drivers::IoBuf::new(4 * SECTOR_SIZE), 7)
            .expect("submit");
        submit_all(&mut dev, 1);
        let c = reap_n(&mut dev, 1).pop().expect("completion");
        let e = c.result.expect_err("short read");
        assert_eq!(
            e.status,
            bolide_drivers::IoStatus::Short {
                done_bytes: 2 * SECTOR_SIZE
            }
        );
        assert_eq!(
            (e.op, e.offset, e.len),
            (bolide_drivers::IoKind::Read, 2 * SECTOR_SIZE as u64, 4 * SECTOR_SIZE)
        );
        assert!(e.to_string().contains("shrinks.img"), "{e}");
        assert!(c.buf.is_some());
    }

    #[test]
    fn unsubmitted_io_does_not_complete() {
        let mut dev = uring_direct();
        dev.submit_read(0, bolide_drivers::IoBuf::new(SECTOR_SIZE), 1)
            .expect("submit");
        let mut out = Vec::new();
        for _ in 0..10 {
            assert_eq!(dev.reap(&mut out, 1).expect("reap"), 0);
        }
        assert_eq!(dev.in_flight(), 1);
        submit_all(&mut dev, 1);
        assert_eq!(reap_n(&mut dev, 1)[0].tag, 1);
    }
}
