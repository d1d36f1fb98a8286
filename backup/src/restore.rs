//! `restore`: .asb files written back through the official client.
//!
//! One reader thread parses the files in order (a directory's files by name; the directories of
//! `--directory-list` in the order given, so a chain full + incrementals restores in order) and
//! hands each record to one of `--threads` writer tasks chosen by the record's partition, so the
//! versions of one record are written in file order. By default each writer gathers up to
//! `--batch-size` records into one batch write (wire spec §7.1, as asrestore does) and keeps up
//! to [`BATCHES_IN_FLIGHT`] batches outstanding; a batch goes out when it is full or when the
//! writer's queue is momentarily empty. Every row carries the same per-record write policy a
//! single put would (generation GT by default, create-only, replace, TTL, send-key), and every
//! row's result code is counted. `--disable-batch-writes` writes one record per put instead,
//! up to [`IN_FLIGHT_PER_THREAD`] puts outstanding per writer.
//!
//! A directory's `.asbd` files (the deletions an incremental backup captured: the one-pass
//! `<ns>_NNNNN.asbd` files, or [`crate::backup::DELETES_FILE`] of a separate deletion pass) are
//! applied after the directory's .asb files, once every write of them is done: each record in
//! them is deleted by digest (not found counts as done).

use std::collections::BTreeMap;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aerospike::operations;
use aerospike::{
    BatchDeletePolicy, BatchOperation, BatchPolicy, BatchWritePolicy, Bin, Client, Expiration, GenerationPolicy,
    RecordExistsAction, WritePolicy,
};
use futures::future::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::asb::{self, AsbReader};
use crate::backup::{connect, now_unix_secs};
use crate::convert;
use crate::target::{ObjectStoreArgs, Target};

/// Seconds between the Unix epoch and the Citrusleaf epoch (2010-01-01, wire spec §10.5).
pub const CITRUSLEAF_EPOCH_SECS: i64 = 1_262_304_000;
/// Puts one writer task keeps outstanding (`--disable-batch-writes`).
const IN_FLIGHT_PER_THREAD: usize = 8;
/// Batch writes one writer task keeps outstanding.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Result code the client reports for a batch row the server never answered.
const NO_RESPONSE: i32 = -15;
/// Records queued per writer task between the reader and the writer.
const QUEUE_PER_THREAD: usize = 1024;

/// Result codes asrestore's `--ignore-record-error` skips (errors specific to one record).
const RECORD_ERRORS: [i32; 7] = [
    13, // RECORD_TOO_BIG
    19, // KEY_MISMATCH
    21, // BIN_NAME_TOO_LONG
    12, // BIN_TYPE_ERROR
    17, // BIN_NOT_FOUND
    22, // FAIL_FORBIDDEN
    4,  // PARAMETER_ERROR (a value the server does not accept)
];

#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The host to connect to (host or host:port).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to connect to.
    #[arg(short = 'p', long, default_value_t = 3000)]
    pub port: u16,
    /// Namespace to restore: `NS` (records must be of NS) or `SRC,DST` (records of SRC go to DST).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// A directory of .asb files (restored in file-name order): a local path, `s3://`, `gs://`,
    /// `az://` or `file://` location.
    #[arg(short = 'd', long)]
    pub directory: Option<String>,
    /// Directories restored one after the other (a full backup, then incrementals), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub directory_list: Vec<String>,
    /// A policy's target root (with a catalogue): restore the chain for `--time` (default: now,
    /// the newest chain whole).
    #[arg(long, conflicts_with_all = ["directory", "directory_list", "input_file"])]
    pub target: Option<String>,
    /// With --target: the state at this time (YYYY-MM-DD_HH:MM:SS, YYYY-MM-DD or HH:MM:SS, UTC;
    /// or Unix milliseconds): the newest successful full that finished by then and its
    /// incrementals that finished by then, in order, with replace semantics and no generation
    /// check (a later run's version always wins).
    #[arg(long, requires = "target", value_parser = parse_time_ms)]
    pub time: Option<i64>,
    /// One .asb file; `-` for stdin.
    #[arg(short = 'i', long)]
    pub input_file: Option<String>,
    /// Number of parallel writers.
    #[arg(short = 't', long, visible_alias = "parallel", short_alias = 'w', default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Only create records; existing records are left as they are (counted as existed).
    #[arg(short = 'u', long, conflicts_with = "replace")]
    pub unique: bool,
    /// Replace existing records completely (bins not in the backup are removed).
    #[arg(short = 'r', long)]
    pub replace: bool,
    /// Do not check generations: overwrite whatever the target holds.
    #[arg(short = 'g', long)]
    pub no_generation: bool,
    /// Count record-specific errors (too big, key mismatch, bin name, bin type...) and go on.
    #[arg(long)]
    pub ignore_record_error: bool,
    /// Records per batch write (1-5000).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub batch_size: u32,
    /// Write one record per request instead of batch writes.
    #[arg(long)]
    pub disable_batch_writes: bool,
    /// Seconds between progress lines on stderr; on a terminal a progress bar over the files'
    /// bytes instead (0: no progress output).
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// The files are compressed: `zstd`. Informational: a framed file's header says how it is
    /// compressed, and plain files are read as they are.
    #[arg(short = 'z', long)]
    pub compress: Option<String>,
    /// The files are encrypted: `aes256` (needs --encryption-key-file).
    #[arg(long)]
    pub encrypt: Option<String>,
    /// The key the backup was encrypted with (the same file as for the backup).
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub object: ObjectStoreArgs,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    /// Records read from the files.
    pub read: u64,
    pub written: u64,
    /// Expired (void time in the past) and not written.
    pub expired: u64,
    /// `--unique`: the record already existed.
    pub existed: u64,
    /// Generation check: the target already held a newer (or the same) generation.
    pub fresher: u64,
    pub failed: u64,
    /// Failures by server result code (negative: client-side).
    pub failed_by_code: BTreeMap<i32, u64>,
    pub files: u64,
    /// Bytes of backup files read (as stored: compressed / encrypted size when framed).
    pub bytes: u64,
    /// Index and UDF entries found and not restored.
    pub skipped_global: u64,
    /// Deletions read from `deletes.asbd` files, applied, and found already absent.
    pub deletes_read: u64,
    pub deleted: u64,
    pub delete_absent: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for RestoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "restore done: {} records read from {} file(s), {} written, {} expired, {} existed, {} fresher, {} failed",
            self.read, self.files, self.written, self.expired, self.existed, self.fresher, self.failed
        )?;
        for (code, n) in &self.failed_by_code {
            write!(f, " [result code {code}: {n}]")?;
        }
        if self.deletes_read > 0 {
            write!(
                f,
                "; {} deletion(s) read, {} deleted, {} already absent",
                self.deletes_read, self.deleted, self.delete_absent
            )?;
        }
        if self.skipped_global > 0 {
            write!(f, "; {} index/UDF entries not restored", self.skipped_global)?;
        }
        write!(
            f,
            "; {:.2} s, {:.0} records/s, {:.2} MiB/s of backup files",
            secs,
            self.written as f64 / secs,
            self.bytes as f64 / secs / (1024.0 * 1024.0)
        )
    }
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
    expired: AtomicU64,
    existed: AtomicU64,
    fresher: AtomicU64,
    failed: AtomicU64,
    failed_by_code: Mutex<BTreeMap<i32, u64>>,
    skipped_global: AtomicU64,
    files: AtomicU64,
    bytes: Arc<AtomicU64>,
    deletes_read: AtomicU64,
    deleted: AtomicU64,
    delete_absent: AtomicU64,
    abort: AtomicBool,
    first_failure: Mutex<Option<String>>,
}

enum Source {
    /// A file in a directory (local or an object-store prefix), and its size.
    File(Target, String, u64),
    /// A directory's `deletes.asbd`.
    Deletes(Target, String, u64),
    Stdin,
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::File(t, n, _) | Source::Deletes(t, n, _) => t.describe(n),
            Source::Stdin => "<stdin>".into(),
        }
    }

    fn open(&self) -> Result<Box<dyn io::Read + Send>, String> {
        match self {
            Source::File(t, n, _) | Source::Deletes(t, n, _) => t.open(n),
            Source::Stdin => Ok(Box::new(io::stdin())),
        }
    }
}

/// The sources in order, each tagged with its place in the chain: a directory's .asb files are
/// one element, its `deletes.asbd` the next (so it is applied after every write before it), the
/// input file the last.
/// `--time`: asbackup's formats (UTC) or Unix milliseconds.
fn parse_time_ms(s: &str) -> Result<i64, String> {
    if s.len() >= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("bad time {s:?}"));
    }
    crate::backup::parse_timestamp(s).map(|secs| secs * 1000)
}

fn sources(args: &RestoreArgs) -> Result<Vec<(usize, Source)>, String> {
    if let Some(root) = &args.target {
        let root = Target::parse(root, &args.object)?;
        let cat = crate::catalogue::Catalogue::load(&root)?;
        let t = args.time.unwrap_or(i64::MAX);
        let chain = cat.chain_at(t).map_err(|e| format!("{root}: {e}"))?;
        eprintln!(
            "restore: chain of {} run(s) from {root}: {}",
            chain.len(),
            chain.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        );
        let dirs: Vec<Target> = chain.iter().map(|r| root.child(&r.id)).collect();
        return dir_sources(&dirs);
    }
    let mut dirs = Vec::new();
    for d in args.directory.iter().chain(&args.directory_list) {
        dirs.push(Target::parse(d, &args.object)?);
    }
    let mut out = dir_sources(&dirs)?;
    match args.input_file.as_deref() {
        Some("-") => out.push((2 * dirs.len(), Source::Stdin)),
        Some(f) => {
            let p = Path::new(f);
            let dir = Target::Local(p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf));
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("bad --input-file {f:?}"))?
                .to_string();
            let size = std::fs::metadata(p).map_err(|e| format!("open {f}: {e}"))?.len();
            out.push((2 * dirs.len(), Source::File(dir, name, size)));
        }
        None => {}
    }
    if out.is_empty() {
        return Err("give --directory, --directory-list or --input-file".into());
    }
    Ok(out)
}

/// The sources of a chain of directories, in order: each directory's .asb files by name (one
/// chain element), then its `deletes.asbd` (the next).
fn dir_sources(dirs: &[Target]) -> Result<Vec<(usize, Source)>, String> {
    let mut out = Vec::new();
    for (element, dir) in dirs.iter().enumerate() {
        let listed = dir.list()?;
        let mut any = false;
        for (name, size) in &listed {
            if name.ends_with(".asb") {
                out.push((2 * element, Source::File(dir.clone(), name.clone(), *size)));
                any = true;
            }
        }
        if !any {
            return Err(format!("no .asb files in {dir}"));
        }
        // `deletes.asbd` (a separate deletion pass) and the `<ns>_NNNNN.asbd` files of a
        // one-pass incremental: every digest is in at most one of them and in none of the run's
        // .asb files, so their order among themselves does not matter.
        for (name, size) in listed.iter().filter(|(n, _)| n.ends_with(".asbd")) {
            out.push((2 * element + 1, Source::Deletes(dir.clone(), name.clone(), *size)));
        }
    }
    Ok(out)
}

/// `-n NS` / `-n SRC,DST`: (source namespace to accept, target namespace).
fn namespace_map(arg: Option<&str>) -> Result<Option<(String, String)>, String> {
    match arg {
        None => Ok(None),
        Some(s) => match s.split_once(',') {
            Some((src, dst)) if !src.is_empty() && !dst.is_empty() && !dst.contains(',') => {
                Ok(Some((src.to_string(), dst.to_string())))
            }
            None if !s.is_empty() => Ok(Some((s.to_string(), s.to_string()))),
            _ => Err(format!("bad --namespace {s:?}: want NS or SRC,DST")),
        },
    }
}

/// The TTL to write for a file record's void time, as asrestore computes it: 0 → never
/// expires; a void time not after now → expired (`None`, not written); else the seconds left.
pub fn expiration_of(void_time: u32, now_unix: i64) -> Option<Expiration> {
    if void_time == 0 {
        return Some(Expiration::Never);
    }
    let left = CITRUSLEAF_EPOCH_SECS + i64::from(void_time) - now_unix;
    if left <= 0 {
        None
    } else {
        Some(Expiration::Seconds(left.min(u32::MAX as i64 - 1) as u32))
    }
}

/// The reader: parses every source in order, sends records to the writers. Returns the number
/// of files read, or the first parse error.
fn read_all(
    sources: Vec<(usize, Source)>,
    key: Option<crate::frame::MasterKey>,
    ns_map: Option<(String, String)>,
    senders: Vec<mpsc::Sender<Msg>>,
    counters: Arc<Counters>,
) -> Result<u64, String> {
    let mut files = 0;
    let mut chain_element = None;
    for (element, src) in sources {
        if counters.abort.load(Ordering::Relaxed) {
            break;
        }
        if chain_element.is_some_and(|e| e != element) {
            let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(senders.len());
            for tx in &senders {
                if tx.blocking_send(Msg::Barrier(ack_tx.clone())).is_err() {
                    return Ok(files);
                }
            }
            drop(ack_tx);
            for _ in 0..senders.len() {
                if ack_rx.recv().is_err() {
                    return Ok(files);
                }
            }
        }
        chain_element = Some(element);
        let name = src.name();
        let raw = src.open()?;
        let counted = CountingReader {
            inner: raw,
            count: counters.bytes.clone(),
        };
        let input = crate::frame::open_reader(Box::new(counted), &name, key.as_ref()).map_err(|e| e.to_string())?;
        let mut reader = AsbReader::new(input, name.clone());
        files += 1;
        counters.files.fetch_add(1, Ordering::Relaxed);
        loop {
            let entry = match reader.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            };
            if let (Some((src_ns, _)), Some(file_ns)) = (&ns_map, reader.namespace()) {
                if file_ns != src_ns {
                    return Err(format!("{name}: backup of namespace {file_ns:?}, not {src_ns:?}"));
                }
            }
            let rec = match entry {
                asb::Entry::Record(r) => r,
                asb::Entry::Index(_) | asb::Entry::Udf { .. } => {
                    counters.skipped_global.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if let Some((src_ns, _)) = &ns_map {
                if &rec.namespace != src_ns {
                    return Err(format!(
                        "{name}: record {} is in namespace {:?}, not {src_ns:?}",
                        reader.records(),
                        rec.namespace
                    ));
                }
            }
            let msg = if matches!(src, Source::Deletes(..)) {
                counters.deletes_read.fetch_add(1, Ordering::Relaxed);
                Msg::Delete(rec)
            } else {
                counters.read.fetch_add(1, Ordering::Relaxed);
                Msg::Record(rec)
            };
            // Same partition → same writer: a chain's versions of a record stay in order.
            let pid = u16::from_le_bytes([rec_digest(&msg)[0], rec_digest(&msg)[1]]) as usize % 4096;
            let tx = &senders[pid % senders.len()];
            if tx.blocking_send(msg).is_err() {
                // The writers stopped (abort).
                return Ok(files);
            }
            if counters.abort.load(Ordering::Relaxed) {
                return Ok(files);
            }
        }
    }
    Ok(files)
}

fn rec_digest(msg: &Msg) -> &[u8; 20] {
    match msg {
        Msg::Record(r) | Msg::Delete(r) => &r.digest,
        Msg::Barrier(_) => unreachable!("barriers carry no record"),
    }
}

/// Counts the bytes read from a source (as stored).
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What the reader hands a writer.
enum Msg {
    Record(asb::Record),
    /// A deletion from `deletes.asbd`: delete the record by digest.
    Delete(asb::Record),
    /// Finish every outstanding put, then answer: the reader waits for all writers between two
    /// backups of a chain, so a later backup's version of a record is never written before (or
    /// concurrently with) an earlier one's.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

struct WriterCfg {
    target_ns: Option<String>,
    base: WritePolicy,
    batch_policy: BatchPolicy,
    batch_size: usize,
    check_generation: bool,
    unique: bool,
    ignore_record_error: bool,
}

/// Counts the outcome of one record write with result code `code` (0 = written).
fn count_write(cfg: &WriterCfg, counters: &Counters, code: i32, what: impl FnOnce() -> String) {
    if code == 0 {
        counters.written.fetch_add(1, Ordering::Relaxed);
    } else if code == 3 && cfg.check_generation {
        counters.fresher.fetch_add(1, Ordering::Relaxed);
    } else if code == 5 && cfg.unique {
        counters.existed.fetch_add(1, Ordering::Relaxed);
    } else {
        count_failure(cfg, counters, code, what);
    }
}

/// Counts the outcome of one delete with result code `code` (0 = deleted, 2 = already absent).
fn count_delete(cfg: &WriterCfg, counters: &Counters, code: i32, what: impl FnOnce() -> String) {
    match code {
        0 => {
            counters.deleted.fetch_add(1, Ordering::Relaxed);
        }
        2 => {
            counters.delete_absent.fetch_add(1, Ordering::Relaxed);
        }
        _ => count_failure(cfg, counters, code, what),
    }
}

/// A file record ready to write: key, bins and the per-record policy fields; `None` (counted
/// as expired) when its void time has passed.
struct Prepared {
    key: aerospike::Key,
    bins: Vec<Bin>,
    expiration: Expiration,
    send_key: bool,
    generation: u32,
}

fn prepare(cfg: &WriterCfg, counters: &Counters, rec: &asb::Record) -> Option<Prepared> {
    let Some(expiration) = expiration_of(rec.expiration, now_unix_secs()) else {
        counters.expired.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let ns = cfg.target_ns.as_deref().unwrap_or(&rec.namespace);
    Some(Prepared {
        key: convert::key_of(ns, rec),
        bins: rec
            .bins
            .iter()
            .filter_map(|b| convert::value_of(&b.value).map(|v| Bin::new(b.name.clone(), v)))
            .collect(),
        expiration,
        send_key: rec.key.is_some(),
        generation: if cfg.check_generation {
            u32::from(rec.generation)
        } else {
            0
        },
    })
}

/// Result codes a write is retried on (after a backoff, up to [`MAX_ATTEMPTS`] tries): 18
/// DEVICE_OVERLOAD, 14 KEY_BUSY, 9 TIMEOUT (server), -11 client timeout (spec §5: the C client
/// retries 18 too). A retried write is idempotent under restore's policies, except that a retry
/// of a write that did land is counted as fresher (generation check) or existed (`--unique`).
const RETRY_CODES: [i32; 4] = [18, 14, 9, -11];
/// Tries of one write (or batch row) before its last result code counts.
pub const MAX_ATTEMPTS: u32 = 8;

/// The pause before try `attempt` + 1: 20 ms doubling, at most 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(6)).min(1000))
}

async fn write_one(client: &Client, cfg: &WriterCfg, counters: &Counters, rec: asb::Record) {
    let Some(p) = prepare(cfg, counters, &rec) else { return };
    let mut policy = cfg.base.clone();
    policy.expiration = p.expiration;
    policy.send_key = p.send_key;
    policy.generation = p.generation;
    match retrying(|| client.put(&policy, &p.key, &p.bins)).await {
        (Ok(()), _) => count_write(cfg, counters, 0, String::new),
        (Err(e), tries) => {
            let code = e.result_code();
            count_write(cfg, counters, code, || {
                format!("record {}: {e} (result code {code}, {tries} tries)", p.key)
            })
        }
    }
}

/// Runs `op` until it succeeds or fails with a code not in [`RETRY_CODES`], at most
/// [`MAX_ATTEMPTS`] times with [`backoff`] between tries; returns the last result and the
/// number of tries.
async fn retrying<T, F, Fut>(mut op: F) -> (Result<T, aerospike::Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, aerospike::Error>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if RETRY_CODES.contains(&e.result_code()) && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return (other, attempt),
        }
    }
}

/// A batch row: a record to write, or a key to delete.
enum Row {
    Write(Prepared),
    Delete(aerospike::Key),
}

impl Row {
    fn op(&self, cfg: &WriterCfg) -> BatchOperation {
        match self {
            Row::Write(p) => {
                let policy = BatchWritePolicy {
                    record_exists_action: cfg.base.record_exists_action,
                    generation_policy: cfg.base.generation_policy,
                    generation: p.generation,
                    expiration: p.expiration,
                    send_key: p.send_key,
                    ..BatchWritePolicy::default()
                };
                let bin_ops: Vec<_> = p.bins.iter().map(operations::put).collect();
                BatchOperation::write(&policy, p.key.clone(), bin_ops)
            }
            Row::Delete(key) => BatchOperation::delete(&BatchDeletePolicy::default(), key.clone()),
        }
    }
}

/// One batch write: the rows of `rows` (writes and deletes) in one request; every row's result
/// code counted. Rows that fail with a [`RETRY_CODES`] code are sent again (a smaller batch)
/// after a backoff; a whole-batch failure gives each unanswered row the batch's code.
async fn write_batch(client: &Client, cfg: &WriterCfg, counters: &Counters, msgs: Vec<Msg>) {
    let mut rows = Vec::with_capacity(msgs.len());
    for msg in msgs {
        match msg {
            Msg::Record(rec) => rows.extend(prepare(cfg, counters, &rec).map(Row::Write)),
            Msg::Delete(rec) => {
                let ns = cfg.target_ns.as_deref().unwrap_or(&rec.namespace);
                rows.push(Row::Delete(convert::key_of(ns, &rec)));
            }
            Msg::Barrier(_) => unreachable!("barriers are not batched"),
        }
    }
    let mut attempt = 1;
    while !rows.is_empty() {
        let mut ops: Vec<BatchOperation> = rows.iter().map(|r| r.op(cfg)).collect();
        let batch_err = client.batch(&cfg.batch_policy, &mut ops).await.err();
        let mut retry = Vec::new();
        for (row, op) in rows.into_iter().zip(&ops) {
            let code = match (op.result_code(), op.error(), &batch_err) {
                (Some(rc), _, _) => i32::from(u8::from(rc)),
                (None, Some(e), _) | (None, None, Some(e)) => e.result_code(),
                (None, None, None) => NO_RESPONSE,
            };
            if RETRY_CODES.contains(&code) && attempt < MAX_ATTEMPTS {
                retry.push(row);
                continue;
            }
            let delete = matches!(row, Row::Delete(_));
            let what = || {
                let err = op.error().or(batch_err.as_ref()).map(ToString::to_string);
                format!(
                    "{} {} in a batch: {} (result code {code}, {attempt} tries)",
                    if delete { "delete" } else { "record" },
                    op.batch_record().key,
                    err.unwrap_or_else(|| "no answer".into())
                )
            };
            if delete {
                count_delete(cfg, counters, code, what);
            } else {
                count_write(cfg, counters, code, what);
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
        rows = retry;
    }
}

/// Counts a failed record write or delete with result code `code` and stops the restore unless
/// it is a record error `--ignore-record-error` skips.
fn count_failure(cfg: &WriterCfg, counters: &Counters, code: i32, what: impl FnOnce() -> String) {
    counters.failed.fetch_add(1, Ordering::Relaxed);
    *counters
        .failed_by_code
        .lock()
        .expect("counter lock")
        .entry(code)
        .or_default() += 1;
    if !(cfg.ignore_record_error && RECORD_ERRORS.contains(&code)) {
        counters
            .first_failure
            .lock()
            .expect("failure lock")
            .get_or_insert_with(what);
        counters.abort.store(true, Ordering::Relaxed);
    }
}

async fn delete_one(client: &Client, cfg: &WriterCfg, counters: &Counters, rec: asb::Record) {
    let ns = cfg.target_ns.as_deref().unwrap_or(&rec.namespace);
    let key = convert::key_of(ns, &rec);
    let policy = WritePolicy::default();
    match retrying(|| client.delete(&policy, &key)).await {
        (Ok(true), _) => count_delete(cfg, counters, 0, String::new),
        (Ok(false), _) => count_delete(cfg, counters, 2, String::new),
        (Err(e), tries) => {
            let code = e.result_code();
            count_delete(cfg, counters, code, || {
                format!("delete {key}: {e} (result code {code}, {tries} tries)")
            })
        }
    }
}

/// A writer in batch mode (see the module doc).
async fn batch_writer(client: Arc<Client>, cfg: Arc<WriterCfg>, counters: Arc<Counters>, mut rx: mpsc::Receiver<Msg>) {
    use tokio::sync::mpsc::error::TryRecvError;
    let mut in_flight = FuturesUnordered::new();
    let mut rows: Vec<Msg> = Vec::with_capacity(cfg.batch_size);
    let dispatch = |rows: &mut Vec<Msg>, in_flight: &mut FuturesUnordered<_>| {
        if rows.is_empty() {
            return;
        }
        let batch = std::mem::replace(rows, Vec::with_capacity(cfg.batch_size));
        let (client, cfg, counters) = (client.clone(), cfg.clone(), counters.clone());
        in_flight.push(async move { write_batch(&client, &cfg, &counters, batch).await });
    };
    loop {
        if counters.abort.load(Ordering::Relaxed) {
            break;
        }
        if in_flight.len() >= BATCHES_IN_FLIGHT {
            in_flight.next().await;
            continue;
        }
        let msg = if rows.is_empty() {
            tokio::select! {
                msg = rx.recv() => msg,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            }
        } else {
            match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(TryRecvError::Empty) => {
                    // Nothing more queued now: send what there is rather than wait.
                    dispatch(&mut rows, &mut in_flight);
                    continue;
                }
                Err(TryRecvError::Disconnected) => None,
            }
        };
        match msg {
            Some(Msg::Barrier(ack)) => {
                dispatch(&mut rows, &mut in_flight);
                while in_flight.next().await.is_some() {}
                let _ = ack.send(());
            }
            Some(row) => {
                rows.push(row);
                if rows.len() >= cfg.batch_size {
                    dispatch(&mut rows, &mut in_flight);
                }
            }
            None => break,
        }
    }
    if !counters.abort.load(Ordering::Relaxed) {
        dispatch(&mut rows, &mut in_flight);
    }
    while in_flight.next().await.is_some() {}
    rx.close();
}

async fn writer(client: Arc<Client>, cfg: Arc<WriterCfg>, counters: Arc<Counters>, mut rx: mpsc::Receiver<Msg>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        if counters.abort.load(Ordering::Relaxed) {
            break;
        }
        if in_flight.len() >= IN_FLIGHT_PER_THREAD {
            in_flight.next().await;
            continue;
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Record(rec)) => {
                    let (client, cfg, counters) = (client.clone(), cfg.clone(), counters.clone());
                    in_flight.push(async move { write_one(&client, &cfg, &counters, rec).await }.boxed());
                }
                Some(Msg::Delete(rec)) => {
                    let (client, cfg, counters) = (client.clone(), cfg.clone(), counters.clone());
                    in_flight.push(async move { delete_one(&client, &cfg, &counters, rec).await }.boxed());
                }
                Some(Msg::Barrier(ack)) => {
                    while in_flight.next().await.is_some() {}
                    let _ = ack.send(());
                }
                None => break,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
    // Closing the receiver makes a blocked reader return.
    rx.close();
}

pub async fn run(args: RestoreArgs) -> Result<RestoreSummary, String> {
    let codec = crate::frame::Codec::from_flags(
        args.compress.as_deref(),
        args.encrypt.as_deref(),
        args.encryption_key_file.as_deref(),
    )?;
    let start = Instant::now();
    let sources = sources(&args)?;
    // Every file's header and key before anything is written: a wrong key or a file that needs
    // one stops the restore with the target untouched.
    for (_, src) in &sources {
        if !matches!(src, Source::Stdin) {
            crate::frame::check_reader(src.open()?, &src.name(), codec.key.as_ref())?;
        }
    }
    let ns_map = namespace_map(args.namespace.as_deref())?;
    let client = Arc::new(connect(&args.host, args.port).await?);

    // Create-only needs no generation check (and the real server's order of the two checks
    // would decide between "existed" and "fresher").
    let check_generation = !args.no_generation && !args.unique && args.target.is_none();
    let base = WritePolicy {
        record_exists_action: if args.unique {
            RecordExistsAction::CreateOnly
        } else if args.replace || args.target.is_some() {
            RecordExistsAction::Replace
        } else {
            RecordExistsAction::Update
        },
        generation_policy: if check_generation {
            GenerationPolicy::ExpectGenGreater
        } else {
            GenerationPolicy::None
        },
        ..WritePolicy::default()
    };
    let cfg = Arc::new(WriterCfg {
        target_ns: ns_map.as_ref().map(|(_, dst)| dst.clone()),
        base,
        batch_policy: BatchPolicy::default(),
        batch_size: args.batch_size as usize,
        check_generation,
        unique: args.unique,
        ignore_record_error: args.ignore_record_error,
    });
    let counters = Arc::new(Counters::default());

    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..args.threads {
        let (tx, rx) = mpsc::channel(QUEUE_PER_THREAD);
        senders.push(tx);
        writers.push(if args.disable_batch_writes {
            tokio::spawn(writer(client.clone(), cfg.clone(), counters.clone(), rx))
        } else {
            tokio::spawn(batch_writer(client.clone(), cfg.clone(), counters.clone(), rx))
        });
    }
    // On a terminal a progress bar over the bytes of the files (stdin: a spinner); plain lines
    // every --progress-secs otherwise.
    let bar = (io::stderr().is_terminal() && args.progress_secs > 0).then(|| {
        let files: Option<u64> = sources
            .iter()
            .map(|(_, src)| match src {
                Source::File(_, _, size) | Source::Deletes(_, _, size) => Some(*size),
                Source::Stdin => None,
            })
            .sum();
        let (bar, template) = match files {
            Some(total) => (
                indicatif::ProgressBar::new(total),
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes}, {msg}, ETA {eta}",
            ),
            None => (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} [{elapsed_precise}] {bytes}, {msg}",
            ),
        };
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid progress template"));
        bar
    });
    let progress = (args.progress_secs > 0).then(|| {
        let c = counters.clone();
        let bar = bar.clone();
        let every = match bar {
            Some(_) => Duration::from_millis(200),
            None => Duration::from_secs(args.progress_secs),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let secs = start.elapsed().as_secs_f64();
                let w = c.written.load(Ordering::Relaxed);
                let line = format!(
                    "{} read, {w} written, {} failed, {:.0} records/s",
                    c.read.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    w as f64 / secs.max(1e-9)
                );
                match &bar {
                    Some(bar) => {
                        bar.set_position(c.bytes.load(Ordering::Relaxed));
                        bar.set_message(line);
                    }
                    None => eprintln!("restore: {line}, {secs:.0} s"),
                }
            }
        })
    });

    let reader_counters = counters.clone();
    let key = codec.key.clone();
    let reader = tokio::task::spawn_blocking(move || read_all(sources, key, ns_map, senders, reader_counters));
    let read_result = reader.await.map_err(|e| format!("reader task: {e}"))?;
    for w in writers {
        w.await.map_err(|e| format!("writer task: {e}"))?;
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = client.close().await;

    let summary = RestoreSummary {
        read: counters.read.load(Ordering::Relaxed),
        written: counters.written.load(Ordering::Relaxed),
        expired: counters.expired.load(Ordering::Relaxed),
        existed: counters.existed.load(Ordering::Relaxed),
        fresher: counters.fresher.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        failed_by_code: counters.failed_by_code.lock().expect("counter lock").clone(),
        // Files opened, also those before a read error.
        files: counters.files.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        skipped_global: counters.skipped_global.load(Ordering::Relaxed),
        deletes_read: counters.deletes_read.load(Ordering::Relaxed),
        deleted: counters.deleted.load(Ordering::Relaxed),
        delete_absent: counters.delete_absent.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    if let Err(e) = read_result {
        return Err(format!(
            "{e}\n{} records restored before the error ({summary})",
            summary.written
        ));
    }
    if let Some(f) = counters.first_failure.lock().expect("failure lock").take() {
        return Err(format!("restore stopped at the first failed record: {f}\n{summary}"));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_as_asrestore_computes_them() {
        let now = CITRUSLEAF_EPOCH_SECS + 1000;
        assert_eq!(expiration_of(0, now), Some(Expiration::Never));
        assert_eq!(expiration_of(999, now), None);
        assert_eq!(expiration_of(1000, now), None);
        assert_eq!(expiration_of(1600, now), Some(Expiration::Seconds(600)));
    }

    #[test]
    fn namespace_maps() {
        assert_eq!(namespace_map(None), Ok(None));
        assert_eq!(namespace_map(Some("a")), Ok(Some(("a".into(), "a".into()))));
        assert_eq!(namespace_map(Some("a,b")), Ok(Some(("a".into(), "b".into()))));
        assert!(namespace_map(Some("a,")).is_err());
    }
}
