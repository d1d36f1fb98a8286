//! Cross-core replication: who serves each partition, who keeps its second copy.
//!
//! With `replication_factor = 2` every partition has a *master* worker, whose shard holds the
//! copy reads are served from, and a *replica* worker on another device, whose shard holds a
//! copy in its replica ("prole") write buffer. Worker `k`'s replica is its successor in the ring
//! of workers, skipping the workers that share `k`'s device ([`replica_ring`]). A write is
//! acknowledged once both copies are applied (durably with `commit_to_device`).
//!
//! The [`PartitionMap`] is the one shared table of roles, one atomic word per partition, read
//! by every worker to route a command and written only on a role change:
//!
//! * **failover**: a worker whose device failed hands each partition it masters to that
//!   partition's replica when the replica is complete, and drops itself as replica everywhere;
//! * **re-replication / repair** ([`super::sync`]): once a partition's copies are reconciled,
//!   its replica is marked complete.
//!
//! Source: Aerospike's master/prole model (partition table, `as_partition`), brought inside one
//! node: the "nodes" are cores and their devices.

use crate::digest::{PartitionId, N_PARTITIONS};
use std::sync::atomic::{AtomicU32, Ordering};

/// "No worker" in a role.
pub const NONE: usize = 0xFF;
/// Most workers a map can name.
pub const MAX_WORKERS: usize = 0xFE;

const REPLICA_SHIFT: u32 = 8;
const COMPLETE_BIT: u32 = 1 << 16;

/// A partition's roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The worker that serves reads and writes.
    pub master: usize,
    /// The worker keeping the second copy, or [`NONE`].
    pub replica: usize,
    /// The replica holds every acknowledged write (false while re-replication runs).
    pub complete: bool,
}

impl Roles {
    fn pack(self) -> u32 {
        debug_assert!(self.master <= NONE && self.replica <= NONE);
        self.master as u32 | (self.replica as u32) << REPLICA_SHIFT | if self.complete { COMPLETE_BIT } else { 0 }
    }

    fn unpack(w: u32) -> Roles {
        Roles {
            master: (w & 0xFF) as usize,
            replica: (w >> REPLICA_SHIFT & 0xFF) as usize,
            complete: w & COMPLETE_BIT != 0,
        }
    }

    /// The replica a write must reach before it is acknowledged, if any.
    pub fn replica(&self) -> Option<usize> {
        (self.replica != NONE).then_some(self.replica)
    }
}

/// The roles of all 4096 partitions: one `AtomicU32` each (no lock on the data path), and a
/// generation that moves whenever a role changes (what `partition-generation` answers, so the
/// clients re-read `replicas`).
pub struct PartitionMap {
    words: Vec<AtomicU32>,
    generation: AtomicU32,
}

impl PartitionMap {
    /// Every partition `p` mastered by `p % workers`, with `replica_of[master]` as replica
    /// (complete).
    pub fn new(workers: usize, replica_of: &[usize]) -> PartitionMap {
        assert!(workers > 0 && workers <= MAX_WORKERS, "{workers} workers");
        let words = (0..N_PARTITIONS)
            .map(|p| {
                let master = p % workers;
                let replica = replica_of.get(master).copied().unwrap_or(NONE);
                AtomicU32::new(
                    Roles {
                        master,
                        replica,
                        complete: replica != NONE,
                    }
                    .pack(),
                )
            })
            .collect();
        PartitionMap {
            words,
            generation: AtomicU32::new(1),
        }
    }

    /// Moves whenever a partition's roles change; starts at 1 (never -1, "not ready").
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// The partitions `worker` masters (column 0) and replicates (column 1), as `replicas`
    /// bitmaps (wire spec §2.4: partition `p` is bit `0x80 >> (p & 7)` of byte `p >> 3`).
    pub fn bitmaps(&self, worker: usize) -> [[u8; N_PARTITIONS / 8]; 2] {
        let mut b = [[0u8; N_PARTITIONS / 8]; 2];
        for p in 0..N_PARTITIONS {
            let r = self.get(PartitionId(p as u16));
            if r.master == worker {
                b[0][p >> 3] |= 0x80 >> (p & 7);
            }
            if r.replica == worker {
                b[1][p >> 3] |= 0x80 >> (p & 7);
            }
        }
        b
    }

    pub fn get(&self, pid: PartitionId) -> Roles {
        Roles::unpack(self.words[usize::from(pid.0)].load(Ordering::Acquire))
    }

    pub fn master(&self, pid: PartitionId) -> usize {
        (self.words[usize::from(pid.0)].load(Ordering::Acquire) & 0xFF) as usize
    }

    pub fn set(&self, pid: PartitionId, roles: Roles) {
        self.words[usize::from(pid.0)].store(roles.pack(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes a partition's roles atomically: `f` sees the current roles and returns the new
    /// ones, or `None` to leave them (it may run more than once if another worker changes them
    /// meanwhile). Returns whether they changed.
    pub fn update(&self, pid: PartitionId, mut f: impl FnMut(Roles) -> Option<Roles>) -> bool {
        let changed = self.words[usize::from(pid.0)]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                f(Roles::unpack(w)).map(Roles::pack)
            })
            .is_ok();
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// Partitions with no second copy.
    pub fn unreplicated(&self) -> usize {
        (0..N_PARTITIONS)
            .filter(|&p| !self.get(PartitionId(p as u16)).complete)
            .count()
    }

    /// Partitions `worker` masters.
    pub fn mastered_by(&self, worker: usize) -> impl Iterator<Item = PartitionId> + '_ {
        (0..N_PARTITIONS as u16)
            .map(PartitionId)
            .filter(move |&p| self.master(p) == worker)
    }
}

/// Each worker's replica: the next worker in ring order whose device differs from its own
/// (`device_of[w]` names the device of worker `w`). With `factor` 1 every entry is [`NONE`].
///
/// # Errors
/// Factor 2 with every worker on one device: no copy could survive that device.
pub fn replica_ring(device_of: &[usize], factor: u8) -> Result<Vec<usize>, String> {
    let n = device_of.len();
    if factor <= 1 {
        return Ok(vec![NONE; n]);
    }
    if n > MAX_WORKERS {
        return Err(format!("replication supports at most {MAX_WORKERS} workers, not {n}"));
    }
    (0..n)
        .map(|k| {
            (1..n)
                .map(|step| (k + step) % n)
                .find(|&j| device_of[j] != device_of[k])
                .ok_or_else(|| {
                    "replication_factor 2 needs at least two devices (a second copy on the same device \
                     would not survive it); give the profile two [[device]] entries, or set \
                     replication_factor = 1"
                        .to_string()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_skips_workers_on_the_same_device() {
        // 4 workers on 2 devices, round-robin: 0,2 on device 0; 1,3 on device 1.
        assert_eq!(replica_ring(&[0, 1, 0, 1], 2).unwrap(), vec![1, 2, 3, 0]);
        // 4 workers, devices 0,0,1,1: 0 → 2 (skips 1), 1 → 2, 2 → 0 (skips 3), 3 → 0.
        assert_eq!(replica_ring(&[0, 0, 1, 1], 2).unwrap(), vec![2, 2, 0, 0]);
        assert_eq!(replica_ring(&[0, 0], 1).unwrap(), vec![NONE, NONE]);
        let e = replica_ring(&[0, 0, 0], 2).unwrap_err();
        assert!(e.contains("two devices"), "{e}");
    }

    #[test]
    fn map_packs_roles() {
        let m = PartitionMap::new(2, &[1, 0]);
        let r = m.get(PartitionId(7));
        assert_eq!((r.master, r.replica, r.complete), (1, 0, true));
        m.set(
            PartitionId(7),
            Roles {
                master: 0,
                replica: NONE,
                complete: false,
            },
        );
        assert_eq!(m.master(PartitionId(7)), 0);
        assert_eq!(m.get(PartitionId(7)).replica(), None);
        assert_eq!(m.unreplicated(), 1);
        assert_eq!(m.mastered_by(0).count(), 2049);
        let single = PartitionMap::new(3, &[NONE; 3]);
        assert_eq!(single.unreplicated(), N_PARTITIONS);
        assert_eq!(single.get(PartitionId(5)).master, 2);
    }
}
