//! Kernel sockets through epoll ([`mio`], edge-triggered): today's behaviour, the portable
//! backend.
//!
//! Per transfer one system call: `read(2)` into a 64 KiB scratch buffer that
//! [`NetEvent::Received`] lends out, `write(2)` straight from the caller's buffer at
//! [`NetQueue::send`] (what the socket does not take waits for writability). A read that
//! returns fewer bytes than the scratch buffer holds emptied the socket's receive queue, so the
//! backend does not read again until epoll reports new data: no `EAGAIN` read per request.

use super::{CloseReason, ConnId, ListenOptions, ListenerId, NetError, NetEvent, NetQueue, NetStats, SendError, Slots};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Bytes read per `read(2)`.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Events gathered per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
const LISTENER_BIT: usize = 1 << 62;
const WATCH_BIT: usize = 1 << 61;

struct Conn {
    stream: TcpStream,
    /// Buffers not yet written whole; the first has `tx_pos` bytes written.
    txq: VecDeque<Vec<u8>>,
    tx_pos: usize,
    paused: bool,
    /// Queued in `ready` for a read.
    read_queued: bool,
    /// epoll reported the peer's end closed: read until end of stream even after a short read
    /// (the FIN raises no new edge once it is queued behind the data).
    read_closed: bool,
}

enum Ready {
    Accept(u32),
    Read(ConnId),
}

/// Kernel sockets through epoll. See the module docs.
pub struct EpollNet {
    poll: Poll,
    events: Events,
    listeners: Vec<TcpListener>,
    conns: Slots<Conn>,
    ready: VecDeque<Ready>,
    /// Events produced outside `next_event` (sends completed, connections that failed).
    out: VecDeque<(ConnId, Result<Vec<u8>, CloseReason>)>,
    scratch: Box<[u8]>,
    watched: Vec<RawFd>,
    stats: NetStats,
}

impl EpollNet {
    /// # Errors
    /// `epoll_create1` failed.
    pub fn new() -> Result<EpollNet, NetError> {
        Ok(EpollNet {
            poll: Poll::new().map_err(|e| NetError::os("epoll_create1", &e))?,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listeners: Vec::new(),
            conns: Slots::new(),
            ready: VecDeque::new(),
            out: VecDeque::new(),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            watched: Vec::new(),
            stats: NetStats::default(),
        })
    }

    /// Drops `id` from the table (closing its socket) and, if `reason`, reports it closed.
    fn kill(&mut self, id: ConnId, reason: Option<CloseReason>) {
        if self.conns.remove(id).is_some() {
            self.stats.syscalls += 1; // close(2) when the stream drops
            self.stats.open = self.conns.len() as u64;
            if let Some(r) = reason {
                self.out.push_back((id, Err(r)));
            }
        }
    }

    /// Writes what the socket takes of `id`'s queue; buffers written whole come back as `Sent`.
    fn flush(&mut self, id: ConnId) {
        let mut failed = None;
        {
            let Some(c) = self.conns.get_mut(id) else { return };
            while let Some(front) = c.txq.front_mut() {
                if c.tx_pos == front.len() {
                    let mut b = c.txq.pop_front().expect("front exists");
                    b.clear();
                    c.tx_pos = 0;
                    self.out.push_back((id, Ok(b)));
                    continue;
                }
                self.stats.syscalls += 1;
                match c.stream.write(&front[c.tx_pos..]) {
                    Ok(0) => {
                        failed = Some(CloseReason::Peer);
                        break;
                    }
                    Ok(n) => {
                        c.tx_pos += n;
                        self.stats.tx_bytes += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(CloseReason::Error(NetError::os("send", &e)));
                        break;
                    }
                }
            }
        }
        if let Some(r) = failed {
            self.kill(id, Some(r));
        }
    }

    fn accept(&mut self, l: u32) -> Option<ConnId> {
        loop {
            self.stats.syscalls += 1;
            match self.listeners[l as usize].accept() {
                Ok((stream, _)) => {
                    self.stats.syscalls += 2; // setsockopt(TCP_NODELAY), epoll_ctl(ADD)
                    let _ = stream.set_nodelay(true);
                    let id = self.conns.insert(Conn {
                        stream,
                        txq: VecDeque::new(),
                        tx_pos: 0,
                        paused: false,
                        read_queued: false,
                        read_closed: false,
                    });
                    let c = self.conns.get_mut(id).expect("just inserted");
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut c.stream,
                            Token(id.slot() as usize),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.conns.remove(id);
                        continue;
                    }
                    self.stats.accepted += 1;
                    self.stats.open = self.conns.len() as u64;
                    return Some(id);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; try next turn.
                    tracing::warn!("accept failed: {e}");
                    return None;
                }
            }
        }
    }
}

impl NetQueue for EpollNet {
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError> {
        let l = kernel_listener(addr, opts)?;
        let mut l = TcpListener::from_std(l);
        let bound = l.local_addr().map_err(|e| NetError::os("getsockname", &e))?;
        let id = self.listeners.len() as u32;
        self.poll
            .registry()
            .register(&mut l, Token(LISTENER_BIT | id as usize), Interest::READABLE)
            .map_err(|e| NetError::os("epoll_ctl(listener)", &e))?;
        self.listeners.push(l);
        Ok((ListenerId(id), bound))
    }

    fn poll(&mut self, timeout: Duration) -> Result<(), NetError> {
        self.stats.syscalls += 1;
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(NetError::os("epoll_wait", &e));
            }
        }
        let mut writable = Vec::new();
        for ev in self.events.iter() {
            let t = ev.token().0;
            if t & WATCH_BIT != 0 {
                continue;
            }
            if t & LISTENER_BIT != 0 {
                self.ready.push_back(Ready::Accept((t & !LISTENER_BIT) as u32));
                continue;
            }
            let Some((id, c)) = self.conns.by_slot_mut(t as u32) else {
                continue;
            };
            if ev.is_read_closed() || ev.is_error() {
                c.read_closed = true;
            }
            if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !c.read_queued && !c.paused {
                c.read_queued = true;
                self.ready.push_back(Ready::Read(id));
            }
            if ev.is_writable() && !c.txq.is_empty() {
                writable.push(id);
            }
        }
        for id in writable {
            self.flush(id);
        }
        Ok(())
    }

    fn next_event(&mut self) -> Option<NetEvent<'_>> {
        loop {
            if let Some((conn, r)) = self.out.pop_front() {
                return Some(match r {
                    Ok(buf) => NetEvent::Sent { conn, buf },
                    Err(reason) => NetEvent::Closed { conn, reason },
                });
            }
            match self.ready.pop_front()? {
                Ready::Accept(l) => {
                    if let Some(conn) = self.accept(l) {
                        self.ready.push_front(Ready::Accept(l));
                        return Some(NetEvent::Accepted {
                            listener: ListenerId(l),
                            conn,
                        });
                    }
                }
                Ready::Read(id) => {
                    let Some(c) = self.conns.get_mut(id) else { continue };
                    if c.paused {
                        c.read_queued = false;
                        continue;
                    }
                    self.stats.syscalls += 1;
                    match c.stream.read(&mut self.scratch) {
                        Ok(0) => {
                            self.kill(id, Some(CloseReason::Peer));
                        }
                        Ok(n) => {
                            if n == self.scratch.len() || c.read_closed {
                                // The socket may hold more: read again after the others.
                                self.ready.push_back(Ready::Read(id));
                            } else {
                                c.read_queued = false;
                            }
                            self.stats.rx_bytes += n as u64;
                            return Some(NetEvent::Received {
                                conn: id,
                                bytes: &self.scratch[..n],
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => c.read_queued = false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => self.ready.push_front(Ready::Read(id)),
                        Err(e) => {
                            let reason = if e.kind() == ErrorKind::ConnectionReset {
                                CloseReason::Peer
                            } else {
                                CloseReason::Error(NetError::os("recv", &e))
                            };
                            self.kill(id, Some(reason));
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, buf: Vec<u8>) -> Result<(), SendError> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Err(SendError::Closed(buf));
        };
        let idle = c.txq.is_empty();
        c.txq.push_back(buf);
        if idle {
            self.flush(conn);
        }
        Ok(())
    }

    fn set_recv_paused(&mut self, conn: ConnId, paused: bool) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let was = c.paused;
        c.paused = paused;
        if was && !paused && !c.read_queued {
            // Edge-triggered: data that arrived while paused raises no new event.
            c.read_queued = true;
            self.ready.push_back(Ready::Read(conn));
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.kill(conn, None);
    }

    fn watch_fd(&mut self, fd: RawFd) -> Result<(), NetError> {
        let t = Token(WATCH_BIT | self.watched.len());
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), t, Interest::READABLE)
            .map_err(|e| NetError::os("epoll_ctl(watch)", &e))?;
        self.watched.push(fd);
        Ok(())
    }

    fn stats(&self) -> NetStats {
        self.stats
    }
}

/// A non-blocking kernel listening socket (`SO_REUSEADDR`; `SO_REUSEPORT` when asked).
///
/// # Errors
/// The socket could not be made, bound or listened on; the error names the address.
pub fn kernel_listener(addr: SocketAddr, opts: &ListenOptions) -> Result<std::net::TcpListener, NetError> {
    use socket2::{Domain, Socket, Type};
    let op = format!("listen on {addr}");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| NetError::os(&op, &e))?;
    s.set_reuse_address(true).map_err(|e| NetError::os(&op, &e))?;
    if opts.reuse_port {
        s.set_reuse_port(true).map_err(|e| NetError::os(&op, &e))?;
    }
    s.bind(&addr.into()).map_err(|e| NetError::os(&op, &e))?;
    s.listen(i32::try_from(opts.backlog).unwrap_or(i32::MAX))
        .map_err(|e| NetError::os(&op, &e))?;
    s.set_nonblocking(true).map_err(|e| NetError::os(&op, &e))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conformance::{self, KernelHarness};

    #[test]
    fn conformance() {
        conformance::run_all(&mut KernelHarness::new(|| EpollNet::new().unwrap()));
    }
}
