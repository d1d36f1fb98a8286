//! A deterministic, seeded, in-memory block device with an explicit fault model.
//!
//! [`SimDevice`] implements [`BlockDevice`] over a sparse in-memory [`SimDisk`]. Everything it
//! decides at random (latency, completion order, faults, what a crash keeps) comes from one
//! `ChaCha8Rng` seeded with [`SimConfig::seed`], so the same seed and the same sequence of calls
//! give the same completions, the same faults and the same crash image. No unsafe code.
//!
//! # Time
//!
//! Latency is counted in calls to [`BlockDevice::reap`]. When [`BlockDevice::submit`] hands an
//! I/O to the device it draws a latency `L` in `latency_polls_min..=latency_polls_max`; the I/O
//! completes in the `(L + 1)`-th `reap` call after that (latency 0: the first `reap`). The I/Os
//! that complete in one `reap` come out in a seeded-random order, so completions may overtake
//! one another. `reap(out, min)` completes at least `min(min, handed-over I/Os)` I/Os in that
//! call, force-completing the earliest-due ones, so it never waits forever. I/Os queued with
//! `submit_*` but not yet handed over with `submit` never complete (they still count in
//! [`BlockDevice::in_flight`]); `reap` does not hand them over.
//!
//! # Durability
//!
//! A write is applied to the disk at the moment its completion is generated, so a completed
//! write is durable ([`DeviceInfo::durable_writes`] is true) and a read returns the disk as it is
//! when the read completes. A flush completes only together with or after every write handed
//! over before it: a flush that comes due drags those writes along in the same `reap`, ahead of
//! it.
//!
//! # Fault model
//!
//! Decided per I/O by the seeded RNG when the I/O is handed over (rates in parts per million):
//!
//! * **read error** (`read_error_ppm`): the read completes with
//!   `Err(IoStatus::Injected("read error"))`; the buffer comes back with unspecified contents.
//! * **write error** (`write_error_ppm`): the write completes with
//!   `Err(IoStatus::Injected("write error"))`, and a seeded-random subset of its 4 KiB sectors
//!   (possibly none, possibly all) has been applied: after a failed write the range holds, per
//!   sector, either the old or the new data, as on a real device.
//! * **bit flip** (`bit_flip_ppm`): the read completes `Ok`, but one seeded-random bit of the
//!   returned buffer is flipped. The stored data stays right (the fault is on the transfer), so a
//!   re-read returns correct data unless it is flipped again. To corrupt the *stored* data, use
//!   [`SimDisk::flip_bit`].
//! * **device failure** ([`SimDevice::fail_all`]): every queued or in-flight I/O completes with
//!   `IoStatus::Failed` (writes not applied) and every later submit returns
//!   [`SubmitError::Failed`].
//! * **crash** ([`SimDevice::crash`]): the device is consumed; every write handed over but not
//!   completed is, by seeded choice, lost, applied, or torn at sector granularity (a random subset
//!   of its sectors applied, each sector atomically). Writes queued but never handed over are
//!   lost. [`SimDevice::from_disk`] "reboots" on the image.
//!
//! Each injected read error, write error and bit flip counts in [`SimStats::injected_faults`].

use crate::buf::{IoBuf, SECTOR_SIZE};
use crate::device::{check_io, BlockDevice, Completion, DeviceError, DeviceInfo, IoKind, IoStatus, SubmitError};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// One part per million: the unit of the fault rates.
const PPM: u32 = 1_000_000;

const _: () = assert!(SECTOR_SIZE.is_power_of_two());

/// How a [`SimDevice`] behaves. Build one with [`SimConfig::new`] and adjust the fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Device name used in [`DeviceInfo::name`] and in every error.
    pub name: String,
    /// Size of the device in bytes; a positive multiple of [`SECTOR_SIZE`].
    pub capacity_bytes: u64,
    /// Seed of the device's one random number generator.
    pub seed: u64,
    /// Most I/Os queued plus in flight at once (≥ 1); more are refused with `QueueFull`.
    pub max_in_flight: usize,
    /// Least latency of an I/O, in `reap` calls after it is handed over.
    pub latency_polls_min: u32,
    /// Most latency of an I/O, in `reap` calls (≥ `latency_polls_min`).
    pub latency_polls_max: u32,
    /// Chance that a read fails, parts per million (≤ 1 000 000).
    pub read_error_ppm: u32,
    /// Chance that a write fails (and is torn), parts per million (≤ 1 000 000).
    pub write_error_ppm: u32,
    /// Chance that a successful read returns one flipped bit, parts per million (≤ 1 000 000).
    pub bit_flip_ppm: u32,
}

impl SimConfig {
    /// A fault-free device: `max_in_flight` 64, latency 0..=3 `reap` calls, no injected faults.
    pub fn new(name: impl Into<String>, capacity_bytes: u64, seed: u64) -> SimConfig {
        SimConfig {
            name: name.into(),
            capacity_bytes,
            seed,
            max_in_flight: 64,
            latency_polls_min: 0,
            latency_polls_max: 3,
            read_error_ppm: 0,
            write_error_ppm: 0,
            bit_flip_ppm: 0,
        }
    }

    /// Panics naming the first field that is out of range (a programmer error).
    fn validate(&self) {
        assert!(
            self.capacity_bytes > 0 && self.capacity_bytes.is_multiple_of(SECTOR_SIZE as u64),
            "sim {}: capacity {} bytes is not a positive multiple of {SECTOR_SIZE}",
            self.name,
            self.capacity_bytes
        );
        assert!(
            self.max_in_flight > 0,
            "sim {}: max_in_flight must be at least 1",
            self.name
        );
        assert!(
            self.latency_polls_min <= self.latency_polls_max,
            "sim {}: latency_polls_min {} > latency_polls_max {}",
            self.name,
            self.latency_polls_min,
            self.latency_polls_max
        );
        for (field, ppm) in [
            ("read_error_ppm", self.read_error_ppm),
            ("write_error_ppm", self.write_error_ppm),
            ("bit_flip_ppm", self.bit_flip_ppm),
        ] {
            assert!(ppm <= PPM, "sim {}: {field} {ppm} is over {PPM}", self.name);
        }
    }
}

/// Counters of a [`SimDevice`], since it was made.
///
/// `reads`, `writes` and `flushes` count completions of each kind (successful or not);
/// `bytes_read` and `bytes_written` count bytes of successful transfers only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Read completions.
    pub reads: u64,
    /// Write completions.
    pub writes: u64,
    /// Flush completions.
    pub flushes: u64,
    /// Bytes moved by successful reads.
    pub bytes_read: u64,
    /// Bytes applied by successful writes.
    pub bytes_written: u64,
    /// Injected read errors, write errors and bit flips.
    pub injected_faults: u64,
}

type SectorData = Box<[u8; SECTOR_SIZE]>;

/// The simulated medium: `capacity_bytes()` bytes, stored sparsely by 4 KiB sector.
///
/// Memory is proportional to the sectors holding non-zero data: a sector is stored only while it
/// is not all zeros, and sectors never written read as zeros. Equality compares contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDisk {
    capacity_bytes: u64,
    /// Sector number → contents; never holds an all-zero sector.
    sectors: BTreeMap<u64, SectorData>,
}

impl SimDisk {
    /// An all-zero disk of `capacity_bytes` bytes.
    ///
    /// # Panics
    /// If `capacity_bytes` is not a positive multiple of [`SECTOR_SIZE`].
    pub fn new(capacity_bytes: u64) -> SimDisk {
        assert!(
            capacity_bytes > 0 && capacity_bytes.is_multiple_of(SECTOR_SIZE as u64),
            "disk capacity {capacity_bytes} bytes is not a positive multiple of {SECTOR_SIZE}"
        );
        SimDisk {
            capacity_bytes,
            sectors: BTreeMap::new(),
        }
    }

    /// Size of the disk, bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Sectors currently stored (holding non-zero data): the disk's memory footprint in
    /// [`SECTOR_SIZE`] units.
    pub fn stored_sectors(&self) -> usize {
        self.sectors.len()
    }

    /// Copies `out.len()` bytes starting at byte `offset` into `out`. Any offset and length.
    ///
    /// # Panics
    /// If the range runs past `capacity_bytes()`.
    pub fn read(&self, offset: u64, out: &mut [u8]) {
        self.check_range(offset, out.len());
        let mut done = 0;
        while done < out.len() {
            let pos = offset + done as u64;
            let sector = pos / SECTOR_SIZE as u64;
            let within = (pos % SECTOR_SIZE as u64) as usize;
            let n = (SECTOR_SIZE - within).min(out.len() - done);
            match self.sectors.get(&sector) {
                Some(data) => out[done..done + n].copy_from_slice(&data[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
    }

    /// Stores `data` starting at byte `offset`. Any offset and length.
    ///
    /// # Panics
    /// If the range runs past `capacity_bytes()`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.check_range(offset, data.len());
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let sector = pos / SECTOR_SIZE as u64;
            let within = (pos % SECTOR_SIZE as u64) as usize;
            let n = (SECTOR_SIZE - within).min(data.len() - done);
            let mut contents = self.sector(sector);
            contents[within..within + n].copy_from_slice(&data[done..done + n]);
            self.put_sector(sector, contents);
            done += n;
        }
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `byte_offset`: corrupts the stored
    /// data, as a medium error the device does not detect would.
    ///
    /// # Panics
    /// If `byte_offset` is past the end or `bit` > 7.
    pub fn flip_bit(&mut self, byte_offset: u64, bit: u8) {
        assert!(bit < 8, "bit {bit} is not in 0..8");
        self.check_range(byte_offset, 1);
        let sector = byte_offset / SECTOR_SIZE as u64;
        let mut contents = self.sector(sector);
        contents[(byte_offset % SECTOR_SIZE as u64) as usize] ^= 1 << bit;
        self.put_sector(sector, contents);
    }

    fn check_range(&self, offset: u64, len: usize) {
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.capacity_bytes),
            "range [{offset}, +{len}) is past the end of the {}-byte disk",
            self.capacity_bytes
        );
    }

    /// A copy of one sector's contents.
    fn sector(&self, sector: u64) -> SectorData {
        self.sectors
            .get(&sector)
            .cloned()
            .unwrap_or_else(|| Box::new([0; SECTOR_SIZE]))
    }

    /// Stores one sector, keeping the map free of all-zero sectors.
    fn put_sector(&mut self, sector: u64, contents: SectorData) {
        if contents.iter().all(|&b| b == 0) {
            self.sectors.remove(&sector);
        } else {
            self.sectors.insert(sector, contents);
        }
    }

    /// Applies one whole sector of a device write (`data.len() == SECTOR_SIZE`).
    fn apply_sector(&mut self, sector: u64, data: &[u8]) {
        let mut contents: SectorData = Box::new([0; SECTOR_SIZE]);
        contents.copy_from_slice(data);
        self.put_sector(sector, contents);
    }
}

/// What the RNG decided for one I/O when it was handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    ReadError,
    WriteError,
    BitFlip,
}

/// One I/O accepted by a submit call and not yet completed.
#[derive(Debug)]
struct Op {
    /// Order of acceptance; a flush waits for the writes with a smaller `seq`.
    seq: u64,
    tag: u64,
    kind: IoKind,
    offset: u64,
    buf: Option<IoBuf>,
    /// `reap` calls left before it comes due (0: completes in the next `reap`).
    due: u32,
    fault: Fault,
}

impl Op {
    fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, IoBuf::len)
    }
}

/// The deterministic simulated device. See the module docs for its time and fault model.
pub struct SimDevice {
    info: DeviceInfo,
    cfg: SimConfig,
    rng: ChaCha8Rng,
    disk: SimDisk,
    /// Accepted by `submit_*`, not yet handed over by `submit`.
    queued: Vec<Op>,
    /// Handed over, not yet completed; in `seq` order.
    pending: Vec<Op>,
    /// Failed by [`SimDevice::fail_all`], waiting to be reaped.
    dead: Vec<Completion>,
    failed: bool,
    next_seq: u64,
    stats: SimStats,
}

impl SimDevice {
    /// A fresh, all-zero device.
    ///
    /// # Panics
    /// If a field of `cfg` is out of range (see [`SimConfig`]).
    pub fn new(cfg: SimConfig) -> SimDevice {
        let disk = SimDisk::new(cfg.capacity_bytes);
        SimDevice::from_disk(disk, cfg)
    }

    /// A device over an existing disk image, e.g. one returned by [`SimDevice::crash`]: a reboot.
    /// The RNG restarts from `cfg.seed`.
    ///
    /// # Panics
    /// If a field of `cfg` is out of range, or `cfg.capacity_bytes` differs from the disk's.
    pub fn from_disk(disk: SimDisk, cfg: SimConfig) -> SimDevice {
        cfg.validate();
        assert_eq!(
            cfg.capacity_bytes,
            disk.capacity_bytes(),
            "sim {}: config capacity differs from the disk's",
            cfg.name
        );
        let info = DeviceInfo {
            name: cfg.name.clone(),
            capacity_bytes: cfg.capacity_bytes,
            sector_size_bytes: SECTOR_SIZE,
            max_in_flight: cfg.max_in_flight,
            durable_writes: true,
            max_transfer_bytes: None,
            lba_bytes: SECTOR_SIZE,
            volatile_write_cache: false,
        };
        SimDevice {
            info,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            disk,
            queued: Vec::new(),
            pending: Vec::new(),
            dead: Vec::new(),
            failed: false,
            next_seq: 0,
            stats: SimStats::default(),
        }
    }

    /// The medium as it is now (completed writes applied).
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }

    /// The medium, writable: to corrupt stored data under a live device (e.g.
    /// [`SimDisk::flip_bit`]).
    pub fn disk_mut(&mut self) -> &mut SimDisk {
        &mut self.disk
    }

    /// The configuration the device was made with.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Counters since the device was made.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// True once [`SimDevice::fail_all`] has been called.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Kills the device: every queued and in-flight I/O completes (at the next `reap`) with
    /// `IoStatus::Failed` and its write, if any, is not applied; every later submit returns
    /// [`SubmitError::Failed`] with the buffer. Idempotent.
    pub fn fail_all(&mut self) {
        self.failed = true;
        let mut ops: Vec<Op> = self.queued.drain(..).chain(self.pending.drain(..)).collect();
        ops.sort_by_key(|op| op.seq);
        for op in ops {
            let err = self.error(&op, IoStatus::Failed);
            self.count(op.kind);
            self.dead.push(Completion {
                tag: op.tag,
                kind: op.kind,
                offset: op.offset,
                buf: op.buf,
                result: Err(err),
            });
        }
    }

    /// Crashes the device (power loss) and returns the medium as it would be found afterwards.
    ///
    /// Completed writes are on it. Each write handed over but not completed is, by seeded choice
    /// (one third each), lost, applied whole, or torn: a random subset of its 4 KiB sectors
    /// applied, each sector wholly old or wholly new. Writes queued but never handed over are lost.
    /// Overlapping in-flight writes are considered in hand-over order.
    pub fn crash(mut self) -> SimDisk {
        let pending = std::mem::take(&mut self.pending);
        for op in pending.iter().filter(|op| op.kind == IoKind::Write) {
            match self.rng.gen_range(0..3u8) {
                0 => {}
                1 => apply_write(&mut self.disk, op, |_| true),
                _ => apply_write(&mut self.disk, op, |_| self.rng.gen_bool(0.5)),
            }
        }
        self.disk
    }

    fn error(&self, op: &Op, status: IoStatus) -> DeviceError {
        DeviceError {
            op: op.kind,
            device: self.info.name.clone(),
            offset: op.offset,
            len: op.len(),
            status,
        }
    }

    fn count(&mut self, kind: IoKind) {
        match kind {
            IoKind::Read => self.stats.reads += 1,
            IoKind::Write => self.stats.writes += 1,
            IoKind::Flush => self.stats.flushes += 1,
        }
    }

    /// Common submit path: failure, preconditions, queue limit, then queue the op.
    fn accept(&mut self, kind: IoKind, offset: u64, buf: Option<IoBuf>, tag: u64) -> Result<(), SubmitError> {
        let len = buf.as_ref().map_or(0, IoBuf::len);
        if self.failed {
            let err = DeviceError {
                op: kind,
                device: self.info.name.clone(),
                offset,
                len,
                status: IoStatus::Failed,
            };
            return Err(SubmitError::Failed(err, buf));
        }
        if kind != IoKind::Flush {
            if let Err(reason) = check_io(&self.info, offset, len) {
                let reason = format!(
                    "{kind} of {len} bytes at offset {offset} on {}: {reason}",
                    self.info.name
                );
                return Err(SubmitError::Invalid { reason, buf });
            }
        }
        if self.in_flight() >= self.info.max_in_flight {
            return Err(SubmitError::QueueFull(buf));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued.push(Op {
            seq,
            tag,
            kind,
            offset,
            buf,
            due: 0,
            fault: Fault::None,
        });
        Ok(())
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.gen_range(0..PPM) < ppm
    }

    /// Generates the completion of `op`, applying its effect on the disk.
    fn complete(&mut self, mut op: Op) -> Completion {
        self.count(op.kind);
        let mut result = Ok(());
        match (op.kind, op.fault) {
            (IoKind::Read, Fault::ReadError) => {
                self.stats.injected_faults += 1;
                result = Err(self.error(&op, IoStatus::Injected("read error")));
            }
            (IoKind::Read, fault) => {
                let buf = op.buf.as_mut().expect("a read carries a buffer");
                self.disk.read(op.offset, buf.as_mut_slice());
                if fault == Fault::BitFlip {
                    let bit = self.rng.gen_range(0..buf.len() * 8);
                    buf.as_mut_slice()[bit / 8] ^= 1 << (bit % 8);
                    self.stats.injected_faults += 1;
                }
                self.stats.bytes_read += buf.len() as u64;
            }
            (IoKind::Write, Fault::WriteError) => {
                self.stats.injected_faults += 1;
                apply_write(&mut self.disk, &op, |_| self.rng.gen_bool(0.5));
                result = Err(self.error(&op, IoStatus::Injected("write error")));
            }
            (IoKind::Write, _) => {
                apply_write(&mut self.disk, &op, |_| true);
                self.stats.bytes_written += op.len() as u64;
            }
            (IoKind::Flush, _) => {}
        }
        Completion {
            tag: op.tag,
            kind: op.kind,
            offset: op.offset,
            buf: op.buf,
            result,
        }
    }
}

/// Applies to `disk` the sectors of write `op` for which `keep(sector index within the write)` is
/// true, each sector whole.
fn apply_write(disk: &mut SimDisk, op: &Op, mut keep: impl FnMut(usize) -> bool) {
    let Some(buf) = op.buf.as_ref() else { return };
    let first = op.offset / SECTOR_SIZE as u64;
    for (i, data) in buf.as_slice().chunks_exact(SECTOR_SIZE).enumerate() {
        if keep(i) {
            disk.apply_sector(first + i as u64, data);
        }
    }
}

impl BlockDevice for SimDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.accept(IoKind::Read, offset, Some(buf), tag)
    }

    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.accept(IoKind::Write, offset, Some(buf), tag)
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        self.accept(IoKind::Flush, 0, None, tag)
    }

    /// Hands every queued I/O to the device, drawing its latency and faults. Never fails.
    fn submit(&mut self) -> Result<usize, DeviceError> {
        let queued = std::mem::take(&mut self.queued);
        let n = queued.len();
        for mut op in queued {
            op.due = self
                .rng
                .gen_range(self.cfg.latency_polls_min..=self.cfg.latency_polls_max);
            op.fault = match op.kind {
                IoKind::Read if self.chance(self.cfg.read_error_ppm) => Fault::ReadError,
                IoKind::Read if self.chance(self.cfg.bit_flip_ppm) => Fault::BitFlip,
                IoKind::Write if self.chance(self.cfg.write_error_ppm) => Fault::WriteError,
                _ => Fault::None,
            };
            self.pending.push(op);
        }
        Ok(n)
    }

    /// Completes the I/Os that are due (see the module docs), at least `min_complete` of the
    /// handed-over ones. Never fails.
    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError> {
        if !self.dead.is_empty() {
            let n = self.dead.len();
            out.append(&mut self.dead);
            return Ok(n);
        }
        if self.pending.is_empty() {
            return Ok(0);
        }
        let want = min_complete.min(self.pending.len());
        let mut chosen: Vec<bool> = self.pending.iter().map(|op| op.due == 0).collect();
        let mut n_chosen = chosen.iter().filter(|&&c| c).count();
        if n_chosen < want {
            // Force the earliest-due ones (ties: hand-over order).
            let mut rest: Vec<usize> = (0..self.pending.len()).filter(|&i| !chosen[i]).collect();
            rest.sort_by_key(|&i| (self.pending[i].due, self.pending[i].seq));
            for &i in rest.iter().take(want - n_chosen) {
                chosen[i] = true;
            }
            n_chosen = want;
        }
        // A flush takes every earlier write with it; `pending` is in seq order.
        if let Some(last_flush) = (0..self.pending.len())
            .rev()
            .find(|&i| chosen[i] && self.pending[i].kind == IoKind::Flush)
        {
            for (op, c) in self.pending[..last_flush].iter().zip(chosen.iter_mut()) {
                if op.kind == IoKind::Write && !*c {
                    *c = true;
                    n_chosen += 1;
                }
            }
        }
        let mut now = Vec::with_capacity(n_chosen);
        let mut later = Vec::with_capacity(self.pending.len() - n_chosen);
        for (op, c) in self.pending.drain(..).zip(chosen) {
            if c {
                now.push(op);
            } else {
                later.push(op);
            }
        }
        for op in &mut later {
            op.due -= 1; // Not chosen, so due > 0.
        }
        self.pending = later;

        // Seeded-random completion order, except that a flush follows the writes before it.
        now.shuffle(&mut self.rng);
        let (flushes, others): (Vec<Op>, Vec<Op>) = now.into_iter().partition(|op| op.kind == IoKind::Flush);
        // Each flush goes in at a random gap after the last earlier write (gap i: before
        // others[i]; gap others.len(): at the end).
        let mut placed: Vec<(usize, Op)> = Vec::with_capacity(flushes.len());
        for flush in flushes {
            let earliest = others
                .iter()
                .rposition(|op| op.kind == IoKind::Write && op.seq < flush.seq)
                .map_or(0, |i| i + 1);
            let gap = self.rng.gen_range(earliest..=others.len());
            placed.push((gap, flush));
        }
        placed.sort_by_key(|(gap, flush)| (*gap, flush.seq));
        let mut ordered: Vec<Op> = Vec::with_capacity(placed.len() + others.len());
        let mut placed = placed.into_iter().peekable();
        for (i, op) in others.into_iter().enumerate() {
            while let Some((_, flush)) = placed.next_if(|(gap, _)| *gap == i) {
                ordered.push(flush);
            }
            ordered.push(op);
        }
        ordered.extend(placed.map(|(_, flush)| flush));
        let n = ordered.len();
        for op in ordered {
            let completion = self.complete(op);
            out.push(completion);
        }
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.pending.len() + self.dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{fill_pattern, pattern_buf, reap_n, submit_all};

    const SS: u64 = SECTOR_SIZE as u64;
    const CAP: u64 = 4 << 20;

    fn faulty(seed: u64) -> SimConfig {
        let mut cfg = SimConfig::new("sim-faulty", CAP, seed);
        cfg.latency_polls_max = 5;
        cfg.read_error_ppm = 50_000;
        cfg.write_error_ppm = 50_000;
        cfg.bit_flip_ppm = 50_000;
        cfg
    }

    /// One step of a completion trace: tag, kind, offset, ok, FNV hash of the buffer.
    type Event = (u64, IoKind, u64, bool, u64);

    fn fnv(data: &[u8]) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// A random but script-seeded workload; returns the completion trace and the crash image.
    fn run_script(cfg: SimConfig, script_seed: u64) -> (Vec<Event>, SimDisk) {
        let mut dev = SimDevice::new(cfg);
        let mut script = ChaCha8Rng::seed_from_u64(script_seed);
        let mut out = Vec::new();
        for tag in 0..400u64 {
            let full = dev.in_flight() >= dev.info().max_in_flight;
            match script.gen_range(0..10) {
                0..=3 if !full => {
                    let sectors = script.gen_range(1..=4usize);
                    let offset = script.gen_range(0..256u64) * SS;
                    dev.submit_write(offset, pattern_buf(sectors * SECTOR_SIZE, tag, offset), tag)
                        .expect("write");
                }
                4..=5 if !full => {
                    let offset = script.gen_range(0..256u64) * SS;
                    dev.submit_read(offset, IoBuf::new(SECTOR_SIZE), tag).expect("read");
                }
                6 if !full => dev.submit_flush(tag).expect("flush"),
                7 => {
                    dev.submit().expect("submit");
                }
                _ => {
                    let min = script.gen_range(0..3);
                    dev.reap(&mut out, min).expect("reap");
                }
            }
        }
        let trace = out
            .iter()
            .map(|c| {
                (
                    c.tag,
                    c.kind,
                    c.offset,
                    c.result.is_ok(),
                    c.buf.as_ref().map_or(0, |b| fnv(b.as_slice())),
                )
            })
            .collect();
        (trace, dev.crash())
    }

    #[test]
    fn same_seed_same_completions_and_crash_image() {
        let (trace_a, disk_a) = run_script(faulty(7), 1);
        let (trace_b, disk_b) = run_script(faulty(7), 1);
        assert!(trace_a.len() > 50, "script too small: {} completions", trace_a.len());
        assert!(trace_a.iter().any(|e| !e.3), "no faults injected");
        assert_eq!(trace_a, trace_b);
        assert_eq!(disk_a, disk_b);
        let (trace_c, disk_c) = run_script(faulty(8), 1);
        assert!(trace_a != trace_c || disk_a != disk_c, "another seed changed nothing");
    }

    #[test]
    fn completions_overtake_each_other() {
        let mut cfg = SimConfig::new("sim", CAP, 3);
        cfg.latency_polls_max = 5;
        let mut dev = SimDevice::new(cfg);
        for i in 0..32u64 {
            dev.submit_read(i * SS, IoBuf::new(SECTOR_SIZE), i).expect("read");
        }
        submit_all(&mut dev, 32);
        let mut out = Vec::new();
        while out.len() < 32 {
            dev.reap(&mut out, 0).expect("reap");
        }
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert!(
            tags.windows(2).any(|w| w[0] > w[1]),
            "completions in submission order: {tags:?}"
        );
    }

    #[test]
    fn latency_is_counted_in_reap_calls_and_min_forces() {
        let mut cfg = SimConfig::new("sim", CAP, 4);
        cfg.latency_polls_min = 2;
        cfg.latency_polls_max = 2;
        let mut dev = SimDevice::new(cfg);
        let mut out = Vec::new();
        dev.submit_read(0, IoBuf::new(SECTOR_SIZE), 1).expect("read");
        dev.submit().expect("submit");
        assert_eq!(dev.reap(&mut out, 0).expect("reap"), 0);
        assert_eq!(dev.reap(&mut out, 0).expect("reap"), 0);
        assert_eq!(dev.reap(&mut out, 0).expect("reap"), 1);

        dev.submit_read(0, IoBuf::new(SECTOR_SIZE), 2).expect("read");
        dev.submit_read(SS, IoBuf::new(SECTOR_SIZE), 3).expect("read");
        dev.submit().expect("submit");
        assert_eq!(dev.reap(&mut out, 1).expect("reap"), 1, "min 1 forces exactly one");
        assert_eq!(dev.reap(&mut out, 5).expect("reap"), 1, "min is capped at in_flight");
        assert_eq!(dev.in_flight(), 0);
    }

    #[test]
    fn queued_but_unsubmitted_io_never_completes() {
        let mut dev = SimDevice::new(SimConfig::new("sim", CAP, 5));
        dev.submit_write(0, pattern_buf(SECTOR_SIZE, 1, 0), 1).expect("write");
        let mut out = Vec::new();
        for _ in 0..20 {
            assert_eq!(dev.reap(&mut out, 1).expect("reap"), 0);
        }
        assert_eq!(dev.in_flight(), 1);
        assert_eq!(dev.submit().expect("submit"), 1);
        assert_eq!(dev.reap(&mut out, 1).expect("reap"), 1);
    }

    #[test]
    fn flush_completes_after_the_writes_before_it() {
        for seed in 0..64 {
            let mut cfg = SimConfig::new("sim", CAP, seed);
            cfg.latency_polls_max = 8;
            let mut dev = SimDevice::new(cfg);
            for i in 0..5u64 {
                dev.submit_write(i * SS, pattern_buf(SECTOR_SIZE, i, i * SS), i)
                    .expect("write");
            }
            dev.submit_flush(100).expect("flush");
            dev.submit_write(9 * SS, pattern_buf(SECTOR_SIZE, 9, 9 * SS), 9)
                .expect("write");
            dev.submit().expect("submit");
            let mut out = Vec::new();
            while out.len() < 7 {
                let min = (seed % 2) as usize;
                dev.reap(&mut out, min).expect("reap");
            }
            let at = |tag| out.iter().position(|c| c.tag == tag).expect("tag completed");
            for i in 0..5 {
                assert!(at(i) < at(100), "seed {seed}: write {i} completed after the flush");
            }
        }
    }

    fn old_data_disk() -> SimDisk {
        let mut disk = SimDisk::new(CAP);
        let mut old = vec![0u8; 256 * SECTOR_SIZE];
        fill_pattern(&mut old, 1, 0);
        disk.write(0, &old);
        disk
    }

    /// Classifies each sector of `[offset, +len)`: `Some(true)` new, `Some(false)` old, `None`
    /// neither (corrupt).
    fn sectors_state(disk: &SimDisk, offset: u64, len: usize, new_seed: u64) -> Vec<Option<bool>> {
        let mut got = vec![0u8; SECTOR_SIZE];
        let mut old = vec![0u8; SECTOR_SIZE];
        let mut new = vec![0u8; SECTOR_SIZE];
        (0..(len / SECTOR_SIZE) as u64)
            .map(|s| {
                let at = offset + s * SS;
                disk.read(at, &mut got);
                fill_pattern(&mut old, 1, at);
                fill_pattern(&mut new, new_seed, at);
                if got == new {
                    Some(true)
                } else if got == old {
                    Some(false)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn crash_loses_applies_or_tears_each_in_flight_write_by_sector() {
        let (mut lost, mut applied, mut torn) = (0, 0, 0);
        for seed in 0..40 {
            let mut cfg = SimConfig::new("sim", CAP, seed);
            cfg.latency_polls_max = 4;
            let mut dev = SimDevice::from_disk(old_data_disk(), cfg);
            let place = |i: u64| (i * 8 * SS, 4 * SECTOR_SIZE);
            for i in 0..16u64 {
                let (offset, len) = place(i);
                dev.submit_write(offset, pattern_buf(len, 1000 + i, offset), i)
                    .expect("write");
            }
            dev.submit().expect("submit");
            let mut out = Vec::new();
            dev.reap(&mut out, 0).expect("reap");
            dev.reap(&mut out, 0).expect("reap");
            // Queued, never handed over: always lost.
            dev.submit_write(200 * SS, pattern_buf(SECTOR_SIZE, 2000, 200 * SS), 99)
                .expect("write");
            let completed: Vec<u64> = out.iter().map(|c| c.tag).collect();
            let disk = dev.crash();
            for i in 0..16u64 {
                let (offset, len) = place(i);
                let state = sectors_state(&disk, offset, len, 1000 + i);
                assert!(
                    state.iter().all(Option::is_some),
                    "seed {seed}: write {i}: a sector is neither old nor new"
                );
                let new = state.iter().filter(|s| **s == Some(true)).count();
                if completed.contains(&i) {
                    assert_eq!(new, 4, "seed {seed}: completed write {i} not on the disk");
                } else if new == 0 {
                    lost += 1;
                } else if new == 4 {
                    applied += 1;
                } else {
                    torn += 1;
                }
            }
            assert_eq!(
                sectors_state(&disk, 200 * SS, SECTOR_SIZE, 2000),
                vec![Some(false)],
                "seed {seed}"
            );
            // Untouched sectors between the writes kept the old data.
            assert_eq!(sectors_state(&disk, 5 * SS, SECTOR_SIZE, 0), vec![Some(false)]);
        }
        assert!(
            lost > 0 && applied > 0 && torn > 0,
            "lost {lost} applied {applied} torn {torn}"
        );
    }

    #[test]
    fn crash_image_reboots() {
        let mut dev = SimDevice::new(SimConfig::new("sim", CAP, 6));
        crate::conformance::write_sync(&mut dev, 8 * SS, pattern_buf(2 * SECTOR_SIZE, 5, 8 * SS));
        let disk = dev.crash();
        let mut dev = SimDevice::from_disk(disk, SimConfig::new("sim", CAP, 7));
        let got = crate::conformance::read_sync(&mut dev, 8 * SS, 2 * SECTOR_SIZE);
        assert_eq!(got.as_slice(), pattern_buf(2 * SECTOR_SIZE, 5, 8 * SS).as_slice());
    }

    /// Reads sector `i % 256` `n` times (each reaped before the next batch) on a device over
    /// [`old_data_disk`]; returns the completions and the device.
    fn many_reads(cfg: SimConfig, n: u64) -> (Vec<Completion>, SimDevice) {
        let mut dev = SimDevice::from_disk(old_data_disk(), cfg);
        let mut all = Vec::new();
        for batch in 0..n / 32 {
            for i in 0..32 {
                let tag = batch * 32 + i;
                dev.submit_read((tag % 256) * SS, IoBuf::new(SECTOR_SIZE), tag)
                    .expect("read");
            }
            submit_all(&mut dev, 32);
            all.extend(reap_n(&mut dev, 32));
        }
        (all, dev)
    }

    #[test]
    fn read_errors_at_the_configured_rate_and_stored_data_intact() {
        let mut cfg = SimConfig::new("sim", CAP, 8);
        cfg.read_error_ppm = 100_000;
        let (done, dev) = many_reads(cfg, 4096);
        let errors = done.iter().filter(|c| c.result.is_err()).count();
        assert!(
            (300..=520).contains(&errors),
            "{errors} read errors in 4096 reads at 10%"
        );
        for c in &done {
            assert!(c.buf.is_some(), "buffer not returned");
            if let Err(e) = &c.result {
                assert_eq!(e.status, IoStatus::Injected("read error"));
                assert_eq!((e.op, e.offset, e.len), (IoKind::Read, c.offset, SECTOR_SIZE));
                assert_eq!(e.device, "sim");
            } else {
                let mut want = vec![0u8; SECTOR_SIZE];
                fill_pattern(&mut want, 1, c.offset);
                assert_eq!(c.buf.as_ref().expect("buf").as_slice(), &want[..]);
            }
        }
        assert_eq!(dev.stats().injected_faults, errors as u64);
        assert_eq!(dev.stats().reads, 4096);
        assert_eq!(dev.stats().bytes_read, (4096 - errors as u64) * SS);
        assert_eq!(dev.disk(), &old_data_disk(), "read errors changed the stored data");
    }

    #[test]
    fn bit_flips_at_the_configured_rate_one_bit_each_and_stored_data_intact() {
        let mut cfg = SimConfig::new("sim", CAP, 9);
        cfg.bit_flip_ppm = 50_000;
        let (done, dev) = many_reads(cfg, 4096);
        let mut flipped = 0;
        let mut want = vec![0u8; SECTOR_SIZE];
        for c in &done {
            assert!(c.result.is_ok(), "a bit flip is silent");
            fill_pattern(&mut want, 1, c.offset);
            let got = c.buf.as_ref().expect("buf").as_slice();
            let bits: u32 = got.iter().zip(&want).map(|(a, b)| (a ^ b).count_ones()).sum();
            assert!(bits <= 1, "{bits} bits flipped in one read");
            flipped += bits as u64;
        }
        assert!((130..=290).contains(&flipped), "{flipped} flips in 4096 reads at 5%");
        assert_eq!(dev.stats().injected_faults, flipped);
        assert_eq!(dev.disk(), &old_data_disk(), "bit flips reached the stored data");
    }

    #[test]
    fn write_errors_fail_and_leave_each_sector_old_or_new() {
        let mut cfg = SimConfig::new("sim", CAP, 10);
        cfg.write_error_ppm = PPM;
        let mut dev = SimDevice::from_disk(old_data_disk(), cfg);
        for i in 0..8u64 {
            dev.submit_write(i * 16 * SS, pattern_buf(8 * SECTOR_SIZE, 50 + i, i * 16 * SS), i)
                .expect("write");
        }
        submit_all(&mut dev, 8);
        let done = reap_n(&mut dev, 8);
        for c in &done {
            let e = c.result.as_ref().expect_err("every write fails");
            assert_eq!(e.status, IoStatus::Injected("write error"));
            assert_eq!((e.op, e.len), (IoKind::Write, 8 * SECTOR_SIZE));
            let state = sectors_state(dev.disk(), c.offset, 8 * SECTOR_SIZE, 50 + c.tag);
            assert!(
                state.iter().all(Option::is_some),
                "a sector of a failed write is corrupt"
            );
        }
        assert_eq!(dev.stats().injected_faults, 8);
        assert_eq!(dev.stats().bytes_written, 0);
    }

    #[test]
    fn fail_all_fails_everything() {
        let mut dev = SimDevice::new(SimConfig::new("sim-dead", CAP, 11));
        dev.submit_write(0, pattern_buf(SECTOR_SIZE, 1, 0), 1).expect("write");
        dev.submit_read(SS, IoBuf::new(SECTOR_SIZE), 2).expect("read");
        dev.submit().expect("submit");
        dev.submit_write(2 * SS, pattern_buf(SECTOR_SIZE, 3, 2 * SS), 3)
            .expect("write");
        dev.fail_all();
        assert!(dev.is_failed());
        assert_eq!(dev.in_flight(), 3);
        let mut out = Vec::new();
        assert_eq!(dev.reap(&mut out, 0).expect("reap"), 3);
        for c in &out {
            let e = c.result.as_ref().expect_err("failed");
            assert_eq!(e.status, IoStatus::Failed);
            assert_eq!((e.op, e.offset, e.device.as_str()), (c.kind, c.offset, "sim-dead"));
            assert!(c.buf.is_some());
        }
        assert_eq!(dev.in_flight(), 0);
        match dev.submit_write(0, pattern_buf(SECTOR_SIZE, 4, 0), 4) {
            Err(SubmitError::Failed(e, Some(buf))) => {
                assert_eq!((e.op, e.len, e.status), (IoKind::Write, SECTOR_SIZE, IoStatus::Failed));
                assert_eq!(buf.len(), SECTOR_SIZE);
            }
            other => panic!("want Failed, got {other:?}"),
        }
        assert!(matches!(
            dev.submit_read(0, IoBuf::new(SECTOR_SIZE), 5),
            Err(SubmitError::Failed(_, Some(_)))
        ));
        assert!(matches!(dev.submit_flush(6), Err(SubmitError::Failed(_, None))));
        assert_eq!(dev.submit().expect("submit"), 0);
        assert_eq!(dev.disk().stored_sectors(), 0, "a failed write was applied");
        assert_eq!(dev.crash().stored_sectors(), 0);
    }

    #[test]
    fn storage_is_sparse() {
        let cap = 1 << 40;
        let mut dev = SimDevice::new(SimConfig::new("sim-1tib", cap, 12));
        crate::conformance::write_sync(&mut dev, cap - SS, pattern_buf(SECTOR_SIZE, 1, cap - SS));
        crate::conformance::write_sync(&mut dev, 0, pattern_buf(SECTOR_SIZE, 1, 0));
        assert_eq!(dev.disk().stored_sectors(), 2);
        crate::conformance::write_sync(&mut dev, 0, IoBuf::new(SECTOR_SIZE));
        assert_eq!(dev.disk().stored_sectors(), 1, "an all-zero sector is not stored");
        let got = crate::conformance::read_sync(&mut dev, cap / 2, SECTOR_SIZE);
        assert!(got.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn disk_helpers_take_any_range_and_flip_bits() {
        let mut disk = SimDisk::new(4 * SS);
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8 + 1).collect();
        disk.write(100, &data);
        let mut back = vec![0u8; 6000];
        disk.read(100, &mut back);
        assert_eq!(back, data);
        let mut edge = [0u8; 200];
        disk.read(0, &mut edge);
        assert!(edge[..100].iter().all(|&b| b == 0));
        assert_eq!(&edge[100..], &data[..100]);

        let before = disk.clone();
        disk.flip_bit(5000, 3);
        assert_ne!(disk, before);
        let mut b = [0u8; 1];
        disk.read(5000, &mut b);
        assert_eq!(b[0], data[4900] ^ 8);
        disk.flip_bit(5000, 3);
        assert_eq!(disk, before);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn disk_read_past_the_end_panics() {
        SimDisk::new(SS).read(SS - 1, &mut [0u8; 2]);
    }

    #[test]
    fn stats_count_completions_and_bytes() {
        let mut dev = SimDevice::new(SimConfig::new("sim", CAP, 13));
        crate::conformance::write_sync(&mut dev, 0, pattern_buf(2 * SECTOR_SIZE, 1, 0));
        crate::conformance::read_sync(&mut dev, 0, SECTOR_SIZE);
        dev.submit_flush(1).expect("flush");
        submit_all(&mut dev, 1);
        reap_n(&mut dev, 1);
        let s = dev.stats();
        assert_eq!((s.reads, s.writes, s.flushes), (1, 1, 1));
        assert_eq!((s.bytes_read, s.bytes_written, s.injected_faults), (SS, 2 * SS, 0));
    }

    #[test]
    fn invalid_io_error_names_op_device_offset_and_length() {
        let mut dev = SimDevice::new(SimConfig::new("sim-named", CAP, 14));
        match dev.submit_write(512, IoBuf::new(SECTOR_SIZE), 1) {
            Err(SubmitError::Invalid { reason, buf: Some(_) }) => {
                for part in ["write", "sim-named", "512", "4096"] {
                    assert!(reason.contains(part), "{reason:?} lacks {part:?}");
                }
            }
            other => panic!("want Invalid, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(expected = "latency_polls_min")]
    fn bad_config_panics() {
        let mut cfg = SimConfig::new("sim", CAP, 0);
        cfg.latency_polls_min = 5;
        cfg.latency_polls_max = 1;
        let _ = SimDevice::new(cfg);
    }
}
