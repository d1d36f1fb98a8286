//! The owner side of a partition scan (wire spec §7.3): one [`ScanTask`] per scan and worker
//! walks that worker's share of the requested partitions in request order, each in digest order
//! and strictly after its resume digest, and turns live records into record messages.
//!
//! Reads go through the shard like any other read (RAM write buffers and the post-write cache
//! first, then the device), with up to [`SCAN_WINDOW`] in flight; completions may arrive in any
//! order, but records leave in index order so that a client that pages with `max_records` can
//! resume strictly after the last digest it saw per partition.
//!
//! The coordinator (the worker that holds the client connection) grants one chunk of credit at a
//! time: the task fills at most [`CHUNK_BYTES`] (plus one record) of messages, sends them, and
//! waits for the next credit, so a slow client holds back the scan instead of filling memory.
//!
//! **Tombstones (a Bolide extension).** When the scan's filter expression references
//! `is_tombstone` (op 72, [`exp::Expr::mentions_tombstone`]) the task also visits tombstone index
//! entries (not expired ones, not ones a truncate covers) and evaluates the filter on their
//! metadata alone (`is_tombstone` true; digest, LUT, generation from the entry; set name and bins
//! unknown, so a filter that needs them is false). A passing tombstone leaves as a record message
//! with its generation and digest and **zero bins**: no device read. Aerospike never returns
//! tombstones from a scan, and a record without bins cannot exist there, so a client can tell a
//! deletion apart. The set of a tombstone is not in the index entry: a set-scoped scan returns the
//! passing tombstones of every set, without a SET field. Without an `is_tombstone` reference
//! nothing changes. See `docs/ARCHITECTURE.md`, "Scans".

use super::cmd::{Slab, Token, TokenKind};
use super::codec::ScanSpec;
use crate::clock::Clock;
use crate::digest::Digest;
use crate::index::IndexEntry;
use crate::proto::exp::{self, RecordView, Trilean};
use crate::proto::result_code as rc;
use crate::proto::scan::ScanPartition;
use crate::record::Record;
use crate::shard::{is_expired, ReadAck, ReadError, Shard};
use crate::truncate::TruncateTable;
use bolide_drivers::net::ConnId;
use bolide_drivers::BlockDevice;
use std::collections::VecDeque;
use std::sync::Arc;

/// Record reads a task keeps in flight.
pub const SCAN_WINDOW: usize = 32;
/// A task sends its messages once they reach this many bytes (or it is finished).
pub const CHUNK_BYTES: usize = 64 * 1024;

enum Slot {
    /// The device read with this token is in flight.
    Waiting(u64),
    /// Read (or found gone: `None`).
    Ready(Option<Record>),
    /// A tombstone that passed the filter (tombstone scans only): sent as a zero-bin record.
    Tombstone(IndexEntry),
}

impl Slot {
    fn is_ready(&self) -> bool {
        !matches!(self, Slot::Waiting(_))
    }
}

/// What [`ScanTask::fill`] found in the index: a record to read, or a tombstone to send.
enum Next {
    Read(Digest),
    Tombstone(IndexEntry),
}

impl Next {
    fn digest(&self) -> Digest {
        match self {
            Next::Read(d) => *d,
            Next::Tombstone(e) => e.digest(),
        }
    }
}

/// One worker's part of one scan.
pub struct ScanTask {
    /// The worker that holds the client connection, the connection, and the scan's id there.
    pub coord: usize,
    pub conn: ConnId,
    pub scan_id: u64,
    spec: Arc<ScanSpec>,
    parts: Vec<ScanPartition>,
    /// The partition reads are being issued for, and the digest issued last in it.
    issue_part: usize,
    issue_after: Option<Digest>,
    window: VecDeque<Slot>,
    /// Messages not yet sent, and the end offset of each record message in it.
    pub chunk: Vec<u8>,
    pub ends: Vec<u32>,
    /// Records put into chunks so far.
    produced: u64,
    /// The coordinator will take one more chunk.
    pub credit: bool,
    /// Records per chunk for a rate-limited scan (`u64::MAX`: only [`CHUNK_BYTES`] bounds it).
    pub budget: u64,
    /// A result code that ends the scan (a record that could not be read).
    pub error: u8,
    /// The filter references `is_tombstone`: tombstones are visited too.
    tombstones: bool,
}

/// An index entry as a filter expression sees it before the record is read: metadata known,
/// set name and bins unknown (wire spec §7.3; the server's `as_exp_matches_metadata`).
struct EntryView {
    digest: [u8; 20],
    entry: IndexEntry,
}

impl RecordView for EntryView {
    fn digest(&self) -> &[u8; 20] {
        &self.digest
    }
    fn last_update_cl_ms(&self) -> u64 {
        self.entry.lut_ms()
    }
    fn void_time_cl_s(&self) -> u32 {
        self.entry.void_time()
    }
    fn record_size_bytes(&self) -> u64 {
        self.entry.size_bytes() as u64
    }
    fn set_name(&self) -> Option<&[u8]> {
        None
    }
    fn key_stored(&self) -> Option<bool> {
        None
    }
    fn is_tombstone(&self) -> bool {
        self.entry.is_tombstone()
    }
    fn bins_loaded(&self) -> bool {
        false
    }
    fn bin(&self, _name: &[u8]) -> Option<&crate::particle::Value> {
        None
    }
}

impl ScanTask {
    pub fn new(coord: usize, conn: ConnId, scan_id: u64, spec: Arc<ScanSpec>, parts: Vec<ScanPartition>) -> ScanTask {
        let issue_after = parts.first().and_then(|p| p.after);
        let tombstones = spec.filter.as_ref().is_some_and(exp::Expr::mentions_tombstone);
        ScanTask {
            coord,
            conn,
            scan_id,
            spec,
            parts,
            issue_part: 0,
            issue_after,
            window: VecDeque::with_capacity(SCAN_WINDOW),
            chunk: Vec::new(),
            ends: Vec::new(),
            produced: 0,
            credit: true,
            budget: u64::MAX,
            error: 0,
            tombstones,
        }
    }

    fn capped(&self) -> bool {
        self.spec.max_records > 0 && self.produced + self.window.len() as u64 >= self.spec.max_records
    }

    /// Every read has been issued and emitted, the cap is reached, or the scan failed.
    pub fn finished(&self) -> bool {
        self.error != 0 || (self.window.is_empty() && (self.issue_part >= self.parts.len() || self.capped()))
    }

    /// Whether a turn would make progress without waiting for a device completion.
    pub fn runnable(&self) -> bool {
        if !self.credit {
            return false;
        }
        let can_issue = self.error == 0 && self.issue_part < self.parts.len() && !self.capped();
        self.chunk_due()
            || self.window.front().is_some_and(Slot::is_ready)
            || (can_issue && self.window.len() < SCAN_WINDOW)
    }

    /// Whether the next chunk is due: full, or the task is finished.
    pub fn chunk_due(&self) -> bool {
        self.chunk.len() >= CHUNK_BYTES || self.ends.len() as u64 >= self.budget || self.finished()
    }

    /// Issues reads for the next live index entries until the window is full. Returns whether
    /// anything was issued. A device read's token is an entry of `reads` naming this task by
    /// `key` (the reactor finds the task again when the read completes).
    pub fn fill<D: BlockDevice, C: Clock>(
        &mut self,
        shard: &mut Shard<D, C>,
        truncate: &TruncateTable,
        reads: &mut Slab<(usize, u64)>,
        key: (usize, u64),
    ) -> bool {
        let now_s = shard.clock().now_cl_s();
        let now_ms = shard.clock().now_cl_ms();
        let mut issued = false;
        let mut batch: Vec<Next> = Vec::with_capacity(SCAN_WINDOW);
        while self.error == 0 && self.window.len() < SCAN_WINDOW && !self.capped() {
            let Some(part) = self.parts.get(self.issue_part) else {
                break;
            };
            // The next entries of this partition that may be live and pass the metadata filter.
            batch.clear();
            let start_after = self.issue_after;
            let want = SCAN_WINDOW - self.window.len();
            let mut exhausted = true;
            for e in shard.index().iter_partition_after(part.pid, self.issue_after.as_ref()) {
                if batch.len() == want {
                    exhausted = false;
                    break;
                }
                let digest = e.digest();
                self.issue_after = Some(digest);
                if (e.is_tombstone() && !self.tombstones)
                    || is_expired(e, now_s)
                    || truncate.covers_namespace(e.lut_ms())
                {
                    continue;
                }
                if let Some(f) = &self.spec.filter {
                    let view = EntryView {
                        digest: digest.0,
                        entry: *e,
                    };
                    match exp::eval_trilean(f, &view, now_ms) {
                        Trilean::False => continue,
                        // A tombstone has only its metadata: unknown is false.
                        Trilean::Unknown if e.is_tombstone() => continue,
                        _ => {}
                    }
                }
                batch.push(if e.is_tombstone() {
                    Next::Tombstone(*e)
                } else {
                    Next::Read(digest)
                });
            }
            for (i, next) in batch.iter().enumerate() {
                let d = match next {
                    Next::Read(d) => d,
                    Next::Tombstone(e) => {
                        self.window.push_back(Slot::Tombstone(*e));
                        issued = true;
                        continue;
                    }
                };
                let slot = reads.insert(key);
                let token = Token::new(TokenKind::Scan, slot).0;
                let got = shard.get(d, token);
                if !matches!(got, Ok(ReadAck::Pending)) {
                    reads.remove(slot);
                }
                match got {
                    Ok(ReadAck::Done(rec)) => self.window.push_back(Slot::Ready(Some(rec))),
                    Ok(ReadAck::Pending) => self.window.push_back(Slot::Waiting(token)),
                    Err(ReadError::NotFound) => {}
                    Err(ReadError::Overload) => {
                        // Try this digest again on a later turn: resume just before it.
                        self.issue_after = if i == 0 {
                            start_after
                        } else {
                            Some(batch[i - 1].digest())
                        };
                        return issued;
                    }
                    Err(e) => {
                        tracing::warn!(digest = ?d, "scan: record could not be read: {e}");
                        self.error = rc::SERVER_ERROR;
                        return true;
                    }
                }
                issued = true;
            }
            if exhausted {
                self.issue_part += 1;
                self.issue_after = self.parts.get(self.issue_part).and_then(|p| p.after);
            }
        }
        issued
    }

    /// A device read of this task completed.
    pub fn complete(&mut self, token: u64, result: Result<Record, ReadError>) {
        let Some(slot) = self
            .window
            .iter_mut()
            .find(|s| matches!(s, Slot::Waiting(t) if *t == token))
        else {
            return;
        };
        match result {
            Ok(rec) => *slot = Slot::Ready(Some(rec)),
            Err(ReadError::NotFound) => *slot = Slot::Ready(None),
            Err(e) => {
                tracing::warn!("scan: record could not be read: {e}");
                self.error = rc::SERVER_ERROR;
                *slot = Slot::Ready(None);
            }
        }
    }

    /// Moves the records at the head of the window that are read into the chunk, in order.
    /// Returns whether anything left the window.
    pub fn emit(&mut self, truncate: &TruncateTable, now_ms: u64) -> bool {
        let mut moved = false;
        while self.window.front().is_some_and(Slot::is_ready) {
            let rec = match self.window.pop_front() {
                Some(Slot::Ready(rec)) => rec,
                Some(Slot::Tombstone(e)) => {
                    moved = true;
                    if self.spec.max_records > 0 && self.produced >= self.spec.max_records {
                        continue;
                    }
                    self.write_tombstone(&e);
                    continue;
                }
                _ => unreachable!("front slot is ready"),
            };
            moved = true;
            let Some(rec) = rec else { continue };
            if self.spec.max_records > 0 && self.produced >= self.spec.max_records {
                continue;
            }
            if !self.spec.set.is_empty() && rec.set_name != self.spec.set {
                continue;
            }
            if truncate.covers(rec.meta.lut_ms, &rec.set_name) {
                continue;
            }
            if let Some(f) = &self.spec.filter {
                let size = crate::record::padded(crate::record::encoded_len(&rec)) as u64;
                if !exp::eval(f, &super::codec::StoredView { rec: &rec, size }, now_ms) {
                    continue;
                }
            }
            if super::codec::write_scan_record(&mut self.chunk, &self.spec, &rec) {
                self.ends
                    .push(u32::try_from(self.chunk.len()).expect("chunk under 4 GiB"));
                self.produced += 1;
            }
        }
        moved
    }

    /// Appends a tombstone's record message: generation, void time and digest from the index
    /// entry, no set (not in the index), no key, zero bins.
    fn write_tombstone(&mut self, e: &IndexEntry) {
        let digest = e.digest();
        let meta = crate::proto::scan::ScanRecord {
            namespace: &self.spec.namespace,
            set: &[],
            digest: &digest,
            key: None,
            generation: u32::from(e.generation()),
            void_time: e.void_time(),
        };
        crate::proto::scan::write_record_header(&mut self.chunk, &meta, 0, self.spec.no_bin_data);
        self.ends
            .push(u32::try_from(self.chunk.len()).expect("chunk under 4 GiB"));
        self.produced += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::StorageConfig;
    use crate::digest::PartitionId;
    use crate::particle::{Bin, BinName, Value};
    use crate::proto::msg::{field_type, Msg};
    use crate::shard::{Event, PutRecord, Region};
    use bolide_drivers::sim::{SimConfig, SimDevice};
    use std::collections::BTreeSet;

    type SimShard = Shard<SimDevice, ManualClock>;

    const NOW_CL_MS: u64 = 532_915_200_000;

    fn digest_of(k: u32) -> Digest {
        Digest::compute(b"", 1, &i64::from(k).to_be_bytes())
    }

    /// A shard whose write cache holds little, so most scan reads go to the (slow) device.
    fn shard_with(n: u32, seed: u64) -> (SimShard, ManualClock) {
        let clock = ManualClock::new(NOW_CL_MS);
        let mut dev = SimConfig::new("sim0", 64 << 20, seed);
        dev.latency_polls_max = 6;
        let cfg = StorageConfig {
            wblock_size_bytes: 128 << 10,
            post_write_cache_wblocks: 0,
            max_write_cache_wblocks: 4,
            max_record_bytes: 64 << 10,
            ..StorageConfig::default()
        };
        let region = Region {
            offset_bytes: 0,
            len_bytes: 64 << 20,
        };
        let (mut shard, _) = Shard::open(SimDevice::new(dev), clock.clone(), cfg, 0, region).expect("opens");
        for k in 0..n {
            let set = if k % 3 == 0 { b"odd".to_vec() } else { Vec::new() };
            let rec = PutRecord {
                digest: if set.is_empty() {
                    digest_of(k)
                } else {
                    Digest::compute(&set, 1, &i64::from(k).to_be_bytes())
                },
                set_name: set,
                key: None,
                bins: vec![
                    Bin {
                        name: BinName::new(b"k").unwrap(),
                        value: Value::Int(i64::from(k)),
                    },
                    Bin {
                        name: BinName::new(b"pad").unwrap(),
                        value: Value::Str(vec![b'x'; 300]),
                    },
                ],
                // Every 7th record has expired by the time of the scan.
                void_time: if k % 7 == 0 { 532_915_201 } else { 0 },
            };
            shard.put_blocking(rec).expect("put");
        }
        // Every 5th (of the set-less ones) is deleted.
        for k in (0..n).filter(|k| k % 5 == 0 && k % 3 != 0) {
            shard.delete_blocking(&digest_of(k)).expect("delete");
        }
        shard.flush_blocking().expect("flush");
        clock.advance_ms(10_000);
        (shard, clock)
    }

    fn spec(set: &[u8], max_records: u64) -> Arc<ScanSpec> {
        Arc::new(ScanSpec {
            namespace: b"test".to_vec(),
            set: set.to_vec(),
            bins: None,
            no_bin_data: false,
            filter: None,
            max_records,
            records_per_second: 0,
        })
    }

    /// Runs a task to the end as the worker would, taking every chunk; returns the digests of
    /// the record messages in the order they were produced.
    fn run(shard: &mut SimShard, task: ScanTask) -> (Vec<Digest>, u8) {
        let (msgs, err) = run_msgs(shard, task);
        (msgs.into_iter().map(|(d, _, _)| d).collect(), err)
    }

    /// As [`run`], with each record message's `n_ops` and generation.
    fn run_msgs(shard: &mut SimShard, mut task: ScanTask) -> (Vec<(Digest, u16, u32)>, u8) {
        let mut out = Vec::new();
        let mut reads: Slab<(usize, u64)> = Slab::default();
        let mut events: Vec<Event> = Vec::new();
        let mut turns = 0;
        loop {
            turns += 1;
            assert!(turns < 100_000, "scan does not finish");
            let now = shard.clock().now_cl_ms();
            loop {
                let emitted = task.emit(&TruncateTable::default(), now);
                if task.chunk_due() {
                    break;
                }
                if !task.fill(shard, &TruncateTable::default(), &mut reads, (0, 1)) && !emitted {
                    break;
                }
            }
            if task.chunk_due() {
                let mut start = 0;
                for &end in &task.ends {
                    let msg = Msg::parse(&task.chunk[start..end as usize]).expect("record message");
                    assert_eq!(msg.field(field_type::NAMESPACE), Some(&b"test"[..]));
                    out.push((
                        msg.digest().expect("digest field"),
                        msg.header.n_ops,
                        msg.header.generation,
                    ));
                    start = end as usize;
                }
                assert_eq!(start, task.chunk.len(), "chunk holds only whole record messages");
                task.chunk.clear();
                task.ends.clear();
                if task.finished() {
                    return (out, task.error);
                }
            }
            shard.poll(&mut events);
            for ev in events.drain(..) {
                if let Event::ReadDone { token, result } = ev {
                    task.complete(token, result);
                }
            }
        }
    }

    /// What a scan of `parts` must return: live records of `set` (all when empty), partition
    /// by partition in the given order, digest order within each, after each resume digest.
    fn expected(shard: &SimShard, parts: &[ScanPartition], set: &[u8]) -> Vec<Digest> {
        let now_s = shard.clock().now_cl_s();
        let mut v = Vec::new();
        for p in parts {
            for e in shard.index().iter_partition_after(p.pid, p.after.as_ref()) {
                if e.is_tombstone() || is_expired(e, now_s) {
                    continue;
                }
                let d = e.digest();
                if !set.is_empty() {
                    let odd = (0..2000).any(|k| Digest::compute(b"odd", 1, &i64::from(k).to_be_bytes()) == d);
                    if !odd {
                        continue;
                    }
                }
                v.push(d);
            }
        }
        v
    }

    fn all_parts() -> Vec<ScanPartition> {
        (0..4096)
            .rev() // request order is kept, whatever it is
            .map(|p| ScanPartition {
                pid: PartitionId(p),
                after: None,
            })
            .collect()
    }

    #[test]
    fn scan_returns_live_records_in_partition_then_digest_order() {
        let (mut shard, _clock) = shard_with(2000, 7);
        let parts = all_parts();
        let want = expected(&shard, &parts, b"");
        assert!(want.len() > 1000, "the fixture leaves most records live");
        let (got, err) = run(&mut shard, ScanTask::new(0, ConnId::new(1, 0), 1, spec(b"", 0), parts));
        assert_eq!(err, 0);
        assert_eq!(got, want);
        assert!(shard.stats().reads_device > 0, "reads went to the device");
    }

    #[test]
    fn scan_of_a_set_and_resume_after_a_digest() {
        let (mut shard, _clock) = shard_with(2000, 8);
        let all = all_parts();
        let want = expected(&shard, &all, b"odd");
        let (got, _) = run(&mut shard, ScanTask::new(0, ConnId::new(1, 0), 1, spec(b"odd", 0), all.clone()));
        assert_eq!(got, want);
        assert!(!got.is_empty());
        // Resume: a partition scanned from after its k-th digest returns exactly the rest.
        let pid = got[got.len() / 2].partition_id();
        let in_pid: Vec<Digest> = expected(&shard, &[ScanPartition { pid, after: None }], b"");
        let mid = in_pid[in_pid.len() / 2];
        let part = ScanPartition { pid, after: Some(mid) };
        let (rest, _) = run(&mut shard, ScanTask::new(0, ConnId::new(1, 0), 2, spec(b"", 0), vec![part]));
        assert_eq!(rest, in_pid[in_pid.len() / 2 + 1..]);
    }

    #[test]
    fn max_records_gives_a_prefix_and_pages_cover_everything_once() {
        let (mut shard, _clock) = shard_with(1500, 9);
        let parts = all_parts();
        let want = expected(&shard, &parts, b"");
        // Page the way the clients do: resume every partition after its last digest seen.
        let mut seen = BTreeSet::new();
        let mut last: std::collections::HashMap<u16, Digest> = std::collections::HashMap::new();
        let mut pages = 0;
        loop {
            let page_parts: Vec<ScanPartition> = parts
                .iter()
                .map(|p| ScanPartition {
                    pid: p.pid,
                    after: last.get(&p.pid.0).copied(),
                })
                .collect();
            let (got, _) = run(&mut shard, ScanTask::new(0, ConnId::new(1, 0), pages, spec(b"", 100), page_parts));
            pages += 1;
            assert!(got.len() <= 100);
            for d in &got {
                assert!(seen.insert(d.0), "record returned twice");
                last.insert(d.partition_id().0, *d);
            }
            if got.len() < 100 {
                break;
            }
            if pages == 1 {
                assert_eq!(got, want[..100], "a capped page is a prefix of the full scan");
            }
        }
        assert_eq!(seen.len(), want.len());
        assert!(pages > 5);
    }

    fn spec_with_filter(filter: &[u8]) -> Arc<ScanSpec> {
        Arc::new(ScanSpec {
            namespace: b"test".to_vec(),
            set: Vec::new(),
            bins: None,
            no_bin_data: false,
            filter: Some(exp::compile(filter).expect("filter compiles")),
            max_records: 0,
            records_per_second: 0,
        })
    }

    /// Index entries of `parts` in scan order that `keep` accepts (expired ones never).
    fn entries_where(shard: &SimShard, parts: &[ScanPartition], keep: impl Fn(&IndexEntry) -> bool) -> Vec<IndexEntry> {
        let now_s = shard.clock().now_cl_s();
        let mut v = Vec::new();
        for p in parts {
            for e in shard.index().iter_partition_after(p.pid, p.after.as_ref()) {
                if !is_expired(e, now_s) && keep(e) {
                    v.push(*e);
                }
            }
        }
        v
    }

    // is_tombstone()                          91 48
    const IS_TOMBSTONE: &[u8] = &[0x91, 0x48];
    // or(is_tombstone(), not(is_tombstone())) 93 11 91 48 92 12 91 48
    const EITHER: &[u8] = &[0x93, 0x11, 0x91, 0x48, 0x92, 0x12, 0x91, 0x48];
    // ge(last_update(), 0)                    93 04 91 42 00
    const LUT_GE_0: &[u8] = &[0x93, 0x04, 0x91, 0x42, 0x00];

    #[test]
    fn an_is_tombstone_filter_returns_deletions_as_zero_bin_records() {
        let (mut shard, _clock) = shard_with(2000, 10);
        let parts = all_parts();
        let tombs = entries_where(&shard, &parts, IndexEntry::is_tombstone);
        assert!(tombs.len() > 100, "the fixture deletes every 5th set-less record");
        let reads_before = shard.stats().reads_device;
        let (got, err) = run_msgs(
            &mut shard,
            ScanTask::new(0, ConnId::new(1, 0), 1, spec_with_filter(IS_TOMBSTONE), parts.clone()),
        );
        assert_eq!(err, 0);
        let want: Vec<(Digest, u16, u32)> = tombs
            .iter()
            .map(|e| (e.digest(), 0, u32::from(e.generation())))
            .collect();
        assert_eq!(got, want, "every held tombstone, zero bins, its generation");
        assert_eq!(
            shard.stats().reads_device,
            reads_before,
            "tombstones need no device read"
        );
        // Deleted after one write: the tombstone's generation is 2.
        assert!(got.iter().all(|&(_, _, g)| g == 2));

        // Live records and tombstones together, in digest order within each partition.
        let both = entries_where(&shard, &parts, |_| true);
        let (got, _) = run_msgs(&mut shard, ScanTask::new(0, ConnId::new(1, 0), 2, spec_with_filter(EITHER), parts));
        assert_eq!(got.len(), both.len());
        for ((d, n_ops, _), e) in got.iter().zip(&both) {
            assert_eq!(*d, e.digest());
            assert_eq!(*n_ops == 0, e.is_tombstone(), "live records carry their two bins");
        }
    }

    #[test]
    fn without_an_is_tombstone_reference_tombstones_stay_hidden() {
        let (mut shard, _clock) = shard_with(2000, 11);
        let parts = all_parts();
        let tombs: BTreeSet<Digest> = entries_where(&shard, &parts, IndexEntry::is_tombstone)
            .iter()
            .map(IndexEntry::digest)
            .collect();
        assert!(!tombs.is_empty());
        let want = expected(&shard, &parts, b"");
        let (got, err) = run_msgs(&mut shard, ScanTask::new(0, ConnId::new(1, 0), 1, spec_with_filter(LUT_GE_0), parts));
        assert_eq!(err, 0);
        assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|&(d, n_ops, _)| n_ops == 2 && !tombs.contains(&d)));
    }
}
