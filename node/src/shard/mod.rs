//! One core's shard of the storage engine: a log-structured record store over one device region.
//!
//! Shape (`DESIGN.md`, "Storage is log-structured, Aerospike style"):
//!
//! * Client writes are appended to the open *client write buffer*, a RAM copy of one wblock. The
//!   RAM primary index points at the newest copy of every record. A full buffer is sealed and
//!   written to the device; a partial one is written (its dirty sectors only) when its oldest
//!   unflushed write is `flush_max_ms` old, or at once with `commit_to_device`.
//! * Group commit: each wblock has at most one device write in flight. With `commit_to_device` a
//!   write is acknowledged when a device write covering its bytes completes; every write that
//!   arrived while the previous one was in flight is covered by the next one.
//! * Defrag reads sealed wblocks whose live bytes fell under `defrag_lwm_pct`, moves their live
//!   records (raw bytes, so checksums travel with them) into a separate *defrag write buffer*,
//!   and frees the wblock once the moved bytes are durable: its header sector is zeroed
//!   ("erased") before it is reused.
//! * Deletes write a tombstone. A tombstone (or an expired record) is kept, and moved by defrag,
//!   until no wblock that could hold an older copy of its record remains on the device: every
//!   wblock that could hold an older copy has a sequence number ≤ the tombstone's origin
//!   sequence (see [`crate::record`]).
//! * Reads are served from the write buffers and the post-write cache when the record is there,
//!   else from the device; every read verifies the record's checksums.
//! * [`Shard::open`] formats a blank region, loads the index image a clean shutdown left, or
//!   cold-starts by scanning every wblock. [`Shard::shutdown`] persists the index.
//!
//! The shard never blocks except in `open`, `shutdown`, [`Shard::wait`] and the `*_blocking`
//! helpers (for tools and tests). The poll loop calls [`Shard::poll`] every turn.

mod defrag;
mod recovery;
pub mod region;
mod truncate;

use crate::clock::Clock;
use crate::config::{ConfigError, StorageConfig};
use crate::digest::Digest;
use crate::index::{IndexEntry, PrimaryIndex};
use crate::particle::{Bin, Value};
use crate::record::{self, Record, RecordMeta, StoredKey, WblockHeader, RECORD_MAX_BINS, WBLOCK_HEADER_BYTES};
use bolide_drivers::{BlockDevice, BufPool, Completion, DeviceError, IoBuf, SubmitError, SECTOR_SIZE};
use std::collections::{BTreeSet, VecDeque};

pub use recovery::{OpenMode, OpenReport};
pub use region::{HeaderSector, RegionHeaderError};

pub use crate::record::SET_NAME_MAX_BYTES;

/// The byte range of a device a shard owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Start, bytes; a multiple of the sector size.
    pub offset_bytes: u64,
    /// Length, bytes; only whole wblocks are used.
    pub len_bytes: u64,
}

/// A client write: the bins a record will hold after it. Generation and LUT are set by the shard.
#[derive(Clone, Debug, PartialEq)]
pub struct PutRecord {
    pub digest: Digest,
    /// Empty for none.
    pub set_name: Vec<u8>,
    pub key: Option<StoredKey>,
    /// At least one bin; no `Nil` values (a bin delete is the caller's merge, not a stored value).
    pub bins: Vec<Bin>,
    /// Seconds since 2010-01-01, 0 = never expires.
    pub void_time: u32,
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub generation: u16,
    pub lut_ms: u64,
    /// True when the acknowledgement waits for the device: an [`Event::WriteDone`] with the
    /// write's token follows. False: the write is acknowledged now.
    pub pending: bool,
}

/// Why a write was refused. Nothing stored is changed by a refused write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("out of space: fewer free wblocks than the reserve kept for defrag")]
    OutOfSpace,
    #[error("record of {size_bytes} bytes is over the limit of {max_bytes}")]
    RecordTooBig { size_bytes: usize, max_bytes: usize },
    #[error("device overloaded: {0} sealed wblocks wait for the device")]
    Overload(usize),
    #[error("record not found")]
    NotFound,
    #[error("invalid record: {0}")]
    Invalid(String),
    #[error("writes stopped after a device failure: {0}")]
    DeviceFailed(DeviceError),
}

/// Why a read gave no record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("record not found")]
    NotFound,
    /// The stored copy failed its checksum or does not match the index: reported, never
    /// returned as data.
    #[error("record {digest:?} is corrupt: {detail}")]
    Corrupt { digest: Digest, detail: String },
    #[error("device read failed: {0}")]
    Device(DeviceError),
    #[error("too many reads in flight")]
    Overload,
}

/// What a read did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadAck {
    /// Served from RAM.
    Done(Record),
    /// A device read is in flight; an [`Event::ReadDone`] with the token follows.
    Pending,
}

/// Completion of something that was `pending`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    WriteDone {
        token: u64,
        result: Result<(), WriteError>,
    },
    ReadDone {
        token: u64,
        result: Result<Record, ReadError>,
    },
}

/// Why a shard could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("device I/O failed during start-up: {0}")]
    Device(#[from] DeviceError),
    #[error("region is too small: {len_bytes} bytes hold fewer than 4 wblocks of {wblock_size_bytes} bytes")]
    RegionTooSmall { len_bytes: u64, wblock_size_bytes: u32 },
    #[error("region [{offset_bytes}, +{len_bytes}) does not fit the device ({capacity_bytes} bytes) or is not sector-aligned")]
    RegionOutOfRange {
        offset_bytes: u64,
        len_bytes: u64,
        capacity_bytes: u64,
    },
    /// The region was formatted with other settings; nothing was changed on it.
    #[error("region was formatted with {what}: found {found}, expected {expected}")]
    Mismatch {
        what: &'static str,
        found: u64,
        expected: u64,
    },
    /// The region header is damaged, or is not a Bolide header; nothing was changed on it.
    #[error("{device}: region header at byte offset {offset_bytes} is not valid, start refused (nothing was written): {reason}")]
    HeaderCorrupt {
        device: String,
        offset_bytes: u64,
        reason: region::RegionHeaderError,
    },
    /// The header sector is zeros but the region holds Bolide wblocks: the header was zeroed,
    /// this is not a blank region; nothing was changed on it.
    #[error("{device}: region header at byte offset {offset_bytes} is zeros, but wblock {wblock} at byte offset {wblock_offset_bytes} holds {what}: the header was destroyed, this region is not blank and is not formatted")]
    NotBlank {
        device: String,
        offset_bytes: u64,
        wblock: u32,
        wblock_offset_bytes: u64,
        what: &'static str,
    },
    /// The region holds fewer wblocks than its header says (a truncated file or a smaller
    /// region); nothing was changed on it.
    #[error("{device}: region at byte offset {offset_bytes} has room for {have} wblocks but its header says {header}: the file or device was truncated or the region moved; start refused")]
    Truncated {
        device: String,
        offset_bytes: u64,
        have: u64,
        header: u64,
    },
    /// A cold start found a wblock whose header is damaged while it holds records: they may be
    /// the newest copies of their records, so serving without them could resurrect older copies
    /// or deleted records. Start refused; see [`OpenOptions::accept_damage`].
    #[error("{device}: damage at byte offset {offset_bytes}: {detail}; cold start refused so that no older copy or deleted record comes back (repair from the replica, or start with accept_damage to drop what it held)")]
    Damaged {
        device: String,
        offset_bytes: u64,
        detail: String,
    },
}

/// When [`Shard::open_with`] may format a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Only a provably blank region: a header sector of zeros and no wblock or index-image
    /// header (magic within [`record::MAGIC_FLIP_MAX_BITS`] bits) at the start of any wblock.
    #[default]
    IfBlank,
    /// Also a region whose header is not a valid Bolide header (damaged, or another program's
    /// data): the operator accepts losing what it holds. A valid header is never formatted.
    IfInvalid,
}

/// How [`Shard::open_with`] treats what it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub format: Format,
    /// Start even when a cold start finds a damaged wblock header over records
    /// ([`OpenError::Damaged`]): the wblock is skipped (its records are lost, and older
    /// copies of them may be served), logged at ERROR and counted. An operator's choice.
    pub accept_damage: bool,
}

/// Counters of one shard; all monotonic except the gauges noted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub client_writes: u64,
    pub client_deletes: u64,
    /// Record bytes appended for clients (padded).
    pub client_bytes: u64,
    /// Record bytes appended by defrag (padded).
    pub defrag_bytes: u64,
    /// Bytes handed to the device in wblock writes (partial flushes rewrite their first sector).
    pub device_write_bytes: u64,
    pub device_writes: u64,
    pub reads_ram: u64,
    pub reads_device: u64,
    pub read_corrupt: u64,
    pub wblocks_defragged: u64,
    pub wblocks_freed: u64,
    pub tombstones_dropped: u64,
    pub tombstones_rewritten: u64,
    pub expired: u64,
    pub writes_refused_space: u64,
    pub writes_refused_overload: u64,
    /// Wblocks a defrag found with index entries it could not move (corruption); kept in place.
    pub wblocks_pinned: u64,
    /// Records with a damaged header seen by defrag (skipped, resynchronised).
    pub defrag_corrupt_headers: u64,
    /// Index entries (records and tombstones) removed by truncates.
    pub truncated: u64,
    /// Record and tombstone copies written for another shard's partitions.
    pub replica_writes: u64,
    /// Cold start: records dropped because every copy failed like a torn write.
    pub cold_start_corrupt_dropped: u64,
    /// Cold start: records whose newest copy is media-damaged, kept so reads fail loudly.
    pub cold_start_corrupt_kept: u64,
    /// Cold start: damaged wblock headers (repaired, or dropped under `accept_damage`).
    pub cold_start_damaged_wblock_headers: u64,
    /// Cold start: record headers repaired to identify their record.
    pub cold_start_repaired_record_headers: u64,
    /// Cold start: wblocks or records skipped under `accept_damage`.
    pub cold_start_wblocks_dropped: u64,
}

/// Space and write-amplification gauges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpaceReport {
    pub wblocks_total: u32,
    pub wblocks_free: u32,
    pub wblocks_used: u32,
    /// Sum of live record bytes (tombstones excluded).
    pub live_bytes: u64,
    /// Device bytes written per client byte written (1.0 = none extra).
    pub write_amplification: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// Wblock 0: the region header.
    Reserved,
    Free,
    /// A write buffer is appending to it.
    Open,
    /// Full (or left over from before a restart); its live records are counted.
    Sealed,
    /// Being read by defrag.
    Defrag,
    /// Its live records were moved; waiting for them to be durable.
    PendingFree,
    /// Its header sector is being zeroed.
    Erasing,
    /// Defrag found records it could not move; kept as is.
    Pinned,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockInfo {
    pub state: BlockState,
    pub seq: u64,
    pub live_bytes: u64,
    pub queued: bool,
    /// Defrag write buffers whose durability a PendingFree block waits for.
    pub free_deps: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitKind {
    Ack(u64),
    Free(u32),
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    upto: usize,
    kind: WaitKind,
}

/// A wblock held in RAM: an open write buffer, a sealed one waiting for its device write, or a
/// post-write cache copy.
struct RamBlock {
    id: u32,
    seq: u64,
    data: Vec<u8>,
    /// Bytes appended (header included).
    used: usize,
    /// `used` when the in-flight (or last) device write was submitted.
    submitted_used: usize,
    /// `used` covered by the last completed device write.
    durable_used: usize,
    write_in_flight: bool,
    sealed: bool,
    dirty_since_ms: Option<u64>,
    /// Flush at the next turn whatever the timers say (flush_blocking, shutdown).
    force_flush: bool,
    waiters: VecDeque<Waiter>,
}

impl RamBlock {
    fn is_durable(&self) -> bool {
        !self.write_in_flight && self.durable_used == self.used
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Client,
    Defrag,
    /// Replica copies, kept apart from master records as Aerospike keeps prole write buffers.
    Replica,
}

struct PendingRead {
    token: u64,
    entry: IndexEntry,
    attempts: u8,
}

const TAG_SHIFT: u32 = 56;
const TAG_WRITE: u64 = 1;
const TAG_READ: u64 = 2;
const TAG_DEFRAG: u64 = 3;
const TAG_ERASE: u64 = 4;
pub(crate) const TAG_STARTUP: u64 = 5;
const MAX_READ_ATTEMPTS: u8 = 3;
/// Wblock buffers kept for reuse when wblocks leave RAM (a few: one per write stream and
/// some slack; more would only hold memory).
const SPARE_WBLOCK_BUFS: usize = 4;
/// Partitions the expiry sweep visits per poll turn.
const NSUP_PARTITIONS_PER_TURN: u16 = 64;

fn tag(kind: u64, n: u64) -> u64 {
    debug_assert!(n < 1 << TAG_SHIFT);
    (kind << TAG_SHIFT) | n
}

/// Generation after `g`: 1..=0xFFFF, wrapping to 1 (0 means "no record" on the wire).
pub fn next_generation(g: u16) -> u16 {
    if g == u16::MAX {
        1
    } else {
        g + 1
    }
}

/// One core's storage shard over device `D`, timed by clock `C`.
pub struct Shard<D: BlockDevice, C: Clock> {
    dev: D,
    clock: C,
    cfg: StorageConfig,
    shard_id: u32,
    region: Region,
    wblock_size: usize,
    n_wblocks: u32,
    instance_id: u64,
    created_ms: u64,
    index: PrimaryIndex,
    blocks: Vec<BlockInfo>,
    free: VecDeque<u32>,
    /// (seq, id) of every wblock whose contents may still be read by a cold start.
    nonfree_seqs: BTreeSet<(u64, u32)>,
    next_seq: u64,
    ram: Vec<RamBlock>,
    /// Buffers of wblocks that left RAM, kept for the next wblock opened (zeroed then), so
    /// a wblock costs no allocation; at most [`SPARE_WBLOCK_BUFS`].
    spare_wblock_bufs: Vec<Vec<u8>>,
    client_wb: Option<u32>,
    defrag_wb: Option<u32>,
    /// The replica ("prole") write buffer: copies of records another core is master of.
    replica_wb: Option<u32>,
    pool: BufPool,
    reads: Vec<Option<PendingRead>>,
    read_free: Vec<u32>,
    small_bufs: Vec<IoBuf>,
    defrag_queue: VecDeque<u32>,
    defrag_in_flight: u32,
    erase_queue: VecDeque<u32>,
    erases_in_flight: u32,
    failed: Option<DeviceError>,
    events: Vec<Event>,
    completions: Vec<Completion>,
    reserve_wblocks: u32,
    nsup_next_pid: u16,
    nsup_due_ms: u64,
    nsup_active: bool,
    stats: ShardStats,
    stash: Vec<Event>,
    next_internal_token: u64,
    /// Every write gets a LUT above this (ms since 2010): the greatest truncate cut-off applied.
    lut_floor_ms: u64,
    /// Reused by truncates: the live entries a partition pass removed.
    truncate_scratch: Vec<IndexEntry>,
    /// [`OpenOptions::accept_damage`] of the open in progress.
    accept_damage: bool,
}

impl<D: BlockDevice, C: Clock> Shard<D, C> {
    // ----- accessors -----

    pub fn index(&self) -> &PrimaryIndex {
        &self.index
    }
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }
    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }
    pub fn device(&self) -> &D {
        &self.dev
    }
    /// The device, for fault injection in tests and tools. Submitting I/O through it behind the
    /// shard's back is a programmer error.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }
    /// The device error that stopped writes, if any.
    pub fn failure(&self) -> Option<&DeviceError> {
        self.failed.as_ref()
    }
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Drops the shard without any shutdown work and hands back its device: what a crash or a
    /// `kill -9` leaves (tests use it with the simulator's `crash`).
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Space gauges.
    pub fn space(&self) -> SpaceReport {
        let free = self.free.len() as u32;
        let total = self.n_wblocks - 1;
        let written = self.stats.client_bytes.max(1);
        SpaceReport {
            wblocks_total: total,
            wblocks_free: free,
            wblocks_used: total - free,
            live_bytes: self.blocks.iter().map(|b| b.live_bytes).sum(),
            write_amplification: self.stats.device_write_bytes as f64 / written as f64,
        }
    }

    /// The live index entry of `digest` (not tombstoned, not expired).
    pub fn peek(&self, digest: &Digest) -> Option<IndexEntry> {
        let now_s = self.clock.now_cl_s();
        self.index
            .get(digest)
            .filter(|e| !e.is_tombstone() && !is_expired(e, now_s))
            .copied()
    }

    // ----- writes -----

    /// Writes a whole record (replacing any older version). Generation becomes the old one plus
    /// one (1 for a new record); the LUT is the clock's, made strictly greater than the old one
    /// and than the LUT floor ([`Shard::set_lut_floor`]).
    ///
    /// # Errors
    /// See [`WriteError`]; a refused write changes nothing.
    pub fn put(&mut self, rec: PutRecord, token: u64) -> Result<Written, WriteError> {
        self.put_kept(rec, token).map(|(written, _)| written)
    }

    /// [`Shard::put`], also handing back the record as written (its generation, LUT and
    /// bins), for a write-through record cache: the caller gets the bytes it would otherwise
    /// read back from the device on the record's next read.
    ///
    /// # Errors
    /// As [`Shard::put`].
    pub fn put_kept(&mut self, rec: PutRecord, token: u64) -> Result<(Written, Record), WriteError> {
        if let Some(e) = &self.failed {
            return Err(WriteError::DeviceFailed(e.clone()));
        }
        validate_put(&rec)?;
        let now_s = self.clock.now_cl_s();
        let old = self.index.get(&rec.digest).copied();
        let lut_ms = self.next_lut(old.as_ref());
        let generation = match &old {
            Some(e) if !e.is_tombstone() && !is_expired(e, now_s) => next_generation(e.generation()),
            _ => 1,
        };
        let record = Record {
            meta: RecordMeta {
                digest: rec.digest,
                generation,
                void_time: rec.void_time,
                lut_ms,
                origin_seq: self.next_seq - 1,
                tombstone: false,
            },
            set_name: rec.set_name,
            key: rec.key,
            bins: rec.bins,
        };
        let written = self.append_record(Stream::Client, &record, old, token)?;
        self.stats.client_writes += 1;
        Ok((written, record))
    }

    /// Rewrites a live record with a new void-time and a new LUT but the same generation: the
    /// server's read-touch (`read_touch_master`: "don't increment generation - causes
    /// extraneous gen-check failures"). `rec` is the record as read; its bins, set and key are
    /// written again.
    ///
    /// # Errors
    /// `NotFound` when the record is no longer live; otherwise as [`Shard::put`].
    pub fn put_touched(&mut self, rec: Record, void_time: u32, token: u64) -> Result<Written, WriteError> {
        if let Some(e) = &self.failed {
            return Err(WriteError::DeviceFailed(e.clone()));
        }
        let now_s = self.clock.now_cl_s();
        let old = match self.index.get(&rec.meta.digest) {
            Some(e) if !e.is_tombstone() && !is_expired(e, now_s) => *e,
            _ => return Err(WriteError::NotFound),
        };
        let record = Record {
            meta: RecordMeta {
                digest: rec.meta.digest,
                generation: old.generation(),
                void_time,
                lut_ms: self.next_lut(Some(&old)),
                origin_seq: self.next_seq - 1,
                tombstone: false,
            },
            ..rec
        };
        let written = self.append_record(Stream::Client, &record, Some(old), token)?;
        self.stats.client_writes += 1;
        Ok(written)
    }

    /// Deletes a record durably: writes a tombstone that a cold start honours.
    ///
    /// # Errors
    /// `NotFound` when there is no live record; otherwise as [`Shard::put`].
    pub fn delete(&mut self, digest: &Digest, token: u64) -> Result<Written, WriteError> {
        if let Some(e) = &self.failed {
            return Err(WriteError::DeviceFailed(e.clone()));
        }
        let now_s = self.clock.now_cl_s();
        let old = match self.index.get(digest) {
            Some(e) if !e.is_tombstone() && !is_expired(e, now_s) => *e,
            _ => return Err(WriteError::NotFound),
        };
        let record = Record {
            meta: RecordMeta {
                digest: *digest,
                generation: next_generation(old.generation()),
                void_time: 0,
                lut_ms: self.next_lut(Some(&old)),
                origin_seq: self.next_seq - 1,
                tombstone: true,
            },
            set_name: Vec::new(),
            key: None,
            bins: Vec::new(),
        };
        let written = self.append_record(Stream::Client, &record, Some(old), token)?;
        self.stats.client_deletes += 1;
        Ok(written)
    }

    /// Stores a copy of a record whose master is another shard (replication, re-replication
    /// and cold-start repair), with the master's generation, void-time and LUT, in the replica
    /// write buffer. A tombstone copy (`rec.meta.tombstone`, no bins) deletes.
    ///
    /// The copy is applied only when it is newer than what this shard holds: (LUT, generation)
    /// greater, the order a cold start also uses. An older or equal copy changes nothing and
    /// returns `Ok(None)`; a stale copy can arrive when a repair races a live write.
    ///
    /// # Errors
    /// As [`Shard::put`]: out of space, too big, overloaded, device failed, or an invalid
    /// record (a live copy without bins, a tombstone with bins).
    pub fn put_replica(&mut self, rec: Record, token: u64) -> Result<Option<Written>, WriteError> {
        if let Some(e) = &self.failed {
            return Err(WriteError::DeviceFailed(e.clone()));
        }
        if rec.meta.tombstone != rec.bins.is_empty() {
            return Err(WriteError::Invalid(if rec.meta.tombstone {
                "a tombstone copy has bins".into()
            } else {
                "a record copy has no bins".into()
            }));
        }
        let old = self.index.get(&rec.meta.digest).copied();
        if let Some(e) = &old {
            if (e.lut_ms(), e.generation()) >= (rec.meta.lut_ms, rec.meta.generation) {
                return Ok(None);
            }
        }
        let mut rec = rec;
        rec.meta.lut_ms = rec.meta.lut_ms.min(crate::index::MAX_LUT_MS);
        rec.meta.origin_seq = self.next_seq - 1;
        let written = self.append_record(Stream::Replica, &rec, old, token)?;
        self.stats.replica_writes += 1;
        Ok(Some(written))
    }

    /// The LUT of a write: the clock, above the truncate floor, above the record's old LUT.
    fn next_lut(&self, old: Option<&IndexEntry>) -> u64 {
        let now = self
            .clock
            .now_cl_ms()
            .max(self.lut_floor_ms + 1)
            .min(crate::index::MAX_LUT_MS - 1);
        match old {
            Some(e) => now.max(e.lut_ms() + 1).min(crate::index::MAX_LUT_MS),
            None => now,
        }
    }

    fn append_record(
        &mut self,
        stream: Stream,
        rec: &Record,
        old: Option<IndexEntry>,
        token: u64,
    ) -> Result<Written, WriteError> {
        let size = record::padded(record::encoded_len(rec));
        let max = self.cfg.max_record_bytes as usize;
        if size > max {
            return Err(WriteError::RecordTooBig {
                size_bytes: size,
                max_bytes: max,
            });
        }
        let (id, off) = self.reserve_append(stream, size, rec.meta.tombstone)?;
        let ram = self.ram_mut(id).expect("open wblock is in RAM");
        let n = record::encode(rec, ram.seq, &mut ram.data[off..off + size]);
        assert_eq!(n, size);
        let addr = self.addr_of(id, off);
        let entry = IndexEntry::new(
            rec.meta.digest,
            addr,
            size,
            rec.meta.generation,
            rec.meta.void_time,
            rec.meta.lut_ms,
            rec.meta.tombstone,
        );
        self.replace_entry(entry, old);
        self.stats.client_bytes += size as u64;
        let commit = self.cfg.commit_to_device;
        let now_ms = self.clock.mono_ms();
        let ram = self.ram_mut(id).expect("open wblock is in RAM");
        if commit {
            ram.waiters.push_back(Waiter {
                upto: off + size,
                kind: WaitKind::Ack(token),
            });
        } else {
            ram.dirty_since_ms.get_or_insert(now_ms);
        }
        Ok(Written {
            generation: rec.meta.generation,
            lut_ms: rec.meta.lut_ms,
            pending: commit,
        })
    }

    /// Finds room for `size` bytes in `stream`'s write buffer, sealing it and opening another
    /// when it is full. Returns (wblock id, offset). Changes nothing when it fails.
    pub(crate) fn reserve_append(
        &mut self,
        stream: Stream,
        size: usize,
        is_delete: bool,
    ) -> Result<(u32, usize), WriteError> {
        let ws = self.wblock_size;
        assert!(size <= ws - WBLOCK_HEADER_BYTES);
        let cur = match stream {
            Stream::Client => self.client_wb,
            Stream::Defrag => self.defrag_wb,
            Stream::Replica => self.replica_wb,
        };
        if let Some(id) = cur {
            let ram = self.ram_mut(id).expect("open wblock is in RAM");
            if ram.used + size <= ws {
                let off = ram.used;
                ram.used += size;
                return Ok((id, off));
            }
        }
        // A new wblock is needed: check before changing anything.
        if stream != Stream::Defrag {
            let floor = if is_delete {
                self.reserve_wblocks / 2
            } else {
                self.reserve_wblocks
            };
            if self.free.len() as u32 <= floor {
                self.stats.writes_refused_space += 1;
                return Err(WriteError::OutOfSpace);
            }
            let waiting = self.ram.iter().filter(|r| r.sealed && !r.is_durable()).count();
            if waiting >= self.cfg.max_write_cache_wblocks as usize {
                self.stats.writes_refused_overload += 1;
                return Err(WriteError::Overload(waiting));
            }
        } else if self.free.is_empty() {
            return Err(WriteError::OutOfSpace);
        }
        if let Some(id) = cur {
            self.seal(id);
        }
        let id = self.open_wblock();
        match stream {
            Stream::Client => self.client_wb = Some(id),
            Stream::Defrag => self.defrag_wb = Some(id),
            Stream::Replica => self.replica_wb = Some(id),
        }
        let ram = self.ram_mut(id).expect("just opened");
        let off = ram.used;
        ram.used += size;
        Ok((id, off))
    }

    fn open_wblock(&mut self) -> u32 {
        let id = self.free.pop_front().expect("caller checked for a free wblock");
        let seq = self.next_seq;
        self.next_seq += 1;
        let b = &mut self.blocks[id as usize];
        assert_eq!(
            b.state,
            BlockState::Free,
            "wblock {id} on the free list is {:?}",
            b.state
        );
        assert_eq!(b.live_bytes, 0);
        *b = BlockInfo {
            state: BlockState::Open,
            seq,
            live_bytes: 0,
            queued: false,
            free_deps: 0,
        };
        self.nonfree_seqs.insert((seq, id));
        // A stale cached copy of the wblock's previous life must go.
        self.drop_ram(|r| r.id == id);
        // Zeroed whole: the sector padding after the last record is written to the device,
        // and bytes of another wblock's life there could read as a record at cold start.
        let mut data = match self.spare_wblock_bufs.pop() {
            Some(mut b) => {
                b.fill(0);
                b
            }
            None => vec![0u8; self.wblock_size],
        };
        WblockHeader {
            seq,
            instance_id: self.instance_id,
            wblock_id: id,
            wblock_size_bytes: self.wblock_size as u32,
        }
        .encode(&mut data[..WBLOCK_HEADER_BYTES]);
        self.ram.push(RamBlock {
            id,
            seq,
            data,
            used: WBLOCK_HEADER_BYTES,
            submitted_used: 0,
            durable_used: 0,
            write_in_flight: false,
            sealed: false,
            dirty_since_ms: None,
            force_flush: false,
            waiters: VecDeque::new(),
        });
        id
    }

    /// Removes the RAM copies `pred` picks, keeping their buffers as spares.
    fn drop_ram(&mut self, pred: impl Fn(&RamBlock) -> bool) {
        let mut i = 0;
        while i < self.ram.len() {
            if pred(&self.ram[i]) {
                // `remove`, not `swap_remove`: the order of `ram` is the order of flushes.
                let r = self.ram.remove(i);
                self.keep_spare(r.data);
            } else {
                i += 1;
            }
        }
    }

    fn keep_spare(&mut self, data: Vec<u8>) {
        if self.spare_wblock_bufs.len() < SPARE_WBLOCK_BUFS && data.len() == self.wblock_size {
            self.spare_wblock_bufs.push(data);
        }
    }

    fn seal(&mut self, id: u32) {
        let ram = self.ram_mut(id).expect("sealing a wblock not in RAM");
        ram.sealed = true;
        let b = &mut self.blocks[id as usize];
        assert_eq!(b.state, BlockState::Open);
        b.state = BlockState::Sealed;
        if self.client_wb == Some(id) {
            self.client_wb = None;
        }
        if self.defrag_wb == Some(id) {
            self.defrag_wb = None;
        }
        if self.replica_wb == Some(id) {
            self.replica_wb = None;
        }
        if self.ram_ref(id).is_some_and(|r| r.is_durable()) {
            // Every byte is already on the device (group commit got there first).
            self.maybe_queue_defrag(id);
            self.trim_cache();
        }
    }

    /// Installs `new` in the index, moving live-byte accounting from `old` (if any).
    pub(crate) fn replace_entry(&mut self, new: IndexEntry, old: Option<IndexEntry>) {
        if let Some(o) = old {
            if !o.is_tombstone() {
                self.sub_live(&o);
            }
        }
        if !new.is_tombstone() {
            let b = self.block_of(new.addr_bytes());
            self.blocks[b as usize].live_bytes += new.size_bytes() as u64;
        }
        self.index.insert(new);
    }

    pub(crate) fn sub_live(&mut self, e: &IndexEntry) {
        let b = self.block_of(e.addr_bytes());
        let info = &mut self.blocks[b as usize];
        assert!(
            info.live_bytes >= e.size_bytes() as u64,
            "wblock {b} live bytes {} < {} ({e:?})",
            info.live_bytes,
            e.size_bytes()
        );
        info.live_bytes -= e.size_bytes() as u64;
        self.maybe_queue_defrag(b);
    }

    fn maybe_queue_defrag(&mut self, b: u32) {
        let info = &self.blocks[b as usize];
        if info.state != BlockState::Sealed || info.queued {
            return;
        }
        if info.live_bytes * 100 >= self.cfg.defrag_lwm_pct as u64 * self.wblock_size as u64 {
            return;
        }
        if self.ram_ref(b).is_some_and(|r| !r.is_durable()) {
            return; // queued when its write completes
        }
        self.blocks[b as usize].queued = true;
        self.defrag_queue.push_back(b);
    }

    // ----- reads -----

    /// Reads the newest copy of a record.
    ///
    /// # Errors
    /// `NotFound` (absent, deleted or expired), `Corrupt` (from RAM), `Overload`.
    pub fn get(&mut self, digest: &Digest, token: u64) -> Result<ReadAck, ReadError> {
        let entry = self.peek(digest).ok_or(ReadError::NotFound)?;
        self.read_entry(entry, token, 0)
    }

    /// As [`Shard::get`], for the live index entry the caller already looked up with
    /// [`Shard::peek`] (one index search per command).
    ///
    /// # Errors
    /// As [`Shard::get`].
    pub fn get_entry(&mut self, entry: IndexEntry, token: u64) -> Result<ReadAck, ReadError> {
        self.read_entry(entry, token, 0)
    }

    fn read_entry(&mut self, entry: IndexEntry, token: u64, attempts: u8) -> Result<ReadAck, ReadError> {
        let addr = entry.addr_bytes();
        let (b, off) = (self.block_of(addr), (addr % self.wblock_size as u64) as usize);
        if let Some(ram) = self.ram_ref(b) {
            let bytes = &ram.data[off..off + entry.size_bytes()];
            let result = check_read(&entry, bytes, ram.seq);
            self.stats.reads_ram += 1;
            if result.is_err() {
                self.stats.read_corrupt += 1;
            }
            return result.map(ReadAck::Done);
        }
        let slot = match self.read_free.pop() {
            Some(s) => s,
            None => return Err(ReadError::Overload),
        };
        let start = addr / SECTOR_SIZE as u64 * SECTOR_SIZE as u64;
        let end = (addr + entry.size_bytes() as u64).div_ceil(SECTOR_SIZE as u64) * SECTOR_SIZE as u64;
        let len = (end - start) as usize;
        let buf = match self.small_bufs.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let mut b = self.small_bufs.swap_remove(i);
                b.set_len(len);
                b
            }
            None => IoBuf::new(len),
        };
        match self
            .dev
            .submit_read(self.region.offset_bytes + start, buf, tag(TAG_READ, slot as u64))
        {
            Ok(()) => {
                self.reads[slot as usize] = Some(PendingRead { token, entry, attempts });
                self.stats.reads_device += 1;
                Ok(ReadAck::Pending)
            }
            Err(e) => {
                self.read_free.push(slot);
                let failed = matches!(e, SubmitError::Failed(..));
                let err = if let SubmitError::Failed(d, _) = &e {
                    Some(d.clone())
                } else {
                    None
                };
                if let Some(b) = e.into_buf() {
                    self.recycle_small(b);
                }
                match (failed, err) {
                    (true, Some(d)) => Err(ReadError::Device(d)),
                    _ => Err(ReadError::Overload),
                }
            }
        }
    }

    fn recycle_small(&mut self, buf: IoBuf) {
        if buf.reg_slot().is_some() {
            self.pool.put(buf);
        } else if buf.capacity() <= 64 * 1024 && self.small_bufs.len() < 64 {
            self.small_bufs.push(buf);
        }
    }

    fn on_read_done(&mut self, slot: u32, c: Completion) {
        let pr = self.reads[slot as usize]
            .take()
            .expect("completion for an idle read slot");
        self.read_free.push(slot);
        let buf = c.buf.expect("read completion carries its buffer");
        let result = match c.result {
            Err(e) => Err(ReadError::Device(e)),
            Ok(()) => {
                let addr = pr.entry.addr_bytes();
                let skip = (addr % SECTOR_SIZE as u64) as usize;
                let seq = self.blocks[self.block_of(addr) as usize].seq;
                check_read(&pr.entry, &buf.as_slice()[skip..skip + pr.entry.size_bytes()], seq)
            }
        };
        self.recycle_small(buf);
        let result = match result {
            Err(ReadError::Corrupt { .. }) | Err(ReadError::Device(_))
                if self.index.get(&pr.entry.digest()) != Some(&pr.entry) =>
            {
                // The record moved (defrag, overwrite) while the read was in flight: read again.
                match self.peek(&pr.entry.digest()) {
                    None => Err(ReadError::NotFound),
                    Some(e) if pr.attempts < MAX_READ_ATTEMPTS => match self.read_entry(e, pr.token, pr.attempts + 1) {
                        Ok(ReadAck::Pending) => return,
                        Ok(ReadAck::Done(r)) => Ok(r),
                        Err(e) => Err(e),
                    },
                    Some(_) => Err(ReadError::Overload),
                }
            }
            other => other,
        };
        if matches!(result, Err(ReadError::Corrupt { .. })) {
            self.stats.read_corrupt += 1;
            tracing::error!(shard = self.shard_id, digest = ?pr.entry.digest(), "corrupt record on device: {:?}", result);
        }
        self.events.push(Event::ReadDone {
            token: pr.token,
            result,
        });
    }

    // ----- the poll loop -----

    /// One turn: collect device completions, run timers (flush, expiry), start flushes, defrag
    /// reads and erases, submit everything, and hand finished work to `events`. Never blocks.
    pub fn poll(&mut self, events: &mut Vec<Event>) {
        self.reap(0);
        self.turn();
        events.append(&mut self.events);
    }

    /// Blocks until at least one device I/O completes (returns at once when none is in flight),
    /// then does a [`Shard::poll`] turn.
    pub fn wait(&mut self, events: &mut Vec<Event>) {
        self.reap(1);
        self.turn();
        events.append(&mut self.events);
    }

    /// I/Os in flight on the device.
    pub fn in_flight(&self) -> usize {
        self.dev.in_flight()
    }

    /// Hands the device every I/O queued since the last turn (record reads, and the flush of a
    /// write waiting for commit_to_device) without reaping. A poll loop calls it before it
    /// sleeps, so work queued late in a turn does not wait for the next wake-up.
    pub fn submit_queued(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.start_flushes();
        if let Err(e) = self.dev.submit() {
            self.fail(e);
        }
    }

    fn turn(&mut self) {
        self.run_nsup();
        self.start_flushes();
        self.start_erases();
        self.start_defrag();
        if let Err(e) = self.dev.submit() {
            self.fail(e);
        }
    }

    fn reap(&mut self, min: usize) {
        let mut done = std::mem::take(&mut self.completions);
        let min = min.min(self.dev.in_flight());
        if let Err(e) = self.dev.reap(&mut done, min) {
            self.fail(e);
        }
        for c in done.drain(..) {
            let (kind, n) = (c.tag >> TAG_SHIFT, c.tag & ((1 << TAG_SHIFT) - 1));
            match kind {
                TAG_WRITE => self.on_write_done(n as u32, c),
                TAG_READ => self.on_read_done(n as u32, c),
                TAG_DEFRAG => self.on_defrag_read(n as u32, c),
                TAG_ERASE => self.on_erase_done(n as u32, c),
                _ => panic!("completion with unknown tag {:#x}", c.tag),
            }
        }
        self.completions = done;
    }

    fn start_flushes(&mut self) {
        let now = self.clock.mono_ms();
        let flush_max = self.cfg.flush_max_ms;
        for i in 0..self.ram.len() {
            let r = &self.ram[i];
            if r.write_in_flight || r.used == r.submitted_used {
                continue;
            }
            let due = r.sealed
                || r.force_flush
                || !r.waiters.is_empty()
                || r.dirty_since_ms.is_some_and(|t| now >= t + flush_max);
            if !due || self.failed.is_some() {
                continue;
            }
            let Some(mut buf) = self.pool.take() else { break };
            let r = &mut self.ram[i];
            let start = r.submitted_used / SECTOR_SIZE * SECTOR_SIZE;
            let end = r.used.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
            buf.set_len(end - start);
            buf.as_mut_slice().copy_from_slice(&r.data[start..end]);
            let offset = self.region.offset_bytes + r.id as u64 * self.wblock_size as u64 + start as u64;
            match self.dev.submit_write(offset, buf, tag(TAG_WRITE, r.id as u64)) {
                Ok(()) => {
                    r.write_in_flight = true;
                    r.submitted_used = r.used;
                    r.dirty_since_ms = None;
                    r.force_flush = false;
                    self.stats.device_writes += 1;
                    self.stats.device_write_bytes += (end - start) as u64;
                }
                Err(SubmitError::Failed(e, b)) => {
                    if let Some(b) = b {
                        self.pool.put(b);
                    }
                    self.fail(e);
                    return;
                }
                Err(e) => {
                    if let Some(b) = e.into_buf() {
                        self.pool.put(b);
                    }
                    break;
                }
            }
        }
    }

    fn on_write_done(&mut self, id: u32, c: Completion) {
        if let Some(b) = c.buf {
            self.pool.put(b);
        }
        if let Err(e) = c.result {
            self.fail(e);
            return;
        }
        let Some(i) = self.ram.iter().position(|r| r.id == id) else {
            panic!("write completion for wblock {id} which is not in RAM");
        };
        let r = &mut self.ram[i];
        r.write_in_flight = false;
        r.durable_used = r.submitted_used;
        let mut fired = Vec::new();
        while r.waiters.front().is_some_and(|w| w.upto <= r.durable_used) {
            fired.push(r.waiters.pop_front().expect("checked").kind);
        }
        for k in fired {
            match k {
                WaitKind::Ack(token) => self.events.push(Event::WriteDone { token, result: Ok(()) }),
                WaitKind::Free(b) => {
                    let info = &mut self.blocks[b as usize];
                    info.free_deps -= 1;
                    if info.free_deps == 0 {
                        self.start_erase(b);
                    }
                }
            }
        }
        if self.ram[i].sealed && self.ram[i].is_durable() {
            self.maybe_queue_defrag(id);
            self.trim_cache();
        }
    }

    /// Keeps at most `post_write_cache_wblocks` durable sealed wblocks in RAM (the newest).
    fn trim_cache(&mut self) {
        let limit = self.cfg.post_write_cache_wblocks as usize;
        loop {
            let cached: Vec<(u64, usize)> = self
                .ram
                .iter()
                .enumerate()
                .filter(|(_, r)| r.sealed && r.is_durable())
                .map(|(i, r)| (r.seq, i))
                .collect();
            if cached.len() <= limit {
                return;
            }
            let (_, i) = *cached.iter().min().expect("non-empty");
            let r = self.ram.swap_remove(i);
            self.keep_spare(r.data);
        }
    }

    /// Stops writes after a device failure; acknowledgements waiting for the device fail.
    fn fail(&mut self, e: DeviceError) {
        if self.failed.is_none() {
            tracing::error!(shard = self.shard_id, "device failure, writes stopped: {e}");
            self.failed = Some(e.clone());
        }
        for r in &mut self.ram {
            for w in r.waiters.drain(..) {
                if let WaitKind::Ack(token) = w.kind {
                    self.events.push(Event::WriteDone {
                        token,
                        result: Err(WriteError::DeviceFailed(e.clone())),
                    });
                }
            }
        }
    }

    /// Queues the zeroing of `b`'s header sector; the wblock is free once that write completes.
    pub(crate) fn start_erase(&mut self, b: u32) {
        let info = &mut self.blocks[b as usize];
        assert_eq!(info.state, BlockState::PendingFree);
        assert_eq!(info.live_bytes, 0);
        info.state = BlockState::Erasing;
        self.erase_queue.push_back(b);
    }

    fn start_erases(&mut self) {
        while self.failed.is_none() {
            let Some(&b) = self.erase_queue.front() else { return };
            let Some(mut buf) = self.pool.take() else { return };
            buf.set_len(SECTOR_SIZE);
            buf.as_mut_slice().fill(0);
            let offset = self.region.offset_bytes + b as u64 * self.wblock_size as u64;
            match self.dev.submit_write(offset, buf, tag(TAG_ERASE, b as u64)) {
                Ok(()) => {
                    self.erase_queue.pop_front();
                    self.erases_in_flight += 1;
                }
                Err(SubmitError::Failed(d, buf)) => {
                    if let Some(buf) = buf {
                        self.pool.put(buf);
                    }
                    self.fail(d);
                }
                Err(e) => {
                    if let Some(buf) = e.into_buf() {
                        self.pool.put(buf);
                    }
                    return;
                }
            }
        }
    }

    fn on_erase_done(&mut self, b: u32, c: Completion) {
        if let Some(buf) = c.buf {
            self.pool.put(buf);
        }
        self.erases_in_flight -= 1;
        if let Err(e) = c.result {
            self.fail(e);
            return;
        }
        let info = &mut self.blocks[b as usize];
        assert_eq!(info.state, BlockState::Erasing);
        assert_eq!(info.live_bytes, 0);
        self.nonfree_seqs.remove(&(info.seq, b));
        *info = BlockInfo {
            state: BlockState::Free,
            seq: 0,
            live_bytes: 0,
            queued: false,
            free_deps: 0,
        };
        self.drop_ram(|r| r.id == b);
        self.free.push_back(b);
        self.stats.wblocks_freed += 1;
    }

    /// Expiry sweep ("nsup"): every `nsup_period_ms`, walks the index a few partitions per turn
    /// and turns expired records into tombstones (they stop counting as live bytes; defrag then
    /// drops or keeps them by the tombstone rule).
    fn run_nsup(&mut self) {
        let now_ms = self.clock.mono_ms();
        if !self.nsup_active {
            if now_ms < self.nsup_due_ms {
                return;
            }
            self.nsup_active = true;
            self.nsup_next_pid = 0;
        }
        let now_s = self.clock.now_cl_s();
        let mut expired = Vec::new();
        let end = (self.nsup_next_pid as u32 + NSUP_PARTITIONS_PER_TURN as u32).min(crate::digest::N_PARTITIONS as u32)
            as u16;
        for pid in self.nsup_next_pid..end {
            let pid = crate::digest::PartitionId(pid);
            if self.index.partition_len(pid) == 0 {
                continue;
            }
            self.index.visit_partition(pid, |e| {
                if !e.is_tombstone() && is_expired(e, now_s) {
                    expired.push(*e);
                    e.set_tombstone();
                }
                crate::index::Visit::Keep
            });
        }
        for e in &expired {
            self.sub_live(e);
        }
        self.stats.expired += expired.len() as u64;
        self.nsup_next_pid = end;
        if end as usize == crate::digest::N_PARTITIONS {
            self.nsup_active = false;
            self.nsup_due_ms = match self.cfg.nsup_period_ms {
                0 => u64::MAX,
                period => now_ms.saturating_add(period),
            };
        }
    }

    /// Changes the expiry sweep's period at run time (`set-config` `nsup-period`), ms; 0 stops
    /// the sweep (expired records still read as absent). A sweep under way finishes; the next
    /// one is due at most `ms` from now.
    pub fn set_nsup_period_ms(&mut self, ms: u64) {
        self.cfg.nsup_period_ms = ms;
        self.nsup_due_ms = match ms {
            0 => u64::MAX,
            _ => self.nsup_due_ms.min(self.clock.mono_ms().saturating_add(ms)),
        };
    }

    // ----- blocking helpers (tools, tests) -----

    fn internal_token(&mut self) -> u64 {
        self.next_internal_token += 1;
        u64::MAX - self.next_internal_token
    }

    fn wait_for(&mut self, token: u64) -> Event {
        loop {
            let mut evs = Vec::new();
            self.wait(&mut evs);
            let mut found = None;
            for e in evs {
                let t = match &e {
                    Event::WriteDone { token, .. } | Event::ReadDone { token, .. } => *token,
                };
                if t == token && found.is_none() {
                    found = Some(e);
                } else {
                    self.stash.push(e);
                }
            }
            if let Some(e) = found {
                return e;
            }
            assert!(
                self.dev.in_flight() > 0 || self.ram.iter().any(|r| !r.waiters.is_empty()),
                "waiting for token {token} with nothing in flight"
            );
        }
    }

    /// One blocking turn, keeping the events for later.
    fn wait_io(&mut self) {
        let mut evs = Vec::new();
        self.poll(&mut evs);
        self.wait(&mut evs);
        self.stash.extend(evs);
    }

    /// Events that blocking helpers collected on the way; call after using them.
    pub fn take_stashed_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.stash)
    }

    /// [`Shard::put`], waiting for the acknowledgement.
    ///
    /// # Errors
    /// As `put`, plus a device failure while waiting.
    pub fn put_blocking(&mut self, rec: PutRecord) -> Result<Written, WriteError> {
        self.client_write_blocking(|s, token| s.put(rec.clone(), token))
    }

    /// [`Shard::delete`], waiting for the acknowledgement.
    ///
    /// # Errors
    /// As `delete`.
    pub fn delete_blocking(&mut self, digest: &Digest) -> Result<Written, WriteError> {
        self.client_write_blocking(|s, token| s.delete(digest, token))
    }

    /// Runs a write, retrying while the device is overloaded, and waits for its acknowledgement.
    fn client_write_blocking(
        &mut self,
        mut op: impl FnMut(&mut Self, u64) -> Result<Written, WriteError>,
    ) -> Result<Written, WriteError> {
        let token = self.internal_token();
        let w = loop {
            match op(self, token) {
                Err(WriteError::Overload(_)) => self.wait_io(),
                other => break other?,
            }
        };
        if w.pending {
            if let Event::WriteDone { result, .. } = self.wait_for(token) {
                result?;
            }
        }
        Ok(w)
    }

    /// [`Shard::get`], waiting for the device.
    ///
    /// # Errors
    /// As `get`.
    pub fn get_blocking(&mut self, digest: &Digest) -> Result<Record, ReadError> {
        let token = self.internal_token();
        match self.get(digest, token)? {
            ReadAck::Done(r) => Ok(r),
            ReadAck::Pending => match self.wait_for(token) {
                Event::ReadDone { result, .. } => result,
                Event::WriteDone { .. } => unreachable!("read token answered by a write"),
            },
        }
    }

    /// Writes every write buffer's unflushed bytes and waits until they are durable.
    ///
    /// # Errors
    /// The device failed.
    pub fn flush_blocking(&mut self) -> Result<(), DeviceError> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            for r in &mut self.ram {
                if r.used > r.submitted_used {
                    r.force_flush = true;
                }
            }
            let mut evs = Vec::new();
            self.poll(&mut evs);
            self.stash.extend(evs);
            if self.ram.iter().all(|r| r.is_durable()) {
                return Ok(());
            }
            let mut evs = Vec::new();
            self.wait(&mut evs);
            self.stash.extend(evs);
        }
    }

    // ----- addresses -----

    pub(crate) fn addr_of(&self, id: u32, off: usize) -> u64 {
        id as u64 * self.wblock_size as u64 + off as u64
    }

    pub(crate) fn block_of(&self, addr: u64) -> u32 {
        (addr / self.wblock_size as u64) as u32
    }

    fn ram_ref(&self, id: u32) -> Option<&RamBlock> {
        self.ram.iter().find(|r| r.id == id)
    }

    fn ram_mut(&mut self, id: u32) -> Option<&mut RamBlock> {
        self.ram.iter_mut().find(|r| r.id == id)
    }
}

/// True when the entry's void-time has passed: `void_time < now_s`, as the server's
/// `as_record_is_expired` (whole seconds, so a record lives at least its TTL).
pub fn is_expired(e: &IndexEntry, now_s: u32) -> bool {
    e.void_time() != 0 && e.void_time() < now_s
}

fn validate_put(rec: &PutRecord) -> Result<(), WriteError> {
    if rec.set_name.len() > SET_NAME_MAX_BYTES {
        return Err(WriteError::Invalid(format!(
            "set name of {} bytes (max {SET_NAME_MAX_BYTES})",
            rec.set_name.len()
        )));
    }
    if rec.bins.is_empty() {
        return Err(WriteError::Invalid("a record needs at least one bin".into()));
    }
    if rec.bins.len() > RECORD_MAX_BINS {
        return Err(WriteError::Invalid(format!(
            "{} bins (max {RECORD_MAX_BINS})",
            rec.bins.len()
        )));
    }
    for b in &rec.bins {
        if b.name.as_bytes().is_empty() {
            return Err(WriteError::Invalid("empty bin name".into()));
        }
        if matches!(b.value, Value::Nil) {
            return Err(WriteError::Invalid(format!("bin {:?} holds nil", b.name)));
        }
    }
    if let Some(k) = &rec.key {
        if k.bytes.len() > u32::MAX as usize / 2 {
            return Err(WriteError::Invalid("key too long".into()));
        }
    }
    Ok(())
}

/// Decodes `bytes` (the record's padded extent) and checks it is the copy `entry` describes.
fn check_read(entry: &IndexEntry, bytes: &[u8], wblock_seq: u64) -> Result<Record, ReadError> {
    let corrupt = |detail: String| ReadError::Corrupt {
        digest: entry.digest(),
        detail,
    };
    let rec = record::decode(bytes, Some(wblock_seq)).map_err(|e| corrupt(e.to_string()))?;
    if rec.meta.digest != entry.digest()
        || rec.meta.generation != entry.generation()
        || rec.meta.lut_ms != entry.lut_ms()
    {
        return Err(corrupt(format!(
            "stored copy is {:?} gen {} lut {}, index expects gen {} lut {}",
            rec.meta.digest,
            rec.meta.generation,
            rec.meta.lut_ms,
            entry.generation(),
            entry.lut_ms()
        )));
    }
    if rec.meta.tombstone {
        return Err(ReadError::NotFound);
    }
    Ok(rec)
}
