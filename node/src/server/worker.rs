//! One worker per core: a poll loop over its listener, its client connections, its device's
//! completion eventfd and its inbound rings; it owns the shard of the partitions `p` with
//! `p % workers == id` (DESIGN.md, "Thread per core").
//!
//! A request that arrives on a connection of worker `a` for a partition owned by worker `b`
//! crosses the ring `a → b` as a decoded [`Command`]; the reply comes back on `b → a` as encoded
//! bytes. Commands on one digest run one at a time (later ones wait in a per-digest queue), so a
//! read-modify-write that waits for the device never interleaves with another write of the same
//! record.

use super::codec::{self, Decoded};
use super::exec::{self, Action, Command, Existing, Reply};
use super::ring::Rings;
use super::NodeShared;
use crate::clock::Clock;
use crate::digest::Digest;
use crate::proto::{self, ProtoHeader, PROTO_HEADER_BYTES};
use crate::shard::{Event, ReadAck, ReadError, Shard, WriteError};
use bolide_drivers::BlockDevice;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const DEVICE: Token = Token(2);
const FIRST_CONN: usize = 16;
/// Longest a worker sleeps with nothing to do, so flush and expiry timers run.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Bytes read from a socket per read call.
const READ_CHUNK: usize = 64 * 1024;

/// A message between workers.
pub enum CoreMsg {
    /// Run `cmd` on your shard and send the reply to worker `from` for connection `conn`.
    Cmd {
        from: usize,
        conn: usize,
        cmd: Box<Command>,
    },
    /// The encoded reply for connection `conn`.
    Reply { conn: usize, bytes: Vec<u8> },
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local(usize),
    Remote(usize, usize),
}

enum Stage {
    /// Waiting for the device read of the current record.
    Read,
    /// Waiting for the write acknowledgement; answer `Reply` then.
    Write(Reply),
}

struct Pending {
    origin: Origin,
    cmd: Box<Command>,
    stage: Stage,
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// A request is being served; the next one waits (clients do not pipeline).
    busy: bool,
    closing: bool,
}

pub struct Worker<D: BlockDevice, C: Clock> {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    shard: Shard<D, C>,
    rings: Arc<Rings<CoreMsg>>,
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
}

impl<D: BlockDevice, C: Clock> Worker<D, C> {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        shard: Shard<D, C>,
        rings: Arc<Rings<CoreMsg>>,
        shared: Arc<NodeShared>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(fd) = shard.device().completion_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), DEVICE, Interest::READABLE)?;
        }
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
        })
    }

    /// Runs until `stop` is set; returns the shard for a clean shutdown.
    pub(crate) fn run(mut self) -> Shard<D, C> {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = if self.shard.in_flight() > 0 && self.shard.device().completion_fd().is_none() {
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
            self.flush_outbox();
            self.publish();
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
            let frame: Vec<u8> = c.rbuf.drain(..total).collect();
            c.busy = true;
            self.handle_frame(id, hdr, &frame[PROTO_HEADER_BYTES..]);
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
        }
    }

    fn handle_frame(&mut self, conn: usize, hdr: ProtoHeader, body: &[u8]) {
        match codec::decode(hdr.ptype, body, &self.shared.namespace) {
            Decoded::Reply(bytes) => self.deliver(Origin::Local(conn), bytes),
            Decoded::Info => {
                let bytes = codec::info_reply(body, &self.shared);
                self.deliver(Origin::Local(conn), bytes);
            }
            Decoded::Close => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.closing = true;
                    c.busy = false;
                }
            }
            Decoded::Single(cmd) => {
                let owner = cmd.digest.partition_id().0 as usize % self.rings.workers();
                if owner == self.id {
                    self.start(Origin::Local(conn), cmd);
                } else {
                    self.send(
                        owner,
                        CoreMsg::Cmd {
                            from: self.id,
                            conn,
                            cmd,
                        },
                    );
                }
            }
        }
    }

    fn send(&mut self, to: usize, msg: CoreMsg) {
        if !self.outbox.is_empty() {
            self.outbox.push_back((to, msg));
            return;
        }
        if let Err(msg) = self.rings.get(self.id, to).push(msg) {
            self.outbox.push_back((to, msg));
        }
    }

    fn flush_outbox(&mut self) {
        while let Some((to, msg)) = self.outbox.pop_front() {
            if let Err(msg) = self.rings.get(self.id, to).push(msg) {
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
            while let Some(msg) = self.rings.get(from, self.id).pop() {
                match msg {
                    CoreMsg::Cmd { from, conn, cmd } => self.start(Origin::Remote(from, conn), cmd),
                    CoreMsg::Reply { conn, bytes } => self.deliver(Origin::Local(conn), bytes),
                }
            }
        }
    }

    /// Sends reply bytes to where the request came from.
    fn deliver(&mut self, origin: Origin, bytes: Vec<u8>) {
        match origin {
            Origin::Remote(worker, conn) => self.send(worker, CoreMsg::Reply { conn, bytes }),
            Origin::Local(conn) => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                c.wbuf.extend_from_slice(&bytes);
                c.busy = false;
                self.write_out(conn);
                self.serve(conn);
            }
        }
    }

    // ----- the owner side: commands on this worker's shard -----

    fn start(&mut self, origin: Origin, cmd: Box<Command>) {
        if let Some(q) = self.busy_digests.get_mut(&cmd.digest) {
            q.push_back((origin, cmd));
            return;
        }
        self.busy_digests.insert(cmd.digest, VecDeque::new());
        self.run_cmd(origin, cmd);
    }

    fn run_cmd(&mut self, origin: Origin, cmd: Box<Command>) {
        let entry = self.shard.peek(&cmd.digest);
        if cmd.needs_bins() && entry.is_some() {
            let token = self.token();
            match self.shard.get(&cmd.digest, token) {
                Ok(ReadAck::Done(rec)) => self.cont(origin, cmd, Some(rec)),
                Ok(ReadAck::Pending) => {
                    self.pending.insert(
                        token,
                        Pending {
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
                        Pending {
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
        let bytes = codec::encode_reply(&reply);
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
                Event::ReadDone { token, result } => {
                    let Some(p) = self.pending.remove(&token) else { continue };
                    match result {
                        Ok(rec) => self.cont(p.origin, p.cmd, Some(rec)),
                        Err(ReadError::NotFound) => self.cont(p.origin, p.cmd, None),
                        Err(e) => self.finish(p.origin, &p.cmd, Reply::code(read_error_code(&e))),
                    }
                }
                Event::WriteDone { token, result } => {
                    let Some(p) = self.pending.remove(&token) else { continue };
                    let reply = match (result, p.stage) {
                        (Ok(()), Stage::Write(r)) => r,
                        (Err(e), _) => Reply::code(write_error_code(&e)),
                        (Ok(()), Stage::Read) => Reply::code(proto::result_code::SERVER_ERROR),
                    };
                    self.finish(p.origin, &p.cmd, reply);
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
