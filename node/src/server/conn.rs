//! Client connections, independent of the transport: framing of the byte stream into protos
//! (wire spec §1: an 8-byte header, then `size` bytes), reply buffers, back-pressure and idle
//! time-outs. The reactor feeds it what the network received ([`Conns::on_data`]), takes whole
//! requests out ([`Conns::frame`]), appends replies ([`Conns::out`]) and at the end of each
//! turn hands every connection's new reply bytes to the network ([`Conns::flush`]); buffers
//! come back from the network and are reused, so steady traffic allocates nothing here.
//!
//! **Back-pressure.** A connection whose replies are not being read (bytes built plus bytes
//! handed to the network and not yet sent) past [`ConnLimits::max_unsent_bytes`] stops being
//! read until it drains to half that: a client that never reads cannot make the node buffer
//! without limit. A client that pipelines requests (the official clients do not) is held the
//! same way once [`RBUF_PAUSE_BYTES`] wait behind the request being served.

use super::batch::BatchRun;
use super::scan_coord::ScanRun;
use super::stats::Hist;
use crate::proto::{ProtoHeader, PROTO_HEADER_BYTES, PROTO_SIZE_MAX};
use bolide_drivers::net::ConnId;
use std::collections::VecDeque;
use std::time::Instant;

/// Received bytes waiting behind the request being served above which a connection is paused.
pub const RBUF_PAUSE_BYTES: usize = 1 << 20;
/// Reply buffers kept for reuse, and the largest capacity kept.
const POOL_BUFFERS: usize = 256;
const POOL_MAX_CAPACITY: usize = 256 * 1024;
/// Capacity of a fresh reply buffer.
const OUT_CAPACITY: usize = 4096;

/// Per-connection limits (node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Reply bytes not yet sent above which the connection's requests are not read.
    pub max_unsent_bytes: usize,
    /// Close a connection with no request for this long (Aerospike's `proto-fd-idle-ms`);
    /// 0 = never.
    pub idle_ms: u64,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_unsent_bytes: 16 << 20,
            idle_ms: 0,
        }
    }
}

/// The stream a connection is answering (a request whose reply is many messages).
pub enum Job {
    Batch(BatchRun),
    Scan(ScanRun),
}

/// One client connection.
pub struct Conn {
    pub id: ConnId,
    /// Which of the worker's listeners accepted it (in node mode: which node it talks to).
    pub listener: u32,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Lengths of the buffers handed to the network and not yet given back, in order.
    in_net: VecDeque<usize>,
    in_net_bytes: usize,
    /// A request is being served; the next one waits (the clients do not pipeline).
    pub busy: bool,
    /// Close once the reply in progress is out (the peer closed, or the stream is unreadable).
    pub closing: bool,
    paused: bool,
    dirty: bool,
    /// The batch or scan being answered.
    pub job: Option<Job>,
    /// When the request being served was taken off the stream, and its histogram.
    pub started: Option<(Instant, Hist)>,
    pub last_active_ms: u64,
}

impl Conn {
    /// Reply bytes built or handed to the network and not yet sent.
    pub fn unsent_bytes(&self) -> usize {
        self.out.len() + self.in_net_bytes
    }
}

/// What [`Conns::frame`] found at the front of a connection's stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// A whole request: its header and its length with the header.
    Ready(ProtoHeader, usize),
    /// Not a whole request yet (or the connection is busy with one).
    Incomplete,
    /// The stream is not a protocol stream: close the connection.
    Bad(String),
}

/// A worker's connections, indexed by slot.
#[derive(Default)]
pub struct Conns {
    slots: Vec<Option<Conn>>,
    dirty: Vec<ConnId>,
    /// The other half of `dirty`'s double buffer (empty between flushes).
    dirty_spare: Vec<ConnId>,
    pauses: Vec<(ConnId, bool)>,
    pool: Vec<Vec<u8>>,
    open: usize,
    pub limits: ConnLimits,
}

impl Conns {
    pub fn new(limits: ConnLimits) -> Conns {
        Conns {
            limits,
            ..Conns::default()
        }
    }

    /// A new connection from `listener`.
    pub fn accept(&mut self, id: ConnId, listener: u32, now_ms: u64) {
        let s = id.slot() as usize;
        if self.slots.len() <= s {
            self.slots.resize_with(s + 1, || None);
        }
        debug_assert!(self.slots[s].is_none(), "the network reused a live slot");
        self.slots[s] = Some(Conn {
            id,
            listener,
            rbuf: Vec::new(),
            out: Vec::new(),
            in_net: VecDeque::new(),
            in_net_bytes: 0,
            busy: false,
            closing: false,
            paused: false,
            dirty: false,
            job: None,
            started: None,
            last_active_ms: now_ms,
        });
        self.open += 1;
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slots.get(id.slot() as usize)?.as_ref().filter(|c| c.id == id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(id.slot() as usize)?.as_mut().filter(|c| c.id == id)
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.open
    }

    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Bytes received on `id`.
    pub fn on_data(&mut self, id: ConnId, bytes: &[u8], now_ms: u64) {
        let Some(c) = self.get_mut(id) else { return };
        if c.closing {
            return;
        }
        c.rbuf.extend_from_slice(bytes);
        c.last_active_ms = now_ms;
        if c.rbuf.len() as u64 > PROTO_SIZE_MAX + PROTO_HEADER_BYTES as u64 + RBUF_PAUSE_BYTES as u64 {
            // More than one request's worth behind a busy one: the peer ignores pausing.
            c.closing = true;
        }
        self.update_pause(id);
    }

    /// The request at the front of `id`'s stream, if whole and the connection is free.
    pub fn frame(&self, id: ConnId) -> FrameStatus {
        let Some(c) = self.get(id) else {
            return FrameStatus::Incomplete;
        };
        if c.busy || c.closing || c.rbuf.len() < PROTO_HEADER_BYTES {
            return FrameStatus::Incomplete;
        }
        let hdr_bytes: [u8; PROTO_HEADER_BYTES] = c.rbuf[..PROTO_HEADER_BYTES].try_into().expect("8 bytes");
        match ProtoHeader::parse(&hdr_bytes) {
            Ok(h) => {
                let total = PROTO_HEADER_BYTES + h.size as usize;
                if c.rbuf.len() < total {
                    FrameStatus::Incomplete
                } else {
                    FrameStatus::Ready(h, total)
                }
            }
            Err(e) => FrameStatus::Bad(e.to_string()),
        }
    }

    /// Lends `id`'s received bytes out while its request is handled (the caller decodes from
    /// them); give them back with [`Conns::consumed`]. Marks the connection busy.
    pub fn take_rbuf(&mut self, id: ConnId) -> Vec<u8> {
        let Some(c) = self.get_mut(id) else { return Vec::new() };
        c.busy = true;
        std::mem::take(&mut c.rbuf)
    }

    /// Gives back the bytes lent by [`Conns::take_rbuf`] with the first `used` (the request)
    /// consumed. A connection closed meanwhile drops them.
    pub fn consumed(&mut self, id: ConnId, mut rbuf: Vec<u8>, used: usize) {
        let Some(c) = self.get_mut(id) else { return };
        rbuf.drain(..used.min(rbuf.len()));
        // Bytes that arrived while the buffer was lent (none today: lending ends within the
        // turn) go after the ones kept.
        rbuf.extend_from_slice(&c.rbuf);
        c.rbuf = rbuf;
        self.update_pause(id);
    }

    /// `id`'s reply buffer, to append a reply to; it goes to the network at [`Conns::flush`].
    pub fn out(&mut self, id: ConnId) -> Option<&mut Vec<u8>> {
        let s = id.slot() as usize;
        let c = self.slots.get_mut(s)?.as_mut().filter(|c| c.id == id)?;
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
        if c.out.capacity() == 0 {
            c.out = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(OUT_CAPACITY));
        }
        Some(&mut c.out)
    }

    /// The request on `id` is answered in full: the next one may be served.
    pub fn done(&mut self, id: ConnId) -> Option<(Instant, Hist)> {
        let c = self.get_mut(id)?;
        c.busy = false;
        c.started.take()
    }

    /// Hands every connection's new reply bytes to `send` (the network); a buffer `send`
    /// refuses (the connection is gone) is recycled.
    pub fn flush(&mut self, mut send: impl FnMut(ConnId, Vec<u8>) -> Result<(), Vec<u8>>) {
        // Double-buffered so neither list loses its capacity (no allocation per turn).
        let mut ids = std::mem::take(&mut self.dirty_spare);
        std::mem::swap(&mut ids, &mut self.dirty);
        for id in ids.drain(..) {
            let s = id.slot() as usize;
            let Some(c) = self.slots.get_mut(s).and_then(|c| c.as_mut()).filter(|c| c.id == id) else {
                continue;
            };
            c.dirty = false;
            if c.out.is_empty() {
                continue;
            }
            let buf = std::mem::take(&mut c.out);
            let len = buf.len();
            c.in_net.push_back(len);
            c.in_net_bytes += len;
            if let Err(b) = send(id, buf) {
                c.in_net.pop_back();
                c.in_net_bytes -= len;
                recycle(&mut self.pool, b);
            }
            self.update_pause(id);
        }
        self.dirty_spare = ids;
    }

    /// The network sent a buffer of `id` whole and gave it back.
    pub fn on_sent(&mut self, id: ConnId, buf: Vec<u8>) {
        if let Some(c) = self.get_mut(id) {
            if let Some(len) = c.in_net.pop_front() {
                c.in_net_bytes -= len;
            }
        }
        recycle(&mut self.pool, buf);
        self.update_pause(id);
    }

    /// Forgets `id` (closed by the peer, or by us); returns it for the caller's clean-up.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let s = id.slot() as usize;
        let slot = self.slots.get_mut(s)?;
        if slot.as_ref().is_none_or(|c| c.id != id) {
            return None;
        }
        self.open -= 1;
        let mut c = slot.take()?;
        recycle(&mut self.pool, std::mem::take(&mut c.out));
        Some(c)
    }

    /// Pause changes since the last call: (connection, paused), for the network.
    pub fn take_pauses(&mut self) -> Vec<(ConnId, bool)> {
        std::mem::take(&mut self.pauses)
    }

    /// Whether there are pause changes to hand to the network.
    pub fn has_pauses(&self) -> bool {
        !self.pauses.is_empty()
    }

    /// Connections idle (no request, nothing being served) since before `now_ms -
    /// limits.idle_ms`.
    pub fn idle(&self, now_ms: u64) -> Vec<ConnId> {
        if self.limits.idle_ms == 0 {
            return Vec::new();
        }
        self.slots
            .iter()
            .flatten()
            .filter(|c| !c.busy && c.job.is_none() && now_ms.saturating_sub(c.last_active_ms) >= self.limits.idle_ms)
            .map(|c| c.id)
            .collect()
    }

    /// Every connection's id.
    pub fn ids(&self) -> Vec<ConnId> {
        self.slots.iter().flatten().map(|c| c.id).collect()
    }

    fn update_pause(&mut self, id: ConnId) {
        let max = self.limits.max_unsent_bytes;
        let Some(c) = self.get_mut(id) else { return };
        let unsent = c.unsent_bytes();
        let backlog = c.busy && c.rbuf.len() >= RBUF_PAUSE_BYTES;
        let pause = if c.paused {
            unsent > max / 2 || backlog
        } else {
            unsent > max || backlog
        };
        if pause != c.paused {
            c.paused = pause;
            self.pauses.push((id, pause));
        }
    }
}

fn recycle(pool: &mut Vec<Vec<u8>>, mut b: Vec<u8>) {
    if b.capacity() > 0 && b.capacity() <= POOL_MAX_CAPACITY && pool.len() < POOL_BUFFERS {
        b.clear();
        pool.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(ptype: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((2u64 << 56) | (u64::from(ptype) << 48) | body.len() as u64)
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_request_split_anywhere_is_framed_once_whole() {
        let req = frame_bytes(3, b"0123456789abcdef0123");
        for cut in 1..req.len() {
            let mut cs = Conns::new(ConnLimits::default());
            let id = ConnId::new(3, 1);
            cs.accept(id, 0, 0);
            cs.on_data(id, &req[..cut], 1);
            assert_eq!(cs.frame(id), FrameStatus::Incomplete, "cut at {cut}");
            cs.on_data(id, &req[cut..], 2);
            let FrameStatus::Ready(h, total) = cs.frame(id) else {
                panic!("whole request not framed (cut at {cut})")
            };
            assert_eq!((h.ptype, total), (3, req.len()));
            let rbuf = cs.take_rbuf(id);
            assert_eq!(&rbuf[..total], &req[..]);
            assert_eq!(cs.frame(id), FrameStatus::Incomplete, "busy while lent");
            cs.consumed(id, rbuf, total);
            cs.done(id);
            assert_eq!(cs.frame(id), FrameStatus::Incomplete, "nothing left");
        }
    }

    #[test]
    fn two_requests_in_one_segment_are_served_one_after_the_other() {
        let mut cs = Conns::new(ConnLimits::default());
        let id = ConnId::new(0, 0);
        cs.accept(id, 0, 0);
        let mut both = frame_bytes(1, b"a");
        both.extend(frame_bytes(1, b"bb"));
        cs.on_data(id, &both, 0);
        let FrameStatus::Ready(_, n1) = cs.frame(id) else { panic!() };
        let rb = cs.take_rbuf(id);
        cs.consumed(id, rb, n1);
        assert_eq!(cs.frame(id), FrameStatus::Incomplete, "the second waits for the first's reply");
        cs.done(id);
        let FrameStatus::Ready(h, n2) = cs.frame(id) else { panic!() };
        assert_eq!((h.size, n2), (2, 10));
    }

    #[test]
    fn a_bad_header_is_reported() {
        let mut cs = Conns::new(ConnLimits::default());
        let id = ConnId::new(0, 0);
        cs.accept(id, 0, 0);
        cs.on_data(id, &[9u8; 8], 0);
        assert!(matches!(cs.frame(id), FrameStatus::Bad(_)));
    }

    #[test]
    fn unsent_replies_pause_the_connection_and_draining_resumes_it() {
        let mut cs = Conns::new(ConnLimits {
            max_unsent_bytes: 1000,
            idle_ms: 0,
        });
        let id = ConnId::new(0, 0);
        cs.accept(id, 0, 0);
        let mut handed = Vec::new();
        for _ in 0..3 {
            cs.out(id).unwrap().extend_from_slice(&[0u8; 400]);
            cs.flush(|c, b| {
                handed.push((c, b));
                Ok(())
            });
        }
        assert_eq!(cs.take_pauses(), vec![(id, true)], "1200 unsent bytes pause reading");
        let (_, b) = handed.remove(0);
        cs.on_sent(id, b);
        assert!(cs.take_pauses().is_empty(), "800 > 500: still paused");
        let (_, b) = handed.remove(0);
        cs.on_sent(id, b);
        assert_eq!(cs.take_pauses(), vec![(id, false)], "400 <= 500: resumed");
        assert_eq!(cs.get(id).unwrap().unsent_bytes(), 400);
    }

    #[test]
    fn buffers_are_recycled_not_reallocated() {
        let mut cs = Conns::new(ConnLimits::default());
        let id = ConnId::new(0, 0);
        cs.accept(id, 0, 0);
        let mut back = Vec::new();
        cs.out(id).unwrap().extend_from_slice(b"reply");
        cs.flush(|_, b| {
            back.push(b);
            Ok(())
        });
        let b = back.pop().unwrap();
        let ptr = b.as_ptr();
        cs.on_sent(id, b);
        let out = cs.out(id).unwrap();
        assert!(out.is_empty());
        assert_eq!(out.as_ptr(), ptr, "the returned buffer is reused");
    }

    #[test]
    fn stale_ids_touch_nothing_and_idle_connections_are_found() {
        let mut cs = Conns::new(ConnLimits {
            max_unsent_bytes: 1 << 20,
            idle_ms: 100,
        });
        let old = ConnId::new(0, 0);
        cs.accept(old, 0, 0);
        assert!(cs.remove(old).is_some());
        let new = ConnId::new(0, 1);
        cs.accept(new, 0, 50);
        cs.on_data(old, b"xx", 60);
        assert!(cs.out(old).is_none());
        assert!(cs.remove(old).is_none());
        assert!(cs.idle(120).is_empty(), "active at 50");
        assert_eq!(cs.idle(150), vec![new]);
        cs.get_mut(new).unwrap().busy = true;
        assert!(cs.idle(1000).is_empty(), "a busy connection is not idle");
        assert_eq!(cs.len(), 1);
    }
}
