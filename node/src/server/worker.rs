//! One worker per core: a poll loop over its listener, its client connections, its device's
//! completion eventfd and its inbound rings; it owns the shard of the partitions `p` with
//! `p % workers == id` (DESIGN.md, "Thread per core").
//!
//! A request that arrives on a connection of worker `a` for a partition owned by worker `b`
//! crosses the ring `a → b` as a decoded [`Command`]; the reply comes back on `b → a` as encoded
//! bytes. Commands on one digest run one at a time (later ones wait in a per-digest queue), so a
//! read-modify-write that waits for the device never interleaves with another write of the same
//! record.
//!
//! Batches and scans are streams. A batch's rows run as single-record commands on their owners
//! (at most [`BATCH_WINDOW`] of one batch in flight); each row's reply carries its index and
//! the connection's worker ends the stream with LAST once every row has answered (spec §7.2).
//! A scan's partitions are split by owner; each owner runs a [`ScanTask`] that sends record
//! messages in chunks, one chunk per credit from the connection's worker, which forwards them,
//! enforces `max_records` at a record boundary, and ends the stream with LAST (spec §7.3).

use super::codec::{self, BatchItem, Decoded, ScanSpec};
use super::exec::{self, Action, Command, Existing, Reply};
use super::replica::{Roles, NONE};
use super::ring::WorkerRings;
use super::scan::ScanTask;
use super::stats::Hist;
use super::sync::{self, RateLimit, RepairItem, SyncEntry, SyncState};
use super::NodeShared;
use crate::clock::Clock;
use crate::digest::{Digest, PartitionId, N_PARTITIONS};
use crate::proto::msg::Reply as W;
use crate::proto::scan::ScanPartition;
use crate::proto::{self, ProtoHeader, PROTO_HEADER_BYTES};
use crate::record::{Record, RecordMeta};
use crate::shard::{Event, ReadAck, ReadError, Shard, WriteError};
use crate::truncate::TruncateTable;
use bolide_drivers::BlockDevice;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const DEVICE: Token = Token(2);
const FIRST_CONN: usize = 16;
/// Longest a worker sleeps with nothing to do, so flush and expiry timers run.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Bytes read from a socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Rows of one batch in flight at once.
pub const BATCH_WINDOW: usize = 64;
/// Device read failures (I/O errors, checksum failures) after which a worker declares its
/// device failed and fails its partitions over to their replicas.
pub const READ_FAILURES_BEFORE_FAILOVER: u64 = 16;
/// How often a worker recounts the entries of the partitions it masters (replication on).
pub const MASTER_COUNT_PERIOD: Duration = Duration::from_millis(250);
/// A scan chunk is forwarded and the next one asked for only while the connection has fewer
/// than this many bytes waiting to be written.
const STREAM_HIGH_WATER_BYTES: usize = 1 << 20;

/// A message between workers.
pub enum CoreMsg {
    /// Run `cmd` on your shard and send the reply to worker `from` for connection `conn`; a
    /// batch row carries its index.
    Cmd {
        from: usize,
        conn: usize,
        row: Option<u32>,
        cmd: Box<Command>,
    },
    /// The encoded reply for connection `conn` (a batch row's when `row`).
    Reply { conn: usize, row: bool, bytes: Vec<u8> },
    /// Scan these partitions (your share, in request order) for `from`'s connection `conn`.
    ScanStart {
        from: usize,
        conn: usize,
        scan_id: u64,
        spec: Arc<ScanSpec>,
        parts: Vec<ScanPartition>,
        /// Records in the first chunk (as [`CoreMsg::ScanCredit`]).
        budget: u64,
    },
    /// Record messages of scan `scan_id` (no proto header), the end offset of each, and
    /// whether worker `from`'s part is over (`error` ≠ 0: failed with that result code).
    ScanChunk {
        from: usize,
        conn: usize,
        scan_id: u64,
        bytes: Vec<u8>,
        ends: Vec<u32>,
        done: bool,
        error: u8,
    },
    /// Send the next chunk of scan `scan_id` of `from`'s connection `conn`, of at most
    /// `budget` records (a rate-limited scan) or [`super::scan::CHUNK_BYTES`].
    ScanCredit {
        from: usize,
        conn: usize,
        scan_id: u64,
        budget: u64,
    },
    /// Drop your part of scan `scan_id` of `from`'s connection `conn`.
    ScanCancel { from: usize, conn: usize, scan_id: u64 },
    /// Serve this read-only command from your replica copy (the master could not read its own).
    ReplicaRead {
        from: usize,
        conn: usize,
        row: Option<u32>,
        cmd: Box<Command>,
    },
    /// Apply this copy of a write you replicate (master's generation, LUT and void-time; a
    /// tombstone for a delete) and answer [`CoreMsg::ReplicaAck`] with `token`.
    Replicate { from: usize, token: u64, rec: Box<Record> },
    /// The replica applied (code 0) or refused (a result code) copy `token`;
    /// `replica_failed`: refused because the replica's device failed (the write stands on the
    /// master alone; the replica has dropped its role).
    ReplicaAck { token: u64, code: u8, replica_failed: bool },
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

/// Where a reply goes: worker, connection there, and the batch row index for a batch row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Origin {
    worker: usize,
    conn: usize,
    row: Option<u32>,
}

/// A batch being answered on a connection.
struct BatchRun {
    /// Rows not yet started, with their owners.
    queue: VecDeque<(usize, u32, Box<Command>)>,
    in_flight: usize,
    /// Rows not yet answered.
    remaining: usize,
}

/// A scan being answered on a connection.
struct ScanRun {
    id: u64,
    /// Workers whose part is still running.
    owners: Vec<usize>,
    /// Record messages forwarded so far, and the cap (0 = none).
    sent: u64,
    max_records: u64,
    /// Workers whose chunk was forwarded but who got no new credit yet (the socket is behind,
    /// or the scan is ahead of its rate).
    owed: Vec<usize>,
    /// RECORDS_PER_SECOND (0 = unlimited) and when the scan started.
    records_per_second: u32,
    started: Instant,
}

impl ScanRun {
    /// Records per chunk: a tenth of a second of the rate, shared by the parts still running.
    fn budget(&self) -> u64 {
        if self.records_per_second == 0 {
            return u64::MAX;
        }
        (u64::from(self.records_per_second) / 10 / self.owners.len().max(1) as u64).max(1)
    }

    /// Whether more records were sent than the rate allows by `now`.
    fn ahead_of_rate(&self, now: Instant) -> bool {
        self.records_per_second > 0
            && self.sent as f64 > f64::from(self.records_per_second) * now.duration_since(self.started).as_secs_f64()
    }
}

enum Stream {
    Batch(BatchRun),
    Scan(ScanRun),
}

enum Stage {
    /// Waiting for the device read of the current record.
    Read,
    /// Waiting for `waits` acknowledgements (the local device write, the replica's copy);
    /// answer `reply` then, or `code` if one of them failed.
    Write { reply: Reply, waits: u8, code: u8 },
}

enum Pending {
    Cmd {
        origin: Origin,
        cmd: Box<Command>,
        stage: Stage,
    },
    /// A record read of the scan task with this key.
    Scan((usize, u64)),
    /// A replica copy waiting for the device: acknowledge `token` to worker `to` then.
    Replica { to: usize, token: u64 },
    /// A repair record read, to send to worker `to`.
    Repair { to: usize },
    /// A read served from the replica copy for another worker's client.
    ReplicaRead { origin: Origin, cmd: Box<Command> },
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// A request is being served; the next one waits (clients do not pipeline).
    busy: bool,
    closing: bool,
    /// The batch or scan being answered.
    job: Option<Stream>,
    /// When the request being served was taken off the socket, and its histogram.
    started: Option<(Instant, Hist)>,
}

pub struct Worker<D: BlockDevice, C: Clock> {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    shard: Shard<D, C>,
    rings: WorkerRings<CoreMsg>,
    shared: Arc<NodeShared>,
    conns: HashMap<usize, Conn>,
    next_conn: usize,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    busy_digests: HashMap<Digest, VecDeque<(Origin, Box<Command>)>>,
    /// Messages a full ring refused, retried every turn (bounded by the connections).
    outbox: VecDeque<(usize, CoreMsg)>,
    events: Vec<Event>,
    /// Socket reads land here first.
    scratch: Box<[u8]>,
    /// Connections whose batch has rows not yet started.
    batch_conns: Vec<usize>,
    /// This worker's parts of scans, by (coordinating worker, scan id).
    scans: HashMap<(usize, u64), ScanTask>,
    next_scan_id: u64,
    /// Stream messages to this worker from itself, handled with the rings.
    local: VecDeque<CoreMsg>,
    /// Connections whose scan is held back by its RECORDS_PER_SECOND.
    throttled: Vec<usize>,
    /// This worker's copy of the truncate table, the version it was copied at, and the
    /// namespace cut-off still being swept from the index (with the next partition to sweep).
    truncate: Arc<TruncateTable>,
    truncate_version: u64,
    truncate_sweep: Option<(u64, u16)>,
    /// Device read failures seen (toward [`READ_FAILURES_BEFORE_FAILOVER`]).
    read_failures: u64,
    /// This worker's device failed and its roles were given up.
    device_down: bool,
    /// Partition reconciliation (factor 2).
    sync: SyncState,
    repair_rate: RateLimit,
    next_master_count: Instant,
}

impl<D: BlockDevice, C: Clock> Worker<D, C> {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        shard: Shard<D, C>,
        rings: WorkerRings<CoreMsg>,
        shared: Arc<NodeShared>,
        sync_todo: Vec<PartitionId>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(fd) = shard.device().completion_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), DEVICE, Interest::READABLE)?;
        }
        let truncate = Arc::clone(
            &shared
                .truncate
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Ok(Worker {
            id,
            poll,
            listener,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            pending: HashMap::new(),
            next_token: 1,
            busy_digests: HashMap::new(),
            outbox: VecDeque::new(),
            events: Vec::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            batch_conns: Vec::new(),
            scans: HashMap::new(),
            next_scan_id: 0,
            local: VecDeque::new(),
            throttled: Vec::new(),
            truncate,
            truncate_version: 0,
            truncate_sweep: None,
            read_failures: 0,
            device_down: false,
            sync: SyncState::new(sync_todo),
            repair_rate: RateLimit::new(shared.rereplication_records_per_second, shard.clock().mono_ms()),
            next_master_count: Instant::now(),
            shard,
            rings,
            shared,
        })
    }

    /// Runs until `stop` is set; returns the shard for a clean shutdown.
    pub(crate) fn run(mut self) -> Shard<D, C> {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let streaming = !self.batch_conns.is_empty()
                || !self.local.is_empty()
                || self.scans.values().any(ScanTask::runnable)
                || !self.sync.idle();
            let timeout = if streaming || (self.shard.in_flight() > 0 && self.shard.device().completion_fd().is_none())
            {
                Duration::ZERO
            } else {
                IDLE_POLL
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, "poll failed: {e}");
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER | DEVICE => {}
                    Token(c) => self.conn_ready(c, ev.is_readable(), ev.is_writable()),
                }
            }
            self.drain_rings();
            self.drive_shard();
            self.pump_batches();
            self.refresh_truncate();
            self.release_throttled();
            self.run_scans();
            self.sweep_truncated();
            self.check_device();
            self.run_sync();
            self.flush_outbox();
            // Reads and group-commit flushes queued after drive_shard (scans, batch rows,
            // re-replication) go to the device now, not after the next wake-up.
            self.shard.submit_queued();
            self.publish();
            if self.id == 0 {
                self.shared.latencies.tick(Instant::now());
            }
        }
        for (_, mut c) in self.conns.drain() {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        self.shard
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.shared.connections.load(Ordering::Relaxed) >= self.shared.max_connections {
                        tracing::warn!(worker = self.id, "connection limit reached; refusing a client");
                        continue;
                    }
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let _ = stream.set_nodelay(true);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    self.conns.insert(
                        id,
                        Conn {
                            stream,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            wpos: 0,
                            busy: false,
                            closing: false,
                            job: None,
                            started: None,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.id, "accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn conn_ready(&mut self, id: usize, readable: bool, writable: bool) {
        if writable {
            self.write_out(id);
        }
        if readable {
            self.read_in(id);
        }
        self.serve(id);
    }

    /// Reads what the socket has into the connection's buffer, through the worker's scratch
    /// buffer so only the bytes received are copied (no zero-filling per read).
    fn read_in(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        loop {
            match c.stream.read(&mut self.scratch[..]) {
                Ok(0) => {
                    c.closing = true;
                    break;
                }
                Ok(n) => c.rbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.closing = true;
                    break;
                }
            }
            if c.rbuf.len() as u64 > proto::PROTO_SIZE_MAX + PROTO_HEADER_BYTES as u64 {
                c.closing = true;
                break;
            }
        }
    }

    fn write_out(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    c.closing = true;
                    break;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.closing = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
        // The socket caught up: scan parts waiting for credit may go on.
        self.grant_owed(id);
    }

    /// Gives the scan parts of `conn` that wait for credit their next chunk, unless the socket
    /// is still behind or the scan is ahead of its RECORDS_PER_SECOND (then it stays throttled
    /// and is retried every turn).
    fn grant_owed(&mut self, conn: usize) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let pending = c.wbuf.len() - c.wpos;
        let Some(Stream::Scan(s)) = &mut c.job else { return };
        if s.owed.is_empty() || pending >= STREAM_HIGH_WATER_BYTES {
            return;
        }
        if s.ahead_of_rate(Instant::now()) {
            if !self.throttled.contains(&conn) {
                self.throttled.push(conn);
            }
            return;
        }
        let (scan_id, budget, owed) = (s.id, s.budget(), std::mem::take(&mut s.owed));
        for o in owed {
            self.post(
                o,
                CoreMsg::ScanCredit {
                    from: self.id,
                    conn,
                    scan_id,
                    budget,
                },
            );
        }
    }

    /// Retries the scans held back by their rate.
    fn release_throttled(&mut self) {
        for conn in std::mem::take(&mut self.throttled) {
            self.grant_owed(conn);
        }
    }

    /// Takes the next whole request off the connection, if it is idle, and serves it.
    fn serve(&mut self, id: usize) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.busy {
                return;
            }
            if c.rbuf.len() < PROTO_HEADER_BYTES {
                break;
            }
            let hdr_bytes: [u8; PROTO_HEADER_BYTES] = c.rbuf[..PROTO_HEADER_BYTES].try_into().expect("8 bytes");
            let hdr = match ProtoHeader::parse(&hdr_bytes) {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(worker = self.id, conn = id, "closing: {e}");
                    c.closing = true;
                    break;
                }
            };
            let total = PROTO_HEADER_BYTES + hdr.size as usize;
            if c.rbuf.len() < total {
                break;
            }
            // Decode straight from the connection's buffer: take it out while the request is
            // handled (a reply delivered meanwhile finds it empty and serves nothing), then drop
            // the request's bytes and put it back.
            let mut rbuf = std::mem::take(&mut c.rbuf);
            c.busy = true;
            self.handle_frame(id, hdr, &rbuf[PROTO_HEADER_BYTES..total]);
            let Some(c) = self.conns.get_mut(&id) else { return };
            rbuf.drain(..total);
            c.rbuf = rbuf;
        }
        let Some(c) = self.conns.get(&id) else { return };
        if c.closing && (c.wbuf.is_empty() || !c.busy) {
            self.close(id);
        }
    }

    fn close(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(Stream::Scan(s)) = c.job {
                for o in s.owners {
                    self.post(
                        o,
                        CoreMsg::ScanCancel {
                            from: self.id,
                            conn: id,
                            scan_id: s.id,
                        },
                    );
                }
            }
        }
    }

    fn handle_frame(&mut self, conn: usize, hdr: ProtoHeader, body: &[u8]) {
        let local = Origin {
            worker: self.id,
            conn,
            row: None,
        };
        let decoded = codec::decode(hdr.ptype, body, &self.shared.namespace);
        let hist = match &decoded {
            Decoded::Single(cmd) if cmd.is_write() || cmd.is_delete() => Some(Hist::Write),
            Decoded::Single(_) => Some(Hist::Read),
            Decoded::Batch(_) => Some(Hist::Batch),
            Decoded::Scan(..) => Some(Hist::Query),
            _ => None,
        };
        if let (Some(h), Some(c)) = (hist, self.conns.get_mut(&conn)) {
            c.started = Some((Instant::now(), h));
        }
        match decoded {
            Decoded::Reply(bytes) => self.deliver(local, bytes),
            Decoded::Info => {
                let bytes = codec::info_reply(body, &self.shared, self.shard.clock().now_cl_ms());
                self.deliver(local, bytes);
            }
            Decoded::Close => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.closing = true;
                    c.busy = false;
                }
            }
            Decoded::Single(cmd) => {
                let owner = self.owner(&cmd.digest);
                self.dispatch(owner, local, cmd);
            }
            Decoded::Batch(items) => self.start_batch(conn, items),
            Decoded::Scan(spec, parts) => self.start_scan(conn, spec, parts),
        }
    }

    /// The request on `conn` has been answered in full: count its latency.
    fn answered(&mut self, conn: usize) {
        if let Some((at, hist)) = self.conns.get_mut(&conn).and_then(|c| c.started.take()) {
            self.shared.latencies.record(self.id, hist, at.elapsed());
        }
    }

    /// The worker serving `digest`'s partition now (the partition map's master).
    fn owner(&self, digest: &Digest) -> usize {
        self.shared.pmap.master(digest.partition_id())
    }

    /// Runs `cmd` here or sends it to its owner.
    fn dispatch(&mut self, owner: usize, origin: Origin, cmd: Box<Command>) {
        if owner == self.id {
            self.start(origin, cmd);
        } else {
            self.send(
                owner,
                CoreMsg::Cmd {
                    from: origin.worker,
                    conn: origin.conn,
                    row: origin.row,
                    cmd,
                },
            );
        }
    }

    /// Sends a stream message, to this worker itself through its local queue.
    fn post(&mut self, to: usize, msg: CoreMsg) {
        if to == self.id {
            self.local.push_back(msg);
        } else {
            self.send(to, msg);
        }
    }

    // ----- batches (spec §7.1, §7.2) -----

    fn start_batch(&mut self, conn: usize, items: Vec<BatchItem>) {
        let mut run = BatchRun {
            queue: VecDeque::with_capacity(items.len()),
            in_flight: 0,
            remaining: 0,
        };
        let mut early = Vec::new();
        for item in items {
            match item.cmd {
                Ok(cmd) => {
                    let owner = self.owner(&cmd.digest);
                    run.queue.push_back((owner, item.index, cmd));
                }
                Err(code) => early.extend_from_slice(&codec::encode_row(&Reply::code(code), item.index)),
            }
        }
        run.remaining = run.queue.len();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.wbuf.extend_from_slice(&early);
        if run.remaining == 0 {
            W::last_proto(&mut c.wbuf, proto::result_code::OK);
            c.busy = false;
            self.answered(conn);
            self.write_out(conn);
            return;
        }
        c.job = Some(Stream::Batch(run));
        self.batch_conns.push(conn);
        self.write_out(conn);
    }

    /// Starts more rows of every batch with rows waiting, up to [`BATCH_WINDOW`] in flight each.
    fn pump_batches(&mut self) {
        let mut i = 0;
        while i < self.batch_conns.len() {
            let conn = self.batch_conns[i];
            while let Some((owner, index, cmd)) = self.next_row(conn) {
                let origin = Origin {
                    worker: self.id,
                    conn,
                    row: Some(index),
                };
                self.dispatch(owner, origin, cmd);
            }
            let waiting = match self.conns.get(&conn).and_then(|c| c.job.as_ref()) {
                Some(Stream::Batch(b)) => !b.queue.is_empty(),
                _ => false,
            };
            if waiting {
                i += 1;
            } else {
                self.batch_conns.swap_remove(i);
            }
        }
    }

    /// The next row of the connection's batch to start, if its window has room.
    fn next_row(&mut self, conn: usize) -> Option<(usize, u32, Box<Command>)> {
        let Some(Stream::Batch(b)) = &mut self.conns.get_mut(&conn)?.job else {
            return None;
        };
        if b.in_flight >= BATCH_WINDOW {
            return None;
        }
        let row = b.queue.pop_front()?;
        b.in_flight += 1;
        Some(row)
    }

    /// A batch row's reply reached the connection's worker.
    fn row_done(&mut self, conn: usize, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(Stream::Batch(b)) = &mut c.job else { return };
        c.wbuf.extend_from_slice(bytes);
        b.in_flight -= 1;
        b.remaining -= 1;
        if b.remaining == 0 {
            W::last_proto(&mut c.wbuf, proto::result_code::OK);
            c.job = None;
            c.busy = false;
            self.answered(conn);
            self.write_out(conn);
            self.serve(conn);
        } else if c.wbuf.len() - c.wpos >= STREAM_HIGH_WATER_BYTES {
            self.write_out(conn);
        }
    }

    // ----- scans (spec §7.3) -----

    fn start_scan(&mut self, conn: usize, spec: Arc<ScanSpec>, parts: Vec<ScanPartition>) {
        let n = self.rings.workers();
        let mut shares: Vec<Vec<ScanPartition>> = vec![Vec::new(); n];
        for p in parts {
            shares[self.shared.pmap.master(p.pid)].push(p);
        }
        self.next_scan_id += 1;
        let scan_id = self.next_scan_id;
        let owners: Vec<usize> = (0..n).filter(|&w| !shares[w].is_empty()).collect();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let run = ScanRun {
            id: scan_id,
            owners: owners.clone(),
            sent: 0,
            max_records: spec.max_records,
            owed: Vec::new(),
            records_per_second: spec.records_per_second,
            started: Instant::now(),
        };
        let budget = run.budget();
        c.job = Some(Stream::Scan(run));
        for w in owners {
            let parts = std::mem::take(&mut shares[w]);
            self.post(
                w,
                CoreMsg::ScanStart {
                    from: self.id,
                    conn,
                    scan_id,
                    spec: Arc::clone(&spec),
                    parts,
                    budget,
                },
            );
        }
    }

    /// A chunk of a scan reached the connection's worker: forward it (cut at `max_records`),
    /// then end the stream or ask for more.
    #[allow(clippy::too_many_arguments)]
    fn scan_chunk(
        &mut self,
        from: usize,
        conn: usize,
        scan_id: u64,
        bytes: &[u8],
        ends: &[u32],
        done: bool,
        error: u8,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(Stream::Scan(s)) = &mut c.job else { return };
        if s.id != scan_id {
            return; // a part of a scan that already ended
        }
        let mut take = ends.len();
        let mut capped = false;
        if s.max_records > 0 && s.sent + ends.len() as u64 >= s.max_records {
            take = (s.max_records - s.sent) as usize;
            capped = true;
        }
        if take > 0 {
            let end = ends[take - 1] as usize;
            let start = W::begin(&mut c.wbuf);
            c.wbuf.extend_from_slice(&bytes[..end]);
            W::finish(&mut c.wbuf, start, proto::PROTO_TYPE_MSG);
        }
        s.sent += take as u64;
        if done {
            s.owners.retain(|&o| o != from);
        }
        let mut credit = false;
        let c_done = error != 0 || capped || s.owners.is_empty();
        if c_done {
            let cancel = std::mem::take(&mut s.owners);
            W::last_proto(&mut c.wbuf, error);
            c.job = None;
            c.busy = false;
            for o in cancel {
                self.post(
                    o,
                    CoreMsg::ScanCancel {
                        from: self.id,
                        conn,
                        scan_id,
                    },
                );
            }
        } else if !done {
            s.owed.push(from);
            credit = true;
        }
        if c_done {
            self.answered(conn);
        }
        if credit {
            self.grant_owed(conn);
        }
        self.write_out(conn);
        self.serve(conn);
    }

    /// Advances every scan part of this worker: issue reads, move read records into the chunk,
    /// send the chunk when due and credited.
    fn run_scans(&mut self) {
        if self.scans.is_empty() {
            return;
        }
        let keys: Vec<(usize, u64)> = self.scans.keys().copied().collect();
        let mut issued = Vec::new();
        for key in keys {
            let Some(mut t) = self.scans.remove(&key) else { continue };
            let now_ms = self.shard.clock().now_cl_ms();
            loop {
                let emitted = t.emit(&self.truncate, now_ms);
                if t.chunk_due() {
                    break;
                }
                let filled = t.fill(&mut self.shard, &self.truncate, &mut self.next_token, &mut issued);
                if !filled && !emitted {
                    break;
                }
            }
            for token in issued.drain(..) {
                self.pending.insert(token, Pending::Scan(key));
            }
            if t.credit && t.chunk_due() {
                let done = t.finished();
                t.credit = false;
                let msg = CoreMsg::ScanChunk {
                    from: self.id,
                    conn: t.conn,
                    scan_id: t.scan_id,
                    bytes: std::mem::take(&mut t.chunk),
                    ends: std::mem::take(&mut t.ends),
                    done,
                    error: t.error,
                };
                let coord = t.coord;
                if !done {
                    self.scans.insert(key, t);
                }
                self.post(coord, msg);
            } else {
                self.scans.insert(key, t);
            }
        }
    }

    fn send(&mut self, to: usize, msg: CoreMsg) {
        if !self.outbox.is_empty() {
            self.outbox.push_back((to, msg));
            return;
        }
        if let Err(msg) = self.rings.push(to, msg) {
            self.outbox.push_back((to, msg));
        }
    }

    fn flush_outbox(&mut self) {
        while let Some((to, msg)) = self.outbox.pop_front() {
            if let Err(msg) = self.rings.push(to, msg) {
                self.outbox.push_front((to, msg));
                return;
            }
        }
    }

    fn drain_rings(&mut self) {
        for from in 0..self.rings.workers() {
            if from == self.id {
                continue;
            }
            while let Some(msg) = self.rings.pop(from) {
                self.handle_msg(msg);
            }
        }
        while let Some(msg) = self.local.pop_front() {
            self.handle_msg(msg);
        }
    }

    fn handle_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Cmd { from, conn, row, cmd } => self.start(
                Origin {
                    worker: from,
                    conn,
                    row,
                },
                cmd,
            ),
            CoreMsg::Reply { conn, row: true, bytes } => self.row_done(conn, &bytes),
            CoreMsg::Reply {
                conn,
                row: false,
                bytes,
            } => self.deliver(
                Origin {
                    worker: self.id,
                    conn,
                    row: None,
                },
                bytes,
            ),
            CoreMsg::ScanStart {
                from,
                conn,
                scan_id,
                spec,
                parts,
                budget,
            } => {
                let mut task = ScanTask::new(from, conn, scan_id, spec, parts);
                task.budget = budget;
                self.scans.insert((from, scan_id), task);
            }
            CoreMsg::ScanChunk {
                from,
                conn,
                scan_id,
                bytes,
                ends,
                done,
                error,
            } => self.scan_chunk(from, conn, scan_id, &bytes, &ends, done, error),
            CoreMsg::ScanCredit {
                from, scan_id, budget, ..
            } => {
                if let Some(t) = self.scans.get_mut(&(from, scan_id)) {
                    t.credit = true;
                    t.budget = budget;
                }
            }
            CoreMsg::ScanCancel { from, scan_id, .. } => {
                self.scans.remove(&(from, scan_id));
            }
            CoreMsg::Replicate { from, token, rec } => self.apply_replica(from, token, *rec),
            CoreMsg::ReplicaRead { from, conn, row, cmd } => {
                // Read-only: no per-digest ordering needed here; a failure now is final.
                let origin = Origin {
                    worker: from,
                    conn,
                    row,
                };
                let token = self.token();
                match self.shard.get(&cmd.digest, token) {
                    Ok(ReadAck::Done(rec)) => self.cont_replica_read(origin, cmd, Some(rec)),
                    Ok(ReadAck::Pending) => {
                        self.pending.insert(token, Pending::ReplicaRead { origin, cmd });
                    }
                    Err(ReadError::NotFound) => self.cont_replica_read(origin, cmd, None),
                    Err(e) => {
                        self.count_read_failure(&e);
                        self.deliver_reply(origin, Reply::code(read_error_code(&e)));
                    }
                }
            }
            CoreMsg::ReplicaAck {
                token,
                code,
                replica_failed,
            } => {
                // A replica that lost its device has dropped its role: the write stands on the
                // master's copy alone (degraded), as if the partition had no replica.
                let code = if replica_failed { 0 } else { code };
                self.write_acked(token, code);
            }
            CoreMsg::SyncOffer { from, pid, entries } => self.sync_offer(from, pid, &entries),
            CoreMsg::SyncWant { from, pid, want } => {
                if self.sync.active == Some((pid, from)) {
                    self.sync
                        .queue
                        .extend(want.into_iter().map(|digest| RepairItem::Record { to: from, digest }));
                    self.sync.queue.push_back(RepairItem::Done { to: from, pid });
                }
            }
            CoreMsg::Repair { rec } => {
                let token = self.token();
                match self.shard.put_replica(*rec, token) {
                    Ok(Some(_)) => {
                        self.shared.rereplicated_records.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(worker = self.id, "re-replicated copy not stored: {e}"),
                }
            }
            CoreMsg::SyncDone { from, pid } => {
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
        }
    }

    // ----- replication (see super::replica, super::sync) -----

    /// Applies a copy of a write this worker replicates and acknowledges it (now, or when the
    /// device write completes with commit_to_device).
    fn apply_replica(&mut self, from: usize, token: u64, rec: Record) {
        let t = self.token();
        let (code, replica_failed) = match self.shard.put_replica(rec, t) {
            Ok(Some(w)) if w.pending => {
                self.pending.insert(t, Pending::Replica { to: from, token });
                return;
            }
            Ok(_) => (0, false),
            Err(e) => (write_error_code(&e), matches!(e, WriteError::DeviceFailed(_))),
        };
        self.send(
            from,
            CoreMsg::ReplicaAck {
                token,
                code,
                replica_failed,
            },
        );
    }

    /// The master's copy of `cmd`'s record could not be read: a read-only command is served
    /// from the replica's copy when that copy is complete and its device alive (never the
    /// damaged data, never an error the replica can avoid); anything else answers the error.
    fn read_failed(&mut self, origin: Origin, cmd: Box<Command>, e: &ReadError) {
        self.count_read_failure(e);
        let roles = self.shared.pmap.get(cmd.digest.partition_id());
        let replica = roles
            .replica()
            .filter(|&r| roles.complete && !self.shared.device_failed[r].load(Ordering::Acquire));
        match replica {
            Some(r)
                if matches!(e, ReadError::Corrupt { .. } | ReadError::Device(_))
                    && !cmd.is_write()
                    && !cmd.is_delete() =>
            {
                let digest = cmd.digest;
                self.send(
                    r,
                    CoreMsg::ReplicaRead {
                        from: origin.worker,
                        conn: origin.conn,
                        row: origin.row,
                        cmd,
                    },
                );
                self.next_on_digest(&digest);
            }
            _ => self.finish(origin, &cmd, Reply::code(read_error_code(e))),
        }
    }

    fn count_read_failure(&mut self, e: &ReadError) {
        if matches!(e, ReadError::Corrupt { .. } | ReadError::Device(_)) {
            self.read_failures += 1;
        }
    }

    /// Fails this worker's device over once the shard has stopped on a device error or reads
    /// failed [`READ_FAILURES_BEFORE_FAILOVER`] times: each partition it masters moves to its
    /// replica (when that copy is complete and its device alive), and it stops being anyone's
    /// replica. The node reports itself degraded from then on.
    fn check_device(&mut self) {
        if self.device_down {
            return;
        }
        let cause = match self.shard.failure() {
            Some(e) => e.to_string(),
            None if self.read_failures >= READ_FAILURES_BEFORE_FAILOVER => {
                format!("{} record reads failed", self.read_failures)
            }
            None => return,
        };
        self.device_down = true;
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
        if self.sync.active.take().is_some() {
            self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
        }
        let dropped = self.sync.todo.len() as u64;
        self.sync.todo.clear();
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
    fn run_sync(&mut self) {
        if self.sync.idle() {
            return;
        }
        if let Some((pid, peer)) = self.sync.active {
            let r = self.shared.pmap.get(pid);
            if r.master != self.id || r.replica != peer {
                // Failover changed the roles: nothing left to reconcile for this partition.
                self.sync.active = None;
                self.sync
                    .queue
                    .retain(|i| !matches!(i, RepairItem::Done { pid: p, .. } if *p == pid));
                self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.sync.active.is_none() && !self.device_down {
            if let Some(pid) = self.sync.todo.pop_front() {
                let r = self.shared.pmap.get(pid);
                match r.replica() {
                    Some(peer) if r.master == self.id => {
                        let entries: Vec<SyncEntry> = self
                            .shard
                            .index()
                            .iter_partition_after(pid, None)
                            .map(SyncEntry::of)
                            .collect();
                        self.sync.active = Some((pid, peer));
                        self.send(
                            peer,
                            CoreMsg::SyncOffer {
                                from: self.id,
                                pid,
                                entries,
                            },
                        );
                    }
                    _ => {
                        self.shared.sync_remaining.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let now_ms = self.shard.clock().mono_ms();
        while let Some(&item) = self.sync.queue.front() {
            match item {
                RepairItem::Done { to, pid } => {
                    if self.sync.reads_in_flight > 0 {
                        break;
                    }
                    self.sync.queue.pop_front();
                    self.send(to, CoreMsg::SyncDone { from: self.id, pid });
                    if self.sync.active == Some((pid, to)) {
                        self.sync.active = None;
                    }
                }
                RepairItem::Record { to, digest } => {
                    if self.sync.reads_in_flight >= sync::REPAIR_READS_IN_FLIGHT || !self.repair_rate.take(now_ms) {
                        break;
                    }
                    self.sync.queue.pop_front();
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
            self.send(to, CoreMsg::Repair { rec: Box::new(rec) });
            return;
        }
        let token = self.token();
        match self.shard.get(&digest, token) {
            Ok(ReadAck::Done(rec)) => self.send(to, CoreMsg::Repair { rec: Box::new(rec) }),
            Ok(ReadAck::Pending) => {
                self.sync.reads_in_flight += 1;
                self.pending.insert(token, Pending::Repair { to });
            }
            Err(ReadError::NotFound) => {}
            Err(ReadError::Overload) => self.sync.queue.push_front(RepairItem::Record { to, digest }),
            Err(e) => {
                self.count_read_failure(&e);
                self.shared.rereplication_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(worker = self.id, "re-replication read failed: {e}");
            }
        }
    }

    /// The replica side of a [`CoreMsg::SyncOffer`]: ask for what the master has newer, send
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
        self.sync
            .queue
            .extend(push.into_iter().map(|digest| RepairItem::Record { to: from, digest }));
        self.send(
            from,
            CoreMsg::SyncWant {
                from: self.id,
                pid,
                want,
            },
        );
    }

    /// Sends reply bytes to where the request came from.
    fn deliver(&mut self, origin: Origin, bytes: Vec<u8>) {
        if origin.worker != self.id {
            let row = origin.row.is_some();
            self.send(
                origin.worker,
                CoreMsg::Reply {
                    conn: origin.conn,
                    row,
                    bytes,
                },
            );
            return;
        }
        if origin.row.is_some() {
            self.row_done(origin.conn, &bytes);
            return;
        }
        let conn = origin.conn;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.wbuf.extend_from_slice(&bytes);
        c.busy = false;
        self.answered(conn);
        self.write_out(conn);
        self.serve(conn);
    }

    // ----- the owner side: commands on this worker's shard -----

    /// Takes a new truncate table if one was published: raises the shard's LUT floor above
    /// every cut-off and starts sweeping a new namespace cut-off from the index. Called before
    /// each command, so a command that follows an acknowledged truncate sees it.
    fn refresh_truncate(&mut self) {
        let v = self.shared.truncate_version.load(Ordering::Acquire);
        if v == self.truncate_version {
            return;
        }
        let table = Arc::clone(
            &self
                .shared
                .truncate
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.truncate_version = v;
        self.shard.set_lut_floor(table.max_cutoff_ms());
        if table.namespace_lut_ms() > self.truncate.namespace_lut_ms() {
            self.truncate_sweep = Some((table.namespace_lut_ms(), 0));
        }
        self.truncate = table;
    }

    /// Removes namespace-truncated records of a few more partitions (64 per turn), so their
    /// space comes back without blocking the loop.
    fn sweep_truncated(&mut self) {
        let Some((cutoff, mut pid)) = self.truncate_sweep else {
            return;
        };
        // Every partition: this shard may hold replica copies of partitions it does not master.
        let mut removed = 0;
        for _ in 0..64 {
            if usize::from(pid) >= crate::digest::N_PARTITIONS {
                break;
            }
            removed += self.shard.truncate_partition(crate::digest::PartitionId(pid), cutoff);
            pid += 1;
        }
        if removed > 0 {
            tracing::debug!(worker = self.id, removed, "truncate sweep");
        }
        self.truncate_sweep = (usize::from(pid) < crate::digest::N_PARTITIONS).then_some((cutoff, pid));
    }

    fn start(&mut self, origin: Origin, cmd: Box<Command>) {
        self.refresh_truncate();
        let owner = self.owner(&cmd.digest);
        if owner != self.id {
            // The partition moved (failover) after the sender routed it: pass it on.
            self.dispatch(owner, origin, cmd);
            return;
        }
        if let Some(q) = self.busy_digests.get_mut(&cmd.digest) {
            q.push_back((origin, cmd));
            return;
        }
        self.busy_digests.insert(cmd.digest, VecDeque::new());
        self.run_cmd(origin, cmd);
    }

    fn run_cmd(&mut self, origin: Origin, cmd: Box<Command>) {
        let mut entry = self.shard.peek(&cmd.digest);
        if let Some(e) = entry {
            if self.truncate.covers_namespace(e.lut_ms()) {
                self.shard
                    .truncate_record(&cmd.digest, self.truncate.namespace_lut_ms());
                entry = None;
            }
        }
        // A record older than a set's cut-off: only the stored record says which set it is in.
        let must_read = entry.is_some_and(|e| self.truncate.may_cover(e.lut_ms()));
        if (cmd.needs_bins() || must_read) && entry.is_some() {
            let token = self.token();
            match self.shard.get(&cmd.digest, token) {
                Ok(ReadAck::Done(rec)) => self.cont(origin, cmd, Some(rec)),
                Ok(ReadAck::Pending) => {
                    self.pending.insert(
                        token,
                        Pending::Cmd {
                            origin,
                            cmd,
                            stage: Stage::Read,
                        },
                    );
                }
                Err(ReadError::NotFound) => self.cont(origin, cmd, None),
                Err(e) => self.read_failed(origin, cmd, &e),
            }
        } else {
            self.cont(origin, cmd, None);
        }
    }

    fn cont(&mut self, origin: Origin, cmd: Box<Command>, rec: Option<crate::record::Record>) {
        let rec = match rec {
            Some(r) if self.truncate.covers(r.meta.lut_ms, &r.set_name) => {
                let cutoff = self
                    .truncate
                    .namespace_lut_ms()
                    .max(self.truncate.set_cutoff_ms(&r.set_name));
                self.shard.truncate_record(&cmd.digest, cutoff);
                None
            }
            other => other,
        };
        let action = self.decide(&cmd, rec.as_ref(), self.shard.peek(&cmd.digest));
        let replica = self.shared.pmap.get(cmd.digest.partition_id()).replica();
        match action {
            Action::Reply(r) => self.finish(origin, &cmd, r),
            Action::Put(p, reply) => {
                let token = self.token();
                // The replica's copy: the same record, with the generation and LUT the local
                // write gives it (filled in by after_write).
                let copy = replica.map(|r| {
                    let rec = Record {
                        meta: RecordMeta {
                            digest: p.digest,
                            generation: 0,
                            void_time: p.void_time,
                            lut_ms: 0,
                            origin_seq: 0,
                            tombstone: false,
                        },
                        set_name: p.set_name.clone(),
                        key: p.key.clone(),
                        bins: p.bins.clone(),
                    };
                    (r, Box::new(rec))
                });
                let written = self.shard.put(p, token);
                self.after_write(origin, cmd, token, written, reply, true, copy);
            }
            Action::Delete(reply) => {
                let token = self.token();
                let written = self.shard.delete(&cmd.digest, token);
                let copy = replica.map(|r| {
                    let rec = Record {
                        meta: RecordMeta {
                            digest: cmd.digest,
                            generation: 0,
                            void_time: 0,
                            lut_ms: 0,
                            origin_seq: 0,
                            tombstone: true,
                        },
                        set_name: Vec::new(),
                        key: None,
                        bins: Vec::new(),
                    };
                    (r, Box::new(rec))
                });
                self.after_write(origin, cmd, token, written, reply, false, copy);
            }
        }
    }

    /// Answers a put or delete now, or parks it until its acknowledgements: the local device
    /// write (commit_to_device) and the replica's copy (`copy`: the replica worker and the
    /// record, sent once the local write gave it its generation and LUT). A put answers the
    /// record's new generation; a delete answers 0 (spec §6.4).
    #[allow(clippy::too_many_arguments)]
    fn after_write(
        &mut self,
        origin: Origin,
        cmd: Box<Command>,
        token: u64,
        written: Result<crate::shard::Written, WriteError>,
        mut reply: Reply,
        is_put: bool,
        copy: Option<(usize, Box<Record>)>,
    ) {
        match written {
            Ok(w) => {
                if is_put {
                    reply.generation = w.generation as u32;
                }
                let mut waits = u8::from(w.pending);
                if let Some((r, mut rec)) = copy {
                    rec.meta.generation = w.generation;
                    rec.meta.lut_ms = w.lut_ms;
                    self.send(
                        r,
                        CoreMsg::Replicate {
                            from: self.id,
                            token,
                            rec,
                        },
                    );
                    waits += 1;
                }
                if waits > 0 {
                    self.pending.insert(
                        token,
                        Pending::Cmd {
                            origin,
                            cmd,
                            stage: Stage::Write { reply, waits, code: 0 },
                        },
                    );
                } else {
                    self.finish(origin, &cmd, reply);
                }
            }
            Err(e) => self.finish(origin, &cmd, Reply::code(write_error_code(&e))),
        }
    }

    /// One acknowledgement of the write parked under `token` arrived (`code` 0 = success);
    /// answers the client once the last one is in.
    fn write_acked(&mut self, token: u64, code: u8) {
        let Some(Pending::Cmd {
            stage: Stage::Write { waits, code: first, .. },
            ..
        }) = self.pending.get_mut(&token)
        else {
            return;
        };
        if code != 0 && *first == 0 {
            *first = code;
        }
        *waits -= 1;
        if *waits > 0 {
            return;
        }
        let Some(Pending::Cmd {
            origin,
            cmd,
            stage: Stage::Write { reply, code, .. },
        }) = self.pending.remove(&token)
        else {
            return;
        };
        let reply = if code == 0 { reply } else { Reply::code(code) };
        self.finish(origin, &cmd, reply);
    }

    /// What `cmd` does to the record as stored here (`rec`: its bins when read, `None` when
    /// there is none or they were not needed; `entry`: its live index entry), with the
    /// command's filter applied.
    fn decide(&self, cmd: &Command, rec: Option<&Record>, entry: Option<crate::index::IndexEntry>) -> Action {
        let cur = Existing {
            record: rec,
            generation: entry.map_or(0, |e| e.generation()),
            void_time: entry.map_or(0, |e| e.void_time()),
        };
        let now_s = self.shard.clock().now_cl_s();
        match codec::filter_for(cmd, self.shard.clock().now_cl_ms()) {
            Ok(Some(f)) => exec::apply(cmd, cur, Some(&|r: &Record| f(r)), now_s),
            Ok(None) => exec::apply(cmd, cur, None, now_s),
            Err(code) => Action::Reply(Reply::code(code)),
        }
    }

    /// Answers a read-only command from this shard's replica copy (see [`CoreMsg::ReplicaRead`]).
    fn cont_replica_read(&mut self, origin: Origin, cmd: Box<Command>, rec: Option<Record>) {
        let rec = rec.filter(|r| !self.truncate.covers(r.meta.lut_ms, &r.set_name));
        let entry = self.shard.peek(&cmd.digest).filter(|_| rec.is_some());
        let reply = match self.decide(&cmd, rec.as_ref(), entry) {
            Action::Reply(r) => r,
            // A read-only command never writes; refuse rather than write on a replica.
            Action::Put(..) | Action::Delete(..) => Reply::code(proto::result_code::SERVER_ERROR),
        };
        self.deliver_reply(origin, reply);
    }

    /// Encodes and delivers `reply` without touching the per-digest queue.
    fn deliver_reply(&mut self, origin: Origin, reply: Reply) {
        let bytes = match origin.row {
            Some(index) => codec::encode_row(&reply, index),
            None => codec::encode_reply(&reply),
        };
        self.deliver(origin, bytes);
    }

    fn finish(&mut self, origin: Origin, cmd: &Command, reply: Reply) {
        let bytes = match origin.row {
            Some(index) => codec::encode_row(&reply, index),
            None => codec::encode_reply(&reply),
        };
        self.deliver(origin, bytes);
        self.next_on_digest(&cmd.digest);
    }

    /// Starts the next command waiting on `digest` (or passes it on if the partition moved).
    fn next_on_digest(&mut self, digest: &Digest) {
        loop {
            let next = self.busy_digests.get_mut(digest).and_then(|q| q.pop_front());
            match next {
                Some((o, c)) => {
                    let owner = self.owner(&c.digest);
                    if owner == self.id {
                        self.run_cmd(o, c);
                        return;
                    }
                    self.dispatch(owner, o, c);
                }
                None => {
                    self.busy_digests.remove(digest);
                    return;
                }
            }
        }
    }

    fn drive_shard(&mut self) {
        let mut evs = std::mem::take(&mut self.events);
        self.shard.poll(&mut evs);
        for ev in evs.drain(..) {
            match ev {
                Event::ReadDone { token, result } => match self.pending.remove(&token) {
                    Some(Pending::Cmd { origin, cmd, .. }) => match result {
                        Ok(rec) => self.cont(origin, cmd, Some(rec)),
                        Err(ReadError::NotFound) => self.cont(origin, cmd, None),
                        Err(e) => self.read_failed(origin, cmd, &e),
                    },
                    Some(Pending::Scan(key)) => {
                        if let Err(e) = &result {
                            self.count_read_failure(e);
                        }
                        if let Some(t) = self.scans.get_mut(&key) {
                            t.complete(token, result);
                        }
                    }
                    Some(Pending::Repair { to }) => {
                        self.sync.reads_in_flight -= 1;
                        match result {
                            Ok(rec) => self.send(to, CoreMsg::Repair { rec: Box::new(rec) }),
                            Err(ReadError::NotFound) => {}
                            Err(e) => {
                                self.count_read_failure(&e);
                                self.shared.rereplication_read_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(worker = self.id, "re-replication read failed: {e}");
                            }
                        }
                    }
                    Some(Pending::ReplicaRead { origin, cmd }) => match result {
                        Ok(rec) => self.cont_replica_read(origin, cmd, Some(rec)),
                        Err(ReadError::NotFound) => self.cont_replica_read(origin, cmd, None),
                        Err(e) => {
                            self.count_read_failure(&e);
                            self.deliver_reply(origin, Reply::code(read_error_code(&e)));
                        }
                    },
                    Some(p @ Pending::Replica { .. }) => {
                        // Not a read: put it back (cannot happen: tokens are unique).
                        self.pending.insert(token, p);
                    }
                    None => {}
                },
                Event::WriteDone { token, result } => match self.pending.remove(&token) {
                    Some(Pending::Replica { to, token: their }) => {
                        let (code, replica_failed) = match &result {
                            Ok(()) => (0, false),
                            Err(e) => (write_error_code(e), matches!(e, WriteError::DeviceFailed(_))),
                        };
                        self.send(
                            to,
                            CoreMsg::ReplicaAck {
                                token: their,
                                code,
                                replica_failed,
                            },
                        );
                    }
                    Some(Pending::Cmd {
                        origin,
                        cmd,
                        stage: Stage::Read,
                    }) => self.finish(origin, &cmd, Reply::code(proto::result_code::SERVER_ERROR)),
                    Some(p @ Pending::Cmd { .. }) => {
                        self.pending.insert(token, p);
                        self.write_acked(token, result.as_ref().map_or_else(write_error_code, |()| 0));
                    }
                    Some(p) => {
                        self.pending.insert(token, p);
                    }
                    None => {}
                },
            }
        }
        self.events = evs;
    }

    /// Publishes this worker's gauges for info commands.
    fn publish(&mut self) {
        if self.shared.replication_factor > 1 && Instant::now() >= self.next_master_count {
            self.next_master_count = Instant::now() + MASTER_COUNT_PERIOD;
            let n: usize = self
                .shared
                .pmap
                .mastered_by(self.id)
                .map(|p| self.shard.index().partition_len(p))
                .sum();
            self.shared.master_entries[self.id].store(n as u64, Ordering::Relaxed);
        }
        let space = self.shard.space();
        let s = &self.shared;
        s.index_entries[self.id].store(self.shard.index().len() as u64, Ordering::Relaxed);
        s.live_bytes[self.id].store(space.live_bytes, Ordering::Relaxed);
        s.capacity_bytes[self.id].store(
            space.wblocks_total as u64 * self.shard.config().wblock_size_bytes as u64,
            Ordering::Relaxed,
        );
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

fn read_error_code(e: &ReadError) -> u8 {
    use proto::result_code as rc;
    match e {
        ReadError::NotFound => rc::KEY_NOT_FOUND,
        ReadError::Overload => rc::DEVICE_OVERLOAD,
        ReadError::Corrupt { .. } | ReadError::Device(_) => rc::SERVER_ERROR,
    }
}

fn write_error_code(e: &WriteError) -> u8 {
    use proto::result_code as rc;
    match e {
        WriteError::OutOfSpace => rc::OUT_OF_SPACE,
        WriteError::RecordTooBig { .. } => rc::RECORD_TOO_BIG,
        WriteError::Overload(_) => rc::DEVICE_OVERLOAD,
        WriteError::NotFound => rc::KEY_NOT_FOUND,
        WriteError::Invalid(_) => rc::PARAMETER,
        WriteError::DeviceFailed(_) => rc::SERVER_ERROR,
    }
}
