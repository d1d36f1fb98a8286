//! Kernel sockets through io_uring: the fast kernel path.
//!
//! * One ring per core, `COOP_TASKRUN` (completions are posted when the core enters the
//!   kernel, never by interrupting it) with `TASKRUN_FLAG` (so a turn that submits nothing
//!   still knows when it must enter to collect completions).
//! * A multishot accept per listener, and one receive armed per connection into a
//!   *provided-buffer ring* (`io_uring_register_buf_ring`): the kernel picks a buffer, fills
//!   it and posts a CQE naming it; [`NetEvent::Received`] lends that buffer, and it goes back to
//!   the ring at the next [`NetQueue::next_event`]. The receive is re-armed as an SQE that goes
//!   out with the turn's one `io_uring_enter`: no system call per receive. (Single-shot rather
//!   than multishot: a multishot receive that keeps finding data could not be cancelled
//!   reliably, measured on Linux 6.18, and pausing a connection must stop its reads.)
//! * Sends are SQEs (at most one in flight per connection, so a short send cannot reorder the
//!   stream), handed over together with the wait for completions in the one `io_uring_enter`
//!   of [`NetQueue::poll`]: a busy turn costs one system call for all its connections.
//! * Pausing a connection stops re-arming its receive; closing shuts it down through the ring; a slot
//!   is reused only after every SQE naming it has completed.
//!
//! # Memory the kernel touches
//!
//! The provided buffers and the buffer-ring entries are allocated once and never move; a send
//! buffer stays in its connection's queue (not moved, not grown) until its CQE arrives. On drop
//! every connection is shut down and every request cancelled, and the queue waits (bounded) for
//! the last CQE before any of that memory is freed; if the wait times out the memory is leaked
//! rather than freed under the kernel.

#![allow(unsafe_code)]

use super::{CloseReason, ConnId, ListenOptions, ListenerId, NetError, NetEvent, NetQueue, NetStats, SendError, Slots};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How to set up a [`UringNet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringNetOptions {
    /// SQ entries (the CQ gets four times as many). Default 1024.
    pub sq_entries: u32,
    /// Provided receive buffers: how many (a power of two, at most 32768) and their size.
    /// Default 512 × 16 KiB = 8 MiB per core.
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
}

impl Default for UringNetOptions {
    fn default() -> UringNetOptions {
        UringNetOptions {
            sq_entries: 1024,
            recv_buffers: 512,
            recv_buffer_bytes: 16 * 1024,
        }
    }
}

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_SHUTDOWN: u64 = 4;
const KIND_WATCH: u64 = 6;
const BUF_GROUP: u16 = 0;
/// Longest a drop waits for the kernel to finish with our memory.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// user_data: kind (8 bits) | generation (24 bits) | slot (32 bits).
fn ud(kind: u64, id: ConnId) -> u64 {
    (kind << 56) | ((u64::from(id.generation()) & 0xFF_FFFF) << 32) | u64::from(id.slot())
}
fn ud_kind(u: u64) -> u64 {
    u >> 56
}
fn ud_slot(u: u64) -> u32 {
    u as u32
}
fn ud_gen(u: u64) -> u32 {
    ((u >> 32) & 0xFF_FFFF) as u32
}

/// The provided-buffer ring: `n` entries (a power of two) over `n` buffers of `size` bytes.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: Layout,
    mem: Box<[u8]>,
    size: usize,
    n: u16,
    tail: u16,
    /// Buffers put back since the tail was last published.
    unpublished: u16,
    /// The kernel may still use the memory (a drop that timed out): never free it.
    leak: bool,
}

// SAFETY: the raw pointer is owned memory used only by the owning core (the queue is moved to
// its core before use and never shared).
unsafe impl Send for BufRing {}

impl BufRing {
    fn new(n: u16, size: usize) -> BufRing {
        assert!(
            n.is_power_of_two() && n <= 32768,
            "buffer ring size {n} is not a power of two <= 32768"
        );
        let layout = Layout::from_size_align(usize::from(n) * std::mem::size_of::<types::BufRingEntry>(), 4096)
            .expect("buffer ring layout");
        // SAFETY: the layout has a non-zero size; the memory is zeroed (a valid BufRingEntry
        // bit pattern) and freed in Drop with the same layout.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        assert!(!entries.is_null(), "out of memory for the buffer ring");
        let mut r = BufRing {
            entries,
            layout,
            mem: vec![0u8; usize::from(n) * size].into_boxed_slice(),
            size,
            n,
            tail: 0,
            unpublished: 0,
            leak: false,
        };
        for bid in 0..n {
            r.put(bid);
        }
        r.publish();
        r
    }

    fn tail_ptr(&self) -> &AtomicU16 {
        // SAFETY: the tail overlays the `resv` field of entry 0, a properly aligned u16 inside
        // memory we own for our whole life; the kernel reads it with acquire semantics.
        unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() }
    }

    /// Puts buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    fn put(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.n - 1));
        let addr = self.mem.as_ptr() as u64 + u64::from(bid) * self.size as u64;
        // SAFETY: `idx < n`, inside the allocation; the kernel does not read an entry at or past
        // the published tail, so writing it races with nothing.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.unpublished += 1;
    }

    fn publish(&mut self) {
        if self.unpublished > 0 {
            self.tail_ptr().store(self.tail, Ordering::Release);
            self.unpublished = 0;
        }
    }

    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.mem[start..start + len.min(self.size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            std::mem::forget(std::mem::take(&mut self.mem));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring was unregistered (or the
        // io_uring closed) before this runs, see UringNet's field order and Drop.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

struct Conn {
    fd: OwnedFd,
    /// The caller may still use the id (no Closed reported, no close() called).
    live: bool,
    recv_armed: bool,
    paused: bool,
    /// The last receive ended for lack of buffers: re-arm once some come back.
    starved: bool,
    txq: VecDeque<Vec<u8>>,
    tx_pos: usize,
    send_in_flight: bool,
    shutdown_sent: bool,
    /// SQEs in flight that name this slot; the slot is freed when the connection is dead and
    /// this is zero.
    ops: u32,
}

struct Listener {
    sock: std::net::TcpListener,
    armed: bool,
}

/// Kernel sockets through io_uring. See the module docs.
pub struct UringNet {
    // Field order matters for drop: the ring (its fd) goes before the memory it may name.
    ring: IoUring,
    bufs: BufRing,
    listeners: Vec<Listener>,
    watched: Vec<(RawFd, bool)>,
    conns: Slots<Conn>,
    /// Events produced while handling CQEs that did not end in one returned event.
    out: VecDeque<(ConnId, Result<Vec<u8>, CloseReason>)>,
    /// The buffer the last `Received` lent.
    lent: Option<u16>,
    /// Connections whose receive starved for buffers.
    starved: Vec<ConnId>,
    /// SQEs that did not fit the SQ; pushed after the next submit.
    overflow: VecDeque<squeue::Entry>,
    stats: NetStats,
    leak_on_drop: bool,
}

impl UringNet {
    /// # Errors
    /// The ring could not be set up or the buffer ring registered (kernel older than 5.19, or
    /// io_uring disabled).
    pub fn new(opts: &UringNetOptions) -> Result<UringNet, NetError> {
        let ring = IoUring::builder()
            .setup_cqsize(opts.sq_entries.saturating_mul(4))
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(opts.sq_entries)
            .map_err(|e| NetError::os("io_uring_setup", &e))?;
        // One fd lookup fewer per enter; harmless if the kernel lacks it.
        let _ = ring.submitter().register_ring_fd();
        let bufs = BufRing::new(opts.recv_buffers, opts.recv_buffer_bytes as usize);
        // SAFETY: the entries are page-aligned, `n` entries long, and live as long as the ring
        // (BufRing is dropped after the ring, see the field order).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.entries as u64, opts.recv_buffers, BUF_GROUP, 0)
        }
        .map_err(|e| NetError::os("io_uring_register(PBUF_RING)", &e))?;
        Ok(UringNet {
            ring,
            bufs,
            listeners: Vec::new(),
            watched: Vec::new(),
            conns: Slots::new(),
            out: VecDeque::new(),
            lent: None,
            starved: Vec::new(),
            overflow: VecDeque::new(),
            stats: NetStats::default(),
            leak_on_drop: false,
        })
    }

    /// Queues an SQE (into the overflow list when the SQ is full).
    ///
    /// # Safety
    /// Every buffer the entry names must stay valid and unmoved until its CQE is reaped.
    unsafe fn push(&mut self, e: squeue::Entry) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(e);
            return;
        }
        // SAFETY: forwarded from the caller.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            self.overflow.push_back(e);
        }
    }

    fn arm_accept(&mut self, l: usize) {
        let fd = types::Fd(self.listeners[l].sock.as_raw_fd());
        let e = opcode::AcceptMulti::new(fd)
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data((KIND_ACCEPT << 56) | l as u64);
        // SAFETY: names no memory.
        unsafe { self.push(e) };
        self.listeners[l].armed = true;
    }

    fn arm_recv(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else { return };
        if c.recv_armed || c.paused || !c.live {
            return;
        }
        c.recv_armed = true;
        c.starved = false;
        c.ops += 1;
        let e = opcode::Recv::new(types::Fd(c.fd.as_raw_fd()), std::ptr::null_mut(), self.bufs.size as u32)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud(KIND_RECV, id));
        // SAFETY: the buffers are the registered group's, owned by the BufRing.
        unsafe { self.push(e) };
    }

    fn start_send(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else { return };
        if c.send_in_flight || !c.live {
            return;
        }
        let Some(front) = c.txq.front() else { return };
        let rest = &front[c.tx_pos..];
        let (ptr, len) = (rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32);
        c.send_in_flight = true;
        c.ops += 1;
        let e = opcode::Send::new(types::Fd(c.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(KIND_SEND, id));
        // SAFETY: `ptr` points into the front buffer of the queue, which is neither moved nor
        // changed until this SEND's CQE (send_in_flight blocks other sends; the queue pops it
        // only after the CQE; Drop waits for it).
        unsafe { self.push(e) };
    }

    /// Ends the connection's life for the caller and starts tearing it down.
    fn kill(&mut self, id: ConnId, reason: Option<CloseReason>) {
        let Some(c) = self.conns.get_mut(id) else { return };
        if !c.live {
            return;
        }
        c.live = false;
        c.txq.truncate(usize::from(c.send_in_flight));
        if !c.shutdown_sent {
            c.shutdown_sent = true;
            c.ops += 1;
            let e = opcode::Shutdown::new(types::Fd(c.fd.as_raw_fd()), libc::SHUT_RDWR)
                .build()
                .user_data(ud(KIND_SHUTDOWN, id));
            // SAFETY: names no memory.
            unsafe { self.push(e) };
        }
        if let Some(r) = reason {
            self.out.push_back((id, Err(r)));
        }
        self.reap_slot(id);
    }

    /// Frees a dead connection's slot once nothing in flight names it.
    fn reap_slot(&mut self, id: ConnId) {
        if self.conns.get(id).is_some_and(|c| !c.live && c.ops == 0) {
            self.conns.remove(id);
            self.stats.syscalls += 1; // close(2) as the fd drops
            self.stats.open = self.conns.len() as u64;
        }
    }

    /// Returns the lent buffer to the ring and re-arms receives that starved.
    fn recycle(&mut self) {
        if let Some(bid) = self.lent.take() {
            self.bufs.put(bid);
            self.bufs.publish();
        }
        if !self.starved.is_empty() {
            for id in std::mem::take(&mut self.starved) {
                self.arm_recv(id);
            }
        }
    }

    /// Handles one CQE; returns an event to report now, if any.
    fn on_cqe(&mut self, user_data: u64, res: i32, flags: u32) -> Option<(ConnId, Reported)> {
        let kind = ud_kind(user_data);
        let more = cqueue::more(flags);
        match kind {
            KIND_ACCEPT => {
                let l = (user_data & 0xFFFF_FFFF) as usize;
                if !more {
                    self.listeners[l].armed = false;
                }
                if res < 0 {
                    if -res != libc::ECANCELED {
                        tracing::warn!("accept failed: {}", std::io::Error::from_raw_os_error(-res));
                    }
                    if !more && -res != libc::ECANCELED {
                        self.arm_accept(l);
                    }
                    return None;
                }
                if !more {
                    self.arm_accept(l);
                }
                // SAFETY: a successful accept CQE's result is a new descriptor we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(res) };
                set_nodelay(&fd);
                self.stats.syscalls += 1;
                self.stats.accepted += 1;
                let id = self.conns.insert(Conn {
                    fd,
                    live: true,
                    recv_armed: false,
                    paused: false,
                    starved: false,
                    txq: VecDeque::new(),
                    tx_pos: 0,
                    send_in_flight: false,
                    shutdown_sent: false,
                    ops: 0,
                });
                self.stats.open = self.conns.len() as u64;
                self.arm_recv(id);
                Some((id, Reported::Accepted(ListenerId(l as u32))))
            }
            KIND_WATCH => {
                let i = (user_data & 0xFFFF_FFFF) as usize;
                if !more {
                    self.watched[i].1 = false;
                    self.arm_watch(i);
                }
                None
            }
            _ => {
                let (slot, gen) = (ud_slot(user_data), ud_gen(user_data));
                let (id, c) = self.conns.by_slot_mut(slot)?;
                if id.generation() & 0xFF_FFFF != gen {
                    // Cannot happen: a slot is reused only after its last CQE.
                    tracing::error!("io_uring CQE for a reused slot {slot}");
                    return None;
                }
                match kind {
                    KIND_RECV => {
                        if !more {
                            c.recv_armed = false;
                            c.ops -= 1;
                        }
                        let bid = cqueue::buffer_select(flags);
                        if res > 0 {
                            let bid = bid.expect("a receive with data names its buffer");
                            self.stats.rx_bytes += res as u64;
                            if !more && c.live && !c.paused {
                                self.arm_recv(id);
                            }
                            let c = self.conns.get(id).expect("still here");
                            if c.live {
                                self.lent = Some(bid);
                                return Some((id, Reported::Data(bid, res as usize)));
                            }
                            self.bufs.put(bid);
                            self.bufs.publish();
                            self.reap_slot(id);
                            return None;
                        }
                        if let Some(b) = bid {
                            self.bufs.put(b);
                            self.bufs.publish();
                        }
                        let err = -res;
                        if res == 0 {
                            self.kill(id, Some(CloseReason::Peer));
                        } else if err == libc::ENOBUFS {
                            c.starved = true;
                            self.starved.push(id);
                        } else if err == libc::ECANCELED {
                            // paused or closing
                        } else if err == libc::ECONNRESET || err == libc::EPIPE {
                            self.kill(id, Some(CloseReason::Peer));
                        } else {
                            let e = std::io::Error::from_raw_os_error(err);
                            self.kill(id, Some(CloseReason::Error(NetError::os("recv", &e))));
                        }
                        self.reap_slot(id);
                        None
                    }
                    KIND_SEND => {
                        c.ops -= 1;
                        c.send_in_flight = false;
                        if res < 0 {
                            let err = -res;
                            let reason = if err == libc::EPIPE || err == libc::ECONNRESET {
                                CloseReason::Peer
                            } else {
                                CloseReason::Error(NetError::os("send", &std::io::Error::from_raw_os_error(err)))
                            };
                            c.txq.clear();
                            self.kill(id, Some(reason));
                            self.reap_slot(id);
                            return None;
                        }
                        self.stats.tx_bytes += res as u64;
                        c.tx_pos += res as usize;
                        let mut done = None;
                        if c.txq.front().is_some_and(|f| c.tx_pos >= f.len()) {
                            let mut b = c.txq.pop_front().expect("front");
                            b.clear();
                            c.tx_pos = 0;
                            done = Some(b);
                        }
                        let live = c.live;
                        if live {
                            self.start_send(id);
                        } else {
                            self.reap_slot(id);
                        }
                        match done {
                            Some(b) if live => Some((id, Reported::Sent(b))),
                            _ => None,
                        }
                    }
                    _ => {
                        // SHUTDOWN
                        c.ops -= 1;
                        self.reap_slot(id);
                        None
                    }
                }
            }
        }
    }

    fn arm_watch(&mut self, i: usize) {
        let (fd, armed) = self.watched[i];
        if armed {
            return;
        }
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data((KIND_WATCH << 56) | i as u64);
        // SAFETY: names no memory.
        unsafe { self.push(e) };
        self.watched[i].1 = true;
    }

    fn flush_overflow(&mut self) {
        while let Some(e) = self.overflow.pop_front() {
            // SAFETY: the entry's memory rules were checked when it was first pushed.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                self.overflow.push_front(e);
                break;
            }
        }
    }

    fn enter(&mut self, wait: bool, timeout: Duration) -> Result<(), NetError> {
        self.flush_overflow();
        let mut sq = self.ring.submission();
        sq.sync();
        let need = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
        drop(sq);
        let ready = !self.ring.completion().is_empty();
        let r = if wait && !ready {
            self.stats.syscalls += 1;
            let ts = types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else if need {
            self.stats.syscalls += 1;
            self.ring.submitter().submit()
        } else {
            Ok(0)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(NetError::os("io_uring_enter", &e)),
        }
    }
}

enum Reported {
    Accepted(ListenerId),
    Data(u16, usize),
    Sent(Vec<u8>),
}

fn set_nodelay(fd: &OwnedFd) {
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size; `fd` is an open socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl NetQueue for UringNet {
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError> {
        let sock = super::epoll::kernel_listener(addr, opts)?;
        let bound = sock.local_addr().map_err(|e| NetError::os("getsockname", &e))?;
        self.listeners.push(Listener { sock, armed: false });
        let l = self.listeners.len() - 1;
        self.arm_accept(l);
        Ok((ListenerId(l as u32), bound))
    }

    fn poll(&mut self, timeout: Duration) -> Result<(), NetError> {
        self.recycle();
        self.enter(!timeout.is_zero(), timeout)
    }

    fn next_event(&mut self) -> Option<NetEvent<'_>> {
        self.recycle();
        loop {
            if let Some((conn, r)) = self.out.pop_front() {
                return Some(match r {
                    Ok(buf) => NetEvent::Sent { conn, buf },
                    Err(reason) => NetEvent::Closed { conn, reason },
                });
            }
            let cqe = self.ring.completion().next()?;
            let (u, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if let Some((conn, r)) = self.on_cqe(u, res, flags) {
                return Some(match r {
                    Reported::Accepted(listener) => NetEvent::Accepted { listener, conn },
                    Reported::Sent(buf) => NetEvent::Sent { conn, buf },
                    Reported::Data(bid, len) => NetEvent::Received {
                        conn,
                        bytes: self.bufs.slice(bid, len),
                    },
                });
            }
        }
    }

    fn send(&mut self, conn: ConnId, buf: Vec<u8>) -> Result<(), SendError> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Err(SendError::Closed(buf));
        };
        if !c.live {
            return Err(SendError::Closed(buf));
        }
        if buf.is_empty() {
            self.out.push_back((conn, Ok(buf)));
            return Ok(());
        }
        c.txq.push_back(buf);
        self.start_send(conn);
        Ok(())
    }

    fn set_recv_paused(&mut self, conn: ConnId, paused: bool) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if !c.live || c.paused == paused {
            return;
        }
        c.paused = paused;
        // A paused connection's receive is not re-armed: at most the one armed now completes.
        if !paused {
            self.arm_recv(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.kill(conn, None);
    }

    fn watch_fd(&mut self, fd: RawFd) -> Result<(), NetError> {
        self.watched.push((fd, false));
        self.arm_watch(self.watched.len() - 1);
        Ok(())
    }

    fn stats(&self) -> NetStats {
        self.stats
    }
}

impl Drop for UringNet {
    fn drop(&mut self) {
        for id in self.conns.ids() {
            self.kill(id, None);
        }
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(0);
        // SAFETY: names no memory.
        unsafe { self.push(e) };
        let start = Instant::now();
        let mut last_cancel = Instant::now();
        loop {
            let busy =
                self.conns.len() > 0 || self.listeners.iter().any(|l| l.armed) || self.watched.iter().any(|w| w.1);
            if !busy {
                break;
            }
            if start.elapsed() > DROP_WAIT {
                tracing::error!(
                    "io_uring network queue: requests still in flight after {DROP_WAIT:?}; leaking their memory"
                );
                self.leak_on_drop = true;
                break;
            }
            if last_cancel.elapsed() > Duration::from_millis(50) {
                last_cancel = Instant::now();
                let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(0);
                // SAFETY: names no memory.
                unsafe { self.push(e) };
            }
            let _ = self.enter(true, Duration::from_millis(10));
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                let (u, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
                if u == 0 {
                    continue;
                }
                match ud_kind(u) {
                    KIND_ACCEPT => {
                        if !cqueue::more(flags) {
                            self.listeners[(u & 0xFFFF_FFFF) as usize].armed = false;
                        }
                        if res >= 0 {
                            // SAFETY: an accepted descriptor we own; closed at once.
                            drop(unsafe { OwnedFd::from_raw_fd(res) });
                        }
                    }
                    KIND_WATCH => {
                        if !cqueue::more(flags) {
                            self.watched[(u & 0xFFFF_FFFF) as usize].1 = false;
                        }
                    }
                    _ => {
                        if let Some(b) = cqueue::buffer_select(flags) {
                            self.bufs.put(b);
                        }
                        if let Some((id, c)) = self.conns.by_slot_mut(ud_slot(u)) {
                            let ends = match ud_kind(u) {
                                KIND_RECV => !cqueue::more(flags),
                                _ => true,
                            };
                            if ends {
                                c.ops = c.ops.saturating_sub(1);
                            }
                            self.reap_slot(id);
                        }
                    }
                }
            }
        }
        if self.leak_on_drop {
            // The kernel may still write into these: never free them.
            self.bufs.leak = true;
            for id in self.conns.ids() {
                if let Some(c) = self.conns.get_mut(id) {
                    std::mem::forget(std::mem::take(&mut c.txq));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conformance::{self, KernelHarness};

    fn make() -> UringNet {
        UringNet::new(&UringNetOptions::default()).expect("io_uring network queue")
    }

    #[test]
    fn conformance() {
        conformance::run_all(&mut KernelHarness::new(make));
    }

    #[test]
    fn conformance_with_few_small_buffers() {
        // Receives starve for buffers often: every byte must still arrive, in order.
        conformance::run_all(&mut KernelHarness::new(|| {
            UringNet::new(&UringNetOptions {
                sq_entries: 64,
                recv_buffers: 4,
                recv_buffer_bytes: 4096,
            })
            .expect("io_uring network queue")
        }));
    }
}
