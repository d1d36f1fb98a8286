//! Storage-engine throughput against the machine's own limits: one shard over an io_uring file,
//! next to `fio` on the same file with the same block size (`DESIGN.md`, "Performance method").
//!
//! Prints one JSON object (and writes it to `--json-out`): the machine, the parameters, and per
//! phase Bolide's figure, fio's figure and their ratio. Run in release:
//!
//! ```text
//! cargo run --release -p bolide-bench --bin storage_bench -- \
//!     --path /var/tmp/bolide-bench/storage.dat --records 1000000 --record-bytes 1024
//! ```
//!
//! The phases, in order, all on the one file at `--path` (created or resized to `--size-gib`,
//! by default just big enough for the records, their index image and the 5 % free reserve):
//!
//! 0. **precondition**: the whole file is written with zeros through the bare driver
//!    ([`UringDevice`], wblock-sized writes, as many in flight as the shard writes). Afterwards
//!    the file has no holes (a read of a hole costs no I/O) and every block is allocated, so
//!    neither fio nor the shard pays for block allocation. Its rate is reported as the driver's
//!    own sequential write rate.
//! 1. **write** (`--write-reps` times): fio sequential write over the whole file (`--direct=1
//!    --ioengine=io_uring --rw=write --bs=<wblock> --iodepth=<max_write_cache_wblocks>`, plus
//!    `--sync=dsync` with `--dsync`), once so and once with `--fixedbufs=1 --registerfiles=1`
//!    (registered buffers and file, as Bolide's driver uses them); then the region header sector is
//!    zeroed, the shard formats the region and N records of one blob bin are written with `put`,
//!    `poll` every 64 puts (`wait` and retry on `Overload`), then `flush_blocking`: the time runs
//!    from the first `put` until every record is on the device. Digests are computed before (a
//!    client's work); building each `PutRecord` (one payload allocation and copy) is inside the
//!    time. Reported: records/s, MB/s of payload, of record bytes (padded, as stored) and of bytes
//!    written to the device; the headline ratio is device MB/s over fio MB/s (each fio variant).
//!    With `--commit-to-device`, every acknowledgement is awaited and its latency (put call to
//!    `WriteDone`, closed loop at full speed) goes into a histogram. Verified: N writes counted, N
//!    acknowledgements, all `Ok`, N index entries, a sample of records read back (`get_blocking`)
//!    equal to what was written.
//! 2. **cold start** (`--restart-reps` times): the shard is dropped without shutdown
//!    (`into_device`, a crash), the device closed; fio sequential read over the whole file
//!    (`--rw=read`, same block size, `--iodepth=<buffers the shard reads with at start-up>`, again
//!    plain and with registered buffers); the file reopened and the shard opened, which scans every
//!    wblock of the region. Reported: MB/s read (`bytes_read` over the wall time of `Shard::open`),
//!    records/s indexed, and the ratio to fio's read MB/s. Verified: mode `ColdStart`, N records
//!    found, N index entries, nothing corrupt, the sample read back.
//! 3. **fast restart** (`--restart-reps` times): clean `shutdown` (writes the index image),
//!    device closed and reopened, shard opened again: mode `FastRestart`. Reported: shutdown
//!    time, image size, load time, entries/s, image MB/s and its ratio to fio's read MB/s
//!    (median of phase 2), index heap bytes per record. Verified: N index entries, the sample
//!    read back.
//!
//! Each repeated phase reports every run and the medians. The machine is described (CPU,
//! kernel, filesystem and block device of the file, load average) and each timed phase says how
//! long the process waited for a CPU (`runqueue_wait_s`), so a run disturbed by other load can
//! be recognised.
//!
//! Every I/O is `O_DIRECT` (guest page cache bypassed; nothing to drop). MB means 10^6 bytes.
//! CPU seconds are the process's user + system time (`/proc/self/stat`) over the phase.

use bolide_bench::loadgen::report::{command_line, cpu_seconds};
use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_drivers::{BlockDevice, Completion, IoBuf, SECTOR_SIZE};
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::digest::Digest;
use bolide_node::particle::{Bin, BinName, ParticleType, Value as BinValue};
use bolide_node::record::{self, Record, RecordMeta, WBLOCK_HEADER_BYTES};
use bolide_node::shard::region::{IMAGE_BLOCK_ENTRY_BYTES, IMAGE_BLOCK_HEADER_BYTES, IMAGE_HEADER_BYTES};
use bolide_node::shard::{Event, OpenMode, OpenReport, PutRecord, Region, Shard, WriteError};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type BenchShard = Shard<UringDevice, SystemClock>;
type Result<T> = std::result::Result<T, String>;

/// Set name of every record.
const SET_NAME: &[u8] = b"bench";
/// `poll` after this many puts (the shard submits flushes and reaps completions in `poll`).
const PUTS_PER_POLL: u64 = 64;
/// Size of the buffer the payloads are cut from, bytes.
const PAYLOAD_SOURCE_BYTES: usize = 1 << 20;
/// io_uring SQ entries of the benchmark's device: above the shard's buffer pool, so the pool,
/// not the ring, limits what is in flight.
const QUEUE_DEPTH: u32 = 128;
/// Longest the benchmark waits for outstanding acknowledgements after the last write.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Round automatic file sizes up to this, bytes.
const SIZE_ROUNDING_BYTES: u64 = 64 << 20;

#[derive(Parser, Debug)]
#[command(about = "Storage engine (one shard over io_uring) against fio on the same file")]
struct Args {
    /// File to benchmark on (created, resized and overwritten; put it outside the repository).
    #[arg(long)]
    path: PathBuf,
    /// File size, GiB (1 GiB = 2^30 bytes). Default: just big enough for the records, their
    /// index image and the shard's free reserve.
    #[arg(long)]
    size_gib: Option<f64>,
    /// Records written.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Payload of each record's one blob bin, bytes (at least 8).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    record_bytes: u32,
    /// Write-block size, bytes (a power of two from 128 KiB to 8 MiB); also fio's block size.
    #[arg(long, default_value_t = 1 << 20)]
    wblock_bytes: u32,
    /// Acknowledge writes only once on the device (group commit); ack latencies are measured.
    #[arg(long)]
    commit_to_device: bool,
    /// Open the file with O_DSYNC (fio gets `--sync=dsync`), so a completed write is durable.
    #[arg(long)]
    dsync: bool,
    /// Write phase repetitions (fio then Bolide each time); the last one's data is kept.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    write_reps: u32,
    /// Repetitions of the cold start (crash, fio read, open) and of the fast restart (shutdown,
    /// open).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    restart_reps: u32,
    /// Records read back and compared after each phase (plus the first and the last).
    #[arg(long, default_value_t = 1000)]
    samples: u64,
    /// Stop after the write phase and the cold start (no shutdown, no fast restart).
    #[arg(long)]
    skip_fast_restart: bool,
    /// Stop after the write phase.
    #[arg(long)]
    skip_cold_start: bool,
    /// Do not run fio (ratios are then null).
    #[arg(long)]
    skip_fio: bool,
    /// Also write the JSON object to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Seed of the payload bytes and of the verification sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(out) => {
            let text = serde_json::to_string(&out).expect("JSON values serialise");
            println!("{text}");
            if let Some(p) = &args.json_out {
                if let Err(e) = std::fs::write(p, format!("{text}\n")) {
                    eprintln!("storage_bench: cannot write {}: {e}", p.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("storage_bench: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// The whole run; the `Err` says which phase and check failed.
fn run(args: &Args) -> Result<Value> {
    let cfg = StorageConfig {
        wblock_size_bytes: args.wblock_bytes,
        commit_to_device: args.commit_to_device,
        max_record_bytes: args.wblock_bytes - WBLOCK_HEADER_BYTES as u32,
        ..StorageConfig::default()
    };
    cfg.validate().map_err(|e| format!("storage config: {e}"))?;
    let n = args.records;
    if n == 0 {
        return Err("--records must be at least 1".into());
    }
    let payloads = Payloads::new(args.seed, args.record_bytes as usize, n);
    let record_stored_bytes = record::padded(record::encoded_len(&payloads.record(0, 1)));
    let size_bytes = match args.size_gib {
        Some(g) => ((g * (1u64 << 30) as f64) as u64) / args.wblock_bytes as u64 * args.wblock_bytes as u64,
        None => auto_size_bytes(n, record_stored_bytes, args.wblock_bytes as u64, cfg.min_avail_pct),
    };
    // Write buffers the shard lets wait for the device, and buffers it reads with at start-up
    // (its pool: see `Shard::open`).
    let write_qd = cfg.max_write_cache_wblocks as usize;
    let startup_read_qd = (cfg.max_write_cache_wblocks + cfg.defrag_max_in_flight + 4) as usize;
    let sample = sample_keys(args.seed, n, args.samples);
    let loadavg_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.trim().to_string());

    eprintln!(
        "storage_bench: {n} records of {} payload bytes ({record_stored_bytes} stored), file {} ({} MB)",
        args.record_bytes,
        args.path.display(),
        size_bytes / 1_000_000
    );
    prepare_file(&args.path, size_bytes)?;
    let fio_version = if args.skip_fio { None } else { Some(fio_version()?) };

    let mut notes = vec![
        "MB = 10^6 bytes; every I/O (fio and Bolide) is O_DIRECT, so the guest page cache plays no part and is not dropped; a VM's host may still cache its disk image".to_string(),
        "fio and Bolide run one after the other on the same file, each single-threaded; cpu_s is user + system time of this process, runqueue_wait_s the time its main thread was runnable but had no CPU (other load on the machine)".to_string(),
    ];
    if args.commit_to_device && !args.dsync {
        notes.push("commit_to_device without --dsync: the shard acknowledges when the O_DIRECT write completes, which the device may still hold in a volatile cache (no flush is issued)".into());
    }

    // ----- 0. precondition -----
    eprintln!("storage_bench: precondition (zero-fill through the driver)");
    let mut dev = open_device(&args.path, size_bytes, args.dsync)?;
    let pre = zero_fill(&mut dev, args.wblock_bytes as usize, write_qd)?;
    drop(dev);

    // ----- 1. write -----
    let mut reps = Vec::new();
    let mut kept: Option<(BenchShard, WriteOutcome)> = None;
    for rep in 0..args.write_reps {
        eprintln!("storage_bench: write rep {}/{}", rep + 1, args.write_reps);
        // One shard at a time, as in the node: the previous rep's shard (index, write buffers,
        // ring) goes before anything of this rep runs.
        if let Some((old, _)) = kept.take() {
            drop(old.into_device());
        }
        let fio = if args.skip_fio {
            None
        } else {
            Some(fio_pair(
                &args.path,
                size_bytes,
                "write",
                args.wblock_bytes,
                write_qd,
                args.dsync,
            )?)
        };
        let mut dev = open_device(&args.path, size_bytes, args.dsync)?;
        zero_header(&mut dev)?;
        let (mut shard, report) = open_shard(dev, &cfg, size_bytes)?;
        expect(report.mode == OpenMode::Formatted, || {
            format!(
                "write rep {rep}: a zeroed region opened as {:?}, not Formatted",
                report.mode
            )
        })?;
        let outcome = write_records(&mut shard, &payloads, n)?;
        reps.push(json!({
            "fio": fio.as_ref().map(|f| &f.plain.json),
            "fio_fixedbufs": fio.as_ref().map(|f| &f.fixed.json),
            "bolide": outcome.json,
            "ratio_device_mb_s_to_fio": fio.as_ref().map(|f| round3(outcome.device_mb_s / f.plain.mb_s)),
            "ratio_device_mb_s_to_fio_fixedbufs": fio.as_ref().map(|f| round3(outcome.device_mb_s / f.fixed.mb_s)),
            "ratio_record_mb_s_to_fio": fio.as_ref().map(|f| round3(outcome.record_mb_s / f.plain.mb_s)),
        }));
        kept = Some((shard, outcome));
    }
    let (mut shard, _) = kept.expect("at least one write rep");
    let write_verify = verify(&mut shard, &payloads, &sample, n, "after write")?;
    let write = json!({
        "what": "N records put into a freshly formatted region until all are on the device, next to fio sequential write of the whole file",
        "fio_iodepth": write_qd,
        "reps": reps,
        "median_ratio_device_mb_s_to_fio": median_of(&reps, &["ratio_device_mb_s_to_fio"]).map(round3),
        "median_bolide_records_per_s": median_of(&reps, &["bolide", "records_per_s"]).map(round1),
        "median_bolide_device_mb_s": median_of(&reps, &["bolide", "device_mb_s"]).map(round1),
        "median_fio_mb_s": median_of(&reps, &["fio", "mb_s"]).map(round1),
        "median_fio_fixedbufs_mb_s": median_of(&reps, &["fio_fixedbufs", "mb_s"]).map(round1),
        "median_ratio_device_mb_s_to_fio_fixedbufs": median_of(&reps, &["ratio_device_mb_s_to_fio_fixedbufs"]).map(round3),
        "verify": write_verify,
    });

    // ----- 2. cold start -----
    let mut cold = Value::Null;
    let mut fio_read_mb_s = None;
    let mut fio_fixed_read_mb_s = None;
    if !args.skip_cold_start {
        let mut reps = Vec::new();
        for rep in 0..args.restart_reps {
            eprintln!("storage_bench: cold start {}/{}", rep + 1, args.restart_reps);
            drop(shard.into_device());
            let fio = if args.skip_fio {
                None
            } else {
                Some(fio_pair(
                    &args.path,
                    size_bytes,
                    "read",
                    args.wblock_bytes,
                    startup_read_qd,
                    false,
                )?)
            };
            let dev = open_device(&args.path, size_bytes, args.dsync)?;
            let use0 = Usage::now();
            let t0 = Instant::now();
            let (s, report) = open_shard(dev, &cfg, size_bytes)?;
            let wall = t0.elapsed().as_secs_f64();
            let used = use0.since();
            shard = s;
            expect(report.mode == OpenMode::ColdStart, || {
                format!("cold start: opened as {:?}", report.mode)
            })?;
            // The first cold start sees each record exactly once; later ones may also see a copy
            // that defrag moved (during the verification reads) whose old wblock was not yet
            // erased.
            let found_ok = if rep == 0 {
                report.records_found == n
            } else {
                report.records_found >= n
            };
            expect(found_ok, || {
                format!("cold start {rep}: found {} records, wrote {n}", report.records_found)
            })?;
            expect(report.index_entries as u64 == n, || {
                format!(
                    "cold start {rep}: {} index entries, wrote {n} records",
                    report.index_entries
                )
            })?;
            expect(
                report.corrupt_headers + report.corrupt_bodies + report.corrupt_dropped == 0,
                || format!("cold start {rep}: corruption reported: {report:?}"),
            )?;
            let mb_s = report.bytes_read as f64 / wall / 1e6;
            let heap = shard.index().heap_bytes();
            reps.push(json!({
                "fio": fio.as_ref().map(|f| &f.plain.json),
                "fio_fixedbufs": fio.as_ref().map(|f| &f.fixed.json),
                "bolide": {
                    "open_wall_s": round3(wall),
                    "report": open_report_json(&report),
                    "read_mb_s": round1(mb_s),
                    "records_per_s": round1(n as f64 / wall),
                    "cpu_s": round3(used.cpu_s),
                    "runqueue_wait_s": round3(used.runqueue_wait_s),
                    "index_heap_bytes": heap,
                    "index_heap_bytes_per_record": round2(heap as f64 / n as f64),
                },
                "ratio_read_mb_s_to_fio": fio.as_ref().map(|f| round3(mb_s / f.plain.mb_s)),
                "ratio_read_mb_s_to_fio_fixedbufs": fio.as_ref().map(|f| round3(mb_s / f.fixed.mb_s)),
                "verify": verify(&mut shard, &payloads, &sample, n, "after cold start")?,
            }));
        }
        fio_read_mb_s = median_of(&reps, &["fio", "mb_s"]);
        fio_fixed_read_mb_s = median_of(&reps, &["fio_fixedbufs", "mb_s"]);
        cold = json!({
            "what": "open after a crash (into_device): every wblock of the region read and scanned, the index rebuilt; next to fio sequential read of the whole file",
            "fio_iodepth": startup_read_qd,
            "median_ratio_read_mb_s_to_fio": median_of(&reps, &["ratio_read_mb_s_to_fio"]).map(round3),
            "median_bolide_open_wall_s": median_of(&reps, &["bolide", "open_wall_s"]).map(round3),
            "median_bolide_read_mb_s": median_of(&reps, &["bolide", "read_mb_s"]).map(round1),
            "median_fio_mb_s": fio_read_mb_s.map(round1),
            "median_fio_fixedbufs_mb_s": fio_fixed_read_mb_s.map(round1),
            "median_ratio_read_mb_s_to_fio_fixedbufs": median_of(&reps, &["ratio_read_mb_s_to_fio_fixedbufs"]).map(round3),
            "reps": reps,
        });
    }

    // ----- 3. fast restart -----
    let mut fast = Value::Null;
    if !args.skip_fast_restart && !args.skip_cold_start {
        let mut reps = Vec::new();
        for rep in 0..args.restart_reps {
            eprintln!("storage_bench: fast restart {}/{}", rep + 1, args.restart_reps);
            let t0 = Instant::now();
            let (down, dev) = shard.shutdown().map_err(|e| format!("shutdown: {e}"))?;
            let shutdown_wall = t0.elapsed().as_secs_f64();
            drop(dev);
            expect(down.image_written, || {
                format!("shutdown: index image not written: {down:?}")
            })?;
            expect(down.index_entries as u64 == n, || {
                format!("shutdown: image of {} entries, wrote {n}", down.index_entries)
            })?;
            let dev = open_device(&args.path, size_bytes, args.dsync)?;
            let use0 = Usage::now();
            let t0 = Instant::now();
            let (s, report) = open_shard(dev, &cfg, size_bytes)?;
            let wall = t0.elapsed().as_secs_f64();
            let used = use0.since();
            shard = s;
            expect(report.mode == OpenMode::FastRestart, || {
                format!(
                    "fast restart {rep}: opened as {:?} ({:?})",
                    report.mode, report.fallback_reason
                )
            })?;
            expect(report.index_entries as u64 == n, || {
                format!(
                    "fast restart {rep}: {} index entries, wrote {n} records",
                    report.index_entries
                )
            })?;
            let image_mb_s = down.image_bytes as f64 / wall / 1e6;
            let heap = shard.index().heap_bytes();
            reps.push(json!({
                "shutdown": {
                    "wall_s": round3(shutdown_wall),
                    "elapsed_ms": down.elapsed_ms,
                    "image_bytes": down.image_bytes,
                    "image_wblocks": down.image_wblocks,
                    "index_entries": down.index_entries,
                },
                "bolide": {
                    "open_wall_s": round3(wall),
                    "report": open_report_json(&report),
                    "index_entries_per_s": round1(n as f64 / wall),
                    "image_mb_s": round1(image_mb_s),
                    "image_bytes_per_record": round2(down.image_bytes as f64 / n as f64),
                    "cpu_s": round3(used.cpu_s),
                    "runqueue_wait_s": round3(used.runqueue_wait_s),
                    "index_heap_bytes": heap,
                    "index_heap_bytes_per_record": round2(heap as f64 / n as f64),
                },
                "ratio_image_mb_s_to_fio_read": fio_read_mb_s.map(|f| round3(image_mb_s / f)),
                "ratio_image_mb_s_to_fio_fixedbufs_read": fio_fixed_read_mb_s.map(|f| round3(image_mb_s / f)),
                "verify": verify(&mut shard, &payloads, &sample, n, "after fast restart")?,
            }));
        }
        fast = json!({
            "what": "clean shutdown (index image written), then open: the image read and loaded; image MB/s next to the median fio sequential read of the whole file from the cold-start phase",
            "median_bolide_open_wall_s": median_of(&reps, &["bolide", "open_wall_s"]).map(round3),
            "median_shutdown_wall_s": median_of(&reps, &["shutdown", "wall_s"]).map(round3),
            "median_ratio_image_mb_s_to_fio_read": median_of(&reps, &["ratio_image_mb_s_to_fio_read"]).map(round3),
            "median_ratio_image_mb_s_to_fio_fixedbufs_read": median_of(&reps, &["ratio_image_mb_s_to_fio_fixedbufs_read"]).map(round3),
            "reps": reps,
        });
    }
    drop(shard.into_device());

    Ok(json!({
        "bench": "storage_bench",
        "machine": machine(&args.path, fio_version, loadavg_start),
        "params": {
            "path": args.path.display().to_string(),
            "file_bytes": size_bytes,
            "records": n,
            "payload_bytes": args.record_bytes,
            "record_stored_bytes": record_stored_bytes,
            "record_layout": "set \"bench\", no stored key, one blob bin \"b\" of payload_bytes",
            "wblock_bytes": args.wblock_bytes,
            "commit_to_device": args.commit_to_device,
            "dsync": args.dsync,
            "uring_queue_depth": QUEUE_DEPTH,
            "shard_max_write_cache_wblocks": cfg.max_write_cache_wblocks,
            "shard_startup_reads_in_flight": startup_read_qd,
            "puts_per_poll": PUTS_PER_POLL,
            "write_reps": args.write_reps,
            "restart_reps": args.restart_reps,
            "verify_samples": sample.len(),
            "seed": args.seed,
        },
        "precondition": pre,
        "write": write,
        "cold_start": cold,
        "fast_restart": fast,
        "notes": notes,
    }))
}

fn expect(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(msg())
    }
}

// ----- records -----

/// The records: record `i`'s digest is `Digest::compute("bench", int key i)`, computed before
/// any timing (a client computes digests, not the server); its payload is its number (8 bytes,
/// little-endian) followed by a slice of a random buffer at an offset that depends on `i`, so
/// payloads differ and can be checked without being stored.
struct Payloads {
    source: Vec<u8>,
    len: usize,
    digests: Vec<Digest>,
}

impl Payloads {
    fn new(seed: u64, len: usize, n: u64) -> Payloads {
        assert!(len >= 8, "payload under 8 bytes");
        let mut source = vec![0u8; PAYLOAD_SOURCE_BYTES.max(2 * len)];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut source);
        let digests = (0..n)
            .map(|i| Digest::compute(SET_NAME, 1, &(i as i64).to_be_bytes()))
            .collect();
        Payloads { source, len, digests }
    }

    fn digest(&self, i: u64) -> Digest {
        self.digests[i as usize]
    }

    fn payload(&self, i: u64) -> Vec<u8> {
        let span = (self.source.len() - self.len) as u64;
        let off = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % span;
        let mut v = Vec::with_capacity(self.len);
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&self.source[off as usize..off as usize + self.len - 8]);
        v
    }

    fn put(&self, i: u64) -> PutRecord {
        PutRecord {
            digest: self.digest(i),
            set_name: SET_NAME.to_vec(),
            key: None,
            bins: vec![Bin {
                name: bin_name(),
                value: BinValue::Blob(ParticleType::Blob, self.payload(i)),
            }],
            void_time: 0,
        }
    }

    /// The record as stored (for its encoded size).
    fn record(&self, i: u64, generation: u16) -> Record {
        let p = self.put(i);
        Record {
            meta: RecordMeta {
                digest: p.digest,
                generation,
                void_time: 0,
                lut_ms: 0,
                origin_seq: 0,
                tombstone: false,
            },
            set_name: p.set_name,
            key: p.key,
            bins: p.bins,
        }
    }

    /// Checks that `rec` is record `i` as written (generation 1, the one bin, its payload).
    fn check(&self, i: u64, rec: &Record) -> Result<()> {
        let want = self.record(i, 1);
        if rec.meta.digest != want.meta.digest || rec.meta.generation != 1 || rec.meta.tombstone {
            return Err(format!("record {i}: meta {:?}", rec.meta));
        }
        if rec.set_name != want.set_name || rec.key.is_some() || rec.bins != want.bins {
            return Err(format!("record {i}: set, key or bins differ from what was written"));
        }
        Ok(())
    }
}

fn bin_name() -> BinName {
    BinName::new(b"b").expect("short bin name")
}

/// The verification sample: the first and last record and `count` random others.
fn sample_keys(seed: u64, n: u64, count: u64) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A5A_5A5A);
    let mut keys = vec![0, n - 1];
    keys.extend((0..count).map(|_| rng.gen_range(0..n)));
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Reads the sample back through the shard and compares each record; also checks the index
/// holds exactly `n` live records.
fn verify(shard: &mut BenchShard, payloads: &Payloads, sample: &[u64], n: u64, when: &str) -> Result<Value> {
    let entries = shard.index().len() as u64;
    expect(entries == n, || {
        format!("{when}: index holds {entries} entries, wrote {n}")
    })?;
    let t0 = Instant::now();
    for &i in sample {
        let rec = shard
            .get_blocking(&payloads.digest(i))
            .map_err(|e| format!("{when}: get of record {i}: {e}"))?;
        payloads.check(i, &rec).map_err(|e| format!("{when}: {e}"))?;
    }
    for ev in shard.take_stashed_events() {
        if let Event::WriteDone { result: Err(e), token } = ev {
            return Err(format!("{when}: write {token} failed: {e}"));
        }
    }
    Ok(json!({
        "index_entries": entries,
        "records_read_and_compared": sample.len(),
        "read_s": round3(t0.elapsed().as_secs_f64()),
        "ok": true,
    }))
}

// ----- the write phase -----

struct WriteOutcome {
    json: Value,
    device_mb_s: f64,
    record_mb_s: f64,
}

/// Puts records 0..n and waits until all are on the device (see the module docs, phase 1).
fn write_records(shard: &mut BenchShard, payloads: &Payloads, n: u64) -> Result<WriteOutcome> {
    let commit = shard.config().commit_to_device;
    let mut events: Vec<Event> = Vec::with_capacity(4096);
    // Ack latency, ns: 1 µs .. 100 s, 3 significant digits.
    let mut hist = Histogram::<u64>::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds");
    let mut sent_ns: Vec<u64> = if commit { vec![0; n as usize] } else { Vec::new() };
    let mut acked = 0u64;
    let mut overload_waits = 0u64;
    let stats0 = shard.stats().clone();
    let use0 = Usage::now();
    let t0 = Instant::now();

    let on_events = |events: &mut Vec<Event>,
                     now_ns: u64,
                     acked: &mut u64,
                     hist: &mut Histogram<u64>,
                     sent_ns: &[u64]|
     -> Result<()> {
        for ev in events.drain(..) {
            match ev {
                Event::WriteDone { token, result: Ok(()) } => {
                    *acked += 1;
                    if let Some(&s) = sent_ns.get(token as usize) {
                        hist.saturating_record(now_ns.saturating_sub(s).max(1_000));
                    }
                }
                Event::WriteDone { token, result: Err(e) } => {
                    return Err(format!("write of record {token} failed: {e}"))
                }
                Event::ReadDone { token, .. } => return Err(format!("unexpected read completion {token}")),
            }
        }
        Ok(())
    };

    for i in 0..n {
        let sent = if commit { t0.elapsed().as_nanos() as u64 } else { 0 };
        loop {
            match shard.put(payloads.put(i), i) {
                Ok(w) => {
                    if w.pending {
                        sent_ns[i as usize] = sent;
                    } else {
                        acked += 1;
                    }
                    break;
                }
                Err(WriteError::Overload(_)) => {
                    overload_waits += 1;
                    shard.wait(&mut events);
                    on_events(
                        &mut events,
                        t0.elapsed().as_nanos() as u64,
                        &mut acked,
                        &mut hist,
                        &sent_ns,
                    )?;
                }
                Err(e) => return Err(format!("put of record {i}: {e}")),
            }
        }
        if i % PUTS_PER_POLL == PUTS_PER_POLL - 1 {
            shard.poll(&mut events);
            if !events.is_empty() {
                on_events(
                    &mut events,
                    t0.elapsed().as_nanos() as u64,
                    &mut acked,
                    &mut hist,
                    &sent_ns,
                )?;
            }
        }
    }
    let puts_done_s = t0.elapsed().as_secs_f64();
    shard.flush_blocking().map_err(|e| format!("flush_blocking: {e}"))?;
    events.extend(shard.take_stashed_events());
    on_events(
        &mut events,
        t0.elapsed().as_nanos() as u64,
        &mut acked,
        &mut hist,
        &sent_ns,
    )?;
    // Every acknowledgement must arrive; bounded wait.
    let deadline = Instant::now() + ACK_TIMEOUT;
    while acked < n {
        expect(Instant::now() < deadline, || {
            format!(
                "{} of {n} acknowledgements missing {ACK_TIMEOUT:?} after the last write",
                n - acked
            )
        })?;
        shard.poll(&mut events);
        if events.is_empty() {
            shard.wait(&mut events);
        }
        on_events(
            &mut events,
            t0.elapsed().as_nanos() as u64,
            &mut acked,
            &mut hist,
            &sent_ns,
        )?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let used = use0.since();

    let st = shard.stats();
    let client_writes = st.client_writes - stats0.client_writes;
    let client_bytes = st.client_bytes - stats0.client_bytes;
    let device_bytes = st.device_write_bytes - stats0.device_write_bytes;
    expect(client_writes == n, || {
        format!("write: shard counted {client_writes} writes, {n} were put")
    })?;
    expect(acked == n, || format!("write: {acked} acknowledgements for {n} writes"))?;
    expect(device_bytes >= client_bytes, || {
        format!("write: {device_bytes} device bytes written for {client_bytes} record bytes")
    })?;
    expect(shard.failure().is_none(), || {
        format!("write: device failed: {:?}", shard.failure())
    })?;
    let payload_bytes = n * payloads.len as u64;
    let device_mb_s = device_bytes as f64 / elapsed / 1e6;
    let record_mb_s = client_bytes as f64 / elapsed / 1e6;
    let space = shard.space();
    let latency = commit.then(|| {
        json!({
            "what": "put call to WriteDone seen by the loop, closed loop at full speed (not open-loop: no target rate)",
            "count": hist.len(),
            "p50_us": hist.value_at_quantile(0.50) as f64 / 1e3,
            "p99_us": hist.value_at_quantile(0.99) as f64 / 1e3,
            "p99_9_us": hist.value_at_quantile(0.999) as f64 / 1e3,
            "p99_99_us": hist.value_at_quantile(0.9999) as f64 / 1e3,
            "max_us": hist.max() as f64 / 1e3,
            "over_1ms_pct": round3(over_pct(&hist, 1_000_000)),
            "over_8ms_pct": round3(over_pct(&hist, 8_000_000)),
            "over_64ms_pct": round3(over_pct(&hist, 64_000_000)),
        })
    });
    let json = json!({
        "elapsed_s": round3(elapsed),
        "puts_done_s": round3(puts_done_s),
        "records_per_s": round1(n as f64 / elapsed),
        "payload_mb_s": round1(payload_bytes as f64 / elapsed / 1e6),
        "record_mb_s": round1(record_mb_s),
        "device_mb_s": round1(device_mb_s),
        "record_bytes": client_bytes,
        "device_write_bytes": device_bytes,
        "device_writes": st.device_writes - stats0.device_writes,
        "write_amplification": round3(space.write_amplification),
        "device_bytes_per_record": round2(device_bytes as f64 / n as f64),
        "overload_waits": overload_waits,
        "cpu_s": round3(used.cpu_s),
                "runqueue_wait_s": round3(used.runqueue_wait_s),
        "cpu_s_per_million_records": round3(used.cpu_s / (n as f64 / 1e6)),
        "wblocks_used": space.wblocks_used,
        "wblocks_total": space.wblocks_total,
        "ack_latency": latency,
    });
    Ok(WriteOutcome {
        json,
        device_mb_s,
        record_mb_s,
    })
}

fn over_pct(hist: &Histogram<u64>, ns: u64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    let above: u64 = hist
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > ns)
        .map(|v| v.count_at_value())
        .sum();
    100.0 * above as f64 / hist.len() as f64
}

// ----- the device and the file -----

/// File size for `n` records: their wblocks, the index image a shutdown writes, a few wblocks
/// for write buffers, and the free reserve (`min_avail_pct`), rounded up.
fn auto_size_bytes(n: u64, record_bytes: usize, wblock: u64, min_avail_pct: u32) -> u64 {
    let per_wblock = (wblock - WBLOCK_HEADER_BYTES as u64) / record_bytes as u64;
    let data = n.div_ceil(per_wblock);
    let image_payload = (IMAGE_HEADER_BYTES as u64) + (data * 2 + 64) * IMAGE_BLOCK_ENTRY_BYTES as u64 + n * 40;
    let image = image_payload.div_ceil(wblock - IMAGE_BLOCK_HEADER_BYTES as u64);
    let need = 1 + data + image + 16;
    let total = (need * 100).div_ceil(100 - min_avail_pct as u64 - 1);
    (total * wblock).div_ceil(SIZE_ROUNDING_BYTES) * SIZE_ROUNDING_BYTES
}

/// Creates the file if needed and sets its length to exactly `size` (truncating a longer one).
fn prepare_file(path: &Path, size: u64) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.set_len(size).map_err(|e| format!("resize {}: {e}", path.display()))
}

fn open_device(path: &Path, size: u64, dsync: bool) -> Result<UringDevice> {
    let opts = UringOptions {
        queue_depth: QUEUE_DEPTH,
        direct: true,
        dsync,
        create_size_bytes: Some(size),
        ..UringOptions::default()
    };
    let dev = UringDevice::open(path, &opts).map_err(|e| e.to_string())?;
    let cap = dev.info().capacity_bytes;
    expect(cap == size, || {
        format!("{} opened with {cap} bytes, expected {size}", path.display())
    })?;
    Ok(dev)
}

fn open_shard(dev: UringDevice, cfg: &StorageConfig, size: u64) -> Result<(BenchShard, OpenReport)> {
    Shard::open(
        dev,
        SystemClock::new(),
        cfg.clone(),
        0,
        Region {
            offset_bytes: 0,
            len_bytes: size,
        },
    )
    .map_err(|e| format!("Shard::open: {e}"))
}

/// Submits what is queued on `dev`, reaps at least `min` completions (failing on a failed I/O)
/// and puts their buffers into `free`.
fn reap_some(dev: &mut UringDevice, done: &mut Vec<Completion>, free: &mut Vec<IoBuf>, min: usize) -> Result<()> {
    dev.submit().map_err(|e| e.to_string())?;
    dev.reap(done, min).map_err(|e| e.to_string())?;
    for c in done.drain(..) {
        c.result.map_err(|e| e.to_string())?;
        if let Some(b) = c.buf {
            free.push(b);
        }
    }
    Ok(())
}

/// Writes zeros over the whole device, `qd` wblock-sized writes in flight; returns its rate.
fn zero_fill(dev: &mut UringDevice, wblock: usize, qd: usize) -> Result<Value> {
    let cap = dev.info().capacity_bytes;
    let mut free: Vec<IoBuf> = (0..qd).map(|_| IoBuf::new(wblock)).collect();
    let mut done = Vec::with_capacity(qd);
    let t0 = Instant::now();
    let mut off = 0u64;
    while off < cap {
        while off < cap {
            let Some(mut buf) = free.pop() else { break };
            let len = (cap - off).min(wblock as u64) as usize;
            buf.set_len(len);
            dev.submit_write(off, buf, off)
                .map_err(|e| format!("zero fill at {off}: {e}"))?;
            off += len as u64;
        }
        reap_some(dev, &mut done, &mut free, 1)?;
    }
    while dev.in_flight() > 0 {
        reap_some(dev, &mut done, &mut free, 1)?;
    }
    let s = t0.elapsed().as_secs_f64();
    Ok(json!({
        "what": "zeros written over the whole file through UringDevice (no shard), wblock-sized writes",
        "bytes": cap,
        "iodepth": qd,
        "elapsed_s": round3(s),
        "mb_s": round1(cap as f64 / s / 1e6),
    }))
}

/// Zeroes the region header sector, so the next `Shard::open` formats the region.
fn zero_header(dev: &mut UringDevice) -> Result<()> {
    let mut free = Vec::new();
    let mut done = Vec::new();
    dev.submit_write(0, IoBuf::new(SECTOR_SIZE), 0)
        .map_err(|e| format!("zero header: {e}"))?;
    reap_some(dev, &mut done, &mut free, 1)
}

// ----- fio -----

struct FioResult {
    json: Value,
    mb_s: f64,
}

fn fio_version() -> Result<String> {
    let out = Command::new("fio")
        .arg("--version")
        .output()
        .map_err(|e| format!("fio not runnable ({e}); install it (apt-get install -y fio) or pass --skip-fio"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The same fio job twice: as the brief for this benchmark gives it, then with registered
/// buffers and file (`--fixedbufs=1 --registerfiles=1`), which is what Bolide's driver uses and
/// can be markedly faster on a VM (no page pinning per I/O).
struct FioPair {
    plain: FioResult,
    fixed: FioResult,
}

fn fio_pair(path: &Path, size: u64, rw: &str, bs: u32, iodepth: usize, dsync: bool) -> Result<FioPair> {
    Ok(FioPair {
        plain: run_fio(path, size, rw, bs, iodepth, dsync, false)?,
        fixed: run_fio(path, size, rw, bs, iodepth, dsync, true)?,
    })
}

/// One sequential fio job over the whole file; parses `--output-format=json`.
fn run_fio(path: &Path, size: u64, rw: &str, bs: u32, iodepth: usize, dsync: bool, fixed: bool) -> Result<FioResult> {
    let mut fio_args = vec![
        format!("--name=bolide-seq{rw}"),
        format!("--filename={}", path.display()),
        format!("--size={size}"),
        "--direct=1".into(),
        "--ioengine=io_uring".into(),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={iodepth}"),
        "--numjobs=1".into(),
        "--output-format=json".into(),
    ];
    if dsync {
        fio_args.push("--sync=dsync".into());
    }
    if fixed {
        fio_args.push("--fixedbufs=1".into());
        fio_args.push("--registerfiles=1".into());
    }
    let out = Command::new("fio")
        .args(&fio_args)
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "fio {} failed ({}): {}{}",
            fio_args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // fio may print notes before the JSON object.
    let start = stdout
        .find('{')
        .ok_or_else(|| format!("fio printed no JSON: {stdout}"))?;
    let v: Value = serde_json::from_str(&stdout[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    let io = &job[rw];
    let bw = io["bw_bytes"].as_f64().ok_or("fio JSON has no bw_bytes")?;
    let io_bytes = io["io_bytes"].as_u64().unwrap_or(0);
    expect(io_bytes == size, || {
        format!("fio {rw} moved {io_bytes} bytes, expected {size}")
    })?;
    expect(job["error"].as_i64() == Some(0), || {
        format!("fio {rw} reported error {}", job["error"])
    })?;
    let pct = |p: &str| io["clat_ns"]["percentile"][p].as_f64().map(|ns| round1(ns / 1e3));
    let mb_s = bw / 1e6;
    Ok(FioResult {
        json: json!({
            "command": format!("fio {}", fio_args.join(" ")),
            "mb_s": round1(mb_s),
            "bytes": io_bytes,
            "runtime_ms": io["runtime"],
            "iops": round1(io["iops"].as_f64().unwrap_or(0.0)),
            "clat_p50_us": pct("50.000000"),
            "clat_p99_us": pct("99.000000"),
            "clat_p99_9_us": pct("99.900000"),
            "usr_cpu_pct": job["usr_cpu"],
            "sys_cpu_pct": job["sys_cpu"],
        }),
        mb_s,
    })
}

// ----- machine and small helpers -----

fn open_report_json(r: &OpenReport) -> Value {
    json!({
        "mode": format!("{:?}", r.mode),
        "fallback_reason": r.fallback_reason,
        "wblocks_scanned": r.wblocks_scanned,
        "wblocks_in_use": r.wblocks_in_use,
        "records_found": r.records_found,
        "index_entries": r.index_entries,
        "corrupt_headers": r.corrupt_headers,
        "corrupt_bodies": r.corrupt_bodies,
        "corrupt_dropped": r.corrupt_dropped,
        "bytes_read": r.bytes_read,
        "elapsed_ms": r.elapsed_ms,
    })
}

/// What the process got from the scheduler: CPU time, and time it was runnable but waiting for
/// a CPU (other processes' load; on a VM, not the hypervisor's steal).
#[derive(Clone, Copy, Debug)]
struct Usage {
    cpu_s: f64,
    runqueue_wait_s: f64,
}

impl Usage {
    fn now() -> Usage {
        Usage {
            cpu_s: cpu_seconds("self").unwrap_or(0.0),
            runqueue_wait_s: runqueue_wait_seconds(),
        }
    }

    /// Usage since `self` was taken.
    fn since(&self) -> Usage {
        let now = Usage::now();
        Usage {
            cpu_s: now.cpu_s - self.cpu_s,
            runqueue_wait_s: now.runqueue_wait_s - self.runqueue_wait_s,
        }
    }
}

/// Seconds the main thread waited on a run queue so far (`/proc/self/schedstat`, second field,
/// ns; 0 when unavailable).
fn runqueue_wait_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn machine(path: &Path, fio: Option<String>, loadavg_start: Option<String>) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
    });
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()));
    let os = std::fs::read_to_string("/etc/os-release").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
    });
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // `df -T`: Filesystem Type 1K-blocks Used Available Use% Mounted-on.
    let df = Command::new("df")
        .arg("-T")
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let df_fields: Vec<String> = df
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let source = df_fields.first().cloned();
    let block = source.as_deref().and_then(|s| s.strip_prefix("/dev/")).map(|d| {
        let q = |f: &str| std::fs::read_to_string(format!("/sys/block/{d}/queue/{f}")).ok().map(|s| s.trim().to_string());
        json!({ "name": d, "rotational": q("rotational"), "write_cache": q("write_cache"), "scheduler": q("scheduler"), "nr_requests": q("nr_requests") })
    });
    json!({
        "hostname": command_line("hostname", &[]),
        "date_utc": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "mem_total": mem_total,
        "kernel": command_line("uname", &["-r"]),
        "os": os,
        "filesystem": { "source": source, "type": df_fields.get(1), "mounted_on": df_fields.get(6), "df_T": df.trim() },
        "block_device": block,
        "rustc": command_line("rustc", &["--version"]),
        "fio": fio,
        "loadavg_at_start": loadavg_start,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").ok().map(|l| l.trim().to_string()),
        "git_commit": command_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"]),
        "debug_assertions": cfg!(debug_assertions),
    })
}

/// Median of the number at `path` in each of `reps` (those that have one).
fn median_of(reps: &[Value], path: &[&str]) -> Option<f64> {
    let v: Vec<f64> = reps
        .iter()
        .filter_map(|r| path.iter().fold(r, |v, k| &v[*k]).as_f64())
        .collect();
    median(&v)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
