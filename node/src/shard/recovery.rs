//! Start-up (format, fast restart, cold start) and clean shutdown (persisting the index).
//!
//! * **Format**: only a provably blank region (a header sector of zeros and no wblock or image
//!   magic at the start of any wblock), or one the operator names ([`super::Format::IfInvalid`]),
//!   gets a new header (random instance id); every wblock is free. Anything else that is not a
//!   valid header refuses the start and writes nothing (`docs/FAULT_MODEL.md`).
//! * **Fast restart**: a clean shutdown wrote the index as an image into free wblocks and pointed
//!   the header at it. Start-up reads the image, checks its CRC, its order and bounds, samples
//!   wblock headers against its block table, and loads it. The header is then rewritten without
//!   the image *before* any write is accepted, so a later crash can never load a stale image.
//! * **Cold start**: every wblock is read (several in flight, at the device's sequential
//!   bandwidth) and every record header checked. For each digest the copy with the greatest
//!   (valid body, LUT, wblock sequence) wins; tombstones and expired records stay in the index as
//!   tombstones, so they keep shadowing older copies. A copy whose body fails its checksum is
//!   *torn* (it spans sectors and its error is not inside one byte: a crash explains it) or
//!   *damaged* (media damage). A damaged newest copy stays in the index, so reads of it fail and
//!   no older copy comes back (`OpenReport::corrupt_kept`); a torn one gives way to every other
//!   copy, and a record with only torn copies is dropped and reported
//!   (`OpenReport::corrupt_dropped`, an error log line per digest): after a crash that is a
//!   write that was never acknowledged. Wblock and record headers damaged in one byte are
//!   repaired for recovery; damage past repair refuses the start unless
//!   [`super::OpenOptions::accept_damage`] is set.

use super::region::{
    self, ImageRef, RegionHeader, IMAGE_BLOCK_ENTRY_BYTES, IMAGE_BLOCK_HEADER_BYTES, IMAGE_HEADER_BYTES,
    MAX_IMAGE_WBLOCKS,
};
use super::{tag, BlockInfo, BlockState, Format, OpenError, OpenOptions, Region, Shard, ShardStats, TAG_STARTUP};
use super::region::HeaderSector;
use crate::clock::Clock;
use crate::config::StorageConfig;
use crate::digest::{Digest, PartitionId, N_PARTITIONS};
use crate::index::{IndexEntry, PrimaryIndex, Visit};
use crate::record::{self, RecordError, WblockHeader, RBLOCK_BYTES, RECORD_HEADER_BYTES, WBLOCK_HEADER_BYTES};
use bolide_drivers::{BlockDevice, BufPool, DeviceError, IoBuf, SubmitError, SECTOR_SIZE};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

/// How a shard came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The region was blank and has been formatted.
    Formatted,
    /// Every wblock was scanned.
    ColdStart,
    /// The index image of a clean shutdown was loaded.
    FastRestart,
}

/// What start-up did, for logs and benchmarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    pub mode: OpenMode,
    /// Why a fast restart was not possible, when an image existed but was refused.
    pub fallback_reason: Option<String>,
    pub wblocks_scanned: u32,
    pub wblocks_in_use: u32,
    pub records_found: u64,
    pub index_entries: usize,
    pub corrupt_headers: u64,
    pub corrupt_bodies: u64,
    /// Records dropped because no copy passed its checksum and the damage looks like a torn
    /// write (see the module docs).
    pub corrupt_dropped: u64,
    /// Records whose newest copy is damaged by what cannot be a torn write (media damage): kept
    /// in the index on the damaged copy, so reads answer an error and no older copy is served.
    pub corrupt_kept: u64,
    /// Wblock headers found damaged (repaired from their checksum and their records, or, with
    /// `accept_damage`, dropped).
    pub damaged_wblock_headers: u64,
    /// Record headers repaired (a damaged magic or one damaged byte).
    pub repaired_record_headers: u64,
    /// Wblocks dropped with their records under `accept_damage`.
    pub wblocks_dropped: u64,
    pub bytes_read: u64,
    pub elapsed_ms: u64,
}

/// What a clean shutdown persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    pub index_entries: usize,
    /// False when the image did not fit in the free wblocks (the next start is a cold start).
    pub image_written: bool,
    pub image_bytes: u64,
    pub image_wblocks: u32,
    pub elapsed_ms: u64,
}

fn submit_err(e: SubmitError) -> DeviceError {
    match e {
        SubmitError::Failed(d, _) => d,
        other => panic!("start-up I/O refused: {other}"),
    }
}

impl<D: BlockDevice, C: Clock> Shard<D, C> {
    /// Opens the shard on `region` of `dev`: formats it if blank, else fast-restarts or
    /// cold-starts (see the module docs). Blocks until done.
    ///
    /// # Errors
    /// Bad config, a region that does not fit, a header written with other settings or damaged
    /// (nothing is written then), or a device error.
    pub fn open(
        dev: D,
        clock: C,
        cfg: StorageConfig,
        shard_id: u32,
        region: Region,
    ) -> Result<(Shard<D, C>, OpenReport), OpenError> {
        Shard::open_with(dev, clock, cfg, shard_id, region, OpenOptions::default())
    }

    /// [`Shard::open`] with explicit [`OpenOptions`]: when a region may be formatted, and
    /// whether a cold start may drop damaged wblocks.
    ///
    /// # Errors
    /// As [`Shard::open`]; also [`OpenError::HeaderCorrupt`] (a header that is not valid, a
    /// damaged magic included), [`OpenError::NotBlank`] (a zeroed header over wblocks),
    /// [`OpenError::Truncated`] and [`OpenError::Damaged`]. Nothing is written to the
    /// device before these checks pass.
    pub fn open_with(
        mut dev: D,
        clock: C,
        cfg: StorageConfig,
        shard_id: u32,
        region: Region,
        opts: OpenOptions,
    ) -> Result<(Shard<D, C>, OpenReport), OpenError> {
        cfg.validate()?;
        let started = Instant::now();
        let info = dev.info().clone();
        let ws = cfg.wblock_size_bytes as usize;
        if !region.offset_bytes.is_multiple_of(SECTOR_SIZE as u64)
            || region
                .offset_bytes
                .checked_add(region.len_bytes)
                .is_none_or(|end| end > info.capacity_bytes)
        {
            return Err(OpenError::RegionOutOfRange {
                offset_bytes: region.offset_bytes,
                len_bytes: region.len_bytes,
                capacity_bytes: info.capacity_bytes,
            });
        }
        let n_wblocks = (region.len_bytes / ws as u64).min(u32::MAX as u64) as u32;
        if n_wblocks < 4 || n_wblocks as u64 * ws as u64 / 16 >= 1 << 40 {
            return Err(OpenError::RegionTooSmall {
                len_bytes: region.len_bytes,
                wblock_size_bytes: cfg.wblock_size_bytes,
            });
        }
        if cfg.commit_to_device && !info.durable_writes {
            tracing::warn!(shard = shard_id, device = %info.name, "commit_to_device is set but the device does not report durable writes (open it with O_DSYNC): acknowledged writes survive a process crash but may not survive power loss");
        }
        let pool_count = (cfg.max_write_cache_wblocks + cfg.defrag_max_in_flight + 4) as usize;
        let pool = BufPool::new(pool_count, ws);
        if let Err(e) = dev.register_buffers(&pool) {
            tracing::warn!(
                shard = shard_id,
                "buffer registration failed, using unregistered buffers: {e}"
            );
        }
        let reserve = ((n_wblocks - 1) as u64 * cfg.min_avail_pct as u64 / 100).max(2) as u32;
        let max_reads = cfg.max_pending_reads;
        let mut shard = Shard {
            dev,
            clock,
            cfg,
            shard_id,
            region,
            wblock_size: ws,
            n_wblocks,
            instance_id: 0,
            created_ms: 0,
            index: PrimaryIndex::new(),
            blocks: Vec::new(),
            free: VecDeque::new(),
            nonfree_seqs: BTreeSet::new(),
            next_seq: 1,
            ram: Vec::new(),
            spare_wblock_bufs: Vec::new(),
            client_wb: None,
            defrag_wb: None,
            replica_wb: None,
            pool,
            reads: (0..max_reads).map(|_| None).collect(),
            read_free: (0..max_reads).rev().collect(),
            small_bufs: Vec::new(),
            defrag_queue: VecDeque::new(),
            defrag_in_flight: 0,
            erase_queue: VecDeque::new(),
            erases_in_flight: 0,
            failed: None,
            events: Vec::new(),
            completions: Vec::new(),
            reserve_wblocks: reserve,
            nsup_next_pid: 0,
            nsup_due_ms: 0,
            nsup_active: false,
            stats: ShardStats::default(),
            stash: Vec::new(),
            next_internal_token: 0,
            lut_floor_ms: 0,
            truncate_scratch: Vec::new(),
            accept_damage: false,
        };
        shard.reset_blocks();
        let mut report = OpenReport {
            mode: OpenMode::Formatted,
            fallback_reason: None,
            wblocks_scanned: 0,
            wblocks_in_use: 0,
            records_found: 0,
            index_entries: 0,
            corrupt_headers: 0,
            corrupt_bodies: 0,
            corrupt_dropped: 0,
            corrupt_kept: 0,
            damaged_wblock_headers: 0,
            repaired_record_headers: 0,
            wblocks_dropped: 0,
            bytes_read: 0,
            elapsed_ms: 0,
        };
        let sector = shard.read_blocking(0, IoBuf::new(SECTOR_SIZE))?;
        let device = info.name.clone();
        let decoded = match RegionHeader::decode(sector.as_slice()) {
            Ok(HeaderSector::Blank) => {
                shard.check_blank()?;
                None
            }
            Ok(HeaderSector::Valid(h)) => Some(h),
            Err(reason) if opts.format == Format::IfInvalid => {
                tracing::warn!(shard = shard_id, %device, offset = region.offset_bytes, "formatting over a region header that is not valid, as the operator asked: {reason}");
                None
            }
            Err(reason) => {
                tracing::error!(shard = shard_id, %device, offset = region.offset_bytes, "region header refused: {reason}");
                return Err(OpenError::HeaderCorrupt {
                    device,
                    offset_bytes: region.offset_bytes,
                    reason,
                });
            }
        };
        shard.accept_damage = opts.accept_damage;
        match decoded {
            None => {
                shard.instance_id = shard.entropy(0) | 1;
                shard.next_seq = 1 + (shard.entropy(1) & 0xFFFF_FFFF);
                shard.created_ms = shard.clock.now_cl_ms();
                shard.write_header(None)?;
                tracing::info!(shard = shard_id, %device, offset = region.offset_bytes, wblocks = n_wblocks, "formatted a blank region");
            }
            Some(h) => {
                if h.wblock_size_bytes as u64 != ws as u64 {
                    return Err(OpenError::Mismatch {
                        what: "wblock size",
                        found: h.wblock_size_bytes as u64,
                        expected: ws as u64,
                    });
                }
                if u64::from(h.n_wblocks) > u64::from(n_wblocks) {
                    tracing::error!(shard = shard_id, %device, offset = region.offset_bytes, have = n_wblocks, header = h.n_wblocks, "region is shorter than its header says");
                    return Err(OpenError::Truncated {
                        device,
                        offset_bytes: region.offset_bytes,
                        have: u64::from(n_wblocks),
                        header: u64::from(h.n_wblocks),
                    });
                }
                let checks = [
                    ("wblock count", h.n_wblocks as u64, n_wblocks as u64),
                    ("shard id", h.shard_id as u64, shard_id as u64),
                ];
                for (what, found, expected) in checks {
                    if found != expected {
                        return Err(OpenError::Mismatch { what, found, expected });
                    }
                }
                shard.instance_id = h.instance_id;
                shard.created_ms = h.created_ms;
                let mut loaded = false;
                if let Some(img) = &h.image {
                    match shard.load_image(img, &mut report) {
                        Ok(()) => loaded = true,
                        Err(reason) => {
                            tracing::warn!(shard = shard_id, "index image refused, cold start: {reason}");
                            report.fallback_reason = Some(reason);
                            shard.index = PrimaryIndex::new();
                            shard.reset_blocks();
                        }
                    }
                    // Never leave a valid image pointer behind once the shard may change.
                    shard.write_header(None)?;
                }
                if loaded {
                    report.mode = OpenMode::FastRestart;
                } else {
                    report.mode = OpenMode::ColdStart;
                    shard.cold_start(&mut report)?;
                }
            }
        }
        report.index_entries = shard.index.len();
        report.wblocks_in_use = shard.nonfree_seqs.len() as u32;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        shard.nsup_due_ms = shard.clock.mono_ms();
        tracing::info!(shard = shard_id, ?report, "shard open");
        Ok((shard, report))
    }

    /// 64 bits that differ between starts (wall clock, monotonic clock, shard and device) yet
    /// are reproducible under a simulated clock.
    fn entropy(&self, salt: u64) -> u64 {
        use ripemd::Digest as _;
        let mut h = ripemd::Ripemd160::new();
        h.update(self.clock.now_cl_ms().to_le_bytes());
        h.update(self.clock.mono_ms().to_le_bytes());
        h.update(self.shard_id.to_le_bytes());
        h.update(self.dev.info().name.as_bytes());
        h.update(salt.to_le_bytes());
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// Proves a region whose header sector is zeros blank: no wblock starts with a wblock or
    /// index-image header (a magic within [`record::MAGIC_FLIP_MAX_BITS`] bits counts, so a
    /// damaged one is not missed). One sector read per wblock, several in flight.
    fn check_blank(&mut self) -> Result<(), OpenError> {
        let ws = self.wblock_size as u64;
        let near = |b: &[u8], magic: u32| {
            (u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) ^ magic).count_ones() <= record::MAGIC_FLIP_MAX_BITS
        };
        let mut next = 1u32;
        let mut in_flight = 0usize;
        let mut done = Vec::new();
        let mut found: Option<(u32, &'static str)> = None;
        let depth = self.dev.info().max_in_flight.clamp(1, 32);
        loop {
            while found.is_none() && next < self.n_wblocks && in_flight < depth {
                let off = self.region.offset_bytes + next as u64 * ws;
                self.dev
                    .submit_read(off, IoBuf::new(SECTOR_SIZE), tag(TAG_STARTUP, next as u64))
                    .map_err(submit_err)?;
                next += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            self.dev.submit()?;
            self.dev.reap(&mut done, 1)?;
            for c in done.drain(..) {
                in_flight -= 1;
                let id = (c.tag & ((1 << 56) - 1)) as u32;
                let buf = c.buf.expect("read carries its buffer");
                if let Err(e) = c.result {
                    found.get_or_insert((id, "an unreadable first sector"));
                    tracing::error!(shard = self.shard_id, wblock = id, "blank check: {e}");
                    continue;
                }
                let b = buf.as_slice();
                if near(b, record::WBLOCK_MAGIC) {
                    found.get_or_insert((id, "a wblock header"));
                } else if near(b, region::IMAGE_BLOCK_MAGIC) {
                    found.get_or_insert((id, "an index-image header"));
                }
            }
        }
        match found {
            None => Ok(()),
            Some((wblock, what)) => {
                let device = self.dev.info().name.clone();
                tracing::error!(shard = self.shard_id, %device, offset = self.region.offset_bytes, wblock, what, "region header is zeros over a region that holds data; not formatting it");
                Err(OpenError::NotBlank {
                    device,
                    offset_bytes: self.region.offset_bytes,
                    wblock,
                    wblock_offset_bytes: self.region.offset_bytes + wblock as u64 * ws,
                    what,
                })
            }
        }
    }

    fn reset_blocks(&mut self) {
        let n = self.n_wblocks as usize;
        self.blocks = vec![
            BlockInfo {
                state: BlockState::Free,
                seq: 0,
                live_bytes: 0,
                queued: false,
                free_deps: 0
            };
            n
        ];
        self.blocks[0].state = BlockState::Reserved;
        self.free = (1..self.n_wblocks).collect();
        self.nonfree_seqs.clear();
        self.defrag_queue.clear();
        self.next_seq = 1;
    }

    fn write_header(&mut self, image: Option<ImageRef>) -> Result<(), DeviceError> {
        let h = RegionHeader {
            instance_id: self.instance_id,
            wblock_size_bytes: self.wblock_size as u32,
            n_wblocks: self.n_wblocks,
            shard_id: self.shard_id,
            created_ms: self.created_ms,
            image,
        };
        let mut buf = IoBuf::new(SECTOR_SIZE);
        h.encode(buf.as_mut_slice());
        self.write_blocking(0, buf)?;
        self.device_flush_blocking()
    }

    /// One read at `offset` (bytes into the region), waited for. Only while nothing else is in
    /// flight (start-up and shutdown).
    fn read_blocking(&mut self, offset: u64, buf: IoBuf) -> Result<IoBuf, DeviceError> {
        self.dev
            .submit_read(self.region.offset_bytes + offset, buf, tag(TAG_STARTUP, 0))
            .map_err(submit_err)?;
        self.one_blocking()
    }

    fn write_blocking(&mut self, offset: u64, buf: IoBuf) -> Result<IoBuf, DeviceError> {
        self.dev
            .submit_write(self.region.offset_bytes + offset, buf, tag(TAG_STARTUP, 0))
            .map_err(submit_err)?;
        self.one_blocking()
    }

    fn device_flush_blocking(&mut self) -> Result<(), DeviceError> {
        if self.dev.info().durable_writes {
            return Ok(());
        }
        self.dev.submit_flush(tag(TAG_STARTUP, 0)).map_err(submit_err)?;
        self.one_blocking().map(|_| ())
    }

    fn one_blocking(&mut self) -> Result<IoBuf, DeviceError> {
        assert_eq!(
            self.dev.in_flight(),
            1,
            "blocking start-up I/O with other I/O in flight"
        );
        self.dev.submit()?;
        let mut out = Vec::with_capacity(1);
        while out.is_empty() {
            self.dev.reap(&mut out, 1)?;
        }
        let c = out.pop().expect("one completion");
        c.result?;
        Ok(c.buf.unwrap_or_else(|| IoBuf::new(SECTOR_SIZE)))
    }

    // ----- cold start -----

    fn cold_start(&mut self, report: &mut OpenReport) -> Result<(), OpenError> {
        let ws = self.wblock_size;
        let mut quality: HashMap<Digest, CopyQuality> = HashMap::new();
        let mut valid_blocks: Vec<(u32, u64)> = Vec::new();
        let mut refusal: Option<OpenError> = None;
        let mut next = 1u32;
        let mut in_flight = 0usize;
        let mut done = Vec::new();
        let mut io_error = None;
        loop {
            while next < self.n_wblocks && refusal.is_none() && io_error.is_none() {
                let Some(buf) = self.pool.take() else { break };
                let off = self.region.offset_bytes + next as u64 * ws as u64;
                self.dev
                    .submit_read(off, buf, tag(TAG_STARTUP, next as u64))
                    .map_err(submit_err)?;
                next += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            self.dev.submit()?;
            self.dev.reap(&mut done, 1)?;
            for c in done.drain(..) {
                in_flight -= 1;
                let id = (c.tag & ((1 << 56) - 1)) as u32;
                let buf = c.buf.expect("read carries its buffer");
                if let Err(e) = c.result {
                    self.pool.put(buf);
                    io_error.get_or_insert(e);
                    continue;
                }
                if refusal.is_some() || io_error.is_some() {
                    self.pool.put(buf);
                    continue;
                }
                report.bytes_read += ws as u64;
                report.wblocks_scanned += 1;
                match self.scan_wblock(id, buf.as_slice(), &mut quality, report) {
                    Ok(Some(seq)) => valid_blocks.push((id, seq)),
                    Ok(None) => {}
                    Err(e) => refusal = Some(e),
                }
                self.pool.put(buf);
            }
        }
        if let Some(e) = io_error {
            return Err(OpenError::Device(e));
        }
        if let Some(e) = refusal {
            return Err(e);
        }
        for (id, seq) in valid_blocks {
            self.blocks[id as usize].state = BlockState::Sealed;
            self.nonfree_seqs.insert((seq, id));
            self.next_seq = self.next_seq.max(seq + 1);
        }
        // Erased wblocks still hold records of their earlier lives, stamped with sequences that
        // may be above every valid wblock's. Jump ahead by a random 32-bit step so a new wblock
        // is very unlikely to share their low 32 bits (which would let a torn write expose
        // them).
        self.next_seq += self.entropy(2) & 0xFFFF_FFFF;
        let device = self.dev.info().name.clone();
        let ws64 = ws as u64;
        let mut dropped = 0u64;
        let mut kept = 0u64;
        for (d, q) in &quality {
            let Some(e) = self.index.get(d).copied() else { continue };
            let (wblock, offset) = (e.addr_bytes() / ws64, self.region.offset_bytes + e.addr_bytes());
            match q {
                CopyQuality::Good => {}
                // A record whose only copies fail their body checksum in a way a torn write
                // explains: after a crash, a write that was never acknowledged (a valid older
                // copy would have won). Dropped, counted and logged.
                CopyQuality::Torn => {
                    tracing::error!(shard = self.shard_id, %device, digest = ?d, wblock, offset, "cold start: dropped a record whose every copy fails its body checksum like a torn write");
                    self.index.remove(d);
                    dropped += 1;
                }
                // Newest copy damaged by what no crash explains: keep it, so the record reads
                // as corrupt (loud) and no older copy or deleted state comes back.
                CopyQuality::Damaged => {
                    tracing::error!(shard = self.shard_id, %device, digest = ?d, wblock, offset, generation = e.generation(), "cold start: the newest copy of a record is damaged (media damage, not a torn write); it is kept and reads of it fail, no older copy is served");
                    kept += 1;
                }
            }
        }
        report.corrupt_dropped = dropped;
        report.corrupt_kept = kept;
        self.stats.cold_start_corrupt_dropped += dropped;
        self.stats.cold_start_corrupt_kept += kept;
        self.stats.cold_start_damaged_wblock_headers += report.damaged_wblock_headers;
        self.stats.cold_start_repaired_record_headers += report.repaired_record_headers;
        self.stats.cold_start_wblocks_dropped += report.wblocks_dropped;
        self.finish_load();
        Ok(())
    }

    /// Reads a wblock header at cold start (see `docs/FAULT_MODEL.md`, "Wblock header").
    fn classify_wblock(&self, id: u32, data: &[u8]) -> WblockVerdict {
        let ws = self.wblock_size;
        let h = &data[..WBLOCK_HEADER_BYTES];
        let le32 = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let le64 = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let ours_fields = le64(16) == self.instance_id && le32(24) == id && le32(28) as usize == ws;
        let crc_ok = crc32c::crc32c(&h[8..]) == le32(4);
        let magic = le32(0);
        match WblockHeader::decode(h) {
            Ok(Some(w)) if w.instance_id == self.instance_id && w.wblock_id == id && w.wblock_size_bytes as usize == ws => {
                WblockVerdict::Valid(w)
            }
            Ok(Some(w)) => {
                if w.instance_id == self.instance_id {
                    tracing::error!(shard = self.shard_id, wblock = id, header_wblock = w.wblock_id, "cold start: wblock holds the header of another wblock (a misdirected write); treated as free");
                }
                WblockVerdict::Free
            }
            // Not a header, or another instance's (possibly with a damaged magic): free space.
            Ok(None) if !ours_fields => WblockVerdict::Free,
            _ => {
                let detail = if magic != record::WBLOCK_MAGIC {
                    format!("magic {:08x}, expected {:08x}", magic.swap_bytes(), record::WBLOCK_MAGIC.swap_bytes())
                } else if !crc_ok {
                    "header checksum mismatch".to_string()
                } else {
                    "reserved bytes or size invalid".to_string()
                };
                // Repair what the checksum proves: a damaged magic over intact bytes, damage
                // inside one byte of the checksum or of bytes 8..64. The repaired header must
                // name this region and wblock, and its first record must carry its sequence.
                let mut fixed = [0u8; WBLOCK_HEADER_BYTES];
                fixed.copy_from_slice(h);
                fixed[0..4].copy_from_slice(&record::WBLOCK_MAGIC.to_le_bytes());
                let stored = le32(4);
                let computed = crc32c::crc32c(&h[8..]);
                if computed != stored {
                    let diff = (computed ^ stored).to_le_bytes();
                    if diff.iter().filter(|&&b| b != 0).count() == 1 && magic == record::WBLOCK_MAGIC {
                        fixed[4..8].copy_from_slice(&computed.to_le_bytes());
                    } else if let Some((j, v)) = record::crc_error_in_one_byte(&h[8..], stored) {
                        fixed[8 + j] ^= v;
                    }
                }
                let repairable = magic == record::WBLOCK_MAGIC || crc_ok;
                if let (true, Ok(Some(w))) = (repairable, WblockHeader::decode(&fixed)) {
                    if w.instance_id == self.instance_id
                        && w.wblock_id == id
                        && w.wblock_size_bytes as usize == ws
                        && first_record_seq_lo(data, ws).is_none_or(|lo| lo == w.seq as u32)
                    {
                        return WblockVerdict::Damaged { recovered: Some(w), detail };
                    }
                }
                WblockVerdict::Damaged { recovered: None, detail }
            }
        }
    }

    /// Scans one wblock; returns its sequence when its header is valid (or repaired).
    ///
    /// # Errors
    /// [`OpenError::Damaged`] when the wblock header, or a record header in sequence, is damaged
    /// beyond repair over records that may be newest copies, and `accept_damage` is not set.
    fn scan_wblock(
        &mut self,
        id: u32,
        data: &[u8],
        quality: &mut HashMap<Digest, CopyQuality>,
        report: &mut OpenReport,
    ) -> Result<Option<u64>, OpenError> {
        let ws = self.wblock_size;
        let wblock_offset = self.region.offset_bytes + id as u64 * ws as u64;
        let hdr = match self.classify_wblock(id, data) {
            WblockVerdict::Valid(h) => h,
            WblockVerdict::Free => return Ok(None),
            WblockVerdict::Damaged { recovered: Some(h), detail } => {
                report.damaged_wblock_headers += 1;
                tracing::error!(shard = self.shard_id, device = %self.dev.info().name, wblock = id, offset = wblock_offset, seq = h.seq, "cold start: damaged wblock header ({detail}) repaired from its checksum and its records; the wblock is used");
                h
            }
            WblockVerdict::Damaged { recovered: None, detail } => {
                report.damaged_wblock_headers += 1;
                let records = count_record_headers(data, ws);
                if records == 0 {
                    tracing::error!(shard = self.shard_id, device = %self.dev.info().name, wblock = id, offset = wblock_offset, "cold start: damaged wblock header ({detail}) over no records; treated as free");
                    return Ok(None);
                }
                let detail = format!("wblock {id} has a damaged header ({detail}) and holds {records} record headers that cannot be placed in time");
                return self.damage_found(wblock_offset, detail, report).map(|()| None);
            }
        };
        self.blocks[id as usize].seq = hdr.seq;
        let mut pos = WBLOCK_HEADER_BYTES;
        // True while `pos` is where the previous record ended: a damaged header there is a
        // record of this wblock, not bytes inside a body stepped through while resynchronising.
        let mut in_sync = true;
        while pos + RECORD_HEADER_BYTES <= ws {
            let mut repaired = None;
            let decoded = match record::decode_header(&data[pos..], Some(hdr.seq)) {
                Err(RecordError::HeaderCorrupt) => match record::repair_record_header(&data[pos..]) {
                    Some(fixed) => match record::decode_header(&fixed, Some(hdr.seq)) {
                        Ok(h) => {
                            repaired = Some(fixed);
                            Ok(h)
                        }
                        Err(e) => Err(e),
                    },
                    None => Err(RecordError::HeaderCorrupt),
                },
                other => other,
            };
            match decoded {
                Ok(h) if pos + h.padded_len() <= ws => {
                    let span = &data[pos..pos + h.total_len as usize];
                    let body_ok = record::verify_body(&h, span).is_ok();
                    let q = if repaired.is_some() {
                        report.repaired_record_headers += 1;
                        tracing::error!(shard = self.shard_id, wblock = id, offset = wblock_offset + pos as u64, digest = ?h.meta.digest, "cold start: damaged record header repaired for recovery; the copy on the device stays damaged");
                        // The copy on the device fails its checks at every read: it counts as
                        // damaged even when its body is intact.
                        CopyQuality::Damaged
                    } else if body_ok || h.meta.tombstone {
                        // A tombstone is all header: a damaged body does not undo the delete.
                        if !body_ok {
                            report.corrupt_bodies += 1;
                        }
                        CopyQuality::Good
                    } else {
                        report.corrupt_bodies += 1;
                        let one_sector = pos / SECTOR_SIZE == (pos + h.total_len as usize - 1) / SECTOR_SIZE;
                        if one_sector || record::crc_error_in_one_byte(&span[RECORD_HEADER_BYTES..], h.body_crc).is_some() {
                            CopyQuality::Damaged
                        } else {
                            CopyQuality::Torn
                        }
                    };
                    report.records_found += 1;
                    let addr = self.addr_of(id, pos);
                    let new = IndexEntry::new(
                        h.meta.digest,
                        addr,
                        h.padded_len(),
                        h.meta.generation,
                        h.meta.void_time,
                        h.meta.lut_ms.min(crate::index::MAX_LUT_MS),
                        h.meta.tombstone,
                    );
                    // Newest wins. A torn copy loses to every other; between the rest the
                    // greater LUT wins, then an intact copy over a damaged one of the same LUT
                    // (defrag's moves keep the LUT), then the greater wblock sequence.
                    let key = |q: CopyQuality, lut: u64, seq: u64| (q != CopyQuality::Torn, lut, q == CopyQuality::Good, seq);
                    let wins = match self.index.get(&h.meta.digest) {
                        None => true,
                        Some(old) => {
                            let old_seq = self.blocks[self.block_of(old.addr_bytes()) as usize].seq;
                            let old_q = quality.get(&h.meta.digest).copied().unwrap_or(CopyQuality::Good);
                            key(q, new.lut_ms(), hdr.seq) > key(old_q, old.lut_ms(), old_seq)
                        }
                    };
                    if wins {
                        self.index.insert(new);
                        quality.insert(h.meta.digest, q);
                    }
                    pos += h.padded_len();
                    in_sync = true;
                }
                Ok(_) | Err(RecordError::HeaderCorrupt) => {
                    report.corrupt_headers += 1;
                    let crosses = pos / SECTOR_SIZE != (pos + RECORD_HEADER_BYTES - 1) / SECTOR_SIZE;
                    if in_sync && !crosses {
                        // A record header of this wblock, inside one sector (so no torn write
                        // made it), damaged past repair: its digest is unknown.
                        let detail = format!(
                            "wblock {id}: the record header at byte offset {} is damaged past repair (its record, which may be the newest copy, cannot be identified)",
                            wblock_offset + pos as u64
                        );
                        self.damage_found(wblock_offset + pos as u64, detail, report)?;
                    }
                    in_sync = false;
                    pos += RBLOCK_BYTES;
                }
                Err(_) => {
                    in_sync = false;
                    pos += RBLOCK_BYTES;
                }
            }
        }
        Ok(Some(hdr.seq))
    }

    /// Damage a cold start cannot attribute: refuses the start, or with `accept_damage` logs
    /// and counts it and goes on.
    fn damage_found(&mut self, offset_bytes: u64, detail: String, report: &mut OpenReport) -> Result<(), OpenError> {
        let device = self.dev.info().name.clone();
        if self.accept_damage {
            tracing::error!(shard = self.shard_id, %device, offset = offset_bytes, "cold start: {detail}; skipped as accept_damage allows (older copies of its records may be served)");
            report.wblocks_dropped += 1;
            return Ok(());
        }
        tracing::error!(shard = self.shard_id, %device, offset = offset_bytes, "cold start refused: {detail}");
        Err(OpenError::Damaged {
            device,
            offset_bytes,
            detail,
        })
    }

    /// After the index is loaded: expired records become tombstones, live bytes are counted, the
    /// free list is built and sparse wblocks are queued for defrag.
    fn finish_load(&mut self) {
        let now_s = self.clock.now_cl_s();
        let mut expired = 0u64;
        for pid in 0..N_PARTITIONS as u16 {
            let pid = PartitionId(pid);
            if self.index.partition_len(pid) == 0 {
                continue;
            }
            self.index.visit_partition(pid, |e| {
                if !e.is_tombstone() && super::is_expired(e, now_s) {
                    e.set_tombstone();
                    expired += 1;
                }
                Visit::Keep
            });
        }
        self.stats.expired += expired;
        for b in &mut self.blocks {
            b.live_bytes = 0;
        }
        let ws = self.wblock_size as u64;
        for e in self.index.iter() {
            if !e.is_tombstone() {
                self.blocks[(e.addr_bytes() / ws) as usize].live_bytes += e.size_bytes() as u64;
            }
        }
        self.free = (1..self.n_wblocks)
            .filter(|&b| self.blocks[b as usize].state == BlockState::Free)
            .collect();
        for b in 1..self.n_wblocks {
            let info = &self.blocks[b as usize];
            assert!(
                info.state == BlockState::Sealed || info.live_bytes == 0,
                "free wblock {b} holds live records"
            );
            self.maybe_queue_defrag(b);
        }
    }

    // ----- fast restart -----

    fn load_image(&mut self, img: &ImageRef, report: &mut OpenReport) -> Result<(), String> {
        let ws = self.wblock_size;
        let n = self.n_wblocks as usize;
        let cap = ws - IMAGE_BLOCK_HEADER_BYTES;
        if img.wblocks.is_empty() || img.wblocks.len() > MAX_IMAGE_WBLOCKS {
            return Err(format!("image spans {} wblocks", img.wblocks.len()));
        }
        let distinct: HashSet<u32> = img.wblocks.iter().copied().collect();
        if distinct.len() != img.wblocks.len() || img.wblocks.iter().any(|&b| b == 0 || b as usize >= n) {
            return Err("image wblock list is invalid".into());
        }
        if img.len_bytes > (img.wblocks.len() * cap) as u64
            || img.len_bytes < (IMAGE_HEADER_BYTES + n * IMAGE_BLOCK_ENTRY_BYTES) as u64
        {
            return Err(format!("image length {} does not fit its wblocks", img.len_bytes));
        }
        let mut parser = ImageParser::new(n, img.len_bytes);
        // Read the image wblocks in order, several in flight; parse in order.
        let mut pending: Vec<Option<IoBuf>> = (0..img.wblocks.len()).map(|_| None).collect();
        let (mut next_submit, mut next_parse, mut in_flight) = (0usize, 0usize, 0usize);
        let mut done = Vec::new();
        while next_parse < img.wblocks.len() {
            while next_submit < img.wblocks.len() {
                let Some(buf) = self.pool.take() else { break };
                let off = self.region.offset_bytes + img.wblocks[next_submit] as u64 * ws as u64;
                self.dev
                    .submit_read(off, buf, tag(TAG_STARTUP, next_submit as u64))
                    .map_err(|e| submit_err(e).to_string())?;
                next_submit += 1;
                in_flight += 1;
            }
            if pending[next_parse].is_none() {
                self.dev.submit().map_err(|e| e.to_string())?;
                self.dev.reap(&mut done, 1).map_err(|e| e.to_string())?;
                let mut failure = None;
                for c in done.drain(..) {
                    in_flight -= 1;
                    let i = (c.tag & ((1 << 56) - 1)) as usize;
                    let buf = c.buf.expect("read carries its buffer");
                    if let Err(e) = c.result {
                        failure = Some(e.to_string());
                        self.pool.put(buf);
                    } else {
                        pending[i] = Some(buf);
                    }
                }
                if let Some(f) = failure {
                    self.drain_startup(in_flight, &mut pending);
                    return Err(f);
                }
                continue;
            }
            let buf = pending[next_parse].take().expect("checked");
            report.bytes_read += ws as u64;
            let ok = region::check_image_block_header(buf.as_slice(), next_parse as u32, self.instance_id);
            let remaining = img.len_bytes as usize - next_parse * cap;
            let take = remaining.min(cap);
            let result = if ok {
                parser.feed(
                    &buf.as_slice()[IMAGE_BLOCK_HEADER_BYTES..IMAGE_BLOCK_HEADER_BYTES + take],
                    self,
                )
            } else {
                Err(format!("image wblock {next_parse} has a bad header"))
            };
            self.pool.put(buf);
            if let Err(e) = result {
                self.drain_startup(in_flight, &mut pending);
                return Err(e);
            }
            next_parse += 1;
        }
        parser.finish(img.crc)?;
        // Block table from the image.
        let table = std::mem::take(&mut parser.table);
        for (b, (seq, used)) in table.iter().enumerate().skip(1) {
            if *used {
                if *seq == 0 || *seq >= img.next_seq {
                    return Err(format!("wblock {b} has sequence {seq}, next sequence {}", img.next_seq));
                }
                self.blocks[b].state = BlockState::Sealed;
                self.blocks[b].seq = *seq;
                self.nonfree_seqs.insert((*seq, b as u32));
            }
        }
        for e in self.index.iter() {
            let b = (e.addr_bytes() / ws as u64) as usize;
            if b == 0 || b >= n || !table[b].1 || (e.addr_bytes() % ws as u64) as usize + e.size_bytes() > ws {
                return Err(format!("entry {:?} points outside the wblocks in use", e.digest()));
            }
        }
        self.sample_check(&table)?;
        self.next_seq = img.next_seq;
        self.finish_load();
        Ok(())
    }

    /// Compares the headers of up to 64 in-use wblocks with the image's block table.
    fn sample_check(&mut self, table: &[(u64, bool)]) -> Result<(), String> {
        let used: Vec<usize> = (1..table.len()).filter(|&b| table[b].1).collect();
        let step = used.len().div_ceil(64).max(1);
        for &b in used.iter().step_by(step) {
            let buf = self
                .read_blocking(b as u64 * self.wblock_size as u64, IoBuf::new(SECTOR_SIZE))
                .map_err(|e| e.to_string())?;
            match WblockHeader::decode(&buf.as_slice()[..WBLOCK_HEADER_BYTES]) {
                Ok(Some(h))
                    if h.seq == table[b].0 && h.instance_id == self.instance_id && h.wblock_id as usize == b => {}
                other => {
                    return Err(format!(
                        "wblock {b} on the device ({other:?}) does not match the image (sequence {})",
                        table[b].0
                    ))
                }
            }
        }
        Ok(())
    }

    fn drain_startup(&mut self, mut in_flight: usize, pending: &mut [Option<IoBuf>]) {
        let mut done = Vec::new();
        while in_flight > 0 {
            if self.dev.reap(&mut done, 1).is_err() {
                break;
            }
            for c in done.drain(..) {
                in_flight -= 1;
                if let Some(b) = c.buf {
                    self.pool.put(b);
                }
            }
        }
        for p in pending.iter_mut() {
            if let Some(b) = p.take() {
                self.pool.put(b);
            }
        }
    }

    // ----- shutdown -----

    /// Clean shutdown: stops defrag, makes every write durable, waits for all I/O, writes the
    /// index image into free wblocks and points the region header at it.
    ///
    /// Returns the report and the device.
    ///
    /// # Errors
    /// A device error (the next start will cold-start).
    pub fn shutdown(mut self) -> Result<(ShutdownReport, D), DeviceError> {
        let started = Instant::now();
        for b in self.defrag_queue.drain(..) {
            self.blocks[b as usize].queued = false;
        }
        loop {
            self.flush_blocking()?;
            let mut evs = Vec::new();
            self.poll(&mut evs);
            self.stash.extend(evs);
            let quiet =
                self.dev.in_flight() == 0 && self.erase_queue.is_empty() && self.ram.iter().all(|r| r.is_durable());
            if quiet {
                break;
            }
            let mut evs = Vec::new();
            self.wait(&mut evs);
            self.stash.extend(evs);
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let ws = self.wblock_size;
        let n = self.n_wblocks as usize;
        let cap = ws - IMAGE_BLOCK_HEADER_BYTES;
        let entries = self.index.len();
        let len = IMAGE_HEADER_BYTES + n * IMAGE_BLOCK_ENTRY_BYTES + entries * 40;
        let need = len.div_ceil(cap);
        let mut report = ShutdownReport {
            index_entries: entries,
            image_written: false,
            image_bytes: len as u64,
            image_wblocks: need as u32,
            elapsed_ms: 0,
        };
        if need > MAX_IMAGE_WBLOCKS || need > self.free.len() {
            tracing::warn!(
                shard = self.shard_id,
                need,
                free = self.free.len(),
                "index image does not fit in free wblocks; next start is a cold start"
            );
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            return Ok((report, self.dev));
        }
        let ids: Vec<u32> = self.free.iter().take(need).copied().collect();
        let mut payload: Vec<u8> = Vec::with_capacity(IMAGE_HEADER_BYTES + n * IMAGE_BLOCK_ENTRY_BYTES);
        payload.extend_from_slice(&(entries as u64).to_le_bytes());
        payload.extend_from_slice(&(n as u32).to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        for b in &self.blocks {
            let used = !matches!(b.state, BlockState::Free | BlockState::Reserved);
            payload.extend_from_slice(&(if used { b.seq } else { 0 }).to_le_bytes());
            payload.extend_from_slice(&[used as u8, 0, 0, 0, 0, 0, 0, 0]);
        }
        let mut crc = 0u32;
        let mut writer = ImageWriter {
            ids: &ids,
            next: 0,
            cur: None,
            fill: 0,
            cap,
            in_flight: 0,
            base: self.region.offset_bytes,
            wblock_size: ws,
            instance_id: self.instance_id,
            done: Vec::new(),
        };
        let Shard { dev, pool, index, .. } = &mut self;
        crc = crc32c::crc32c_append(crc, &payload);
        writer.put(&payload, dev, pool)?;
        for e in index.iter() {
            let bytes = e.to_bytes();
            crc = crc32c::crc32c_append(crc, &bytes);
            writer.put(&bytes, dev, pool)?;
        }
        writer.finish(dev, pool)?;
        self.device_flush_blocking()?;
        let image = ImageRef {
            next_seq: self.next_seq,
            len_bytes: len as u64,
            crc,
            wblocks: ids,
        };
        self.write_header(Some(image))?;
        report.image_written = true;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(shard = self.shard_id, ?report, "shard shut down cleanly");
        Ok((report, self.dev))
    }
}

/// How trustworthy the copy a digest's index entry points at is, during a cold start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyQuality {
    /// Checksums pass (or a tombstone with a valid header).
    Good,
    /// Fails its checks in a way a torn write cannot explain (media damage): kept, reads fail.
    Damaged,
    /// Fails its body checksum in a way a torn write explains: loses to every other copy.
    Torn,
}

/// A wblock header as a cold start judges it.
enum WblockVerdict {
    Valid(WblockHeader),
    /// Never written, erased, another instance's, or not a header.
    Free,
    /// Ours but damaged; `recovered` when its fields could be proved.
    Damaged { recovered: Option<WblockHeader>, detail: String },
}

/// `wblock_seq_lo` of the first record header with a valid checksum, searching from byte 64 in
/// 16-byte steps: the first record of the wblock's current life (records are written front to
/// back, so nothing of an earlier life lies before it).
fn first_record_seq_lo(data: &[u8], ws: usize) -> Option<u32> {
    (WBLOCK_HEADER_BYTES..ws.saturating_sub(RECORD_HEADER_BYTES - 1))
        .step_by(RBLOCK_BYTES)
        .find_map(|p| record::decode_header(&data[p..], None).ok().map(|h| h.wblock_seq_lo))
}

/// Record headers with a valid checksum and the first one's sequence: what a wblock whose own
/// header is lost still holds.
fn count_record_headers(data: &[u8], ws: usize) -> u64 {
    let Some(lo) = first_record_seq_lo(data, ws) else { return 0 };
    (WBLOCK_HEADER_BYTES..ws.saturating_sub(RECORD_HEADER_BYTES - 1))
        .step_by(RBLOCK_BYTES)
        .filter(|&p| record::decode_header(&data[p..], Some(u64::from(lo))).is_ok())
        .count() as u64
}

/// Streams the image payload into wblock-sized pool buffers and writes them, several in flight.
struct ImageWriter<'a> {
    ids: &'a [u32],
    next: usize,
    cur: Option<IoBuf>,
    fill: usize,
    cap: usize,
    in_flight: usize,
    /// Region start, bytes.
    base: u64,
    wblock_size: usize,
    instance_id: u64,
    done: Vec<bolide_drivers::Completion>,
}

impl ImageWriter<'_> {
    fn put<D: BlockDevice>(&mut self, mut bytes: &[u8], dev: &mut D, pool: &mut BufPool) -> Result<(), DeviceError> {
        while !bytes.is_empty() {
            if self.cur.is_none() {
                let mut buf = loop {
                    if let Some(b) = pool.take() {
                        break b;
                    }
                    self.reap(dev, pool)?;
                };
                region::encode_image_block_header(buf.as_mut_slice(), self.next as u32, self.instance_id);
                self.cur = Some(buf);
                self.fill = 0;
            }
            let buf = self.cur.as_mut().expect("set");
            let n = bytes.len().min(self.cap - self.fill);
            let at = IMAGE_BLOCK_HEADER_BYTES + self.fill;
            buf.as_mut_slice()[at..at + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == self.cap {
                self.submit(dev, pool)?;
            }
        }
        Ok(())
    }

    fn submit<D: BlockDevice>(&mut self, dev: &mut D, pool: &mut BufPool) -> Result<(), DeviceError> {
        let mut buf = self.cur.take().expect("a buffer to write");
        let used = IMAGE_BLOCK_HEADER_BYTES + self.fill;
        buf.as_mut_slice()[used..].fill(0);
        buf.set_len(used.div_ceil(SECTOR_SIZE) * SECTOR_SIZE);
        let id = self.ids[self.next];
        self.next += 1;
        let offset = self.base + id as u64 * self.wblock_size as u64;
        let mut buf = Some(buf);
        loop {
            match dev.submit_write(offset, buf.take().expect("buffer"), tag(TAG_STARTUP, id as u64)) {
                Ok(()) => break,
                Err(SubmitError::QueueFull(b)) => {
                    buf = b;
                    self.reap(dev, pool)?;
                }
                Err(e) => return Err(submit_err(e)),
            }
        }
        self.in_flight += 1;
        dev.submit()?;
        Ok(())
    }

    /// Waits for at least one image write and recycles its buffer.
    fn reap<D: BlockDevice>(&mut self, dev: &mut D, pool: &mut BufPool) -> Result<(), DeviceError> {
        dev.submit()?;
        dev.reap(&mut self.done, self.in_flight.min(1))?;
        for c in self.done.drain(..) {
            self.in_flight -= 1;
            if let Some(b) = c.buf {
                pool.put(b);
            }
            c.result?;
        }
        Ok(())
    }

    fn finish<D: BlockDevice>(&mut self, dev: &mut D, pool: &mut BufPool) -> Result<(), DeviceError> {
        if self.cur.is_some() {
            self.submit(dev, pool)?;
        }
        while self.in_flight > 0 {
            self.reap(dev, pool)?;
        }
        assert_eq!(self.next, self.ids.len(), "image wblock count");
        Ok(())
    }
}

/// Parses the image payload as it streams in.
struct ImageParser {
    n_wblocks: usize,
    len: u64,
    seen: u64,
    crc: u32,
    carry: Vec<u8>,
    entries_expected: Option<u64>,
    entries: u64,
    table: Vec<(u64, bool)>,
    last: Option<(u16, Digest)>,
}

impl ImageParser {
    fn new(n_wblocks: usize, len: u64) -> ImageParser {
        ImageParser {
            n_wblocks,
            len,
            seen: 0,
            crc: 0,
            carry: Vec::new(),
            entries_expected: None,
            entries: 0,
            table: Vec::with_capacity(n_wblocks),
            last: None,
        }
    }

    fn feed<D: BlockDevice, C: Clock>(&mut self, bytes: &[u8], shard: &mut Shard<D, C>) -> Result<(), String> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.seen += bytes.len() as u64;
        if self.carry.is_empty() {
            let rest = self.consume(bytes, shard)?;
            self.carry = rest.to_vec();
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(bytes);
            let rest = self.consume(&joined, shard)?.to_vec();
            self.carry = rest;
        }
        Ok(())
    }

    /// Consumes whole items; returns the unconsumed tail.
    fn consume<'a, D: BlockDevice, C: Clock>(
        &mut self,
        mut data: &'a [u8],
        shard: &mut Shard<D, C>,
    ) -> Result<&'a [u8], String> {
        if self.entries_expected.is_none() {
            if data.len() < IMAGE_HEADER_BYTES {
                return Ok(data);
            }
            let entries = u64::from_le_bytes(data[0..8].try_into().expect("8"));
            let n = u32::from_le_bytes(data[8..12].try_into().expect("4")) as usize;
            if n != self.n_wblocks {
                return Err(format!("image is for {n} wblocks, region has {}", self.n_wblocks));
            }
            let expect_len = (IMAGE_HEADER_BYTES + n * IMAGE_BLOCK_ENTRY_BYTES) as u64 + entries * 40;
            if expect_len != self.len {
                return Err(format!("image length {} does not match {entries} entries", self.len));
            }
            self.entries_expected = Some(entries);
            data = &data[IMAGE_HEADER_BYTES..];
        }
        while self.table.len() < self.n_wblocks {
            if data.len() < IMAGE_BLOCK_ENTRY_BYTES {
                return Ok(data);
            }
            let seq = u64::from_le_bytes(data[0..8].try_into().expect("8"));
            self.table.push((seq, data[8] != 0));
            data = &data[IMAGE_BLOCK_ENTRY_BYTES..];
        }
        while data.len() >= 40 {
            let e = IndexEntry::try_from_bytes(data[..40].try_into().expect("40"))
                .map_err(|e| format!("bad index entry in image: {e:?}"))?;
            let key = (e.digest().partition_id().0, e.digest());
            if self.last.is_some_and(|l| l >= key) {
                return Err("image entries are out of order".into());
            }
            self.last = Some(key);
            shard.index.push_sorted(e);
            self.entries += 1;
            data = &data[40..];
        }
        Ok(data)
    }

    fn finish(&self, crc: u32) -> Result<(), String> {
        if self.seen != self.len || !self.carry.is_empty() {
            return Err(format!("image holds {} bytes, header says {}", self.seen, self.len));
        }
        if self.crc != crc {
            return Err("image checksum mismatch".into());
        }
        if Some(self.entries) != self.entries_expected {
            return Err("image entry count mismatch".into());
        }
        Ok(())
    }
}
