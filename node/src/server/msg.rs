//! The messages workers send each other over their rings, one type per subsystem: commands
//! forwarded to a partition's owner and their replies ([`CmdMsg`]), scan streams
//! ([`ScanMsg`]), and replication ([`ReplMsg`]: copies, acknowledgements, reads served from a
//! replica, reconciliation). [`CoreMsg`] is what a ring carries: one of the three.

use super::codec::ScanSpec;
use super::exec::Command;
use super::sync::SyncEntry;
use crate::digest::{Digest, PartitionId};
use crate::proto::scan::ScanPartition;
use crate::record::Record;
use bolide_drivers::net::ConnId;
use std::sync::Arc;

/// Where a reply goes: the worker holding the client connection, the connection there, and
/// the batch row index for a batch row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub worker: usize,
    pub conn: ConnId,
    pub row: Option<u32>,
}

/// A message on a ring.
pub enum CoreMsg {
    Cmd(CmdMsg),
    Scan(ScanMsg),
    Repl(ReplMsg),
}

/// Commands for a partition another worker owns, and what comes back.
pub enum CmdMsg {
    /// Run `cmd` on your shard and send the reply to `origin`.
    Run { origin: Origin, cmd: Box<Command> },
    /// The encoded reply for connection `conn` (a batch row's when `row`).
    Reply { conn: ConnId, row: bool, bytes: Vec<u8> },
}

/// Scan streams (wire spec §7.3): the connection's worker coordinates, each owner runs its part.
pub enum ScanMsg {
    /// Scan these partitions (your share, in request order) for `from`'s connection `conn`.
    Start {
        from: usize,
        conn: ConnId,
        scan_id: u64,
        spec: Arc<ScanSpec>,
        parts: Vec<ScanPartition>,
        /// Records in the first chunk (as [`ScanMsg::Credit`]).
        budget: u64,
    },
    /// Record messages of scan `scan_id` (no proto header), the end offset of each, and
    /// whether worker `from`'s part is over (`error` ≠ 0: failed with that result code).
    Chunk {
        from: usize,
        conn: ConnId,
        scan_id: u64,
        bytes: Vec<u8>,
        ends: Vec<u32>,
        done: bool,
        error: u8,
    },
    /// Send the next chunk of scan `scan_id` of `from`'s connection, of at most `budget`
    /// records (a rate-limited scan) or [`super::scan::CHUNK_BYTES`].
    Credit { from: usize, scan_id: u64, budget: u64 },
    /// Drop your part of scan `scan_id` of worker `from`.
    Cancel { from: usize, scan_id: u64 },
}

/// Replication between a partition's master and its replica (see [`super::repl`]).
pub enum ReplMsg {
    /// Apply this copy of a write you replicate (master's generation, LUT and void-time; a
    /// tombstone for a delete) and answer [`ReplMsg::Ack`] with `token`.
    Replicate { from: usize, token: u64, rec: Box<Record> },
    /// The replica applied (code 0) or refused (a result code) copy `token`;
    /// `replica_failed`: refused because the replica's device failed (the write stands on the
    /// master alone; the replica has dropped its role).
    Ack { token: u64, code: u8, replica_failed: bool },
    /// Serve this read-only command from your replica copy (the master could not read its own).
    ReplicaRead { origin: Origin, cmd: Box<Command> },
    /// Reconciliation (see [`super::sync`]): the master's index entries of `pid`.
    SyncOffer {
        from: usize,
        pid: PartitionId,
        entries: Vec<SyncEntry>,
    },
    /// The replica's answer: the digests it wants from the master.
    SyncWant {
        from: usize,
        pid: PartitionId,
        want: Vec<Digest>,
    },
    /// A record (or tombstone) copy to apply if newer; no answer.
    Repair { rec: Box<Record> },
    /// Every repair of `pid` has been sent before this: the replica's copy is complete.
    SyncDone { from: usize, pid: PartitionId },
}
