//! The network trait: one core's queue to the network (DESIGN.md, "Drivers"; the card's "NICs
//! polled through a driver").
//!
//! A [`NetQueue`] is to client connections what a [`crate::BlockDevice`] is to a device: one
//! core owns it, nothing in it is shared, and every backend behaves the same way, checked by one
//! suite ([`conformance`]). Backends:
//!
//! * [`epoll::EpollNet`]: kernel sockets through epoll (one `read(2)`/`write(2)` per transfer);
//! * [`uring::UringNet`]: kernel sockets through io_uring: multishot accept, multishot receive
//!   into a provided-buffer ring, sends queued as SQEs and handed over in one `io_uring_enter`
//!   per turn together with the wait for completions;
//! * [`sim::SimNet`]: a deterministic in-memory network with seeded faults (segments split and
//!   delayed, connections stalled or reset), for the whole-node simulation;
//! * [`dpdk`]: a DPDK-polled NIC queue pair per core with a user-space TCP stack (smoltcp), built
//!   with the `dpdk` cargo feature.
//!
//! # The life of a turn
//!
//! The owning core's loop calls [`NetQueue::poll`] once per turn: it hands everything queued
//! since the last turn (sends, re-armed receives) to the transport and waits up to `timeout` for
//! something to happen (`Duration::ZERO`: never wait). It then drains [`NetQueue::next_event`]
//! until `None`. A [`NetEvent::Received`] lends the received bytes straight from the transport's
//! buffer (a provided io_uring buffer, the socket read buffer, a TCP stack's receive window);
//! they are valid until the next call to `next_event`, so the caller copies what it keeps.
//!
//! # Buffers and ownership
//!
//! [`NetQueue::send`] takes a `Vec<u8>` by value (the "rent" model of the block device): the
//! transport owns it until every byte is handed to the kernel or the stack, then gives it back
//! (cleared, capacity kept) in [`NetEvent::Sent`], so a caller that recycles its buffers
//! allocates nothing per reply. Sends on one connection go out in the order they were queued.
//!
//! # Connection ids
//!
//! A [`ConnId`] names a slot and that slot's generation, so an id that outlived its connection
//! never reaches a newer connection in the same slot: `send` to it fails with
//! [`SendError::Closed`], `close` ignores it. After [`NetEvent::Closed`] (or after the caller's
//! own [`NetQueue::close`]) no event names the connection again; buffers still queued on it are
//! dropped by the transport.
//!
//! # Waking a parked core
//!
//! `poll` returns early when a descriptor registered with [`NetQueue::watch_fd`] becomes
//! readable: the device's completion eventfd and the core's [`Doorbell`] eventfd. The backend
//! only watches; draining the descriptor is its owner's job.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub mod conformance;
pub mod doorbell;
pub mod dpdk;
#[cfg(target_os = "linux")]
pub mod epoll;
pub mod sim;
#[cfg(target_os = "linux")]
pub mod uring;

#[cfg(target_os = "linux")]
pub use doorbell::EventFdDoorbell;
pub use doorbell::{Doorbell, SimDoorbell};

/// One connection of one [`NetQueue`]: a slot index and the slot's generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The id of `slot` in its `generation`.
    pub const fn new(slot: u32, generation: u32) -> ConnId {
        ConnId(((generation as u64) << 32) | slot as u64)
    }
    /// The slot (dense, reused after the connection ends): a good index for the caller's table.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as one integer (for logs and the wire of a simulated network).
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.slot(), self.generation())
    }
}

/// One listening socket of a [`NetQueue`], in the order [`NetQueue::listen`] created them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u32);

/// How to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// Share the address with other sockets that also set it (`SO_REUSEPORT`): the kernel
    /// spreads connections over them. Used by the node's shared-listener mode, between its own
    /// workers only (the node checks first that no other process holds the port).
    pub reuse_port: bool,
    /// Pending connections the kernel queues (`listen(2)` backlog).
    pub backlog: u32,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions {
            reuse_port: false,
            backlog: 1024,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its end (end of stream).
    Peer,
    /// The transport failed: an OS error number (`ECONNRESET`, ...) or a stack's reason.
    Error(NetError),
}

/// Something that happened on the network, in the order it happened per connection.
#[derive(Debug)]
pub enum NetEvent<'a> {
    /// A client connected to `listener`.
    Accepted { listener: ListenerId, conn: ConnId },
    /// Bytes arrived on `conn`. They borrow the transport's buffer until the next call to
    /// [`NetQueue::next_event`]; consecutive events of one connection continue one byte stream.
    Received { conn: ConnId, bytes: &'a [u8] },
    /// Every byte of a buffer given to [`NetQueue::send`] was handed over; the buffer comes
    /// back, cleared, for reuse.
    Sent { conn: ConnId, buf: Vec<u8> },
    /// The connection is gone; its id is dead from now on.
    Closed { conn: ConnId, reason: CloseReason },
}

/// A network error: the operation, and what the OS or stack said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: {detail}")]
pub struct NetError {
    /// What was being done: "listen on 127.0.0.1:3000", "accept", "recv", "send",
    /// "io_uring_enter", ...
    pub op: String,
    /// The OS error number, when there is one.
    pub errno: Option<i32>,
    /// Human-readable cause.
    pub detail: String,
}

impl NetError {
    /// An error from an OS call.
    pub fn os(op: impl Into<String>, e: &std::io::Error) -> NetError {
        NetError {
            op: op.into(),
            errno: e.raw_os_error(),
            detail: e.to_string(),
        }
    }
    /// An error described in words (no errno).
    pub fn other(op: impl Into<String>, detail: impl Into<String>) -> NetError {
        NetError {
            op: op.into(),
            errno: None,
            detail: detail.into(),
        }
    }
}

/// Why [`NetQueue::send`] refused a buffer. The buffer comes back so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection is closed (or the id is stale).
    #[error("connection closed")]
    Closed(Vec<u8>),
}

impl SendError {
    /// Takes back the refused buffer.
    pub fn into_buf(self) -> Vec<u8> {
        match self {
            SendError::Closed(b) => b,
        }
    }
}

/// Counters a backend keeps about itself (for per-operation figures: syscalls per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// System calls made (epoll_wait, read, write, accept, io_uring_enter, setsockopt, close).
    pub syscalls: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Bytes received and sent.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Connections open now.
    pub open: u64,
}

/// One core's queue to the network. See the module docs for a turn, buffers and ids.
pub trait NetQueue: Send {
    /// Starts listening on `addr` (port 0: any free port). Returns the listener and the address
    /// it is bound to.
    ///
    /// # Errors
    /// The socket could not be made, bound (the address is in use) or listened on.
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError>;

    /// Hands everything queued to the transport, then waits at most `timeout` (`ZERO`: not at
    /// all) until an event is ready or a watched descriptor is readable. May return early.
    ///
    /// # Errors
    /// The wait itself failed; events already gathered stay available.
    fn poll(&mut self, timeout: Duration) -> Result<(), NetError>;

    /// The next event, or `None` when nothing more is ready until the next [`NetQueue::poll`].
    /// Never blocks.
    fn next_event(&mut self) -> Option<NetEvent<'_>>;

    /// Queues `buf` to be sent on `conn` after everything queued before it; it comes back in
    /// [`NetEvent::Sent`]. An empty buffer comes back at once.
    ///
    /// # Errors
    /// `Closed` when the connection is gone; the buffer comes back inside.
    fn send(&mut self, conn: ConnId, buf: Vec<u8>) -> Result<(), SendError>;

    /// Stops (`true`) or resumes (`false`) delivering received bytes of `conn`: while paused the
    /// transport stops reading, so the peer is held back by TCP flow control (back-pressure).
    /// Bytes already taken from the socket may still be delivered after pausing.
    fn set_recv_paused(&mut self, conn: ConnId, paused: bool);

    /// Closes `conn` (its queued sends are dropped). Ignores a stale id.
    fn close(&mut self, conn: ConnId);

    /// Makes [`NetQueue::poll`] return when `fd` becomes readable (the device's completion fd,
    /// the core's doorbell). The caller keeps `fd` open for the life of the queue and drains it.
    ///
    /// # Errors
    /// The backend cannot watch descriptors (a user-space stack that busy-polls): the caller
    /// must then not sleep in `poll` while it waits for that descriptor.
    fn watch_fd(&mut self, fd: std::os::fd::RawFd) -> Result<(), NetError>;

    /// Whether [`NetQueue::poll`] can sleep until a watched descriptor fires (false for
    /// backends that only busy-poll).
    fn can_sleep(&self) -> bool {
        true
    }

    /// The backend's counters.
    fn stats(&self) -> NetStats;
}

/// Which network backend to use, as a profile's `[network] driver` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDriver {
    /// Kernel sockets through epoll.
    Epoll,
    /// Kernel sockets through io_uring.
    Uring,
    /// A DPDK-polled port with a user-space TCP stack ([`dpdk`]); named by a hardware
    /// profile's `[network] driver = "dpdk"`, whose settings come with it.
    Dpdk,
}

impl NetDriver {
    /// Parses a config file's driver name (`"epoll"`, `"io_uring"`; `"kernel"` is epoll). DPDK
    /// is chosen by a hardware profile only, which carries the port's settings.
    pub fn parse(name: &str) -> Option<NetDriver> {
        match name {
            "epoll" | "kernel" => Some(NetDriver::Epoll),
            "io_uring" | "uring" => Some(NetDriver::Uring),
            _ => None,
        }
    }
}

/// Slot table shared by the backends: dense slots, a generation per slot bumped on reuse, so
/// stale [`ConnId`]s are recognised.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Slots<T> {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `v` in a free slot and returns its id.
    pub(crate) fn insert(&mut self, v: T) -> ConnId {
        self.live += 1;
        match self.free.pop() {
            Some(s) => {
                let e = &mut self.entries[s as usize];
                e.0 = e.0.wrapping_add(1);
                e.1 = Some(v);
                ConnId::new(s, e.0)
            }
            None => {
                let s = u32::try_from(self.entries.len()).expect("fewer than 2^32 connections");
                self.entries.push((0, Some(v)));
                ConnId::new(s, 0)
            }
        }
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        match self.entries.get(id.slot() as usize) {
            Some((g, Some(v))) if *g == id.generation() => Some(v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.entries.get_mut(id.slot() as usize) {
            Some((g, Some(v))) if *g == id.generation() => Some(v),
            _ => None,
        }
    }

    /// The live entry in `slot`, whatever its generation, with its id.
    pub(crate) fn by_slot_mut(&mut self, slot: u32) -> Option<(ConnId, &mut T)> {
        match self.entries.get_mut(slot as usize) {
            Some((g, Some(v))) => Some((ConnId::new(slot, *g), v)),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        let e = self.entries.get_mut(id.slot() as usize)?;
        if e.0 != id.generation() || e.1.is_none() {
            return None;
        }
        self.live -= 1;
        self.free.push(id.slot());
        e.1.take()
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Appends every live id to `out` (without allocating when `out` has room).
    #[allow(dead_code)] // used by the dpdk backend only
    pub(crate) fn ids_into(&self, out: &mut Vec<ConnId>) {
        for (s, (g, v)) in self.entries.iter().enumerate() {
            if v.is_some() {
                out.push(ConnId::new(s as u32, *g));
            }
        }
    }

    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| v.is_some())
            .map(|(s, (g, _))| ConnId::new(s as u32, *g))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_has_a_new_generation_and_the_old_id_is_dead() {
        let mut s: Slots<&str> = Slots::new();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.slot(), b.slot());
        assert_ne!(a, b);
        assert!(s.get(a).is_none());
        assert_eq!(s.get(b), Some(&"b"));
        assert!(s.remove(a).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn driver_names() {
        assert_eq!(NetDriver::parse("epoll"), Some(NetDriver::Epoll));
        assert_eq!(NetDriver::parse("io_uring"), Some(NetDriver::Uring));
        assert_eq!(NetDriver::parse("dpdk"), None);
    }
}
