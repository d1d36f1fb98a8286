//! Reconciling the two copies of a partition: re-replication onto a new device and cold-start
//! repair (factor 2).
//!
//! The partition's master drives it, one partition at a time per worker:
//!
//! 1. master → replica `SyncOffer`: every index entry of the partition (digest, LUT,
//!    generation; tombstones included), from RAM, no device read;
//! 2. the replica compares with its own index ([`diff`]): the digests where the master's copy
//!    is newer or missing here go back in `SyncWant`; the records where its own copy is newer
//!    (or the master lacks them) it reads and sends to the master as repairs;
//! 3. the master reads the wanted records and sends them as repairs, then `SyncDone`; the
//!    replica, having applied every repair before it (the ring is FIFO), marks its copy
//!    complete in the partition map.
//!
//! A repair is applied only when newer than the copy it meets (LUT, then generation; see
//! [`crate::shard::Shard::put_replica`]), so a repair that races a live write of the same
//! record never undoes it. Live writes keep replicating while a partition is reconciled. Copies
//! are read at a bounded rate ([`RateLimit`]) with at most [`REPAIR_READS_IN_FLIGHT`] device
//! reads at once, so client traffic goes on.

use crate::digest::{Digest, PartitionId};
use crate::index::IndexEntry;
use std::collections::{HashMap, VecDeque};

/// Device reads of repair records in flight per worker.
pub const REPAIR_READS_IN_FLIGHT: usize = 32;

/// One index entry as offered: enough to decide which copy is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncEntry {
    pub digest: Digest,
    pub lut_ms: u64,
    pub generation: u16,
}

impl SyncEntry {
    pub fn of(e: &IndexEntry) -> SyncEntry {
        SyncEntry {
            digest: e.digest(),
            lut_ms: e.lut_ms(),
            generation: e.generation(),
        }
    }

    fn version(&self) -> (u64, u16) {
        (self.lut_ms, self.generation)
    }
}

/// Compares the master's `offer` with the replica's `local` entries of one partition.
/// Returns (`want`: digests whose master copy is newer or missing here, `push`: digests whose
/// local copy is newer or missing at the master), each in the order met.
pub fn diff<'a>(offer: &[SyncEntry], local: impl Iterator<Item = &'a IndexEntry>) -> (Vec<Digest>, Vec<Digest>) {
    let mut mine: HashMap<Digest, (u64, u16)> = local.map(|e| (e.digest(), (e.lut_ms(), e.generation()))).collect();
    let mut want = Vec::new();
    let mut push = Vec::new();
    for o in offer {
        match mine.remove(&o.digest) {
            None => want.push(o.digest),
            Some(v) if v < o.version() => want.push(o.digest),
            Some(v) if v > o.version() => push.push(o.digest),
            Some(_) => {}
        }
    }
    let mut rest: Vec<Digest> = mine.into_keys().collect();
    rest.sort_unstable();
    push.extend(rest);
    (want, push)
}

/// Work queued for the repair sender of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairItem {
    /// Read this record (or tombstone) and send it to worker `to`.
    Record { to: usize, digest: Digest },
    /// Every record of `pid` for `to` has been sent: tell it (once no read is in flight).
    Done { to: usize, pid: PartitionId },
}

/// A token bucket of records per second: up to a tenth of a second of burst.
#[derive(Clone, Debug)]
pub struct RateLimit {
    per_second: u32,
    tokens: f64,
    last_ms: u64,
}

impl RateLimit {
    /// `per_second` 0 = unlimited.
    pub fn new(per_second: u32, now_ms: u64) -> RateLimit {
        RateLimit {
            per_second,
            tokens: 0.0,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one at `now_ms` (monotonic ms).
    pub fn take(&mut self, now_ms: u64) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = f64::from(self.per_second);
        let burst = (rate / 10.0).max(1.0);
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A worker's reconciliation state: partitions it masters still to offer, the one being
/// reconciled, and the repair records it owes other workers.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Partitions to reconcile, in order.
    pub todo: VecDeque<PartitionId>,
    /// The partition offered and not yet done, with its replica.
    pub active: Option<(PartitionId, usize)>,
    pub queue: VecDeque<RepairItem>,
    pub reads_in_flight: usize,
}

impl SyncState {
    pub fn new(todo: Vec<PartitionId>) -> SyncState {
        SyncState {
            todo: todo.into(),
            ..SyncState::default()
        }
    }

    pub fn idle(&self) -> bool {
        self.todo.is_empty() && self.active.is_none() && self.queue.is_empty() && self.reads_in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: u8, lut: u64, gen: u16) -> IndexEntry {
        let mut dg = [0u8; 20];
        dg[0] = d;
        IndexEntry::new(Digest(dg), 0, 64, gen, 0, lut, false)
    }

    #[test]
    fn diff_splits_by_newer_copy() {
        let offer: Vec<SyncEntry> = [entry(1, 10, 1), entry(2, 20, 2), entry(3, 30, 3), entry(4, 40, 4)]
            .iter()
            .map(SyncEntry::of)
            .collect();
        // Local: 1 same, 2 older LUT, 3 newer LUT, 5 only here; 4 missing here.
        let local = [entry(1, 10, 1), entry(2, 19, 9), entry(3, 31, 1), entry(5, 5, 1)];
        let (want, push) = diff(&offer, local.iter());
        let ids = |v: &[Digest]| v.iter().map(|d| d.0[0]).collect::<Vec<_>>();
        assert_eq!(ids(&want), vec![2, 4]);
        assert_eq!(ids(&push), vec![3, 5]);
        // Same LUT: the generation decides.
        let (want, push) = diff(&[SyncEntry::of(&entry(7, 50, 3))], [entry(7, 50, 2)].iter());
        assert_eq!((want.len(), push.len()), (1, 0));
        let (want, push) = diff(&[], std::iter::empty());
        assert!(want.is_empty() && push.is_empty());
    }

    #[test]
    fn rate_limit_paces_records() {
        let mut r = RateLimit::new(1000, 0);
        // Nothing at t=0, then a tenth of a second of burst at most.
        assert!(!r.take(0));
        let got = (0..1000).filter(|_| r.take(500)).count();
        assert_eq!(got, 100);
        // 10 ms later: 10 more.
        let got = (0..1000).filter(|_| r.take(510)).count();
        assert_eq!(got, 10);
        let mut free = RateLimit::new(0, 0);
        assert!((0..10_000).all(|_| free.take(0)));
    }
}
