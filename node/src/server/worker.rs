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
use super::ring::WorkerRings;
use super::scan::ScanTask;
use super::stats::Hist;
use super::NodeShared;
use crate::clock::Clock;
use crate::digest::Digest;
use crate::proto::msg::Reply as W;
use crate::proto::scan::ScanPartition;
use crate::proto::{self, ProtoHeader, PROTO_HEADER_BYTES};
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
    /// Waiting for the write acknowledgement; answer `Reply` then.
    Write(Reply),
}

enum Pending {
    Cmd {
        origin: Origin,
        cmd: Box<Command>,
        stage: Stage,
    },
    /// A record read of the scan task with this key.
    Scan((usize, u64)),
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
}

impl<D: BlockDevice, C: Clock> Worker<D, C> {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        shard: Shard<D, C>,
        rings: WorkerRings<CoreMsg>,
        shared: Arc<NodeShared>,
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
            shard,
            rings,
            shared,
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
        })
    }

    /// Runs until `stop` is set; returns the shard for a clean shutdown.
    pub(crate) fn run(mut self) -> Shard<D, C> {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let streaming =
                !self.batch_conns.is_empty() || !self.local.is_empty() || self.scans.values().any(ScanTask::runnable);
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
            self.flush_outbox();
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

    fn owner(&self, digest: &Digest) -> usize {
        digest.partition_id().0 as usize % self.rings.workers()
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
            shares[p.pid.0 as usize % n].push(p);
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
        }
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

    /// Removes namespace-truncated records of a few more of this worker's partitions (64 per
    /// turn), so their space comes back without blocking the loop.
    fn sweep_truncated(&mut self) {
        let Some((cutoff, mut pid)) = self.truncate_sweep else {
            return;
        };
        let n = self.rings.workers();
        let mut removed = 0;
        for _ in 0..64 {
            while usize::from(pid) < crate::digest::N_PARTITIONS && usize::from(pid) % n != self.id {
                pid += 1;
            }
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
                Err(e) => self.finish(origin, &cmd, Reply::code(read_error_code(&e))),
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
        let entry = self.shard.peek(&cmd.digest);
        let cur = Existing {
            record: rec.as_ref(),
            generation: entry.map_or(0, |e| e.generation()),
            void_time: entry.map_or(0, |e| e.void_time()),
        };
        let filter = codec::filter_for(&cmd, self.shard.clock().now_cl_ms());
        let now_s = self.shard.clock().now_cl_s();
        let action = match &filter {
            Ok(Some(f)) => exec::apply(&cmd, cur, Some(&|r: &crate::record::Record| f(r)), now_s),
            Ok(None) => exec::apply(&cmd, cur, None, now_s),
            Err(code) => Action::Reply(Reply::code(*code)),
        };
        match action {
            Action::Reply(r) => self.finish(origin, &cmd, r),
            Action::Put(p, reply) => {
                let token = self.token();
                let written = self.shard.put(p, token);
                self.after_write(origin, cmd, token, written, reply, true);
            }
            Action::Delete(reply) => {
                let token = self.token();
                let written = self.shard.delete(&cmd.digest, token);
                self.after_write(origin, cmd, token, written, reply, false);
            }
        }
    }

    /// Answers a put or delete now, or parks it until its acknowledgement (commit_to_device).
    /// A put answers the record's new generation; a delete answers 0 (spec §6.4).
    fn after_write(
        &mut self,
        origin: Origin,
        cmd: Box<Command>,
        token: u64,
        written: Result<crate::shard::Written, WriteError>,
        mut reply: Reply,
        is_put: bool,
    ) {
        match written {
            Ok(w) => {
                if is_put {
                    reply.generation = w.generation as u32;
                }
                if w.pending {
                    self.pending.insert(
                        token,
                        Pending::Cmd {
                            origin,
                            cmd,
                            stage: Stage::Write(reply),
                        },
                    );
                } else {
                    self.finish(origin, &cmd, reply);
                }
            }
            Err(e) => self.finish(origin, &cmd, Reply::code(write_error_code(&e))),
        }
    }

    fn finish(&mut self, origin: Origin, cmd: &Command, reply: Reply) {
        let bytes = match origin.row {
            Some(index) => codec::encode_row(&reply, index),
            None => codec::encode_reply(&reply),
        };
        self.deliver(origin, bytes);
        // Start the next command waiting on this digest.
        let next = self.busy_digests.get_mut(&cmd.digest).and_then(|q| q.pop_front());
        match next {
            Some((o, c)) => self.run_cmd(o, c),
            None => {
                self.busy_digests.remove(&cmd.digest);
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
                        Err(e) => self.finish(origin, &cmd, Reply::code(read_error_code(&e))),
                    },
                    Some(Pending::Scan(key)) => {
                        if let Some(t) = self.scans.get_mut(&key) {
                            t.complete(token, result);
                        }
                    }
                    None => {}
                },
                Event::WriteDone { token, result } => {
                    let Some(Pending::Cmd { origin, cmd, stage }) = self.pending.remove(&token) else {
                        continue;
                    };
                    let reply = match (result, stage) {
                        (Ok(()), Stage::Write(r)) => r,
                        (Err(e), _) => Reply::code(write_error_code(&e)),
                        (Ok(()), Stage::Read) => Reply::code(proto::result_code::SERVER_ERROR),
                    };
                    self.finish(origin, &cmd, reply);
                }
            }
        }
        self.events = evs;
    }

    /// Publishes this worker's gauges for info commands.
    fn publish(&self) {
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
