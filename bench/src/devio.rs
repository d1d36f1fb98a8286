//! Device-level helpers shared by the ACT-style test ([`crate::act`]) and the device probe
//! ([`crate::probe`]): opening a file or block device through the io_uring backend
//! (`bolide_drivers::uring`, `O_DIRECT`), filling it so that reads hit real blocks, waiting for
//! completions with a timeout, and a closed-loop runner that keeps a fixed number of I/Os in
//! flight.
//!
//! Offsets and lengths are bytes, multiples of [`SECTOR_SIZE`] (4 KiB). Latencies are recorded
//! in ns in HdrHistograms with [`crate::loadgen::stats::new_histogram`]'s bounds (1 µs .. 60 s).

use std::path::Path;
use std::time::{Duration, Instant};

use bolide_drivers::any::AnyDevice;
use bolide_drivers::nvme::{NvmeDevice, NvmeOptions};
use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_drivers::{BlockDevice, BufPool, Completion, DeviceError, IoKind, SECTOR_SIZE};
use hdrhistogram::Histogram;
use rand::Rng;

use crate::loadgen::stats::{new_histogram, HIST_HIGH_NS, HIST_LOW_NS};

/// Opens `path` (a regular file or block device) read-write with `O_DIRECT` and a ring of
/// `queue_depth` entries. A regular file is created, or grown, to `create_bytes` when given
/// (sparse: see [`fill`]).
///
/// # Errors
/// The driver's open error, as text naming the path.
pub fn open(path: &Path, create_bytes: Option<u64>, queue_depth: u32) -> Result<UringDevice, String> {
    let opts = UringOptions {
        queue_depth,
        direct: true,
        dsync: false,
        create_size_bytes: create_bytes,
        wait_timeout: Duration::from_secs(30),
    };
    UringDevice::open(path, &opts).map_err(|e| e.to_string())
}

/// Opens `device`: `nvme:DDDD:BB:DD.F` (optionally `/nsN`, default namespace 1) through the
/// user-space NVMe driver (the controller bound to `vfio-pci`), anything else as [`open`] does.
///
/// # Errors
/// The driver's open error, as text naming the device.
pub fn open_any(device: &Path, create_bytes: Option<u64>, queue_depth: u32) -> Result<AnyDevice, String> {
    match nvme_target(device) {
        Some((pci, nsid)) => {
            let opts = NvmeOptions {
                nsid,
                queue_depth,
                ..NvmeOptions::default()
            };
            NvmeDevice::open(&pci, &opts).map(AnyDevice::Nvme).map_err(|e| e.to_string())
        }
        None => open(device, create_bytes, queue_depth).map(AnyDevice::Uring),
    }
}

/// `(pci_address, nsid)` of a device named `nvme:DDDD:BB:DD.F[/nsN]`.
pub fn nvme_target(device: &Path) -> Option<(String, u32)> {
    let s = device.to_str()?.strip_prefix("nvme:")?;
    match s.split_once("/ns") {
        Some((pci, ns)) => Some((pci.to_string(), ns.parse().ok()?)),
        None => Some((s.to_string(), 1)),
    }
}

/// CPU time this thread has used, ns (`/proc/thread-self/schedstat`, first field); `None` where
/// the kernel does not report it.
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses a size in bytes: a number with an optional binary suffix `K`, `M`, `G`, `T` (also
/// `KiB`, `MiB`, `GiB`, `TiB`), e.g. `4G` = 4 × 2^30.
///
/// # Errors
/// Names the text that is not a size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4G, 512M, 1048576)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        "T" | "TIB" => 40,
        _ => return Err(format!("{s:?}: unknown size suffix (K, M, G, T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Whether `path` is a regular file that holds fewer allocated bytes than its size (a sparse
/// file, or one that was just grown), so reads of it would not reach the device.
pub fn is_sparse_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.blocks() * 512 < m.len())
}

/// Sleeps in epoll until the device posts a completion (its `completion_fd`) or a timeout.
///
/// The timeout has nanosecond resolution (`epoll_pwait2`): with `epoll_wait`'s milliseconds an
/// open-loop sender would oversleep by up to a millisecond and charge that to the device.
pub struct CompletionWaiter {
    epoll: std::os::fd::OwnedFd,
    events: Vec<rustix::event::epoll::Event>,
}

impl CompletionWaiter {
    /// Registers `dev`'s completion descriptor.
    ///
    /// # Errors
    /// The backend has no completion descriptor, or epoll failed.
    pub fn new(dev: &UringDevice) -> std::io::Result<CompletionWaiter> {
        use rustix::event::epoll;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let fd = dev
            .completion_fd()
            .ok_or_else(|| std::io::Error::other("device has no completion descriptor"))?;
        epoll::add(&epoll, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN)?;
        Ok(CompletionWaiter {
            epoll,
            events: Vec::with_capacity(4),
        })
    }

    /// Waits at most `timeout` for a completion signal (returns early on one, or on a signal).
    pub fn wait(&mut self, timeout: Duration) {
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        self.events.clear();
        // EINTR only ends the wait early; the caller reaps and loops either way.
        let _ = rustix::event::epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut self.events), Some(&ts));
    }
}

/// Records `ns` into `h`, clamped to the histogram's bounds.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(HIST_LOW_NS, HIST_HIGH_NS));
}

/// How a closed-loop step picks offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Consecutive I/Os, wrapping at the end of the region.
    Sequential,
    /// Uniformly random I/O-size-aligned offsets in the region.
    Random,
}

/// What a closed-loop step measured.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time of the step, seconds.
    pub secs: f64,
    /// Per-I/O latency (submit to reap), ns.
    pub latency: Histogram<u64>,
    /// CPU time of the submitting thread over the step, seconds (`None`: not reported).
    pub cpu_secs: Option<f64>,
}

impl StepResult {
    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.secs.max(1e-9)
    }

    /// Bandwidth, MB/s (10^6 bytes).
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    /// CPU time of the submitting thread per completed I/O, µs.
    pub fn cpu_us_per_io(&self) -> Option<f64> {
        self.cpu_secs.map(|c| c * 1e6 / self.ios.max(1) as f64)
    }
}

/// Runs `kind` (read or write) I/Os of `io_bytes` over `[0, region_bytes)` with exactly
/// `queue_depth` in flight (closed loop: a new I/O is submitted as each completes) for
/// `duration`, or until `max_bytes` have been moved. Buffers come from a registered pool of
/// `queue_depth` buffers filled with random bytes.
///
/// # Errors
/// The first failed I/O or submit (nothing is retried).
///
/// # Panics
/// If `io_bytes` is not a positive multiple of [`SECTOR_SIZE`], the region holds no I/O, or
/// `queue_depth` exceeds the device's `max_in_flight` (programmer errors).
#[allow(clippy::too_many_arguments)]
pub fn closed_loop<D: BlockDevice + ?Sized>(
    dev: &mut D,
    kind: IoKind,
    pattern: Pattern,
    io_bytes: usize,
    region_bytes: u64,
    queue_depth: usize,
    duration: Duration,
    max_bytes: Option<u64>,
    rng: &mut impl Rng,
) -> Result<StepResult, String> {
    assert!(io_bytes > 0 && io_bytes.is_multiple_of(SECTOR_SIZE));
    let slots = region_bytes / io_bytes as u64;
    assert!(slots > 0, "region of {region_bytes} bytes holds no {io_bytes}-byte I/O");
    assert!(queue_depth >= 1 && queue_depth <= dev.info().max_in_flight);
    assert!(matches!(kind, IoKind::Read | IoKind::Write));
    let mut pool = BufPool::new(queue_depth, io_bytes);
    let mut bufs = Vec::with_capacity(queue_depth);
    while let Some(mut b) = pool.take() {
        rng.fill(b.as_mut_slice());
        bufs.push(b);
    }
    for b in bufs {
        pool.put(b);
    }
    // Registration is an optimisation; unregistered buffers work too.
    let _ = dev.register_buffers(&pool);
    let mut sent_at: Vec<Instant> = vec![Instant::now(); queue_depth];
    let mut free_tags: Vec<usize> = (0..queue_depth).rev().collect();
    let mut latency = new_histogram();
    let mut next_seq = 0u64;
    let (mut ios, mut bytes, mut issued_bytes) = (0u64, 0u64, 0u64);
    let mut done = Vec::with_capacity(queue_depth);
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let deadline = start + duration;
    let budget = max_bytes.unwrap_or(u64::MAX);
    loop {
        let issuing = Instant::now() < deadline && issued_bytes < budget;
        while issuing && issued_bytes < budget {
            let Some(tag) = free_tags.pop() else { break };
            let buf = pool.take().expect("one buffer per tag");
            let slot = match pattern {
                Pattern::Sequential => {
                    let s = next_seq % slots;
                    next_seq += 1;
                    s
                }
                Pattern::Random => rng.gen_range(0..slots),
            };
            let offset = slot * io_bytes as u64;
            sent_at[tag] = Instant::now();
            let r = match kind {
                IoKind::Read => dev.submit_read(offset, buf, tag as u64),
                _ => dev.submit_write(offset, buf, tag as u64),
            };
            if let Err(e) = r {
                return Err(format!("submit {kind} at {offset}: {e}"));
            }
            issued_bytes += io_bytes as u64;
        }
        dev.submit().map_err(|e| e.to_string())?;
        if dev.in_flight() == 0 {
            break;
        }
        done.clear();
        dev.reap(&mut done, 1).map_err(|e| e.to_string())?;
        let now = Instant::now();
        for c in done.drain(..) {
            let Completion { tag, buf, result, .. } = c;
            result.map_err(|e: DeviceError| e.to_string())?;
            let tag = tag as usize;
            record(&mut latency, (now - sent_at[tag]).as_nanos() as u64);
            ios += 1;
            bytes += io_bytes as u64;
            pool.put(buf.expect("read/write completions carry their buffer"));
            free_tags.push(tag);
        }
    }
    Ok(StepResult {
        ios,
        bytes,
        secs: start.elapsed().as_secs_f64(),
        latency,
        cpu_secs: cpu_start.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
    })
}

/// Writes every byte of `[0, bytes)` once, sequentially, with `block_bytes` writes and
/// `queue_depth` in flight, so that later reads touch allocated blocks (ACT's `act_prep` does
/// the same for a new device). Returns what the fill measured.
///
/// # Errors
/// As [`closed_loop`].
pub fn fill<D: BlockDevice + ?Sized>(
    dev: &mut D,
    bytes: u64,
    block_bytes: usize,
    queue_depth: usize,
    rng: &mut impl Rng,
) -> Result<StepResult, String> {
    let bytes = bytes - bytes % block_bytes as u64;
    closed_loop(
        dev,
        IoKind::Write,
        Pattern::Sequential,
        block_bytes,
        bytes,
        queue_depth,
        Duration::from_secs(24 * 3600),
        Some(bytes),
        rng,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn fill_then_random_reads_on_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.dat");
        let mut dev = open(&path, Some(8 << 20), 16).unwrap();
        assert!(is_sparse_file(&path));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let f = fill(&mut dev, 8 << 20, 1 << 20, 4, &mut rng).unwrap();
        assert_eq!(f.bytes, 8 << 20);
        assert_eq!(f.ios, 8);
        assert!(!is_sparse_file(&path));
        let r = closed_loop(
            &mut dev,
            IoKind::Read,
            Pattern::Random,
            4096,
            8 << 20,
            8,
            Duration::from_millis(100),
            Some(1 << 20),
            &mut rng,
        )
        .unwrap();
        assert_eq!(r.ios, 256, "the byte budget ends the step");
        assert_eq!(r.latency.len(), 256);
        assert!(r.iops() > 0.0 && r.mbps() > 0.0);
        assert!(r.cpu_us_per_io().is_some_and(|c| c > 0.0));
    }

    #[test]
    fn nvme_targets_parse() {
        assert_eq!(nvme_target(Path::new("nvme:0000:00:02.0")), Some(("0000:00:02.0".into(), 1)));
        assert_eq!(nvme_target(Path::new("nvme:0000:00:02.0/ns2")), Some(("0000:00:02.0".into(), 2)));
        assert_eq!(nvme_target(Path::new("/dev/nvme0n1")), None);
        assert_eq!(nvme_target(Path::new("nvme:0000:00:02.0/nsX")), None);
    }
}
