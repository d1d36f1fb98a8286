//! Replication across cores and devices, in the reactor (see [`super::replica`] for the
//! partition map and `docs/ARCHITECTURE.md`, "Replication"):
//!
//! * **replica side**: apply a master's copy ([`ReplMsg::Replicate`]) into the replica write
//!   buffer and acknowledge it (after its device write with commit_to_device); serve a
//!   read-only command the master could not read ([`ReplMsg::ReplicaRead`]);
//! * **failover**: a worker whose device failed (a write failed, or
//!   [`READ_FAILURES_BEFORE_FAILOVER`] reads did) hands its partitions to complete replicas;
//! * **reconciliation** ([`super::sync`]): the master offers its index entries of a partition,
//!   the replica asks for what it lacks and pushes what it has newer, the master sends the
//!   records at a bounded rate and then `SyncDone`.

use super::cmd::{Key, Slab, Token, TokenKind};
use super::exec::{Action, Command, Reply};
use super::msg::{CoreMsg, Origin, ReplMsg};
use super::owner::{read_error_code, write_error_code};
use super::reactor::Core;
use super::replica::{Roles, NONE};
use super::sync::{self, RateLimit, RepairItem, SyncEntry, SyncState};
use crate::clock::Clock;
use crate::digest::{Digest, PartitionId, N_PARTITIONS};
use crate::proto;
use crate::record::{Record, RecordMeta};
use crate::shard::{ReadAck, ReadError, WriteError};
use bolide_drivers::net::Doorbell;
use bolide_drivers::BlockDevice;
use std::sync::atomic::Ordering;

/// Device read failures (I/O errors, checksum failures) after which a worker declares its
/// device failed and fails its partitions over to their replicas.
pub const READ_FAILURES_BEFORE_FAILOVER: u64 = 16;

/// A worker's replication state.
pub struct Repl {
    /// Partition reconciliation (factor 2).
    pub sync: SyncState,
    pub repair_rate: RateLimit,
    /// Device read failures seen (toward [`READ_FAILURES_BEFORE_FAILOVER`]).
    pub read_failures: u64,
    /// This worker's device failed and its roles were given up.
    pub device_down: bool,
    /// Replica copies waiting for their device write: (master, master's token).
    pub writes: Slab<(usize, u64)>,
    /// Repair record reads in flight: the worker to send each record to.
    pub repair_reads: Slab<usize>,
    /// Reads served from the replica copy, waiting for the device.
    pub replica_reads: Slab<(Origin, Box<Command>)>,
    /// Repair copies the shard refused for now (its write cache was full), retried every turn
    /// in arrival order, and the `SyncDone`s that must wait for them.
    pub repair_retry: std::collections::VecDeque<Box<Record>>,
    pub done_waiting: Vec<(usize, PartitionId)>,
}

impl Repl {
    pub fn new(sync_todo: Vec<PartitionId>, records_per_second: u32, now_ms: u64) -> Repl {
        Repl {
            sync: SyncState::new(sync_todo),
            repair_rate: RateLimit::new(records_per_second, now_ms),
            read_failures: 0,
            device_down: false,
            writes: Slab::default(),
            repair_reads: Slab::default(),
            replica_reads: Slab::default(),
            repair_retry: std::collections::VecDeque::new(),
            done_waiting: Vec::new(),
        }
    }
}

impl<D: BlockDevice, C: Clock, B: Doorbell> Core<D, C, B> {
    pub(crate) fn on_repl_msg(&mut self, m: ReplMsg) {
        match m {
            ReplMsg::Replicate { from, token, rec } => self.apply_replica(from, token, *rec),
            ReplMsg::Ack {
                token,
                code,
                replica_failed,
            } => {
                // A replica that lost its device has dropped its role: the write stands on the
                // master's copy alone (degraded), as if the partition had no replica.
                let code = if replica_failed { 0 } else { code };
                self.write_acked(Key::from_raw(token), code);
            }
            ReplMsg::ReplicaRead { origin, cmd } => {
                // Read-only: no per-digest ordering needed here; a failure now is final.
                let key = self.repl.replica_reads.insert((origin, cmd));
                let digest = self.repl.replica_reads.get(key).expect("just inserted").1.digest;
                let token = Token::new(TokenKind::ReplicaRead, key).0;
                match self.shard.get(&digest, token) {
                    Ok(ReadAck::Done(rec)) => self.replica_read_done(key, Ok(rec)),
                    Ok(ReadAck::Pending) => {}
                    Err(e) => self.replica_read_done(key, Err(e)),
                }
            }
            ReplMsg::SyncOffer { from, pid, entries } => self.sync_offer(from, pid, &entries),
            ReplMsg::SyncWant { from, pid, want } => {
                if self.repl.sync.active == Some((pid, from)) {
                    self.repl
                        .sync
                        .queue
                        .extend(want.into_iter().map(|digest| RepairItem::Record { to: from, digest }));
                    self.repl.sync.queue.push_back(RepairItem::Done { to: from, pid });
                }
            }
            ReplMsg::Repair { rec } => {
                if self.repl.repair_retry.is_empty() {
                    if let Some(rec) = self.store_repair(rec) {
                        self.repl.repair_retry.push_back(rec);
                    }
                } else {
                    self.repl.repair_retry.push_back(rec);
                }
            }
            ReplMsg::SyncDone { from, pid } => {
                if !self.repl.repair_retry.is_empty() {
                    self.repl.done_waiting.push((from, pid));
                } else {
                    self.sync_done(from, pid);
                }
            }
        }
    }

    /// Stores a repair copy if it is newer. Returns it when the shard refused it for now
    /// (write cache full): it must be retried, never dropped, or the copy marked complete would
    /// lack it.
    #[allow(clippy::boxed_local)] // it arrives boxed from the ring and goes back boxed
    fn store_repair(&mut self, rec: Box<Record>) -> Option<Box<Record>> {
        // Nobody waits for a repair's device write: its acknowledgement goes to NONE.
        let k = self.repl.writes.insert((NONE, 0));
        let token = Token::new(TokenKind::ReplicaWrite, k).0;
        let keep = (*rec).clone();
        let r = self.shard.put_replica(*rec, token);
        if !matches!(r, Ok(Some(ref w)) if w.pending) {
            self.repl.writes.remove(k);
        }
        match r {
            Ok(Some(_)) => {
                self.shared.rereplicated_records.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(None) => None,
            Err(WriteError::Overload(_)) => Some(Box::new(keep)),
            Err(e) => {
                tracing::warn!(worker = self.id, "re-replicated copy not stored: {e}");
                self.shared.rereplication_read_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Retries the repair copies the shard refused, then completes the partitions that waited
    /// for them.
    pub(crate) fn retry_repairs(&mut self) {
        while let Some(rec) = self.repl.repair_retry.pop_front() {
            if let Some(rec) = self.store_repair(rec) {
                self.repl.repair_retry.push_front(rec);
                return;
            }
        }
        for (from, pid) in std::mem::take(&mut self.repl.done_waiting) {
            self.sync_done(from, pid);
        }
    }

    /// Every repair of `pid` from `from` is stored: this worker's copy is complete.
    fn sync_done(&mut self, from: usize, pid: PartitionId) {
        let updated = self.shared.pmap.update(pid, |r| {
            (r.master == from && r.replica == self.id).then_some(Roles { complete: true, ..r })
        });
        if updated {
            self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
            if self.shared.sync_remaining.load(Ordering::Relaxed) == 0 {
                tracing::info!(worker = self.id, "every partition has two complete copies");
            }
        }
    }

    /// Applies a copy of a write this worker replicates and acknowledges it (now, or when the
    /// device write completes with commit_to_device).
    fn apply_replica(&mut self, from: usize, their: u64, rec: Record) {
        let key = self.repl.writes.insert((from, their));
        let t = Token::new(TokenKind::ReplicaWrite, key).0;
        let (code, replica_failed) = match self.shard.put_replica(rec, t) {
            Ok(Some(w)) if w.pending => return,
            Ok(_) => (0, false),
            Err(e) => (write_error_code(&e), matches!(e, WriteError::DeviceFailed(_))),
        };
        self.repl.writes.remove(key);
        self.send(
            from,
            CoreMsg::Repl(ReplMsg::Ack {
                token: their,
                code,
                replica_failed,
            }),
        );
    }

    /// A replica copy's device write completed.
    pub(crate) fn replica_write_done(&mut self, key: Key, result: Result<(), WriteError>) {
        let Some((to, their)) = self.repl.writes.remove(key) else {
            panic!("a replica write completed with no copy waiting for it");
        };
        if to == NONE {
            return;
        }
        let (code, replica_failed) = match &result {
            Ok(()) => (0, false),
            Err(e) => (write_error_code(e), matches!(e, WriteError::DeviceFailed(_))),
        };
        self.send(
            to,
            CoreMsg::Repl(ReplMsg::Ack {
                token: their,
                code,
                replica_failed,
            }),
        );
    }

    /// A read served from this shard's replica copy finished.
    pub(crate) fn replica_read_done(&mut self, key: Key, result: Result<Record, ReadError>) {
        let (origin, cmd) = self
            .repl
            .replica_reads
            .remove(key)
            .expect("a replica read completed with no command waiting for it");
        let rec = match result {
            Ok(rec) => Some(rec),
            Err(ReadError::NotFound) => None,
            Err(e) => {
                self.count_read_failure(&e);
                self.deliver_reply(origin, &Reply::code(read_error_code(&e)));
                return;
            }
        };
        let rec = rec
            .filter(|r| !self.truncate.covers(r.meta.lut_ms, &r.set_name))
            .map(std::sync::Arc::new);
        let entry = self.shard.peek(&cmd.digest).filter(|_| rec.is_some());
        let reply = match self.decide(&cmd, rec.as_ref(), entry) {
            Action::Reply(r) => r,
            // A read-only command never writes; refuse rather than write on a replica.
            Action::Put(..) | Action::Delete(..) => Reply::code(proto::result_code::SERVER_ERROR),
        };
        self.deliver_reply(origin, &reply);
    }

    pub(crate) fn count_read_failure(&mut self, e: &ReadError) {
        if matches!(e, ReadError::Corrupt { .. } | ReadError::Device(_)) {
            self.repl.read_failures += 1;
        }
    }

    /// Fails this worker's device over once the shard has stopped on a device error or reads
    /// failed [`READ_FAILURES_BEFORE_FAILOVER`] times: each partition it masters moves to its
    /// replica (when that copy is complete and its device alive), and it stops being anyone's
    /// replica. The node reports itself degraded from then on.
    pub(crate) fn check_device(&mut self) {
        if self.repl.device_down {
            return;
        }
        let cause = match self.shard.failure() {
            Some(e) => e.to_string(),
            None if self.repl.read_failures >= READ_FAILURES_BEFORE_FAILOVER => {
                format!("{} record reads failed", self.repl.read_failures)
            }
            None => return,
        };
        self.repl.device_down = true;
        self.shared.device_failed[self.id].store(true, Ordering::Release);
        if self.shared.replication_factor < 2 {
            tracing::error!(
                worker = self.id,
                "device failed ({cause}); no replica: its partitions are unavailable for writes"
            );
            return;
        }
        let (mut moved, mut stranded, mut unreplicated) = (0u64, 0u64, 0u64);
        for p in 0..N_PARTITIONS {
            let pid = PartitionId(p as u16);
            let me = self.id;
            let shared = &self.shared;
            let mut outcome = 0;
            shared.pmap.update(pid, |r| {
                outcome = 0;
                if r.master == me {
                    let alive = r
                        .replica()
                        .is_some_and(|x| !shared.device_failed[x].load(Ordering::Acquire));
                    if alive && r.complete {
                        outcome = 1;
                        return Some(Roles {
                            master: r.replica,
                            replica: NONE,
                            complete: false,
                        });
                    }
                    outcome = 2;
                    None
                } else if r.replica == me {
                    outcome = 3;
                    Some(Roles {
                        replica: NONE,
                        complete: false,
                        ..r
                    })
                } else {
                    None
                }
            });
            match outcome {
                1 => moved += 1,
                2 => stranded += 1,
                3 => unreplicated += 1,
                _ => {}
            }
        }
        self.shared.partitions_failed_over.fetch_add(moved, Ordering::Relaxed);
        // Reconciliation this worker was part of cannot finish.
        if self.repl.sync.active.take().is_some() {
            self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
        }
        let dropped = self.repl.sync.todo.len() as u64;
        self.repl.sync.todo.clear();
        self.shared.sync_remaining.fetch_sub(
            dropped.min(self.shared.sync_remaining.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        tracing::error!(
            worker = self.id,
            partitions_failed_over = moved,
            partitions_unavailable = stranded,
            partitions_left_without_replica = unreplicated,
            "device failed ({cause}); node degraded"
        );
    }

    /// Drives reconciliation: offers the next partition when none is active, sends queued
    /// repair records at the configured rate, and abandons a partition whose replica went away.
    pub(crate) fn run_sync(&mut self) {
        if self.repl.sync.idle() {
            return;
        }
        if let Some((pid, peer)) = self.repl.sync.active {
            let r = self.shared.pmap.get(pid);
            if r.master != self.id || r.replica != peer {
                // Failover changed the roles: nothing left to reconcile for this partition.
                self.repl.sync.active = None;
                self.repl
                    .sync
                    .queue
                    .retain(|i| !matches!(i, RepairItem::Done { pid: p, .. } if *p == pid));
                self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.repl.sync.active.is_none() && !self.repl.device_down {
            if let Some(pid) = self.repl.sync.todo.pop_front() {
                let r = self.shared.pmap.get(pid);
                match r.replica() {
                    Some(peer) if r.master == self.id => {
                        let entries: Vec<SyncEntry> = self
                            .shard
                            .index()
                            .iter_partition_after(pid, None)
                            .map(SyncEntry::of)
                            .collect();
                        self.repl.sync.active = Some((pid, peer));
                        self.send(
                            peer,
                            CoreMsg::Repl(ReplMsg::SyncOffer {
                                from: self.id,
                                pid,
                                entries,
                            }),
                        );
                    }
                    _ => {
                        self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let now_ms = self.shard.clock().mono_ms();
        while let Some(&item) = self.repl.sync.queue.front() {
            match item {
                RepairItem::Done { to, pid } => {
                    if self.repl.sync.reads_in_flight > 0 {
                        break;
                    }
                    self.repl.sync.queue.pop_front();
                    self.send(to, CoreMsg::Repl(ReplMsg::SyncDone { from: self.id, pid }));
                    if self.repl.sync.active == Some((pid, to)) {
                        self.repl.sync.active = None;
                    }
                }
                RepairItem::Record { to, digest } => {
                    if self.repl.sync.reads_in_flight >= sync::REPAIR_READS_IN_FLIGHT
                        || !self.repl.repair_rate.take(now_ms)
                    {
                        break;
                    }
                    self.repl.sync.queue.pop_front();
                    self.send_repair(to, digest);
                }
            }
        }
    }

    /// Sends this shard's copy of `digest` to worker `to`: a tombstone straight from the index,
    /// a record from RAM or after a device read.
    fn send_repair(&mut self, to: usize, digest: Digest) {
        let Some(e) = self.shard.index().get(&digest).copied() else {
            return;
        };
        if e.is_tombstone() {
            let rec = Record {
                meta: RecordMeta {
                    digest,
                    generation: e.generation(),
                    void_time: 0,
                    lut_ms: e.lut_ms(),
                    origin_seq: 0,
                    tombstone: true,
                },
                set_name: Vec::new(),
                key: None,
                bins: Vec::new(),
            };
            self.send(to, CoreMsg::Repl(ReplMsg::Repair { rec: Box::new(rec) }));
            return;
        }
        let key = self.repl.repair_reads.insert(to);
        let token = Token::new(TokenKind::RepairRead, key).0;
        match self.shard.get(&digest, token) {
            Ok(ReadAck::Done(rec)) => {
                self.repl.repair_reads.remove(key);
                self.send(to, CoreMsg::Repl(ReplMsg::Repair { rec: Box::new(rec) }));
            }
            Ok(ReadAck::Pending) => {
                self.repl.sync.reads_in_flight += 1;
            }
            Err(ReadError::NotFound) => {
                self.repl.repair_reads.remove(key);
            }
            Err(ReadError::Overload) => {
                self.repl.repair_reads.remove(key);
                self.repl.sync.queue.push_front(RepairItem::Record { to, digest });
            }
            Err(e) => {
                self.repl.repair_reads.remove(key);
                self.count_read_failure(&e);
                self.shared.rereplication_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(worker = self.id, "re-replication read failed: {e}");
            }
        }
    }

    /// A repair record's device read finished.
    pub(crate) fn repair_read_done(&mut self, key: Key, result: Result<Record, ReadError>) {
        let to = self
            .repl
            .repair_reads
            .remove(key)
            .expect("a repair read completed with nobody waiting for it");
        self.repl.sync.reads_in_flight -= 1;
        match result {
            Ok(rec) => self.send(to, CoreMsg::Repl(ReplMsg::Repair { rec: Box::new(rec) })),
            Err(ReadError::NotFound) => {}
            Err(e) => {
                self.count_read_failure(&e);
                self.shared.rereplication_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(worker = self.id, "re-replication read failed: {e}");
            }
        }
    }

    /// The replica side of a [`ReplMsg::SyncOffer`]: ask for what the master has newer, send
    /// what this copy has newer.
    fn sync_offer(&mut self, from: usize, pid: PartitionId, entries: &[SyncEntry]) {
        let (want, push) = sync::diff(entries, self.shard.index().iter_partition_after(pid, None));
        tracing::debug!(
            worker = self.id,
            pid = pid.0,
            want = want.len(),
            push = push.len(),
            "reconciling"
        );
        self.repl
            .sync
            .queue
            .extend(push.into_iter().map(|digest| RepairItem::Record { to: from, digest }));
        self.send(
            from,
            CoreMsg::Repl(ReplMsg::SyncWant {
                from: self.id,
                pid,
                want,
            }),
        );
    }
}
