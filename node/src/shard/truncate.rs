//! Truncate: removing every record at or before a LUT cut-off, without tombstones.
//!
//! A truncate removes index entries (records and tombstones alike) and moves nothing on the
//! device. A removed record's bytes stop counting as live bytes of its wblock exactly as a
//! delete's or an expiry's do ([`Shard::sub_live`]), so defrag reclaims its wblock when it falls
//! under `defrag_lwm_pct`; defrag copies only the records the index still points at, so it drops
//! the removed ones.
//!
//! No tombstone is written, so a cold start can find older copies of a removed record in wblocks
//! not yet freed (and, after its tombstone was removed, copies a delete had shadowed). Every such
//! copy has a LUT at or before the cut-off (LUTs rise strictly per record), so re-applying the
//! persisted [`TruncateTable`] after every start removes them again; the caller persists the
//! table **before** applying a truncate (see [`crate::truncate`]).
//!
//! Writes after a truncate get a LUT above its cut-off ([`Shard::set_lut_floor`], raised by every
//! truncate here), so a record written after a truncate is never covered by it, even in the same
//! millisecond or after the wall clock stepped back, and always beats the removed copies at a
//! cold start (which keeps the copy with the greatest LUT).

use super::Shard;
use crate::clock::Clock;
use crate::digest::{Digest, PartitionId, N_PARTITIONS};
use crate::index::Visit;
use crate::truncate::{TruncateTable, MAX_CUTOFF_MS};
use bolide_drivers::BlockDevice;

impl<D: BlockDevice, C: Clock> Shard<D, C> {
    /// The LUT floor, ms since 2010-01-01: every write gets a LUT strictly above it.
    pub fn lut_floor_ms(&self) -> u64 {
        self.lut_floor_ms
    }

    /// Raises the LUT floor to `floor_lut_ms` (ms since 2010-01-01; a lower value changes
    /// nothing): every later write gets LUT = max(clock, floor + 1, old LUT + 1). Call it with a
    /// truncate's cut-off before answering the truncate, so that no later write is covered by it.
    /// Cheap; no I/O.
    ///
    /// # Panics
    /// If `floor_lut_ms` is above [`MAX_CUTOFF_MS`] (the LUT range ends in 2044; callers refuse
    /// cut-offs in the future).
    pub fn set_lut_floor(&mut self, floor_lut_ms: u64) {
        assert!(
            floor_lut_ms <= MAX_CUTOFF_MS,
            "LUT floor {floor_lut_ms} ms leaves no LUT above it"
        );
        self.lut_floor_ms = self.lut_floor_ms.max(floor_lut_ms);
    }

    /// Removes every index entry of partition `pid` whose LUT is at or before `cutoff_lut_ms`
    /// (ms since 2010-01-01; 0 removes nothing): records and tombstones, without writing anything.
    /// Live bytes of their wblocks drop as for a delete, so defrag reclaims the space. Raises the
    /// LUT floor to the cut-off first. Returns how many entries were removed.
    ///
    /// Costs one pass over the partition's entries (about records / 4096), no I/O and no
    /// allocation once warm: the poll loop can call it for a few partitions per turn. Reads
    /// already in flight for a removed record may still complete with its data (they were
    /// ordered before the truncate); every later `get` answers `NotFound`.
    ///
    /// # Panics
    /// As [`Shard::set_lut_floor`].
    pub fn truncate_partition(&mut self, pid: PartitionId, cutoff_lut_ms: u64) -> usize {
        if cutoff_lut_ms == 0 {
            return 0;
        }
        self.set_lut_floor(cutoff_lut_ms);
        if self.index.partition_len(pid) == 0 {
            return 0;
        }
        let mut live = std::mem::take(&mut self.truncate_scratch);
        let removed = self.index.visit_partition(pid, |e| {
            if e.lut_ms() > cutoff_lut_ms {
                return Visit::Keep;
            }
            if !e.is_tombstone() {
                live.push(*e);
            }
            Visit::Remove
        });
        for e in live.drain(..) {
            self.sub_live(&e);
        }
        self.truncate_scratch = live;
        self.stats.truncated += removed as u64;
        removed
    }

    /// [`Shard::truncate_partition`] over every partition; returns how many entries were removed.
    /// One pass over the whole index: for start-up (or tools), not for the poll loop.
    ///
    /// # Panics
    /// As [`Shard::set_lut_floor`].
    pub fn truncate_all(&mut self, cutoff_lut_ms: u64) -> usize {
        (0..N_PARTITIONS as u16)
            .map(|p| self.truncate_partition(PartitionId(p), cutoff_lut_ms))
            .sum()
    }

    /// Removes the entry of `digest` if its LUT is at or before `cutoff_lut_ms` (ms since
    /// 2010-01-01), as [`Shard::truncate_partition`] does for a partition; returns whether it was
    /// removed. For set truncates, which the index cannot apply (it does not hold set names):
    /// once the caller has read a record and found it covered, this reclaims its space. The LUT
    /// check makes it safe to call after a newer write replaced the record that was read.
    /// Does not change the LUT floor.
    pub fn truncate_record(&mut self, digest: &Digest, cutoff_lut_ms: u64) -> bool {
        let e = match self.index.get(digest) {
            Some(e) if cutoff_lut_ms != 0 && e.lut_ms() <= cutoff_lut_ms => *e,
            _ => return false,
        };
        self.index.remove(digest);
        if !e.is_tombstone() {
            self.sub_live(&e);
        }
        self.stats.truncated += 1;
        true
    }

    /// What every start must do with the persisted table before serving: raises the LUT floor to
    /// the table's greatest cut-off (sets included) and removes every entry at or before the
    /// namespace cut-off ([`Shard::truncate_all`]). Set cut-offs stay for the reader to apply
    /// with [`TruncateTable::covers`]. Returns how many entries were removed (0 after a fast
    /// restart of a shard that had applied the table).
    ///
    /// # Panics
    /// As [`Shard::set_lut_floor`].
    pub fn reapply_truncate_table(&mut self, table: &TruncateTable) -> usize {
        if table.max_cutoff_ms() != 0 {
            self.set_lut_floor(table.max_cutoff_ms());
        }
        self.truncate_all(table.namespace_lut_ms())
    }
}
