//! A deterministic in-memory network for simulations (the whole-node simulation, conformance).
//!
//! A [`SimWorld`] holds every listener and connection of one simulation; each server core gets a
//! [`SimNet`] (its [`NetQueue`]) from it and test clients get [`SimClient`]s. Time is counted in
//! ticks that only [`SimWorld::tick`] advances, so a run is a function of its seed: nothing here
//! reads a clock or spawns a thread.
//!
//! Faults, chosen from the seed ([`SimFaults`]): a segment is split into pieces at random
//! offsets, each piece is delivered after a random delay (in order per direction, as TCP
//! does), a connection can stall (nothing delivered for a while) or be reset (both ends see it
//! closed; what was in flight is lost). Bytes are never corrupted or reordered: TCP's checksum
//! and sequence numbers make that a non-fault for the layers above.

use super::{CloseReason, ConnId, ListenOptions, ListenerId, NetError, NetEvent, NetQueue, NetStats, SendError, Slots};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What can go wrong, per segment or per connection and tick. All zero: a perfect network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimFaults {
    /// Largest delivery delay of a segment, ticks (uniform in `0..=max`).
    pub max_delay_ticks: u32,
    /// Chance that a segment is split into two or more pieces.
    pub split_probability: f64,
    /// Per connection and tick: chance that it stalls for up to `max_stall_ticks`.
    pub stall_probability: f64,
    pub max_stall_ticks: u32,
    /// Per connection and tick: chance that it is reset.
    pub reset_probability: f64,
}

impl SimFaults {
    /// No faults, no delay.
    pub const NONE: SimFaults = SimFaults {
        max_delay_ticks: 0,
        split_probability: 0.0,
        stall_probability: 0.0,
        max_stall_ticks: 0,
        reset_probability: 0.0,
    };
}

#[derive(Default)]
struct Pipe {
    /// (deliver at tick, bytes), in send order.
    segments: VecDeque<(u64, Vec<u8>)>,
    /// Bytes delivered and not yet taken by the reader.
    delivered: VecDeque<Vec<u8>>,
    /// The writer closed its end (after the segments drain, the reader sees end of stream).
    closed: bool,
}

struct Link {
    /// The server-side id, once accepted.
    conn: Option<ConnId>,
    listener: ListenerId,
    c2s: Pipe,
    s2c: Pipe,
    stalled_until: u64,
    /// Reset: both ends see it closed.
    reset: bool,
    /// The server closed its end.
    server_closed: bool,
    /// The client closed its end.
    client_closed: bool,
    /// The server was told the connection ended.
    server_told: bool,
}

struct Inner {
    tick: u64,
    rng: ChaCha8Rng,
    faults: SimFaults,
    /// Listening addresses: addr -> (queue, listener) per queue listening there (several with
    /// `reuse_port`, as `SO_REUSEPORT`: a new connection goes to one of them, drawn from the seed),
    /// and whether the address is shared.
    listeners: BTreeMap<SocketAddr, (Vec<(usize, ListenerId)>, bool)>,
    links: Vec<Link>,
    /// Per queue: links accepted but not yet reported, by link index.
    backlog: Vec<VecDeque<usize>>,
    next_port: u16,
}

/// One simulated network. Clones share it.
#[derive(Clone)]
pub struct SimWorld {
    inner: Arc<Mutex<Inner>>,
}

impl SimWorld {
    /// A network with the given faults, its random choices drawn from `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> SimWorld {
        SimWorld {
            inner: Arc::new(Mutex::new(Inner {
                tick: 0,
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults,
                listeners: BTreeMap::new(),
                links: Vec::new(),
                backlog: Vec::new(),
                next_port: 40_000,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new server-side queue on this network.
    pub fn queue(&self) -> SimNet {
        let mut w = self.lock();
        w.backlog.push(VecDeque::new());
        SimNet {
            world: self.clone(),
            index: w.backlog.len() - 1,
            conns: Slots::new(),
            ready: VecDeque::new(),
            cur: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// Connects a client to `addr`.
    ///
    /// # Errors
    /// Nothing listens there (connection refused).
    pub fn connect(&self, addr: SocketAddr) -> Result<SimClient, NetError> {
        let mut w = self.lock();
        let Some((queues, _)) = w.listeners.get(&addr) else {
            return Err(NetError {
                op: format!("connect to {addr}"),
                errno: Some(libc_econnrefused()),
                detail: "connection refused".into(),
            });
        };
        let queues = queues.clone();
        let (queue, listener) = if queues.len() == 1 {
            queues[0]
        } else {
            queues[w.rng.gen_range(0..queues.len())]
        };
        w.links.push(Link {
            conn: None,
            listener,
            c2s: Pipe::default(),
            s2c: Pipe::default(),
            stalled_until: 0,
            reset: false,
            server_closed: false,
            client_closed: false,
            server_told: false,
        });
        let link = w.links.len() - 1;
        w.backlog[queue].push_back(link);
        Ok(SimClient {
            world: self.clone(),
            link,
        })
    }

    /// Advances time by one tick: delivers due segments, and draws stalls and resets.
    pub fn tick(&self) {
        let mut w = self.lock();
        w.tick += 1;
        let now = w.tick;
        let faults = w.faults;
        let Inner { links, rng, .. } = &mut *w;
        for l in links.iter_mut() {
            if l.reset {
                continue;
            }
            if faults.reset_probability > 0.0 && rng.gen_bool(faults.reset_probability) {
                l.reset = true;
                l.c2s.segments.clear();
                l.s2c.segments.clear();
                continue;
            }
            if faults.stall_probability > 0.0 && rng.gen_bool(faults.stall_probability) {
                l.stalled_until = now + u64::from(rng.gen_range(1..=faults.max_stall_ticks.max(1)));
            }
            if now < l.stalled_until {
                continue;
            }
            for p in [&mut l.c2s, &mut l.s2c] {
                while p.segments.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, b) = p.segments.pop_front().expect("front exists");
                    p.delivered.push_back(b);
                }
            }
        }
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.lock().tick
    }

    /// Bytes and segments still in flight anywhere (a simulation runs until this is zero).
    pub fn in_flight_segments(&self) -> usize {
        let w = self.lock();
        w.links
            .iter()
            .map(|l| l.c2s.segments.len() + l.s2c.segments.len())
            .sum()
    }
}

fn libc_econnrefused() -> i32 {
    111
}

impl Inner {
    /// Queues `bytes` on `pipe`, split and delayed as the faults say.
    fn transmit(&mut self, link: usize, to_server: bool, mut bytes: Vec<u8>) {
        let now = self.tick;
        let f = self.faults;
        let mut pieces = Vec::new();
        if f.split_probability > 0.0 && bytes.len() > 1 && self.rng.gen_bool(f.split_probability) {
            let n = self.rng.gen_range(2..=4usize).min(bytes.len());
            for _ in 1..n {
                let at = self.rng.gen_range(1..bytes.len());
                let rest = bytes.split_off(at);
                pieces.push(std::mem::replace(&mut bytes, rest));
                if bytes.len() <= 1 {
                    break;
                }
            }
        }
        pieces.push(bytes);
        let l = &mut self.links[link];
        let pipe = if to_server { &mut l.c2s } else { &mut l.s2c };
        // In order per direction: never deliver before the segment ahead.
        let mut at = pipe.segments.back().map_or(now, |(t, _)| *t);
        for p in pieces {
            let delay = if f.max_delay_ticks > 0 {
                u64::from(self.rng.gen_range(0..=f.max_delay_ticks))
            } else {
                0
            };
            at = at.max(now + delay);
            pipe.segments.push_back((at, p));
        }
    }
}

struct SConn {
    link: usize,
    paused: bool,
}

/// One server core's queue on a [`SimWorld`].
pub struct SimNet {
    world: SimWorld,
    index: usize,
    conns: Slots<SConn>,
    ready: VecDeque<(ConnId, Ready)>,
    /// The bytes the last `Received` lent out.
    cur: Vec<u8>,
    stats: NetStats,
}

enum Ready {
    Accepted(ListenerId),
    Data(Vec<u8>),
    Sent(Vec<u8>),
    Closed(CloseReason),
}

impl SimNet {
    /// The network this queue is on.
    pub fn world(&self) -> &SimWorld {
        &self.world
    }
}

impl NetQueue for SimNet {
    fn listen(&mut self, addr: SocketAddr, opts: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError> {
        let mut w = self.world.lock();
        let mut addr = addr;
        if addr.port() == 0 {
            addr.set_port(w.next_port);
            w.next_port += 1;
        }
        let shareable = w.listeners.get(&addr).map(|(qs, shared)| {
            *shared && opts.reuse_port && !qs.iter().any(|(q, _)| *q == self.index)
        });
        if shareable == Some(false) {
            return Err(NetError {
                op: format!("listen on {addr}"),
                errno: Some(98),
                detail: "address in use".into(),
            });
        }
        let index = self.index;
        let id = ListenerId(
            w.listeners
                .values()
                .map(|(qs, _)| qs.iter().filter(|(q, _)| *q == index).count())
                .sum::<usize>() as u32,
        );
        w.listeners
            .entry(addr)
            .or_insert_with(|| (Vec::new(), opts.reuse_port))
            .0
            .push((index, id));
        Ok((id, addr))
    }

    fn poll(&mut self, _timeout: Duration) -> Result<(), NetError> {
        self.stats.syscalls += 1;
        let world = self.world.clone();
        let mut w = world.lock();
        while let Some(link) = w.backlog[self.index].pop_front() {
            let id = self.conns.insert(SConn { link, paused: false });
            w.links[link].conn = Some(id);
            let listener = w.links[link].listener;
            self.ready.push_back((id, Ready::Accepted(listener)));
            self.stats.accepted += 1;
        }
        for id in self.conns.ids() {
            let c = self.conns.get(id).expect("listed");
            let l = &mut w.links[c.link];
            if l.server_told {
                continue;
            }
            if !c.paused {
                while let Some(b) = l.c2s.delivered.pop_front() {
                    self.stats.rx_bytes += b.len() as u64;
                    self.ready.push_back((id, Ready::Data(b)));
                }
            }
            let eof = l.client_closed && l.c2s.segments.is_empty() && l.c2s.delivered.is_empty();
            if l.reset || eof {
                l.server_told = true;
                let reason = if l.reset {
                    CloseReason::Error(NetError::other("recv", "connection reset (simulated)"))
                } else {
                    CloseReason::Peer
                };
                self.ready.push_back((id, Ready::Closed(reason)));
            }
        }
        self.stats.open = self.conns.len() as u64;
        Ok(())
    }

    fn next_event(&mut self) -> Option<NetEvent<'_>> {
        loop {
            let (conn, r) = self.ready.pop_front()?;
            // A connection the caller closed since: drop what was gathered for it.
            if self.conns.get(conn).is_none() {
                continue;
            }
            return Some(match r {
                Ready::Accepted(listener) => NetEvent::Accepted { listener, conn },
                Ready::Data(b) => {
                    self.cur = b;
                    NetEvent::Received { conn, bytes: &self.cur }
                }
                Ready::Sent(buf) => NetEvent::Sent { conn, buf },
                Ready::Closed(reason) => {
                    self.conns.remove(conn);
                    NetEvent::Closed { conn, reason }
                }
            });
        }
    }

    fn send(&mut self, conn: ConnId, mut buf: Vec<u8>) -> Result<(), SendError> {
        let Some(c) = self.conns.get(conn) else {
            return Err(SendError::Closed(buf));
        };
        let link = c.link;
        {
            let mut w = self.world.lock();
            if w.links[link].reset || w.links[link].server_told {
                return Err(SendError::Closed(buf));
            }
            if !buf.is_empty() {
                self.stats.tx_bytes += buf.len() as u64;
                w.transmit(link, false, buf.clone());
            }
        }
        buf.clear();
        self.ready.push_back((conn, Ready::Sent(buf)));
        Ok(())
    }

    fn set_recv_paused(&mut self, conn: ConnId, paused: bool) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = paused;
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(conn) {
            let mut w = self.world.lock();
            let l = &mut w.links[c.link];
            l.server_closed = true;
            l.server_told = true;
            l.s2c.closed = true;
        }
    }

    fn watch_fd(&mut self, _fd: RawFd) -> Result<(), NetError> {
        Ok(())
    }

    fn can_sleep(&self) -> bool {
        false
    }

    fn stats(&self) -> NetStats {
        self.stats
    }
}

/// A client's end of one simulated connection.
pub struct SimClient {
    world: SimWorld,
    link: usize,
}

impl SimClient {
    /// Sends `bytes` to the server.
    ///
    /// # Errors
    /// The connection was reset or closed.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let mut w = self.world.lock();
        let l = &w.links[self.link];
        if l.reset || l.client_closed {
            return Err(NetError::other("send", "connection closed (simulated)"));
        }
        w.transmit(self.link, true, bytes.to_vec());
        Ok(())
    }

    /// Appends what the server's bytes delivered so far to `out`. Returns `false` once the
    /// stream has ended (the server closed, or the connection was reset) and nothing is left.
    pub fn read(&mut self, out: &mut Vec<u8>) -> bool {
        let mut w = self.world.lock();
        let l = &mut w.links[self.link];
        while let Some(b) = l.s2c.delivered.pop_front() {
            out.extend_from_slice(&b);
        }
        let ended = l.reset || (l.s2c.closed && l.s2c.segments.is_empty());
        !ended
    }

    /// Whether the connection was reset.
    pub fn was_reset(&self) -> bool {
        self.world.lock().links[self.link].reset
    }

    /// Closes the client's end.
    pub fn close(&mut self) {
        let mut w = self.world.lock();
        let l = &mut w.links[self.link];
        l.client_closed = true;
        l.c2s.closed = true;
    }
}

impl Drop for SimClient {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conformance::{self, SimHarness};

    #[test]
    fn conformance_without_faults() {
        conformance::run_all(&mut SimHarness::new(SimWorld::new(1, SimFaults::NONE)));
    }

    #[test]
    fn conformance_with_split_and_delayed_segments() {
        for seed in 0..8 {
            let faults = SimFaults {
                max_delay_ticks: 5,
                split_probability: 0.5,
                ..SimFaults::NONE
            };
            conformance::run_all(&mut SimHarness::new(SimWorld::new(seed, faults)));
        }
    }

    #[test]
    fn a_reset_closes_both_ends() {
        let world = SimWorld::new(
            7,
            SimFaults {
                reset_probability: 1.0,
                ..SimFaults::NONE
            },
        );
        let mut q = world.queue();
        let (_, addr) = q
            .listen("10.0.0.1:3000".parse().unwrap(), &ListenOptions::default())
            .unwrap();
        let mut c = world.connect(addr).unwrap();
        q.poll(Duration::ZERO).unwrap();
        let Some(NetEvent::Accepted { conn, .. }) = q.next_event() else {
            panic!("no accept")
        };
        world.tick();
        q.poll(Duration::ZERO).unwrap();
        match q.next_event() {
            Some(NetEvent::Closed { conn: c2, reason }) => {
                assert_eq!(c2, conn);
                assert!(matches!(reason, CloseReason::Error(_)));
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(c.was_reset());
        let mut out = Vec::new();
        assert!(!c.read(&mut out));
        assert!(q.send(conn, vec![1]).is_err());
    }

    #[test]
    fn same_seed_same_delivery() {
        let run = |seed| {
            let faults = SimFaults {
                max_delay_ticks: 9,
                split_probability: 0.7,
                ..SimFaults::NONE
            };
            let world = SimWorld::new(seed, faults);
            let mut q = world.queue();
            let (_, addr) = q
                .listen("10.0.0.1:3000".parse().unwrap(), &ListenOptions::default())
                .unwrap();
            let mut c = world.connect(addr).unwrap();
            c.write(&[7u8; 1000]).unwrap();
            let mut trace = Vec::new();
            for t in 0..30 {
                world.tick();
                q.poll(Duration::ZERO).unwrap();
                while let Some(ev) = q.next_event() {
                    if let NetEvent::Received { bytes, .. } = ev {
                        trace.push((t, bytes.len()));
                    }
                }
            }
            trace
        };
        assert_eq!(run(3), run(3));
        assert_eq!(run(3).iter().map(|x| x.1).sum::<usize>(), 1000);
    }
}
