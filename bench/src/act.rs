//! ACT-style device test: certify a device for Bolide-like (Aerospike-like) storage load, as
//! Aerospike's ACT (`act_storage`, aerospike/act on GitHub) does, through the `drivers` io_uring
//! backend on a file or block device.
//!
//! # The load at N×
//!
//! Per device, from ACT's README and `src/storage/cfg_storage.c` (`derive_configuration`):
//!
//! - **reads**: `2000·N` per second of `record_bytes` (1536) records. A stored record takes
//!   `round_up(record_bytes, 128)` bytes (ACT's `RBLOCK_SIZE`); each read is
//!   `round_up(stored, 4096)` bytes at a uniformly random 4 KiB-aligned offset, as ACT's
//!   `random_read_offset` (Bolide reads the 4 KiB sectors covering a record the same way);
//! - **client writes**: `1000·N` per second of the same records, never written one by one: they
//!   fill write blocks of `wblock_size_bytes` (128 KiB, ACT's `large-block-op-kbytes`), so they
//!   cost `W / floor(wblock / stored)` large-block writes per second ("original" writes);
//! - **defrag**: with `defrag_lwm_pct` L, a block is defragged when under L % live, so each
//!   freed block brings in on average up to L % of a block of live data to rewrite; ACT models
//!   this as a write amplification of `100 / (100 - L)` (2.0 at L = 50). Large-block writes
//!   per second are `original · amplification`, and **large-block reads per second equal
//!   large-block writes** (ACT: "large block read rate always matches overall write rate":
//!   defrag reads every block it empties). At 1× with the defaults: 1000 / floor(131072 / 1536)
//!   = 1000 / 85 = 11.76 original writes/s, × 2 = **23.53 large-block writes/s and 23.53
//!   large-block reads/s** of 128 KiB, beside the 2000 reads/s. Large-block offsets are random
//!   multiples of the block size.
//!
//! ACT's `commit-to-device`, `update-pct`, `replication-factor` and record-size ranges are not
//! modelled (their defaults are what this test runs). Several devices are tested at once by
//! one [`run_load`] per device, each on its own thread and ring, each at the full per-device
//! load (ACT spreads its total rates over the devices instead, which comes to the same).
//!
//! # Scheduling and latency
//!
//! Open loop: operation `i` of each stream is due at `i / rate` after the start, whatever the
//! device did with earlier ones, and its latency runs from that **intended** time to its
//! completion (so time spent waiting for a free queue slot counts, as ACT's `reads` histogram
//! counts its transaction-queue wait). The service time from the actual submit is kept too
//! (ACT's `device-reads`). One thread and one io_uring ring with `queue_depth` entries; it sleeps
//! in epoll on the ring's completion eventfd until the next operation is due. Operations due
//! but not yet submitted wait in a backlog; if the oldest has waited longer than `max_lag_s`
//! (ACT's `max-lag-sec`, 10 s) the device cannot keep up and the run stops and fails.
//!
//! # Pass rule
//!
//! Operations are put in the time slice (`slice_s`) of their intended time. A run passes when
//! in **every** slice fewer than 5 % of reads took over 1 ms, fewer than 1 % over 8 ms and
//! fewer than 0.1 % over 64 ms (ACT's certification thresholds, checked per hour-long slice
//! there), every slice has at least one read, and no I/O failed. The report also applies the
//! same rule to the reads' service time (from the actual submit, ACT's `device-reads`): when
//! that passes and the main verdict fails, the sender was late (on a shared machine: waiting
//! for a CPU), not the device.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bolide_drivers::uring::UringDevice;
use bolide_drivers::{BlockDevice, BufPool, Completion, SECTOR_SIZE};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::devio::{self, CompletionWaiter};
use crate::loadgen::report::{histogram_json, ProcSample};
use crate::loadgen::stats::{new_histogram, over_pct};
use crate::plot::{cdf_points, CdfSeries, PlotData, RateSeries};

/// Reads per second per device at 1× (ACT).
pub const READS_PER_S_1X: f64 = 2000.0;
/// Client record writes per second per device at 1× (ACT).
pub const WRITES_PER_S_1X: f64 = 1000.0;
/// Granularity of a stored record, bytes (ACT's `RBLOCK_SIZE`).
pub const RBLOCK_BYTES: u64 = 128;
/// The pass rule: (threshold ms, the share of reads over it must stay under this percent).
pub const PASS_RULE: [(u64, f64); 3] = [(1, 5.0), (8, 1.0), (64, 0.1)];

/// The test's parameters (everything but the load multiplier N).
#[derive(Clone, Debug, PartialEq)]
pub struct ActConfig {
    /// File or block device.
    pub device: PathBuf,
    /// Size to create or grow a regular file to, bytes (`None`: use it as it is).
    pub device_bytes: Option<u64>,
    /// Record size, bytes (ACT `record-bytes`, 1536).
    pub record_bytes: u64,
    /// Write-block size, bytes (ACT `large-block-op-kbytes` × 1024, 128 KiB).
    pub wblock_size_bytes: u64,
    /// Defrag low-water mark, percent 0..=99 (ACT `defrag-lwm-pct`, 50).
    pub defrag_lwm_pct: u32,
    /// Length of one run, seconds.
    pub duration_s: f64,
    /// Length of a histogram slice, seconds.
    pub slice_s: f64,
    /// io_uring entries: the most I/Os in flight.
    pub queue_depth: u32,
    /// Longest an operation may wait unsubmitted before the run is stopped as failed, seconds.
    pub max_lag_s: f64,
    /// Seed of the offset generator.
    pub seed: u64,
}

impl ActConfig {
    /// A configuration with ACT's defaults on `device`, 60 s in 10 s slices, queue depth 64.
    pub fn new(device: PathBuf) -> ActConfig {
        ActConfig {
            device,
            device_bytes: None,
            record_bytes: 1536,
            wblock_size_bytes: 128 * 1024,
            defrag_lwm_pct: 50,
            duration_s: 60.0,
            slice_s: 10.0,
            queue_depth: 64,
            max_lag_s: 10.0,
            seed: 1,
        }
    }

    /// Checks the relations between the parameters.
    ///
    /// # Errors
    /// Names the option that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.record_bytes == 0 {
            return Err("--record-bytes: must be at least 1".into());
        }
        let s = SECTOR_SIZE as u64;
        if self.wblock_size_bytes < s
            || !self.wblock_size_bytes.is_multiple_of(s)
            || self.wblock_size_bytes < round_up(self.record_bytes, RBLOCK_BYTES)
        {
            return Err(format!(
                "--wblock-size-bytes: must be a multiple of {s} holding at least one record, got {}",
                self.wblock_size_bytes
            ));
        }
        if self.defrag_lwm_pct >= 100 {
            return Err(format!("--defrag-lwm-pct: must be 0..=99, got {}", self.defrag_lwm_pct));
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err(format!("--duration-s: must be > 0, got {}", self.duration_s));
        }
        if !(self.slice_s > 0.0 && self.slice_s <= self.duration_s) {
            return Err(format!(
                "--slice-s: must be > 0 and at most --duration-s, got {}",
                self.slice_s
            ));
        }
        if !(1..=4096).contains(&self.queue_depth) {
            return Err(format!("--queue-depth: must be 1..=4096, got {}", self.queue_depth));
        }
        if !(self.max_lag_s.is_finite() && self.max_lag_s > 0.0) {
            return Err(format!("--max-lag-s: must be > 0, got {}", self.max_lag_s));
        }
        Ok(())
    }

    /// Bytes of one read I/O: the stored record rounded up to whole 4 KiB sectors.
    pub fn read_io_bytes(&self) -> u64 {
        round_up(round_up(self.record_bytes, RBLOCK_BYTES), SECTOR_SIZE as u64)
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The per-device rates at N×, derived as in ACT (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActRates {
    /// The load multiplier.
    pub load_n: f64,
    /// Record reads per second.
    pub reads_per_s: f64,
    /// Client record writes per second (turned into large-block writes).
    pub writes_per_s: f64,
    /// Bytes a stored record takes (`record_bytes` rounded up to 128).
    pub stored_record_bytes: u64,
    /// Records per write block: `floor(wblock / stored)`.
    pub records_per_wblock: u64,
    /// `100 / (100 - defrag_lwm_pct)`.
    pub defrag_write_amplification: f64,
    /// Large-block writes per second: client writes in blocks × amplification.
    pub lb_writes_per_s: f64,
    /// Large-block (defrag) reads per second: equal to the large-block writes.
    pub lb_reads_per_s: f64,
}

impl ActRates {
    /// The rates at load `n` (> 0) for `cfg`.
    pub fn derive(cfg: &ActConfig, n: f64) -> ActRates {
        assert!(n > 0.0 && n.is_finite(), "load multiplier {n}");
        let stored = round_up(cfg.record_bytes, RBLOCK_BYTES);
        let per_block = (cfg.wblock_size_bytes / stored).max(1);
        let amp = 100.0 / f64::from(100 - cfg.defrag_lwm_pct);
        let writes = WRITES_PER_S_1X * n;
        let lb_writes = writes / per_block as f64 * amp;
        ActRates {
            load_n: n,
            reads_per_s: READS_PER_S_1X * n,
            writes_per_s: writes,
            stored_record_bytes: stored,
            records_per_wblock: per_block,
            defrag_write_amplification: amp,
            lb_writes_per_s: lb_writes,
            lb_reads_per_s: lb_writes,
        }
    }

    /// The device bandwidth this load asks for, MB/s (10^6 bytes): reads and large blocks.
    pub fn device_mbps(&self, cfg: &ActConfig) -> f64 {
        (self.reads_per_s * cfg.read_io_bytes() as f64
            + (self.lb_reads_per_s + self.lb_writes_per_s) * cfg.wblock_size_bytes as f64)
            / 1e6
    }
}

/// The three operation streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Read,
    LbRead,
    LbWrite,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Read, Stream::LbRead, Stream::LbWrite];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Read => "read",
            Stream::LbRead => "large_block_read",
            Stream::LbWrite => "large_block_write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Open-loop due times of the three streams merged: operation `i` of a stream with rate `r`
/// is due at `i / r` seconds (ns since the start), operations due at or after `end_ns` are
/// never produced. Pure, so the tests can check the schedule without a device.
#[derive(Clone, Debug)]
pub struct Schedule {
    rates: [f64; 3],
    next: [u64; 3],
    end_ns: u64,
}

impl Schedule {
    /// The schedule of `rates` over `duration_s`.
    pub fn new(rates: &ActRates, duration_s: f64) -> Schedule {
        Schedule {
            rates: [rates.reads_per_s, rates.lb_reads_per_s, rates.lb_writes_per_s],
            next: [0; 3],
            end_ns: (duration_s * 1e9) as u64,
        }
    }

    fn due_ns(&self, s: usize) -> Option<u64> {
        let r = self.rates[s];
        if r <= 0.0 {
            return None;
        }
        let t = (self.next[s] as f64 * 1e9 / r) as u64;
        (t < self.end_ns).then_some(t)
    }

    /// When the next operation (any stream) is due, ns; `None` when the schedule is over.
    pub fn next_due_ns(&self) -> Option<u64> {
        (0..3).filter_map(|s| self.due_ns(s)).min()
    }

    /// The next operation if it is due at or before `now_ns`: its stream and intended time.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(Stream, u64)> {
        let (s, t) = (0..3)
            .filter_map(|s| self.due_ns(s).map(|t| (s, t)))
            .min_by_key(|&(s, t)| (t, s))?;
        if t > now_ns {
            return None;
        }
        self.next[s] += 1;
        Some((Stream::ALL[s], t))
    }
}

/// One slice's histograms (latency from the intended time, ns) per stream.
#[derive(Clone, Debug)]
pub struct Slice {
    /// Start of the slice, seconds since the run started.
    pub start_s: f64,
    pub latency: [Histogram<u64>; 3],
    /// Reads' service time (submit to completion), ns: ACT's `device-reads`, for telling the
    /// device's share of a failure from the sender's (CPU starvation, backlog).
    pub read_service: Histogram<u64>,
}

/// Whether one slice passes, and why not.
pub fn slice_verdict(read_latency: &Histogram<u64>) -> Result<(), String> {
    if read_latency.is_empty() {
        return Err("no read completed".into());
    }
    for (ms, max_pct) in PASS_RULE {
        let pct = over_pct(read_latency, ms * 1_000_000);
        if pct >= max_pct {
            return Err(format!("{pct:.3} % of reads over {ms} ms (limit: under {max_pct} %)"));
        }
    }
    Ok(())
}

/// Everything one run at one load measured.
#[derive(Clone, Debug)]
pub struct ActRun {
    /// The device (path) the run was on.
    pub device: String,
    pub rates: ActRates,
    pub slices: Vec<Slice>,
    /// Whole-run latency from the intended time, per stream, ns.
    pub totals: [Histogram<u64>; 3],
    /// Whole-run service time (submit to completion), per stream, ns.
    pub service: [Histogram<u64>; 3],
    /// Completed operations per whole second since the start, per stream.
    pub per_second: Vec<[u64; 3]>,
    /// Why the run stopped early or failed outright (I/O error, backlog over the max lag).
    pub abort: Option<String>,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Time the first `fill` took, if the device was filled before this run.
    pub fill: Option<(u64, f64)>,
    /// This process's CPU time and its threads' run-queue wait (runnable, no CPU) over the
    /// run, seconds (`/proc/self/stat`, `/proc/self/task/*/schedstat`); `None` if unreadable.
    /// A large wait means the sender was late because the machine was busy.
    pub cpu: Option<ProcSample>,
}

impl ActRun {
    /// `Ok` when every slice passes and the run was not aborted; else the first reason.
    pub fn verdict(&self) -> Result<(), String> {
        if let Some(a) = &self.abort {
            return Err(a.clone());
        }
        for s in &self.slices {
            slice_verdict(&s.latency[0]).map_err(|e| format!("slice at {:.0} s: {e}", s.start_s))?;
        }
        Ok(())
    }

    pub fn passed(&self) -> bool {
        self.verdict().is_ok()
    }

    /// The same rule applied to the reads' service time (from submit, ACT's `device-reads`)
    /// instead of the time from the intended send: whether the device alone would pass.
    pub fn verdict_on_service_time(&self) -> Result<(), String> {
        if let Some(a) = &self.abort {
            return Err(a.clone());
        }
        for s in &self.slices {
            slice_verdict(&s.read_service).map_err(|e| format!("slice at {:.0} s: {e}", s.start_s))?;
        }
        Ok(())
    }
}

/// In-flight bookkeeping of one operation.
#[derive(Clone, Copy, Debug)]
struct Pending {
    stream: Stream,
    intended_ns: u64,
    submitted_ns: u64,
}

/// Opens the device (creating or growing a file to `device_bytes`), and fills it when it is a
/// sparse regular file, so that reads reach the device. Returns the device and the fill's
/// (bytes, seconds).
///
/// # Errors
/// Open or fill failed; the text names the device.
pub fn open_and_prep(cfg: &ActConfig, force_fill: bool) -> Result<(UringDevice, Option<(u64, f64)>), String> {
    let mut dev = devio::open(&cfg.device, cfg.device_bytes, cfg.queue_depth)?;
    let mut fill = None;
    if force_fill || devio::is_sparse_file(&cfg.device) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xf111);
        let bytes = dev.info().capacity_bytes;
        let qd = (cfg.queue_depth as usize).min(8);
        let r = devio::fill(&mut dev, bytes, 1 << 20, qd, &mut rng)
            .map_err(|e| format!("filling {}: {e}", cfg.device.display()))?;
        fill = Some((r.bytes, r.secs));
    }
    Ok((dev, fill))
}

/// Runs the test at load `n` on an open device for `cfg.duration_s`.
///
/// # Errors
/// The device is too small for one write block and one read, or its completion descriptor
/// cannot be watched. I/O failures do not return `Err`: they end the run with `abort` set.
pub fn run_load(dev: &mut UringDevice, cfg: &ActConfig, n: f64) -> Result<ActRun, String> {
    cfg.validate()?;
    let rates = ActRates::derive(cfg, n);
    let capacity = dev.info().capacity_bytes;
    let read_bytes = cfg.read_io_bytes();
    let lb_bytes = cfg.wblock_size_bytes;
    if capacity < lb_bytes || capacity < read_bytes {
        return Err(format!(
            "{}: {capacity} bytes is smaller than one {lb_bytes}-byte block",
            cfg.device.display()
        ));
    }
    let read_slots = (capacity - read_bytes) / SECTOR_SIZE as u64 + 1;
    let lb_slots = capacity / lb_bytes;
    let qd = (cfg.queue_depth as usize).min(dev.info().max_in_flight);
    let mut read_pool = BufPool::new(qd, read_bytes as usize);
    let mut lb_pool = BufPool::new(qd, lb_bytes as usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    {
        // Large-block writes carry random bytes (ACT salts its writes), set once per buffer.
        let mut bufs: Vec<_> = std::iter::from_fn(|| lb_pool.take()).collect();
        for b in &mut bufs {
            rng.fill(b.as_mut_slice());
        }
        bufs.into_iter().for_each(|b| lb_pool.put(b));
    }
    // Registration only speeds I/O up; without it the buffers still work.
    let _ = dev.register_buffers(&read_pool);
    let _ = dev.register_buffers(&lb_pool);
    let mut waiter = CompletionWaiter::new(dev).map_err(|e| format!("epoll on the device: {e}"))?;

    let slice_ns = (cfg.slice_s * 1e9) as u64;
    let n_slices = (cfg.duration_s / cfg.slice_s).ceil() as usize;
    let mut slices: Vec<Slice> = (0..n_slices)
        .map(|i| Slice {
            start_s: i as f64 * cfg.slice_s,
            latency: [new_histogram(), new_histogram(), new_histogram()],
            read_service: new_histogram(),
        })
        .collect();
    let mut totals = [new_histogram(), new_histogram(), new_histogram()];
    let mut service = [new_histogram(), new_histogram(), new_histogram()];
    let mut per_second: Vec<[u64; 3]> = vec![[0; 3]; cfg.duration_s.ceil() as usize + 1];
    let mut schedule = Schedule::new(&rates, cfg.duration_s);
    let mut backlog: VecDeque<(Stream, u64)> = VecDeque::new();
    let mut pending: Vec<Option<Pending>> = vec![None; qd];
    let mut free_tags: Vec<usize> = (0..qd).rev().collect();
    let mut done: Vec<Completion> = Vec::with_capacity(qd);
    let max_lag_ns = (cfg.max_lag_s * 1e9) as u64;
    let mut abort: Option<String> = None;
    let proc_at_start = ProcSample::of("self");
    let start = Instant::now();
    let now_ns = |start: Instant| start.elapsed().as_nanos() as u64;

    loop {
        let now = now_ns(start);
        if abort.is_none() {
            while let Some(op) = schedule.pop_due(now) {
                backlog.push_back(op);
            }
            if let Some(&(s, t)) = backlog.front() {
                if now.saturating_sub(t) > max_lag_ns {
                    abort = Some(format!(
                        "the device cannot keep up: a {} due at {:.3} s was still not submitted {:.1} s later (--max-lag-s), {} operations waiting",
                        s.name(),
                        t as f64 / 1e9,
                        cfg.max_lag_s,
                        backlog.len()
                    ));
                }
            }
        }
        if abort.is_none() {
            while let Some(&(stream, intended_ns)) = backlog.front() {
                let Some(tag) = free_tags.pop() else { break };
                let (offset, buf) = match stream {
                    Stream::Read => (
                        rng.gen_range(0..read_slots) * SECTOR_SIZE as u64,
                        read_pool.take().expect("one read buffer per tag"),
                    ),
                    Stream::LbRead | Stream::LbWrite => (
                        rng.gen_range(0..lb_slots) * lb_bytes,
                        lb_pool.take().expect("one block buffer per tag"),
                    ),
                };
                let submitted_ns = now_ns(start);
                let r = if stream == Stream::LbWrite {
                    dev.submit_write(offset, buf, tag as u64)
                } else {
                    dev.submit_read(offset, buf, tag as u64)
                };
                if let Err(e) = r {
                    abort = Some(format!("submit of a {} at {offset}: {e}", stream.name()));
                    free_tags.push(tag);
                    break;
                }
                backlog.pop_front();
                pending[tag] = Some(Pending {
                    stream,
                    intended_ns,
                    submitted_ns,
                });
            }
            if let Err(e) = dev.submit() {
                abort = Some(e.to_string());
            }
        }
        let finished = abort.is_some() || (schedule.next_due_ns().is_none() && backlog.is_empty());
        if finished && dev.in_flight() == 0 {
            break;
        }
        // Sleep until the next operation is due or a completion arrives.
        let wait_ns = match schedule.next_due_ns() {
            Some(t) if abort.is_none() && !free_tags.is_empty() => t.saturating_sub(now_ns(start)),
            _ => 100_000_000,
        };
        if wait_ns > 0 && dev.in_flight() > 0 {
            waiter.wait(Duration::from_nanos(wait_ns));
        } else if wait_ns > 0 {
            std::thread::sleep(Duration::from_nanos(wait_ns.min(100_000_000)));
        }
        done.clear();
        if let Err(e) = dev.reap(&mut done, 0) {
            abort.get_or_insert(e.to_string());
            break;
        }
        let t_done = now_ns(start);
        for c in done.drain(..) {
            let tag = c.tag as usize;
            let p = pending[tag].take().expect("completion for a pending tag");
            free_tags.push(tag);
            let buf = c.buf.expect("read/write completions carry their buffer");
            if p.stream == Stream::Read {
                read_pool.put(buf);
            } else {
                lb_pool.put(buf);
            }
            if let Err(e) = c.result {
                abort.get_or_insert(e.to_string());
                continue;
            }
            let i = p.stream.index();
            let lat = t_done.saturating_sub(p.intended_ns);
            devio::record(&mut totals[i], lat);
            devio::record(&mut service[i], t_done.saturating_sub(p.submitted_ns));
            let slice = ((p.intended_ns / slice_ns) as usize).min(n_slices - 1);
            devio::record(&mut slices[slice].latency[i], lat);
            if p.stream == Stream::Read {
                devio::record(&mut slices[slice].read_service, t_done.saturating_sub(p.submitted_ns));
            }
            let sec = ((t_done / 1_000_000_000) as usize).min(per_second.len() - 1);
            per_second[sec][i] += 1;
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let cpu = ProcSample::of("self").zip(proc_at_start).map(|(b, a)| ProcSample {
        cpu_s: b.cpu_s - a.cpu_s,
        runqueue_wait_s: b.runqueue_wait_s - a.runqueue_wait_s,
    });
    per_second.truncate((wall_s.ceil() as usize).max(1));
    Ok(ActRun {
        device: cfg.device.display().to_string(),
        rates,
        slices,
        totals,
        service,
        per_second,
        abort,
        wall_s,
        fill: None,
        cpu,
    })
}

/// The loads `--find-max` tries after a run at `n` passed or failed, given the highest passing
/// and lowest failing loads so far: doubling from 1 until a failure, then bisecting (whole
/// numbers) between the highest pass and the lowest failure. `None` when they are adjacent (the
/// answer is the highest pass) or `cap` is reached.
pub fn next_load(highest_pass: Option<u64>, lowest_fail: Option<u64>, cap: u64) -> Option<u64> {
    match (highest_pass, lowest_fail) {
        (None, None) => Some(1),
        (None, Some(_)) => None,
        (Some(p), None) => (p < cap).then(|| (p * 2).min(cap)),
        (Some(p), Some(f)) => (f > p + 1).then(|| p + (f - p) / 2),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn stream_slice_json(h: &Histogram<u64>) -> Value {
    let mut v = histogram_json(h);
    for (ms, _) in PASS_RULE {
        v[format!("over_{ms}ms_pct")] = json!(round3(over_pct(h, ms * 1_000_000)));
    }
    v
}

/// One run as JSON: rates, verdict, per-slice histograms, totals, per-second completions.
pub fn run_json(cfg: &ActConfig, r: &ActRun) -> Value {
    let rates = &r.rates;
    let slices: Vec<Value> = r
        .slices
        .iter()
        .map(|s| {
            let mut v = json!({
                "start_s": s.start_s,
                "pass": slice_verdict(&s.latency[0]).is_ok(),
            });
            for st in Stream::ALL {
                v[st.name()] = stream_slice_json(&s.latency[st.index()]);
            }
            v["read_service_time"] = stream_slice_json(&s.read_service);
            v["pass_on_service_time"] = json!(slice_verdict(&s.read_service).is_ok());
            v
        })
        .collect();
    let mut totals = serde_json::Map::new();
    for st in Stream::ALL {
        let i = st.index();
        let mut v = stream_slice_json(&r.totals[i]);
        v["service_time"] = histogram_json(&r.service[i]);
        v["achieved_per_s"] = json!(round3(r.totals[i].len() as f64 / cfg.duration_s));
        totals.insert(st.name().into(), v);
    }
    json!({
        "device": r.device,
        "load_n": rates.load_n,
        "pass": r.passed(),
        "verdict": match r.verdict() { Ok(()) => "pass".to_string(), Err(e) => format!("fail: {e}") },
        "verdict_on_service_time": match r.verdict_on_service_time() { Ok(()) => "pass".to_string(), Err(e) => format!("fail: {e}") },
        "rates": {
            "reads_per_s": rates.reads_per_s,
            "read_io_bytes": cfg.read_io_bytes(),
            "client_writes_per_s": rates.writes_per_s,
            "stored_record_bytes": rates.stored_record_bytes,
            "records_per_wblock": rates.records_per_wblock,
            "defrag_write_amplification": round3(rates.defrag_write_amplification),
            "large_block_reads_per_s": round3(rates.lb_reads_per_s),
            "large_block_writes_per_s": round3(rates.lb_writes_per_s),
            "device_mbps": round3(rates.device_mbps(cfg)),
        },
        "wall_s": round3(r.wall_s),
        "cpu_s": r.cpu.map(|c| round3(c.cpu_s)),
        "runqueue_wait_s": r.cpu.map(|c| round3(c.runqueue_wait_s)),
        "fill": r.fill.map(|(b, s)| json!({"bytes": b, "seconds": round3(s), "mbps": round3(b as f64 / 1e6 / s.max(1e-9))})),
        "slices": slices,
        "totals": totals,
        "completed_per_second": r.per_second.iter().map(|c| json!({"read": c[0], "large_block_read": c[1], "large_block_write": c[2]})).collect::<Vec<_>>(),
    })
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// One run as text: the derived rates, a row per slice, the totals and the verdict.
pub fn run_text(cfg: &ActConfig, r: &ActRun) -> String {
    use std::fmt::Write as _;
    let rt = &r.rates;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== ACT {}x on {}: {:.0} reads/s of {} B ({} B I/O); {:.0} writes/s of {} B -> {:.2} large-block writes/s + {:.2} large-block reads/s of {} B (defrag-lwm-pct {}, amplification {:.2}); {:.1} MB/s; queue depth {}",
        rt.load_n,
        cfg.device.display(),
        rt.reads_per_s,
        cfg.record_bytes,
        cfg.read_io_bytes(),
        rt.writes_per_s,
        cfg.record_bytes,
        rt.lb_writes_per_s,
        rt.lb_reads_per_s,
        cfg.wblock_size_bytes,
        cfg.defrag_lwm_pct,
        rt.defrag_write_amplification,
        rt.device_mbps(cfg),
        cfg.queue_depth
    );
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>10} {:>9}  verdict",
        "slice",
        "reads",
        ">1ms%",
        ">8ms%",
        ">64ms%",
        "p50ms",
        "p99ms",
        "maxms",
        "lb-reads",
        "lb-r p99ms",
        "lb-writes",
        "lb-w p99ms",
        "svc>1ms%"
    );
    let q = |h: &Histogram<u64>, x: f64| {
        if h.is_empty() {
            "-".to_string()
        } else {
            ms(h.value_at_quantile(x))
        }
    };
    for sl in &r.slices {
        let [rd, lr, lw] = &sl.latency;
        let _ = writeln!(
            s,
            "{:>6}s {:>8} {:>7.3} {:>7.3} {:>7.3} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>10} {:>9.3}  {}",
            sl.start_s,
            rd.len(),
            over_pct(rd, 1_000_000),
            over_pct(rd, 8_000_000),
            over_pct(rd, 64_000_000),
            q(rd, 0.5),
            q(rd, 0.99),
            if rd.is_empty() { "-".into() } else { ms(rd.max()) },
            lr.len(),
            q(lr, 0.99),
            lw.len(),
            q(lw, 0.99),
            over_pct(&sl.read_service, 1_000_000),
            match slice_verdict(rd) {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("FAIL: {e}"),
            }
        );
    }
    for st in Stream::ALL {
        let h = &r.totals[st.index()];
        let sv = &r.service[st.index()];
        let _ = writeln!(
            s,
            "{:<18} {:>8} done ({:.1}/s): p50 {} p99 {} p99.9 {} max {} ms; service time p50 {} p99 {} ms",
            st.name(),
            h.len(),
            h.len() as f64 / cfg.duration_s,
            q(h, 0.5),
            q(h, 0.99),
            q(h, 0.999),
            if h.is_empty() { "-".into() } else { ms(h.max()) },
            q(sv, 0.5),
            q(sv, 0.99)
        );
    }
    if let Some(c) = r.cpu {
        let _ = writeln!(
            s,
            "CPU {:.2} s in {:.1} s; this process's threads waited {:.2} s for a CPU (runnable, not running)",
            c.cpu_s, r.wall_s, c.runqueue_wait_s
        );
    }
    let _ = writeln!(
        s,
        "ACT {}x: {} (the same rule on the reads' service time from submit: {})",
        rt.load_n,
        match r.verdict() {
            Ok(()) => "PASS".to_string(),
            Err(e) => format!("FAIL ({e})"),
        },
        match r.verdict_on_service_time() {
            Ok(()) => "pass".to_string(),
            Err(e) => format!("fail, {e}"),
        }
    );
    s
}

/// What `--plot` draws: read latency CDFs (one per run when several loads or devices were
/// tried, else reads and both large-block streams of the one run) over completed reads per
/// second.
pub fn plot_data(cfg: &ActConfig, runs: &[ActRun], title: &str) -> PlotData {
    let mut cdf = Vec::new();
    let mut rate = Vec::new();
    if let [r] = runs {
        for st in Stream::ALL {
            cdf.push(CdfSeries {
                name: st.name().into(),
                points: cdf_points(&r.totals[st.index()]),
            });
        }
    }
    let several_devices = runs.iter().any(|r| r.device != runs[0].device);
    for r in runs {
        let label = if several_devices {
            format!("{}x {}", r.rates.load_n, r.device)
        } else {
            format!("{}x", r.rates.load_n)
        };
        if runs.len() > 1 {
            cdf.push(CdfSeries {
                name: format!("read {label}"),
                points: cdf_points(&r.totals[0]),
            });
        }
        rate.push(RateSeries {
            name: format!("reads/s {label}"),
            points: r
                .per_second
                .iter()
                .enumerate()
                .filter(|(i, _)| (*i as f64) < cfg.duration_s.floor())
                .map(|(i, c)| (i as f64 + 1.0, c[0] as f64))
                .collect(),
        });
    }
    PlotData {
        title: title.into(),
        cdf,
        rate,
        rate_label: "completed reads/s".into(),
    }
}

/// The parameters as JSON (for the report).
pub fn config_json(cfg: &ActConfig) -> Value {
    json!({
        "device": cfg.device.display().to_string(),
        "device_bytes": cfg.device_bytes,
        "record_bytes": cfg.record_bytes,
        "wblock_size_bytes": cfg.wblock_size_bytes,
        "defrag_lwm_pct": cfg.defrag_lwm_pct,
        "duration_s": cfg.duration_s,
        "slice_s": cfg.slice_s,
        "queue_depth": cfg.queue_depth,
        "max_lag_s": cfg.max_lag_s,
        "seed": cfg.seed,
        "pass_rule": "in every slice: < 5 % of reads over 1 ms, < 1 % over 8 ms, < 0.1 % over 64 ms (ACT)",
        "rates_source": "aerospike/act src/storage/cfg_storage.c derive_configuration: lb_writes = writes / floor(wblock / round_up(record, 128)) * 100 / (100 - defrag_lwm_pct); lb_reads = lb_writes",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_us: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(n, us) in values_us {
            h.record_n(us * 1000, n).unwrap();
        }
        h
    }

    #[test]
    fn rates_at_1x_and_4x_follow_act() {
        let cfg = ActConfig::new("x".into());
        let r = ActRates::derive(&cfg, 1.0);
        assert_eq!(r.reads_per_s, 2000.0);
        assert_eq!(r.stored_record_bytes, 1536);
        assert_eq!(r.records_per_wblock, 85);
        assert_eq!(r.defrag_write_amplification, 2.0);
        assert!((r.lb_writes_per_s - 23.529).abs() < 0.001, "{}", r.lb_writes_per_s);
        assert_eq!(r.lb_reads_per_s, r.lb_writes_per_s);
        assert_eq!(cfg.read_io_bytes(), 4096);
        let r4 = ActRates::derive(&cfg, 4.0);
        assert_eq!(r4.reads_per_s, 8000.0);
        assert!((r4.lb_writes_per_s - 4.0 * r.lb_writes_per_s).abs() < 1e-9);
        // lwm 60 -> amplification 2.5; 1 MiB blocks hold 682 records; 1000-byte records are
        // stored in 1024 bytes.
        let cfg2 = ActConfig {
            defrag_lwm_pct: 60,
            wblock_size_bytes: 1 << 20,
            ..cfg.clone()
        };
        let r = ActRates::derive(&cfg2, 1.0);
        assert_eq!(r.records_per_wblock, 682);
        assert!((r.lb_writes_per_s - 1000.0 / 682.0 * 2.5).abs() < 1e-9);
        let cfg3 = ActConfig {
            record_bytes: 1000,
            ..cfg
        };
        assert_eq!(ActRates::derive(&cfg3, 1.0).stored_record_bytes, 1024);
        let cfg4 = ActConfig {
            record_bytes: 4000,
            ..ActConfig::new("x".into())
        };
        assert_eq!(cfg4.read_io_bytes(), 4096);
        let cfg5 = ActConfig {
            record_bytes: 4100,
            ..ActConfig::new("x".into())
        };
        assert_eq!(cfg5.read_io_bytes(), 8192);
    }

    #[test]
    fn the_schedule_is_open_loop_and_merges_streams_in_time_order() {
        let cfg = ActConfig::new("x".into());
        let rates = ActRates::derive(&cfg, 1.0);
        let mut s = Schedule::new(&rates, 2.0);
        let mut ops = Vec::new();
        while let Some(op) = s.pop_due(u64::MAX) {
            ops.push(op);
        }
        assert!(s.next_due_ns().is_none());
        let count = |st| ops.iter().filter(|o| o.0 == st).count();
        assert_eq!(count(Stream::Read), 4000);
        // 23.53/s over 2 s: due at 0, 42.5 ms, ... the 48th at 1.9975 s.
        assert_eq!(count(Stream::LbRead), 48);
        assert_eq!(count(Stream::LbWrite), 48);
        assert!(ops.windows(2).all(|w| w[0].1 <= w[1].1), "time order");
        let reads: Vec<u64> = ops.iter().filter(|o| o.0 == Stream::Read).map(|o| o.1).collect();
        assert_eq!(reads[1], 500_000, "2000/s: every 0.5 ms");
        assert_eq!(reads[3999], 1_999_500_000);
        // Nothing is released before it is due.
        let mut s = Schedule::new(&rates, 2.0);
        assert_eq!(s.pop_due(0).map(|o| o.1), Some(0));
        assert_eq!(s.pop_due(0).map(|o| o.1), Some(0));
        assert_eq!(s.pop_due(0).map(|o| o.1), Some(0));
        assert_eq!(s.pop_due(0), None);
        assert_eq!(s.next_due_ns(), Some(500_000));
    }

    #[test]
    fn pass_rule_on_synthetic_histograms() {
        // 10 000 reads: 4.99 % over 1 ms passes, 5 % fails.
        assert!(slice_verdict(&hist(&[(9501, 200), (499, 2000)])).is_ok());
        let e = slice_verdict(&hist(&[(9500, 200), (500, 2000)])).unwrap_err();
        assert!(e.contains("over 1 ms"), "{e}");
        // 1 % over 8 ms fails even with few over 1 ms.
        let e = slice_verdict(&hist(&[(9900, 200), (100, 9000)])).unwrap_err();
        assert!(e.contains("over 8 ms"), "{e}");
        // 0.1 % over 64 ms fails; 0.09 % passes.
        assert!(slice_verdict(&hist(&[(9990, 200), (10, 70_000)])).is_err());
        assert!(slice_verdict(&hist(&[(9991, 200), (9, 70_000)])).is_ok());
        assert!(slice_verdict(&new_histogram()).is_err(), "a slice without reads fails");
        // A run passes only if every slice does.
        let cfg = ActConfig::new("x".into());
        let good = Slice {
            start_s: 0.0,
            latency: [hist(&[(100, 100)]), new_histogram(), new_histogram()],
            read_service: hist(&[(100, 50)]),
        };
        let bad = Slice {
            start_s: 10.0,
            latency: [hist(&[(90, 100), (10, 2000)]), new_histogram(), new_histogram()],
            read_service: hist(&[(100, 50)]),
        };
        let run = |slices| ActRun {
            device: "x".into(),
            rates: ActRates::derive(&cfg, 1.0),
            slices,
            totals: [new_histogram(), new_histogram(), new_histogram()],
            service: [new_histogram(), new_histogram(), new_histogram()],
            per_second: vec![],
            abort: None,
            wall_s: 20.0,
            fill: None,
            cpu: None,
        };
        assert!(run(vec![good.clone(), good.clone()]).passed());
        let r = run(vec![good.clone(), bad]);
        assert!(r.verdict().unwrap_err().contains("slice at 10 s"));
        assert!(r.verdict_on_service_time().is_ok(), "the device itself was fast");
        let mut aborted = run(vec![good]);
        aborted.abort = Some("stalled".into());
        assert!(!aborted.passed());
    }

    #[test]
    fn find_max_doubles_then_bisects() {
        assert_eq!(next_load(None, None, 64), Some(1));
        assert_eq!(next_load(None, Some(1), 64), None, "1x failed: no passing load");
        assert_eq!(next_load(Some(1), None, 64), Some(2));
        assert_eq!(next_load(Some(32), None, 64), Some(64));
        assert_eq!(next_load(Some(64), None, 64), None, "cap reached");
        assert_eq!(next_load(Some(8), Some(16), 64), Some(12));
        assert_eq!(next_load(Some(12), Some(16), 64), Some(14));
        assert_eq!(next_load(Some(14), Some(15), 64), None);
        // A device whose limit is 13: the sequence of loads tried ends with 13 as the max.
        let (mut pass, mut fail, mut tried) = (None, None, vec![]);
        while let Some(n) = next_load(pass, fail, 1000) {
            tried.push(n);
            if n <= 13 {
                pass = Some(n);
            } else {
                fail = Some(n);
            }
        }
        assert_eq!(pass, Some(13));
        assert_eq!(tried, vec![1, 2, 4, 8, 16, 12, 14, 13]);
    }

    #[test]
    fn a_short_run_on_a_temp_file_produces_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ActConfig {
            device_bytes: Some(16 << 20),
            duration_s: 2.0,
            slice_s: 1.0,
            queue_depth: 16,
            ..ActConfig::new(dir.path().join("act.dat"))
        };
        let (mut dev, fill) = open_and_prep(&cfg, false).unwrap();
        assert_eq!(fill.unwrap().0, 16 << 20, "the new sparse file was filled");
        let mut run = run_load(&mut dev, &cfg, 1.0).unwrap();
        run.fill = fill;
        assert!(run.abort.is_none(), "{:?}", run.abort);
        assert_eq!(run.slices.len(), 2);
        // Every scheduled operation completed: 4000 reads, 48 + 48 large blocks.
        assert_eq!(run.totals[0].len(), 4000);
        assert_eq!(run.totals[1].len(), 48);
        assert_eq!(run.totals[2].len(), 48);
        assert_eq!(run.slices.iter().map(|s| s.latency[0].len()).sum::<u64>(), 4000);
        assert_eq!(run.slices.iter().map(|s| s.read_service.len()).sum::<u64>(), 4000);
        let v = run_json(&cfg, &run);
        assert_eq!(v["slices"].as_array().unwrap().len(), 2);
        for key in ["p50_us", "p99_us", "over_1ms_pct", "over_64ms_pct"] {
            assert!(v["slices"][0]["read"][key].is_number(), "{key}: {}", v["slices"][0]);
        }
        assert!(v["totals"]["large_block_write"]["service_time"]["p99_us"].is_number());
        assert_eq!(v["rates"]["large_block_reads_per_s"], 23.529);
        assert!(v["pass"].is_boolean());
        assert!(v["slices"][1]["read_service_time"]["p99_us"].is_number());
        assert!(v["verdict_on_service_time"].is_string());
        assert!(v["runqueue_wait_s"].is_number(), "{}", v["runqueue_wait_s"]);
        let t = run_text(&cfg, &run);
        assert!(t.contains("ACT 1x: "), "{t}");
        assert_eq!(
            t.lines()
                .filter(|l| l.trim_start().starts_with("0s") || l.trim_start().starts_with("1s"))
                .count(),
            2,
            "{t}"
        );
        let path = dir.path().join("act.svg");
        crate::plot::write_plot(&path, &plot_data(&cfg, std::slice::from_ref(&run), "t")).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
