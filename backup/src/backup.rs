//! `backup`: partition scans of one namespace written as .asb files.
//!
//! The 4096 partitions (or the `--partition-list` filters) are split into jobs; at most
//! `--parallel` jobs scan at once, each over its own disjoint partition range. In directory mode
//! every job writes its own files, rotated at `--file-limit` MiB; with `--output-file` all jobs
//! append whole records to one shared file (or stdout).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aerospike::expressions::{and, ge, int_val, is_tombstone, last_update, lt, not, or, Expression};
use aerospike::query::PartitionFilter;
use aerospike::{Bins, Client, ClientPolicy, Key, QueryPolicy, Statement};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt;

use crate::asb::{self, BytesForm};
use crate::convert;
use crate::frame::{Codec, FileWriter};
use crate::state::{self, State, Unit};
use crate::target::{ObjectStoreArgs, Sink, Target};

/// A job in directory mode checkpoints its place at least every this many records.
const CHECKPOINT_RECORDS: u64 = 5000;
/// The resume state is written to disk at most this often.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// The deletions an incremental directory backup captured (a Bolide extension): `+ ` record
/// headers with `+ b 0`, in a file asrestore does not read (it reads `*.asb` only).
pub const DELETES_FILE: &str = "deletes.asbd";

/// Number of partitions (wire spec §4).
pub const PARTITIONS: usize = 4096;
/// Encoded records are handed to a shared output in chunks of about this size.
const CHUNK_BYTES: usize = 256 << 10;

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The host to connect to (host or host:port).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to connect to.
    #[arg(short = 'p', long, default_value_t = 3000)]
    pub port: u16,
    /// The namespace to back up.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// Only back up this set.
    #[arg(short = 's', long)]
    pub set: Option<String>,
    /// Where the backup files go: a local directory (created if missing), `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` or `file:///path`; must hold no .asb files
    /// unless --remove-files.
    #[arg(
        short = 'd',
        long,
        conflicts_with = "output_file",
        required_unless_present_any = ["output_file", "estimate"]
    )]
    pub directory: Option<String>,
    /// Back up to a single file; `-` for stdout.
    #[arg(short = 'o', long)]
    pub output_file: Option<String>,
    /// Remove existing .asb files in --directory (or an existing --output-file) first.
    #[arg(short = 'r', long)]
    pub remove_files: bool,
    /// Maximum number of scans to run in parallel (1-1024); the partition range is divided
    /// evenly among them.
    #[arg(short = 'w', long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: u16,
    /// Rotate backup files when they grow past this many MiB (directory mode).
    #[arg(short = 'F', long, default_value_t = 250)]
    pub file_limit: u64,
    /// Only include these bins (comma-separated).
    #[arg(short = 'B', long, value_delimiter = ',')]
    pub bin_list: Vec<String>,
    /// Do not include bin data (record metadata only).
    #[arg(short = 'x', long)]
    pub no_bins: bool,
    /// Partition filters: `<begin>[-<count>]` or a base64 digest (resume after it in its
    /// partition), comma-separated. Default: 0-4096.
    #[arg(short = 'X', long)]
    pub partition_list: Option<String>,
    /// Back up at most this many records.
    #[arg(short = 'M', long)]
    pub max_records: Option<u64>,
    /// Limit the scan to this many records per second in total.
    #[arg(short = 'L', long)]
    pub records_per_second: Option<u32>,
    /// Only records last updated at or after this time: YYYY-MM-DD_HH:MM:SS, YYYY-MM-DD or
    /// HH:MM:SS (today), UTC.
    #[arg(short = 'a', long, value_parser = parse_timestamp)]
    pub modified_after: Option<i64>,
    /// Only records last updated before this time (same formats).
    #[arg(short = 'b', long, value_parser = parse_timestamp)]
    pub modified_before: Option<i64>,
    /// Write blobs, lists and maps as raw bytes (`- B!`) instead of base64.
    #[arg(short = 'C', long)]
    pub compact: bool,
    /// Seconds between progress lines on stderr; on a terminal a progress bar instead (0: no
    /// progress output).
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Resume a killed or failed directory backup from its state file (`<dir>/<ns>.asb.state`;
    /// give the same flags as the first run).
    #[arg(short = 'c', long = "continue")]
    pub continue_state: Option<PathBuf>,
    /// Compress the backup files: `zstd` (Bolide's own framing, not asbackup's; see
    /// docs/OPERATIONS.md).
    #[arg(short = 'z', long)]
    pub compress: Option<String>,
    /// Encrypt the backup files: `aes256` (AES-256-GCM in Bolide's own framing; needs
    /// --encryption-key-file).
    #[arg(long)]
    pub encrypt: Option<String>,
    /// The key for --encrypt: any non-empty file; its SHA-256 is the master key.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    /// Estimate the backup's record count and size from a sample of about 10 000 records
    /// (whole partitions), print it, and write nothing.
    #[arg(short = 'e', long, conflicts_with = "continue_state")]
    pub estimate: bool,
    #[command(flatten)]
    pub object: ObjectStoreArgs,
}

/// Parses asbackup's `--modified-after/--modified-before` formats to Unix seconds (UTC).
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let bad = || format!("bad time {s:?}: want YYYY-MM-DD_HH:MM:SS, YYYY-MM-DD or HH:MM:SS (UTC)");
    let (date, time) = match s.split_once('_') {
        Some((d, t)) => (Some(d), Some(t)),
        None if s.contains(':') => (None, Some(s)),
        None => (Some(s), None),
    };
    let days = match date {
        Some(d) => {
            let p: Vec<&str> = d.split('-').collect();
            if p.len() != 3 {
                return Err(bad());
            }
            let y: i64 = p[0].parse().map_err(|_| bad())?;
            let m: u32 = p[1].parse().map_err(|_| bad())?;
            let dd: u32 = p[2].parse().map_err(|_| bad())?;
            if !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
                return Err(bad());
            }
            days_from_civil(y, m, dd)
        }
        None => now_unix_secs().div_euclid(86_400),
    };
    let secs = match time {
        Some(t) => {
            let p: Vec<&str> = t.split(':').collect();
            if p.len() != 3 {
                return Err(bad());
            }
            let h: i64 = p[0].parse().map_err(|_| bad())?;
            let mi: i64 = p[1].parse().map_err(|_| bad())?;
            let se: i64 = p[2].parse().map_err(|_| bad())?;
            if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
                return Err(bad());
            }
            h * 3600 + mi * 60 + se
        }
        None => 0,
    };
    Ok(days * 86_400 + secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn now_unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One scan: a partition range, or the records after a digest in its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Range { begin: usize, count: usize },
    AfterDigest([u8; 20]),
}

impl Job {
    fn units(&self) -> Vec<Unit> {
        match self {
            Job::Range { begin, count } => (*begin..begin + count).map(Unit::Pid).collect(),
            Job::AfterDigest(d) => vec![Unit::After(state::pid_of(d), *d)],
        }
    }
}

/// Splits units into at most `parts` contiguous, non-empty groups.
fn split_units<T>(units: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.clamp(1, units.len().max(1));
    let n = units.len();
    let mut out = Vec::with_capacity(parts);
    let mut it = units.into_iter();
    for i in 0..parts {
        let take = n * (i + 1) / parts - n * i / parts;
        let group: Vec<T> = it.by_ref().take(take).collect();
        if !group.is_empty() {
            out.push(group);
        }
    }
    out
}

/// Parses `--partition-list`.
pub fn parse_partition_list(s: &str) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        if item.len() == 28 && item.ends_with('=') {
            let d = B64
                .decode(item)
                .ok()
                .and_then(|v| <[u8; 20]>::try_from(v).ok())
                .ok_or_else(|| format!("bad digest {item:?} in --partition-list"))?;
            jobs.push(Job::AfterDigest(d));
            continue;
        }
        let (b, c) = item.split_once('-').unwrap_or((item, "1"));
        let begin: usize = b.parse().map_err(|_| format!("bad partition {item:?}"))?;
        let count: usize = c.parse().map_err(|_| format!("bad partition count {item:?}"))?;
        if begin >= PARTITIONS || count == 0 || begin + count > PARTITIONS {
            return Err(format!("partition filter {item:?} outside 0..{PARTITIONS}"));
        }
        jobs.push(Job::Range { begin, count });
    }
    if jobs.is_empty() {
        return Err("empty --partition-list".into());
    }
    Ok(jobs)
}

/// Splits one range into `parts` contiguous, disjoint, non-empty ranges covering it.
pub fn split_range(begin: usize, count: usize, parts: usize) -> Vec<Job> {
    let parts = parts.clamp(1, count);
    (0..parts)
        .map(|i| {
            let b = begin + count * i / parts;
            let e = begin + count * (i + 1) / parts;
            Job::Range { begin: b, count: e - b }
        })
        .collect()
}

/// What a finished backup did.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub records: u64,
    /// Deletions captured by the deletion pass of an incremental directory backup (`None`: no
    /// deletion pass ran).
    pub deletes: Option<u64>,
    pub bytes: u64,
    pub files: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "backup done: {} records, {} bytes in {} file(s), {:.2} s, {:.0} records/s, {:.2} MiB/s",
            self.records,
            self.bytes,
            self.files,
            secs,
            self.records as f64 / secs,
            self.bytes as f64 / secs / (1024.0 * 1024.0)
        )?;
        if let Some(d) = self.deletes {
            write!(f, "; {d} deletion(s) in .asbd files")?;
        }
        Ok(())
    }
}

/// Where encoded records go.
enum Output {
    /// One file series per job, rotated at `limit_bytes`.
    Dir {
        target: Target,
        limit_bytes: u64,
        next_index: AtomicU64,
    },
    /// One shared stream; each chunk holds whole records. `None` once finished.
    Shared(Mutex<Option<FileWriter<Box<dyn Write + Send>>>>),
}

struct Shared {
    client: Client,
    codec: Codec,
    namespace: String,
    set: String,
    bins: Bins,
    policy: QueryPolicy,
    form: BytesForm,
    output: Output,
    max_records: Option<u64>,
    taken: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    failed: AtomicBool,
    /// An incremental directory backup of all bins: one scan returns records and tombstones
    /// (see [`one_pass_filter`]); tombstones go to each file's `.asbd` companion.
    one_pass_deletes: bool,
    /// Deletions written by the one pass.
    deletes: AtomicU64,
    /// Directory mode: where the resume state lives (location, file name), the state, and when
    /// it was last saved.
    state: Option<ResumeState>,
}

/// Where the resume state lives (location, file name), the state, and when it was last saved.
type ResumeState = ((Target, String), Mutex<(State, Instant)>);

/// What a checkpoint says about the job's current partition.
#[derive(Clone, Copy)]
enum Mark {
    Done(usize),
    Partial(usize, [u8; 20]),
}

/// A job's marks not yet in the resume state, and when it last recorded some.
struct PendingMarks {
    marks: Vec<Mark>,
    since: Instant,
}

/// The current file of one job in directory mode.
struct DirFile {
    writer: FileWriter<Sink>,
    /// The file's name in the target, and the target's description of it (for messages).
    name: String,
    path: String,
    written: u64,
    /// A local file: a flush puts the bytes in the OS, so a checkpoint may name its length.
    /// An object: nothing is visible before the upload completes, so the marks of the records
    /// in it are recorded only when it is closed.
    checkpoints_on_flush: bool,
    /// One-pass incrementals: the deletions of this file's scan stretch, `<ns>_NNNNN.asbd`
    /// (opened at the first one), checkpointed and closed with the file.
    deletes: Option<DeletesFile>,
}

/// The deletion file paired with a job's .asb file (one-pass incrementals).
struct DeletesFile {
    writer: FileWriter<Sink>,
    name: String,
    path: String,
}

impl DirFile {
    /// The paired deletion file, opened on first use.
    fn deletes(&mut self, target: &Target, shared: &Shared) -> Result<&mut DeletesFile, String> {
        if self.deletes.is_none() {
            let name = format!("{}d", self.name);
            let path = target.describe(&name);
            let sink = target.create(&name)?;
            let mut header = Vec::new();
            asb::encode_header(&mut header, &shared.namespace, false);
            let writer = FileWriter::new(sink, &shared.codec)
                .and_then(|mut w| w.write_all(&header).map(|()| w))
                .map_err(|e| format!("write {path}: {e}"))?;
            self.deletes = Some(DeletesFile { writer, name, path });
        }
        Ok(self.deletes.as_mut().expect("opened above"))
    }
}

impl Shared {
    fn open_next_file(&self, target: &Target) -> Result<DirFile, String> {
        let Output::Dir { next_index, .. } = &self.output else {
            unreachable!("open_next_file in directory mode only")
        };
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_{index:05}.asb", self.namespace);
        let path = target.describe(&name);
        let sink = target.create(&name)?;
        let checkpoints_on_flush = sink.checkpoints_on_flush();
        let mut header = Vec::new();
        asb::encode_header(&mut header, &self.namespace, index == 0);
        let writer = FileWriter::new(sink, &self.codec)
            .and_then(|mut w| w.write_all(&header).map(|()| w))
            .map_err(|e| format!("write {path}: {e}"))?;
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(header.len() as u64, Ordering::Relaxed);
        Ok(DirFile {
            writer,
            name,
            path,
            written: header.len() as u64,
            checkpoints_on_flush,
            deletes: None,
        })
    }
}

impl Shared {
    /// Adds `marks` to the job's pending marks and, when `force`d, when the job has no open file,
    /// or at most every [`STATE_SAVE_INTERVAL`], flushes the file and records the marks with its
    /// length ([`Shared::checkpoint`]). Deferring keeps the chunks of a framed file (one per
    /// flush) large; marks lost to a kill are only redone on resume.
    fn mark(
        &self,
        file: Option<&mut DirFile>,
        pending: &mut PendingMarks,
        marks: impl IntoIterator<Item = Mark>,
        force: bool,
    ) -> Result<(), String> {
        pending.marks.extend(marks);
        if file.as_ref().is_some_and(|f| !f.checkpoints_on_flush) {
            // An object being uploaded: its marks wait for close_file.
            return Ok(());
        }
        if !force && file.is_some() && pending.since.elapsed() < STATE_SAVE_INTERVAL {
            return Ok(());
        }
        self.checkpoint(file, &pending.marks)?;
        pending.marks.clear();
        pending.since = Instant::now();
        Ok(())
    }

    /// Ends the job's file with `marks` added to its pending ones: a local file is
    /// checkpointed (flushed, its length and the marks recorded) and then closed; an object is
    /// uploaded to completion first, and then recorded whole with the marks.
    fn close_file(
        &self,
        mut f: DirFile,
        pending: &mut PendingMarks,
        marks: impl IntoIterator<Item = Mark>,
    ) -> Result<(), String> {
        pending.marks.extend(marks);
        if f.checkpoints_on_flush {
            self.checkpoint(Some(&mut f), &pending.marks)?;
            finish_file(f)?;
        } else {
            // The deletion file's upload completes first, then the file's: both are visible
            // before the state names either.
            let mut entries = Vec::new();
            if let Some(d) = f.deletes.take() {
                let len = finish_deletes(d.writer, &d.path)?;
                entries.push((d.name, len));
            }
            let name = f.name.clone();
            let len = finish_file(f)?;
            entries.push((name, len));
            self.record(entries, &pending.marks)?;
        }
        pending.marks.clear();
        pending.since = Instant::now();
        Ok(())
    }

    /// Flushes the job's file and records it, with `marks` (in order), in the resume state.
    fn checkpoint(&self, file: Option<&mut DirFile>, marks: &[Mark]) -> Result<(), String> {
        let mut entries = Vec::new();
        if let Some(f) = file {
            f.writer.flush().map_err(|e| format!("write {}: {e}", f.path))?;
            // A chunk boundary of a framed file (flush ends the chunk).
            entries.push((f.name.clone(), f.writer.bytes_out()));
            if let Some(d) = &mut f.deletes {
                d.writer.flush().map_err(|e| format!("write {}: {e}", d.path))?;
                entries.push((d.name.clone(), d.writer.bytes_out()));
            }
        }
        self.record(entries, marks)
    }

    /// Records a file's length (a flushed local file, a completed object) and `marks` in the
    /// resume state, and saves it at most every [`STATE_SAVE_INTERVAL`].
    fn record(&self, entries: Vec<(String, u64)>, marks: &[Mark]) -> Result<(), String> {
        let Some(((target, name), st)) = &self.state else { return Ok(()) };
        let mut guard = st.lock().map_err(|_| "state lock poisoned".to_string())?;
        let (st, last_save) = &mut *guard;
        for (name, len) in entries {
            st.files.insert(name, len);
        }
        for mark in marks {
            match *mark {
                Mark::Done(pid) => {
                    st.partial.remove(&pid);
                    st.done.insert(pid);
                }
                Mark::Partial(pid, d) => {
                    st.partial.insert(pid, d);
                }
            }
        }
        // The state in memory only ever holds flushed lengths with the marks they cover, so
        // any save is consistent; saving at most every STATE_SAVE_INTERVAL keeps 4096
        // partition checkpoints cheap (a resume redoes at most that much work).
        if last_save.elapsed() >= STATE_SAVE_INTERVAL {
            st.save_to(target, name)?;
            *last_save = Instant::now();
        }
        Ok(())
    }

    /// Saves the state now (after a failure).
    fn save_state(&self) -> Result<(), String> {
        let Some(((target, name), st)) = &self.state else { return Ok(()) };
        let guard = st.lock().map_err(|_| "state lock poisoned".to_string())?;
        guard.0.save_to(target, name)
    }
}

/// Ends a file (the framing's last chunk, a local sync, an object's upload completed); returns
/// its bytes.
fn finish_file(f: DirFile) -> Result<u64, String> {
    let DirFile {
        writer, path, deletes, ..
    } = f;
    if let Some(d) = deletes {
        finish_deletes(d.writer, &d.path)?;
    }
    writer
        .finish()
        .and_then(Sink::close)
        .map_err(|e| format!("write {path}: {e}"))
}

fn finish_deletes(writer: FileWriter<Sink>, path: &str) -> Result<u64, String> {
    writer
        .finish()
        .and_then(Sink::close)
        .map_err(|e| format!("write {path}: {e}"))
}

/// One query of a job: a run of contiguous whole partitions, or the rest of one partition after
/// a digest (a resumed partial one, or a `--partition-list` digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Range(usize, usize),
    After(usize, [u8; 20]),
}

impl Scan {
    fn filter(&self, namespace: &str) -> PartitionFilter {
        match *self {
            Scan::Range(begin, count) => PartitionFilter::by_range(begin, count),
            Scan::After(_, d) => PartitionFilter::by_key(&Key::with_digest(namespace, "", None, d)),
        }
    }

    fn pids(&self) -> std::ops::Range<usize> {
        match *self {
            Scan::Range(begin, count) => begin..begin + count,
            Scan::After(pid, _) => pid..pid + 1,
        }
    }
}

impl std::fmt::Display for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scan::Range(b, 1) => write!(f, "partition {b}"),
            Scan::Range(b, c) => write!(f, "partitions {b}-{}", b + c - 1),
            Scan::After(p, d) => write!(f, "partition {p} after {}", B64.encode(d)),
        }
    }
}

/// A job's units as queries: consecutive whole partitions coalesced into ranges. One query per
/// range instead of one per partition: each query costs a round of set-up on the server.
fn scans_of(units: &[Unit]) -> Vec<Scan> {
    let mut out: Vec<Scan> = Vec::new();
    for u in units {
        match (*u, out.last_mut()) {
            (Unit::Pid(p), Some(Scan::Range(b, c))) if *b + *c == p => *c += 1,
            (Unit::Pid(p), _) => out.push(Scan::Range(p, 1)),
            (Unit::After(p, d), _) => out.push(Scan::After(p, d)),
        }
    }
    out
}

/// Runs one job's scans (its units, one query per run of contiguous partitions) to their end;
/// returns the records it wrote.
///
/// Directory mode checkpoints: every record's partition is known from its digest, and records
/// of one partition come in digest order, so at any point "partial `<pid>` `<last digest
/// written>`" is true for every partition seen, whatever order the partitions of a range come
/// in; a partition is marked done only when its query has ended. A resume scans a partial
/// partition after its digest and an unmarked one whole: nothing missing, nothing twice.
async fn run_job(shared: Arc<Shared>, units: Vec<Unit>) -> Result<u64, String> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut file: Option<DirFile> = None;
    let mut pending = PendingMarks {
        marks: Vec::new(),
        since: Instant::now(),
    };
    let mut n = 0u64;
    let mut result = Ok(());
    'scans: for scan in scans_of(&units) {
        if shared.failed.load(Ordering::Relaxed) {
            break;
        }
        let stmt = Statement::new(shared.namespace.clone(), shared.set.clone(), shared.bins.clone());
        let rs = match shared
            .client
            .query(&shared.policy, scan.filter(&shared.namespace), stmt)
            .await
        {
            Ok(rs) => rs,
            Err(e) => {
                result = Err(format!("scan of {scan}: {e}"));
                break;
            }
        };
        let mut stream = rs.into_stream();
        let mut since_checkpoint = 0u64;
        // The last digest written of each partition seen since the last mark.
        let mut seen: BTreeMap<usize, [u8; 20]> = BTreeMap::new();
        let partials = |seen: &mut BTreeMap<usize, [u8; 20]>| {
            std::mem::take(seen)
                .into_iter()
                .map(|(p, d)| Mark::Partial(p, d))
                .collect::<Vec<_>>()
        };
        while let Some(item) = stream.next().await {
            if shared.failed.load(Ordering::Relaxed) {
                break 'scans;
            }
            let rec = match item {
                Ok(rec) => rec,
                Err(e) => {
                    result = Err(format!("scan of {scan}: {e}"));
                    break 'scans;
                }
            };
            // One-pass incremental: a zero-bin record is a deletion (a live record always has
            // bins, and the scan asks for all of them).
            let deletion = shared.one_pass_deletes && rec.bins.is_empty();
            if let Some(max) = shared.max_records {
                if !deletion && shared.taken.fetch_add(1, Ordering::Relaxed) >= max {
                    break 'scans;
                }
            }
            let rec = match convert::record_of(&shared.namespace, &rec) {
                Ok(r) => r,
                Err(e) => {
                    result = Err(format!(
                        "record {}: {e}",
                        B64.encode(rec.key.map(|k| k.digest()).unwrap_or_default())
                    ));
                    break 'scans;
                }
            };
            let before = chunk.len();
            asb::encode_record(
                &mut chunk,
                &rec,
                if deletion { BytesForm::Base64 } else { shared.form },
            );
            let rec_bytes = (chunk.len() - before) as u64;
            if deletion {
                shared.deletes.fetch_add(1, Ordering::Relaxed);
            } else {
                n += 1;
                shared.records.fetch_add(1, Ordering::Relaxed);
            }
            shared.bytes.fetch_add(rec_bytes, Ordering::Relaxed);
            match &shared.output {
                Output::Dir { target, limit_bytes, .. } => {
                    // Rotate before a record that would start past the limit; the old file's
                    // final length goes into the state with the marks of its records.
                    if file.as_ref().is_some_and(|f| f.written >= *limit_bytes) {
                        let old = file.take().expect("checked");
                        if let Err(e) = shared.close_file(old, &mut pending, partials(&mut seen)) {
                            result = Err(e);
                            break 'scans;
                        }
                    }
                    if file.is_none() {
                        match shared.open_next_file(target) {
                            Ok(f) => file = Some(f),
                            Err(e) => {
                                result = Err(e);
                                break 'scans;
                            }
                        }
                    }
                    let f = file.as_mut().expect("opened above");
                    if deletion {
                        let d = match f.deletes(target, &shared) {
                            Ok(d) => d,
                            Err(e) => {
                                result = Err(e);
                                break 'scans;
                            }
                        };
                        if let Err(e) = d.writer.write_all(&chunk) {
                            result = Err(format!("write {}: {e}", d.path));
                            break 'scans;
                        }
                        // Deletions count towards the rotation too (a stretch of deletions
                        // alone still checkpoints).
                        f.written += chunk.len() as u64;
                    } else {
                        if let Err(e) = f.writer.write_all(&chunk) {
                            result = Err(format!("write {}: {e}", f.path));
                            break 'scans;
                        }
                        f.written += chunk.len() as u64;
                    }
                    chunk.clear();
                    let pid = state::pid_of(&rec.digest);
                    if !scan.pids().contains(&pid) {
                        result = Err(format!("scan of {scan} returned a record of partition {pid}"));
                        break 'scans;
                    }
                    seen.insert(pid, rec.digest);
                    since_checkpoint += 1;
                    if since_checkpoint >= CHECKPOINT_RECORDS {
                        since_checkpoint = 0;
                        if let Err(e) = shared.mark(file.as_mut(), &mut pending, partials(&mut seen), false) {
                            result = Err(e);
                            break 'scans;
                        }
                    }
                }
                Output::Shared(out) => {
                    if chunk.len() >= CHUNK_BYTES {
                        if let Err(e) = write_shared(out, &chunk) {
                            result = Err(e);
                            break 'scans;
                        }
                        chunk.clear();
                    }
                }
            }
        }
        // The query ended: every partition of it is done (partials are superseded).
        seen.clear();
        if let Err(e) = shared.mark(file.as_mut(), &mut pending, scan.pids().map(Mark::Done), false) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = match (&shared.output, file.take()) {
            (Output::Shared(out), _) => write_shared(out, &chunk),
            (Output::Dir { .. }, Some(f)) => shared.close_file(f, &mut pending, None),
            (Output::Dir { .. }, None) => shared.mark(None, &mut pending, None, true),
        };
    }
    if let Some(f) = file.take() {
        // After a failure: a local file is closed as far as it got (the state names only its
        // checkpointed length); an object upload is abandoned (dropped).
        if f.checkpoints_on_flush {
            let _ = finish_file(f);
        }
    }
    if result.is_err() {
        shared.failed.store(true, Ordering::Relaxed);
    }
    result.map(|()| n)
}

type SharedOut = Mutex<Option<FileWriter<Box<dyn Write + Send>>>>;

fn write_shared(out: &SharedOut, chunk: &[u8]) -> Result<(), String> {
    if chunk.is_empty() {
        return Ok(());
    }
    let mut w = out.lock().map_err(|_| "output lock poisoned".to_string())?;
    w.as_mut()
        .ok_or_else(|| "output already finished".to_string())?
        .write_all(chunk)
        .map_err(|e| format!("write output: {e}"))
}

fn prepare_dir(target: &Target, remove: bool) -> Result<(), String> {
    target.create_dir()?;
    for (name, _) in target.list()? {
        // A deletes.asbd left by an earlier incremental would be applied with this backup.
        if name.ends_with(".asb") || name.ends_with(".asbd") {
            if remove {
                target.remove(&name)?;
            } else {
                return Err(format!(
                    "{target} already holds backup files ({}); use --remove-files to replace them",
                    target.describe(&name)
                ));
            }
        }
    }
    Ok(())
}

/// Connects to `host` (`host` or `host:port`; `port` when no port is given).
pub async fn connect(host: &str, port: u16) -> Result<Client, String> {
    let hosts = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    Client::new(&ClientPolicy::default(), &hosts)
        .await
        .map_err(|e| format!("connect to {hosts}: {e}"))
}

pub async fn run(args: BackupArgs) -> Result<BackupSummary, String> {
    let codec = Codec::from_flags(
        args.compress.as_deref(),
        args.encrypt.as_deref(),
        args.encryption_key_file.as_deref(),
    )?;
    let start = Instant::now();
    let target = match &args.directory {
        Some(d) => Some(Target::parse(d, &args.object)?),
        None => None,
    };
    // Where the resume state lives: `--continue`'s file (a local path; for an object store the
    // last component of the name given, in the target), else `<ns>.asb.state` in the target.
    let state_loc = target.as_ref().map(|t| match (&args.continue_state, t) {
        (Some(p), Target::Local(_)) => (
            Target::Local(p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)),
            p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
        ),
        (Some(p), Target::Object(_)) => (
            t.clone(),
            p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
        ),
        (None, _) => (t.clone(), format!("{}.asb.state", args.namespace)),
    });
    let resumed = match (&args.continue_state, &state_loc) {
        (Some(_), None) => return Err("--continue needs the backup's --directory".into()),
        (Some(_), Some((t, name))) => {
            let text = t
                .read_small(name)?
                .ok_or_else(|| format!("{}: no such state file", t.describe(name)))?;
            let text = String::from_utf8(text).map_err(|_| format!("{}: not text", t.describe(name)))?;
            Some(State::parse(&text, &t.describe(name))?)
        }
        (None, _) => None,
    };
    let units: Vec<Unit> = match (&resumed, &args.partition_list) {
        (Some(st), _) => st.remaining(),
        (None, None) => (0..PARTITIONS).map(Unit::Pid).collect(),
        (None, Some(list)) => parse_partition_list(list)?.iter().flat_map(Job::units).collect(),
    };
    let jobs = split_units(units.clone(), args.parallel as usize);

    let output = match (&target, &args.output_file) {
        (Some(target), _) => {
            let next = match (&resumed, target.local_dir()) {
                (Some(st), Some(dir)) => {
                    let next = state::rewind_dir(dir, st, &args.namespace)?;
                    // A framed file cut back to its last checkpoint gets its final chunk.
                    for name in st.files.keys() {
                        crate::frame::seal_truncated(&dir.join(name), codec.key.as_ref())?;
                    }
                    next
                }
                (Some(st), None) => state::rewind_objects(target, st, &args.namespace)?,
                (None, _) => {
                    prepare_dir(target, args.remove_files)?;
                    0
                }
            };
            Output::Dir {
                target: target.clone(),
                limit_bytes: args.file_limit.max(1) << 20,
                next_index: AtomicU64::new(next),
            }
        }
        (None, Some(path)) => {
            let w: Box<dyn Write + Send> = if path == "-" {
                Box::new(BufWriter::with_capacity(1 << 20, io::stdout()))
            } else {
                let p = Path::new(path);
                if p.exists() && !args.remove_files {
                    return Err(format!("{path} exists; use --remove-files to replace it"));
                }
                Box::new(BufWriter::with_capacity(
                    1 << 20,
                    File::create(p).map_err(|e| format!("create {path}: {e}"))?,
                ))
            };
            let mut header = Vec::new();
            asb::encode_header(&mut header, &args.namespace, true);
            let w = FileWriter::new(w, &codec)
                .and_then(|mut w| w.write_all(&header).map(|()| w))
                .map_err(|e| format!("write {path}: {e}"))?;
            Output::Shared(Mutex::new(Some(w)))
        }
        (None, None) => return Err("give --directory or --output-file".into()),
    };

    let mut policy = QueryPolicy::new();
    policy.include_bin_data = !args.no_bins;
    if let Some(rps) = args.records_per_second {
        policy.records_per_second = (rps / u32::from(args.parallel).min(jobs.len() as u32)).max(1);
    }
    let lut_range = lut_filter(args.modified_after, args.modified_before);
    // Incremental directory backups of every bin take their deletions in the same scan as the
    // records, so each digest is seen once, at one moment: two passes would miss a record
    // deleted before the run and created again between them (docs/OPERATIONS.md, "What a chain
    // guarantees"). With a bin selection a live record may come back without bins, so those
    // keep the separate deletion pass.
    let one_pass = target.is_some() && lut_range.is_some() && !args.no_bins && args.bin_list.is_empty();
    policy.base_policy.filter_expression = match (&lut_range, one_pass) {
        (Some(range), true) => Some(one_pass_filter(range.clone())),
        _ => lut_range.clone(),
    };
    let bins = if args.no_bins {
        Bins::None
    } else if args.bin_list.is_empty() {
        Bins::All
    } else {
        Bins::Some(args.bin_list.clone())
    };

    // Directory backups keep a resume state (not with --max-records: a capped backup is a sample).
    let state = match (state_loc, args.max_records) {
        (Some((t, name)), None) => {
            let st = resumed.clone().unwrap_or(State {
                units: units.clone(),
                ..State::default()
            });
            st.save_to(&t, &name)?;
            Some(((t, name), Mutex::new((st, Instant::now()))))
        }
        _ => None,
    };
    let files_before = resumed.as_ref().map_or(0, |st| st.files.len() as u64);
    // The deletion pass covers whole partitions of the backup's units (a partial partition of a
    // resumed backup included: the pass is redone whole on every run).
    let all_units: Vec<Unit> = match (&resumed, &args.partition_list) {
        (Some(st), _) => st.units.clone(),
        _ => units.clone(),
    };

    let client = connect(&args.host, args.port).await?;
    let shared = Arc::new(Shared {
        client,
        codec,
        namespace: args.namespace.clone(),
        set: args.set.clone().unwrap_or_default(),
        bins,
        policy,
        form: if args.compact {
            BytesForm::Compact
        } else {
            BytesForm::Base64
        },
        output,
        max_records: args.max_records,
        taken: AtomicU64::new(0),
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        files: AtomicU64::new(files_before),
        failed: AtomicBool::new(false),
        one_pass_deletes: one_pass,
        deletes: AtomicU64::new(0),
        state,
    });

    // A progress bar on a terminal (against the namespace's object count when the server
    // reports one), plain lines every --progress-secs otherwise.
    let bar = if io::stderr().is_terminal() && args.progress_secs > 0 {
        let total = namespace_objects(&shared.client, &args.namespace).await;
        Some(progress_bar(total))
    } else {
        None
    };
    let progress = (args.progress_secs > 0).then(|| {
        let s = shared.clone();
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
                let recs = s.records.load(Ordering::Relaxed);
                let bytes = s.bytes.load(Ordering::Relaxed);
                let mib = bytes as f64 / (1024.0 * 1024.0);
                let rate = recs as f64 / secs.max(1e-9);
                match &bar {
                    Some(bar) => {
                        bar.set_position(recs);
                        bar.set_message(format!(
                            "{mib:.1} MiB, {rate:.0} records/s, {:.1} MiB/s",
                            mib / secs.max(1e-9)
                        ));
                    }
                    None => eprintln!("backup: {recs} records, {mib:.1} MiB, {secs:.0} s, {rate:.0} records/s"),
                }
            }
        })
    });

    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel as usize));
    let mut tasks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let shared = shared.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            if shared.failed.load(Ordering::Relaxed) {
                return Ok(0);
            }
            run_job(shared, job).await
        }));
    }
    let mut first_err = None;
    for t in tasks {
        let r = t.await.map_err(|e| format!("scan task: {e}")).and_then(|r| r);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(e) = first_err {
        // The state saved last stays valid when this save fails (e.g. the object store is
        // down): every save is consistent on its own, so a resume from it redoes more, loses
        // nothing.
        let saved = shared.save_state().err().map_or(String::new(), |save| {
            format!("\n{save} (the state saved before it stands)")
        });
        return Err(match &shared.state {
            Some(((t, name), _)) => format!("{e}{saved}\nresume with --continue {}", t.describe(name)),
            None => format!("{e}{saved}"),
        });
    }
    match &shared.output {
        Output::Dir { target, .. } => {
            // An empty backup is still a valid one: the first file with just the header.
            if shared.files.load(Ordering::Relaxed) == 0 {
                finish_file(shared.open_next_file(target)?)?;
            }
        }
        Output::Shared(out) => {
            let w = out
                .lock()
                .map_err(|_| "output lock poisoned".to_string())?
                .take()
                .ok_or_else(|| "output already finished".to_string())?;
            w.finish()
                .and_then(|mut w| w.flush())
                .map_err(|e| format!("finish output: {e}"))?;
        }
    }
    // Incremental: the deletions in the same LUT range, after the records (the state stays
    // until this pass is done, so a killed run redoes it on --continue).
    let deletes = match (&lut_range, &target) {
        _ if one_pass => Some(shared.deletes.load(Ordering::Relaxed)),
        (Some(range), Some(target)) => {
            Some(deletion_pass(&shared, &all_units, range.clone(), args.parallel as usize, target).await?)
        }
        (Some(_), None) => {
            eprintln!("note: deletions are captured only in directory mode (--directory); none recorded");
            None
        }
        _ => None,
    };
    if let Some(((t, name), _)) = &shared.state {
        t.remove(name)?;
    }
    let _ = shared.client.close().await;
    Ok(BackupSummary {
        records: shared.records.load(Ordering::Relaxed),
        deletes,
        bytes: shared.bytes.load(Ordering::Relaxed),
        files: shared.files.load(Ordering::Relaxed).max(1),
        elapsed: start.elapsed(),
    })
}

/// The namespace's record count as the servers report it (info `namespace/<ns>`:
/// `master_objects`, else `objects`, summed over the cluster's nodes); `None` when a node does
/// not answer or reports neither.
pub async fn namespace_objects(client: &Client, namespace: &str) -> Option<u64> {
    let cmd = format!("namespace/{namespace}");
    let mut total = 0u64;
    for node in client.nodes() {
        let info = node
            .info(&aerospike::AdminPolicy::default(), &[cmd.as_str()])
            .await
            .ok()?;
        let text = info.get(&cmd)?;
        let field = |name: &str| {
            text.split(';')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        total += field("master_objects").or_else(|| field("objects"))?;
    }
    Some(total)
}

/// The terminal progress bar: records against `total` (with rate and ETA) when known, a
/// spinner with the count otherwise.
fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let style = match total {
        Some(_) => indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records, {msg}, ETA {eta}",
        ),
        None => indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} records, {msg}"),
    }
    .expect("valid progress template");
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(style);
    bar
}

/// Records `--estimate` samples (asbackup samples 10 000).
pub const ESTIMATE_SAMPLE_RECORDS: u64 = 10_000;
/// Partitions per sampling scan.
const ESTIMATE_BLOCK_PARTITIONS: usize = 32;

/// What `--estimate` found.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// Estimated records and .asb bytes of the backup (text, before any compression).
    pub records: u64,
    pub bytes: u64,
    /// Records and bytes sampled, from this many of `partitions_in_scope` partitions.
    pub sampled_records: u64,
    pub sampled_bytes: u64,
    pub sampled_partitions: usize,
    pub partitions_in_scope: usize,
    /// With `--compress zstd`: the estimated stored bytes (the sample compressed in 1 MiB chunks,
    /// as the backup compresses, scaled the same way).
    pub compressed_bytes: Option<u64>,
    pub elapsed: Duration,
}

impl Estimate {
    /// The expected time of the backup at the sample's scan rate (T = D / B: the estimated
    /// bytes over the bytes per second the sampling scan, one query at a time, encoded); `None`
    /// when the sample saw nothing. Parallel scans and the target's write rate are not in it.
    pub fn expected_secs(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.sampled_bytes > 0 && secs > 0.0).then(|| self.bytes as f64 / (self.sampled_bytes as f64 / secs))
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "estimate: {} records, {} bytes ({:.1} MiB) of .asb text{}; sampled {} records ({} bytes) \
             from {} of {} partitions in {:.2} s; nothing written",
            self.records,
            self.bytes,
            self.bytes as f64 / (1024.0 * 1024.0),
            match self.compressed_bytes {
                Some(c) => format!(
                    ", {c} bytes ({:.1} MiB) with --compress zstd",
                    c as f64 / (1024.0 * 1024.0)
                ),
                None => String::new(),
            },
            self.sampled_records,
            self.sampled_bytes,
            self.sampled_partitions,
            self.partitions_in_scope,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(t) = self.expected_secs() {
            write!(f, "; expected time at the sample's scan rate (one scan): {t:.1} s")?;
        }
        Ok(())
    }
}

/// The sampling order of `--estimate`: the partitions of `pids` in blocks of up to
/// [`ESTIMATE_BLOCK_PARTITIONS`] contiguous ones, the blocks in a fixed order spread over the
/// whole range (a stride coprime to the block count), so a prefix is an even sample.
fn estimate_blocks(pids: &[usize]) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    for (begin, count) in partition_ranges(&pids.iter().map(|&p| Unit::Pid(p)).collect::<Vec<_>>()) {
        let mut b = begin;
        while b < begin + count {
            let c = ESTIMATE_BLOCK_PARTITIONS.min(begin + count - b);
            blocks.push((b, c));
            b += c;
        }
    }
    let n = blocks.len();
    let mut stride = (n * 5 / 8) | 1;
    while n > 1 && gcd(stride, n) != 1 {
        stride += 2;
    }
    (0..n).map(|i| blocks[i * stride % n.max(1)]).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `--estimate`: scans whole partitions, with the backup's set, bins and filters, until at
/// least [`ESTIMATE_SAMPLE_RECORDS`] records are seen (or every partition in scope is), encodes
/// them as the backup would, and scales records and bytes by the partitions in scope. Writes
/// nothing. `--partition-list` digests count as their whole partition.
///
/// # Errors
/// Connecting or a scan fails, or a record cannot be encoded.
pub async fn estimate(args: &BackupArgs) -> Result<Estimate, String> {
    let start = Instant::now();
    let pids: Vec<usize> = match &args.partition_list {
        None => (0..PARTITIONS).collect(),
        Some(list) => {
            let mut p: Vec<usize> = parse_partition_list(list)?
                .iter()
                .flat_map(Job::units)
                .map(|u| u.pid())
                .collect();
            p.sort_unstable();
            p.dedup();
            p
        }
    };
    let mut policy = QueryPolicy::new();
    policy.include_bin_data = !args.no_bins;
    policy.base_policy.filter_expression = lut_filter(args.modified_after, args.modified_before);
    let bins = if args.no_bins {
        Bins::None
    } else if args.bin_list.is_empty() {
        Bins::All
    } else {
        Bins::Some(args.bin_list.clone())
    };
    let form = if args.compact {
        BytesForm::Compact
    } else {
        BytesForm::Base64
    };
    let client = connect(&args.host, args.port).await?;
    let (mut records, mut bytes, mut partitions) = (0u64, 0u64, 0usize);
    let zstd = Codec::from_flags(args.compress.as_deref(), None, None)?.zstd;
    // The sample text, kept for compression (bounded: the sample stops near 10 000 records, and
    // text past this cap is not kept).
    const SAMPLE_TEXT_MAX_BYTES: usize = 64 << 20;
    let mut sample = Vec::new();
    let mut buf = Vec::new();
    for (begin, count) in estimate_blocks(&pids) {
        if records >= ESTIMATE_SAMPLE_RECORDS {
            break;
        }
        let stmt = Statement::new(
            args.namespace.clone(),
            args.set.clone().unwrap_or_default(),
            bins.clone(),
        );
        let rs = client
            .query(&policy, PartitionFilter::by_range(begin, count), stmt)
            .await
            .map_err(|e| format!("estimate scan of partitions {begin}-{}: {e}", begin + count - 1))?;
        let mut stream = rs.into_stream();
        while let Some(item) = stream.next().await {
            let rec = item.map_err(|e| format!("estimate scan of partitions {begin}-{}: {e}", begin + count - 1))?;
            let rec = convert::record_of(&args.namespace, &rec).map_err(|e| format!("estimate: {e}"))?;
            buf.clear();
            asb::encode_record(&mut buf, &rec, form);
            records += 1;
            bytes += buf.len() as u64;
            if zstd && sample.len() + buf.len() <= SAMPLE_TEXT_MAX_BYTES {
                sample.extend_from_slice(&buf);
            }
        }
        partitions += count;
    }
    let _ = client.close().await;
    let scale = |x: u64| (x as f64 * pids.len() as f64 / partitions.max(1) as f64).round() as u64;
    let mut header = Vec::new();
    asb::encode_header(&mut header, &args.namespace, true);
    let mut est_records = scale(records);
    if let Some(max) = args.max_records {
        est_records = est_records.min(max);
    }
    let per_record = if records == 0 {
        0.0
    } else {
        bytes as f64 / records as f64
    };
    let est_bytes = header.len() as u64 + (est_records as f64 * per_record).round() as u64;
    let compressed_bytes = if zstd {
        let mut packed = 0usize;
        for chunk in sample.chunks(crate::frame::CHUNK_PLAIN_BYTES) {
            packed += zstd::bulk::compress(chunk, crate::frame::ZSTD_LEVEL)
                .map_err(|e| format!("estimate: zstd: {e}"))?
                .len();
        }
        let ratio = if sample.is_empty() {
            1.0
        } else {
            packed as f64 / sample.len() as f64
        };
        Some((est_bytes as f64 * ratio).round() as u64)
    } else {
        None
    };
    Ok(Estimate {
        records: est_records,
        bytes: est_bytes,
        compressed_bytes,
        sampled_records: records,
        sampled_bytes: bytes,
        sampled_partitions: partitions,
        partitions_in_scope: pids.len(),
        elapsed: start.elapsed(),
    })
}

/// The last-update-time filter of `--modified-after` / `--modified-before` (Unix seconds; the
/// expression compares nanoseconds since the Unix epoch, wire spec §3.3 field 43).
pub fn lut_filter(after: Option<i64>, before: Option<i64>) -> Option<Expression> {
    let lut_ns = |secs: i64| int_val(secs.saturating_mul(1_000_000_000));
    match (after, before) {
        (Some(a), Some(b)) => Some(and(vec![ge(last_update(), lut_ns(a)), lt(last_update(), lut_ns(b))])),
        (Some(a), None) => Some(ge(last_update(), lut_ns(a))),
        (None, Some(b)) => Some(lt(last_update(), lut_ns(b))),
        (None, None) => None,
    }
}

/// The filter of a one-pass incremental: `and(<LUT range>, or(is_tombstone(), not(is_tombstone())))`,
/// live records and tombstones (a Bolide node visits tombstones when a filter mentions
/// `is_tombstone`, `docs/ARCHITECTURE.md`, "Tombstone scans"; Aerospike returns the live records
/// only) last updated in the range.
pub fn one_pass_filter(lut_range: Expression) -> Expression {
    and(vec![lut_range, or(vec![is_tombstone(), not(is_tombstone())])])
}

/// Whole-partition scan filters covering `units`: contiguous partitions coalesced into ranges.
fn partition_ranges(units: &[Unit]) -> Vec<(usize, usize)> {
    let mut pids: Vec<usize> = units.iter().map(Unit::pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for p in pids {
        match out.last_mut() {
            Some((b, c)) if *b + *c == p => *c += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// The deletion pass of an incremental directory backup: scans `units`' partitions with
/// `and(is_tombstone(), lut_range)` and writes every zero-bin record returned (a deletion, see
/// `docs/ARCHITECTURE.md`, "Tombstone scans") to `<dir>/deletes.asbd`, replacing any such file.
/// Against a real Aerospike server the scan returns nothing and the file holds only its header.
/// Returns the number of deletions written.
///
/// # Errors
/// A scan or write failure, naming the partitions or the file.
async fn deletion_pass(
    shared: &Arc<Shared>,
    units: &[Unit],
    lut_range: Expression,
    parallel: usize,
    target: &Target,
) -> Result<u64, String> {
    let path = target.describe(DELETES_FILE);
    let mut policy = shared.policy.clone();
    policy.include_bin_data = false;
    policy.base_policy.filter_expression = Some(and(vec![is_tombstone(), lut_range]));
    target.remove(DELETES_FILE)?;
    let sink = target.create(DELETES_FILE)?;
    let mut header = Vec::new();
    asb::encode_header(&mut header, &shared.namespace, false);
    let writer = FileWriter::new(sink, &shared.codec)
        .and_then(|mut w| w.write_all(&header).map(|()| w))
        .map_err(|e| format!("write {path}: {e}"))?;
    let out = Arc::new(Mutex::new(writer));
    let ranges = partition_ranges(units);
    let groups = split_units(ranges, parallel);
    let mut tasks = Vec::new();
    for group in groups {
        let (shared, out, policy, path) = (shared.clone(), out.clone(), policy.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            for (begin, count) in group {
                let stmt = Statement::new(shared.namespace.clone(), shared.set.clone(), Bins::None);
                let rs = shared
                    .client
                    .query(&policy, PartitionFilter::by_range(begin, count), stmt)
                    .await
                    .map_err(|e| format!("deletion scan of partitions {begin}-{}: {e}", begin + count - 1))?;
                let mut stream = rs.into_stream();
                let mut chunk = Vec::new();
                while let Some(item) = stream.next().await {
                    let rec =
                        item.map_err(|e| format!("deletion scan of partitions {begin}-{}: {e}", begin + count - 1))?;
                    // Only a zero-bin record is a deletion (a live record always has bins).
                    if !rec.bins.is_empty() {
                        continue;
                    }
                    let rec = convert::record_of(&shared.namespace, &rec).map_err(|e| format!("deletion: {e}"))?;
                    asb::encode_record(&mut chunk, &rec, BytesForm::Base64);
                    n += 1;
                    if chunk.len() >= CHUNK_BYTES {
                        out.lock()
                            .map_err(|_| "output lock poisoned".to_string())?
                            .write_all(&chunk)
                            .map_err(|e| format!("write {path}: {e}"))?;
                        chunk.clear();
                    }
                }
                out.lock()
                    .map_err(|_| "output lock poisoned".to_string())?
                    .write_all(&chunk)
                    .map_err(|e| format!("write {path}: {e}"))?;
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut total = 0;
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| format!("deletion scan task: {e}")).and_then(|r| r) {
            Ok(n) => total += n,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let writer = Arc::try_unwrap(out)
        .map_err(|_| "deletion writer still shared".to_string())?
        .into_inner()
        .map_err(|_| "output lock poisoned".to_string())?;
    writer
        .finish()
        .and_then(Sink::close)
        .map_err(|e| format!("write {path}: {e}"))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01_00:00:00"), Ok(0));
        assert_eq!(parse_timestamp("2010-01-01"), Ok(1_262_304_000));
        assert_eq!(parse_timestamp("2024-02-29_12:34:56"), Ok(1_709_210_096));
        assert!(parse_timestamp("2024-13-01").is_err());
        assert!(parse_timestamp("yesterday").is_err());
        let t = parse_timestamp("00:00:01").unwrap();
        assert_eq!(t % 86_400, 1);
    }

    #[test]
    fn partition_lists() {
        assert_eq!(
            parse_partition_list("0-1000,2222").unwrap(),
            vec![
                Job::Range { begin: 0, count: 1000 },
                Job::Range { begin: 2222, count: 1 }
            ]
        );
        let d = parse_partition_list("EjRWeJq83vEjRRI0VniavN7xI0U=").unwrap();
        assert!(matches!(d[0], Job::AfterDigest(_)));
        assert!(parse_partition_list("4095-2").is_err());
        assert!(parse_partition_list("x").is_err());
    }

    #[test]
    fn scans_coalesce_contiguous_partitions() {
        let d = [7u8; 20];
        let units = vec![
            Unit::After(3, d),
            Unit::Pid(4),
            Unit::Pid(5),
            Unit::Pid(6),
            Unit::Pid(9),
            Unit::After(10, d),
            Unit::Pid(11),
        ];
        assert_eq!(
            scans_of(&units),
            vec![
                Scan::After(3, d),
                Scan::Range(4, 3),
                Scan::Range(9, 1),
                Scan::After(10, d),
                Scan::Range(11, 1)
            ]
        );
        let all: Vec<Unit> = (0..PARTITIONS).map(Unit::Pid).collect();
        assert_eq!(scans_of(&all), vec![Scan::Range(0, PARTITIONS)]);
    }

    #[test]
    fn estimate_blocks_cover_the_scope_once_spread_out() {
        for pids in [
            (0..PARTITIONS).collect::<Vec<_>>(),
            (100..300).chain(4000..4096).collect(),
        ] {
            let blocks = estimate_blocks(&pids);
            let mut seen: Vec<usize> = blocks.iter().flat_map(|&(b, c)| b..b + c).collect();
            seen.sort_unstable();
            assert_eq!(seen, pids);
            assert!(blocks.iter().all(|&(_, c)| c <= ESTIMATE_BLOCK_PARTITIONS));
        }
        // The first blocks of the full range are far apart.
        let blocks = estimate_blocks(&(0..PARTITIONS).collect::<Vec<_>>());
        assert!(blocks[0].0.abs_diff(blocks[1].0) >= 512, "{:?}", &blocks[..3]);
    }

    #[test]
    fn ranges_split_disjoint_and_cover() {
        for parts in [1, 3, 7, 4096, 5000] {
            let jobs = split_range(0, PARTITIONS, parts);
            let mut next = 0;
            for j in &jobs {
                let Job::Range { begin, count } = *j else { panic!() };
                assert_eq!(begin, next);
                assert!(count > 0);
                next = begin + count;
            }
            assert_eq!(next, PARTITIONS);
        }
    }
}
