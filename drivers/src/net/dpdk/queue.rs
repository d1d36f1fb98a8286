//! [`DpdkNet`]: one worker's [`NetQueue`] over its DPDK queue pair, TCP by smoltcp.
//!
//! A listener is a pool of smoltcp sockets in LISTEN on its port (smoltcp has no accept
//! queue: a SYN takes the first listening socket); a socket that leaves LISTEN/SYN-RECEIVED is
//! a connection and a fresh one takes its place, while the queue is under its connection limit.
//! Received bytes are lent from the socket's receive buffer (`peek`) and dequeued at the next
//! call; send buffers are copied into the socket's send buffer as its window allows and come
//! back in [`NetEvent::Sent`] once copied whole.

use super::device::{QueueDevice, BURST};
use super::eal::DpdkPort;
use super::DpdkConfig;
use crate::net::{CloseReason, ConnId, ListenOptions, ListenerId, NetError, NetEvent, NetQueue, NetStats, SendError, Slots};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Listening sockets kept ready per listener (SYNs arriving in one receive pass beyond this
/// are refused with a RST; a pass takes at most [`BURST`] frames, so this leaves room).
const LISTEN_POOL: usize = 64;
/// Receive passes per poll while the NIC has more frames.
const MAX_PASSES: usize = 16;
/// A closed connection whose FIN handshake has not finished by then is reset.
const LINGER: Duration = Duration::from_secs(10);
/// Ports handed out for `listen` on port 0 (shared by every queue of the process so that a new
/// queue never reuses the port of one just dropped).
static NEXT_PORT: AtomicU16 = AtomicU16::new(40_000);

struct Listener {
    id: ListenerId,
    port: u16,
    /// Sockets in LISTEN (or SYN-RECEIVED) waiting for a client.
    idle: Vec<SocketHandle>,
}

struct Conn {
    handle: SocketHandle,
    /// Buffers to send, in order; `sent_off` bytes of the first are in the socket already.
    sendq: VecDeque<Vec<u8>>,
    sent_off: usize,
    sending: bool,
    paused: bool,
}

enum Pending {
    Accepted(ListenerId, ConnId),
    Sent(ConnId, Vec<u8>),
}

/// One worker's network queue over a DPDK queue pair.
pub struct DpdkNet {
    port: Arc<DpdkPort>,
    queue: u16,
    dev: QueueDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<Listener>,
    conns: Slots<Conn>,
    events: VecDeque<Pending>,
    /// Connections to look at in `next_event` (data or end of stream), gathered by `poll`.
    ready: Vec<ConnId>,
    ready_pos: usize,
    /// Bytes lent in the last `Received`, dequeued at the next call.
    consume: Option<(SocketHandle, usize)>,
    /// Connections with queued send buffers.
    sending: Vec<ConnId>,
    /// Sockets closed by us or the peer, finishing their FIN handshake: (socket, since, reset).
    closing: Vec<(SocketHandle, Instant, bool)>,
    epoch: Instant,
    stats: NetStats,
    cfg: DpdkConfig,
}

impl std::fmt::Debug for DpdkNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkNet")
            .field("port", &self.port)
            .field("queue", &self.queue)
            .field("open", &self.conns.len())
            .finish()
    }
}

impl DpdkNet {
    /// Queue `queue` of `port` as a network queue at the port's configured IPv4 address.
    ///
    /// # Errors
    /// `queue` is out of range or another [`DpdkNet`] owns it.
    pub fn new(port: Arc<DpdkPort>, queue: u16) -> Result<DpdkNet, NetError> {
        let mut dev = QueueDevice::claim(&port, queue)?;
        let cfg = port.cfg.clone();
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(port.mac)));
        config.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((queue as u64) << 48);
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::from_micros(0));
        let ip = cfg.ipv4.octets();
        let ip = Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(ip), cfg.prefix_len))
                .expect("one address fits");
        });
        if let Some(gw) = cfg.gateway {
            let g = gw.octets();
            iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(g[0], g[1], g[2], g[3]))
                .map_err(|_| NetError::other("dpdk route", "the route table is full"))?;
        }
        Ok(DpdkNet {
            port,
            queue,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            conns: Slots::new(),
            events: VecDeque::new(),
            ready: Vec::new(),
            ready_pos: 0,
            consume: None,
            sending: Vec::new(),
            closing: Vec::new(),
            epoch,
            stats: NetStats::default(),
            cfg,
        })
    }

    /// The port this queue belongs to.
    pub fn port(&self) -> &Arc<DpdkPort> {
        &self.port
    }

    /// Frames received, sent, and dropped on send (no mbuf or the ring full) by this queue.
    pub fn frame_counters(&self) -> (u64, u64, u64) {
        let c = self.dev.tx.counters;
        (c.rx_frames, c.tx_frames, c.tx_dropped)
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn new_socket(&mut self, port: u16) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tcp_rx_buffer_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tcp_tx_buffer_bytes]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.listen(port).expect("a fresh socket listens");
        self.sockets.add(s)
    }

    /// Dequeues the bytes lent by the last `Received`.
    fn settle(&mut self) {
        if let Some((h, n)) = self.consume.take() {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let _ = s.recv(|_| (n, ()));
        }
    }

    /// Turns listening sockets that took a client into connections and tops the pools up.
    fn accept(&mut self) {
        let max = self.cfg.max_connections_per_queue;
        for li in 0..self.listeners.len() {
            let mut i = 0;
            while i < self.listeners[li].idle.len() {
                let h = self.listeners[li].idle[i];
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::Listen | tcp::State::SynReceived => i += 1,
                    tcp::State::Closed => {
                        // A half-open that was reset or timed out: listen again.
                        let port = self.listeners[li].port;
                        s.listen(port).expect("a closed socket listens");
                        i += 1;
                    }
                    _ => {
                        self.listeners[li].idle.swap_remove(i);
                        let id = self.conns.insert(Conn {
                            handle: h,
                            sendq: VecDeque::new(),
                            sent_off: 0,
                            sending: false,
                            paused: false,
                        });
                        self.stats.accepted += 1;
                        self.events.push_back(Pending::Accepted(self.listeners[li].id, id));
                    }
                }
            }
        }
        let idle: usize = self.listeners.iter().map(|l| l.idle.len()).sum();
        let mut room = max.saturating_sub(self.conns.len() + idle);
        for li in 0..self.listeners.len() {
            // Half-open sockets (SYN-RECEIVED) stay in the pool but no longer listen: count
            // only the ones still in LISTEN.
            let listening = self.listeners[li]
                .idle
                .iter()
                .filter(|h| self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen)
                .count();
            let port = self.listeners[li].port;
            for _ in listening..LISTEN_POOL {
                if room == 0 {
                    break;
                }
                let h = self.new_socket(port);
                self.listeners[li].idle.push(h);
                room -= 1;
            }
        }
    }

    /// Copies queued send buffers into their sockets' send buffers as far as they fit.
    fn pump_sends(&mut self) {
        let mut i = 0;
        while i < self.sending.len() {
            let id = self.sending[i];
            let Some(c) = self.conns.get_mut(id) else {
                self.sending.swap_remove(i);
                continue;
            };
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            while let Some(front) = c.sendq.front() {
                if !s.may_send() {
                    break;
                }
                let n = s.send_slice(&front[c.sent_off..]).unwrap_or(0);
                c.sent_off += n;
                self.stats.tx_bytes += n as u64;
                if c.sent_off < front.len() {
                    break;
                }
                let mut b = c.sendq.pop_front().expect("front exists");
                b.clear();
                c.sent_off = 0;
                self.events.push_back(Pending::Sent(id, b));
            }
            if c.sendq.is_empty() {
                c.sending = false;
                self.sending.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Frees sockets whose close finished; resets those that lingered too long.
    fn reap(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.closing.len() {
            let (h, since, reset) = self.closing[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done && (reset || s.state() == tcp::State::TimeWait || now.duration_since(since) > Duration::ZERO) {
                self.sockets.remove(h);
                self.closing.swap_remove(i);
                continue;
            }
            if !reset && now.duration_since(since) > LINGER {
                s.abort(); // the RST goes out at the next egress; freed at the next reap
                self.closing[i].2 = true;
            }
            i += 1;
        }
    }

    /// One pass over the NIC and the stack: sends in, frames in and out, accepts.
    fn pass(&mut self) {
        self.pump_sends();
        for _ in 0..MAX_PASSES {
            self.dev.set_rx_budget(BURST);
            let now = self.now();
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            self.accept();
            self.pump_sends();
            if !self.dev.rx_more {
                break;
            }
        }
        // Replies queued after the last receive pass, window updates for bytes just read.
        let now = self.now();
        self.iface.poll_egress(now, &mut self.dev, &mut self.sockets);
        self.dev.flush();
        if !self.closing.is_empty() {
            self.reap();
        }
        self.ready.clear();
        self.ready_pos = 0;
        self.conns.ids_into(&mut self.ready);
    }

    fn lost(&self) -> bool {
        !self.events.is_empty() || self.ready.iter().any(|id| self.has_news(*id))
    }

    fn has_news(&self, id: ConnId) -> bool {
        let Some(c) = self.conns.get(id) else {
            return false;
        };
        let s = self.sockets.get::<tcp::Socket>(c.handle);
        (!c.paused && s.can_recv()) || (!s.may_recv() && s.recv_queue() == 0)
    }
}

impl NetQueue for DpdkNet {
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError> {
        let op = format!("listen on {addr}");
        let ip = match addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() || v == self.cfg.ipv4 => self.cfg.ipv4,
            other => {
                return Err(NetError::other(op, format!("{other} is not this port's address {}", self.cfg.ipv4)));
            }
        };
        let port = if addr.port() != 0 {
            addr.port()
        } else {
            loop {
                let p = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
                if p >= 60_000 {
                    NEXT_PORT.store(40_000, Ordering::Relaxed);
                    continue;
                }
                if !self.listeners.iter().any(|l| l.port == p) {
                    break p;
                }
            }
        };
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(NetError {
                op,
                errno: Some(libc::EADDRINUSE),
                detail: format!("port {port} already has a listener on this queue"),
            });
        }
        let _ = opts.backlog; // the pool of listening sockets plays the backlog's part
        let id = ListenerId(self.listeners.len() as u32);
        self.listeners.push(Listener {
            id,
            port,
            idle: Vec::new(),
        });
        self.accept();
        Ok((id, SocketAddr::new(IpAddr::V4(ip), port)))
    }

    fn poll(&mut self, timeout: Duration) -> Result<(), NetError> {
        self.settle();
        let start = Instant::now();
        loop {
            self.pass();
            if timeout.is_zero() || self.lost() || start.elapsed() >= timeout {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    fn next_event(&mut self) -> Option<NetEvent<'_>> {
        self.settle();
        if let Some(p) = self.events.pop_front() {
            return Some(match p {
                Pending::Accepted(listener, conn) => NetEvent::Accepted { listener, conn },
                Pending::Sent(conn, buf) => NetEvent::Sent { conn, buf },
            });
        }
        // Find a connection with bytes to lend or an end to report (no borrow held across
        // iterations), then act on it.
        let (id, handle, data) = loop {
            let id = *self.ready.get(self.ready_pos)?;
            match self.conns.get(id) {
                Some(c) => {
                    let s = self.sockets.get::<tcp::Socket>(c.handle);
                    if !c.paused && s.can_recv() {
                        break (id, c.handle, true);
                    }
                    if !s.may_recv() && s.recv_queue() == 0 {
                        break (id, c.handle, false);
                    }
                    self.ready_pos += 1;
                }
                None => self.ready_pos += 1,
            }
        };
        if data {
            // Stay on this connection: a wrapped receive buffer lends in two pieces.
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            let bytes = s.peek(usize::MAX).unwrap_or(&[]);
            self.consume = Some((handle, bytes.len()));
            self.stats.rx_bytes += bytes.len() as u64;
            return Some(NetEvent::Received { conn: id, bytes });
        }
        self.ready_pos += 1;
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        let reason = if s.state() == tcp::State::Closed {
            CloseReason::Error(NetError {
                op: "recv".into(),
                errno: Some(libc::ECONNRESET),
                detail: "connection reset by peer or timed out".into(),
            })
        } else {
            CloseReason::Peer
        };
        s.close();
        self.conns.remove(id);
        self.closing.push((handle, Instant::now(), false));
        Some(NetEvent::Closed { conn: id, reason })
    }

    fn send(&mut self, conn: ConnId, buf: Vec<u8>) -> Result<(), SendError> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Err(SendError::Closed(buf));
        };
        if buf.is_empty() {
            self.events.push_back(Pending::Sent(conn, buf));
            return Ok(());
        }
        c.sendq.push_back(buf);
        if !c.sending {
            c.sending = true;
            self.sending.push(conn);
        }
        Ok(())
    }

    fn set_recv_paused(&mut self, conn: ConnId, paused: bool) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = paused;
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.settle();
        if let Some(c) = self.conns.remove(conn) {
            self.sockets.get_mut::<tcp::Socket>(c.handle).close();
            self.closing.push((c.handle, Instant::now(), false));
        }
    }

    fn watch_fd(&mut self, _fd: std::os::fd::RawFd) -> Result<(), NetError> {
        Err(NetError::other(
            "watch_fd",
            "the DPDK backend busy-polls its NIC queue and cannot wait on descriptors",
        ))
    }

    fn can_sleep(&self) -> bool {
        false
    }

    fn stats(&self) -> NetStats {
        NetStats {
            open: self.conns.len() as u64,
            ..self.stats
        }
    }
}

impl Drop for DpdkNet {
    fn drop(&mut self) {
        // Reset every connection so peers do not wait for a stack that is gone.
        for (_, s) in self.sockets.iter_mut() {
            #[allow(irrefutable_let_patterns)] // TCP is the only socket kind built
            if let smoltcp::socket::Socket::Tcp(t) = s {
                t.abort();
            }
        }
        let now = self.now();
        self.iface.poll_egress(now, &mut self.dev, &mut self.sockets);
        self.dev.flush();
    }
}
