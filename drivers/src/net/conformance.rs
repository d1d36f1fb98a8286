//! The behaviour every [`NetQueue`] backend must have, as one suite run on each (the network's
//! counterpart of [`crate::conformance`]).
//!
//! A [`Harness`] makes queues and test clients for one backend: kernel sockets on 127.0.0.1 for
//! epoll and io_uring ([`KernelHarness`]), simulated clients for [`super::sim`]
//! ([`SimHarness`]). [`run_all`] runs every check; each panics with what went wrong.

use super::sim::{SimClient, SimWorld};
use super::{CloseReason, ConnId, ListenOptions, NetEvent, NetQueue};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A test client's end of a connection.
pub trait TestClient {
    /// Queues `bytes` to the server (sent as the harness steps).
    fn write(&mut self, bytes: &[u8]);
    /// Appends what arrived to `out`; `false` once the server closed and nothing is left.
    fn read(&mut self, out: &mut Vec<u8>) -> bool;
    /// Closes the client's end.
    fn close(&mut self);
}

/// Makes queues and clients for one backend.
pub trait Harness {
    type Q: NetQueue;
    type C: TestClient;
    /// A new queue.
    fn queue(&mut self) -> Self::Q;
    /// A client connected to `addr` (the queue's listener).
    fn connect(&mut self, addr: SocketAddr) -> Self::C;
    /// Lets time pass: moves simulated segments, or gives the kernel a moment.
    fn step(&mut self);
    /// The address to listen on.
    fn listen_addr(&self) -> SocketAddr {
        "127.0.0.1:0".parse().expect("literal")
    }
    /// Whether watched descriptors wake [`NetQueue::poll`] (kernel backends).
    fn has_fds(&self) -> bool {
        true
    }
}

/// What a queue reported, owned.
#[derive(Debug)]
enum Ev {
    Accepted(ConnId),
    Data(ConnId, Vec<u8>),
    Sent(ConnId, Vec<u8>),
    Closed(ConnId, CloseReason),
}

fn drain<Q: NetQueue>(q: &mut Q, out: &mut Vec<Ev>) {
    q.poll(Duration::ZERO).expect("poll");
    while let Some(ev) = q.next_event() {
        out.push(match ev {
            NetEvent::Accepted { conn, .. } => Ev::Accepted(conn),
            NetEvent::Received { conn, bytes } => Ev::Data(conn, bytes.to_vec()),
            NetEvent::Sent { conn, buf } => Ev::Sent(conn, buf),
            NetEvent::Closed { conn, reason } => Ev::Closed(conn, reason),
        });
    }
}

/// Steps until `done` holds, at most `max_steps` times (each kernel step sleeps a little).
fn until<H: Harness>(
    h: &mut H,
    q: &mut H::Q,
    evs: &mut Vec<Ev>,
    max_steps: usize,
    what: &str,
    mut done: impl FnMut(&[Ev]) -> bool,
) {
    for _ in 0..max_steps {
        drain(q, evs);
        if done(evs) {
            return;
        }
        h.step();
    }
    panic!("timed out waiting for {what}; events: {:?}", summary(evs));
}

fn summary(evs: &[Ev]) -> String {
    let mut data: HashMap<ConnId, usize> = HashMap::new();
    let mut other = Vec::new();
    for e in evs {
        match e {
            Ev::Accepted(c) => other.push(format!("accepted {c:?}")),
            Ev::Data(c, b) => *data.entry(*c).or_default() += b.len(),
            Ev::Sent(c, b) => other.push(format!("sent {c:?} cap {}", b.capacity())),
            Ev::Closed(c, r) => other.push(format!("closed {c:?} {r:?}")),
        }
    }
    format!("{other:?}; bytes received per connection: {data:?}")
}

fn received(evs: &[Ev], conn: ConnId) -> Vec<u8> {
    let mut v = Vec::new();
    for e in evs {
        if let Ev::Data(c, b) = e {
            if *c == conn {
                v.extend_from_slice(b);
            }
        }
    }
    v
}

const STEPS: usize = 4000;

fn setup<H: Harness>(h: &mut H) -> (H::Q, SocketAddr) {
    let mut q = h.queue();
    let (_, addr) = q.listen(h.listen_addr(), &ListenOptions::default()).expect("listen");
    (q, addr)
}

fn accept_one<H: Harness>(h: &mut H, q: &mut H::Q, addr: SocketAddr) -> (H::C, ConnId) {
    let c = h.connect(addr);
    let mut evs = Vec::new();
    until(h, q, &mut evs, STEPS, "an accept", |e| {
        e.iter().any(|x| matches!(x, Ev::Accepted(_)))
    });
    let Some(Ev::Accepted(id)) = evs.into_iter().find(|x| matches!(x, Ev::Accepted(_))) else {
        unreachable!()
    };
    (c, id)
}

fn read_exact<H: Harness>(h: &mut H, q: &mut H::Q, c: &mut H::C, n: usize, evs: &mut Vec<Ev>) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..STEPS {
        c.read(&mut got);
        if got.len() >= n {
            return got;
        }
        drain(q, evs);
        h.step();
    }
    panic!("client got {} of {n} bytes", got.len());
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A request and its reply, and the send buffer coming back with its capacity.
pub fn echo<H: Harness>(h: &mut H) {
    let (mut q, addr) = setup(h);
    let (mut c, id) = accept_one(h, &mut q, addr);
    c.write(b"hello, bolide");
    let mut evs = Vec::new();
    until(h, &mut q, &mut evs, STEPS, "13 bytes", |e| received(e, id).len() >= 13);
    assert_eq!(received(&evs, id), b"hello, bolide");
    let mut reply = Vec::with_capacity(4096);
    reply.extend_from_slice(b"hi");
    q.send(id, reply).expect("send");
    let got = read_exact(h, &mut q, &mut c, 2, &mut evs);
    assert_eq!(got, b"hi");
    until(h, &mut q, &mut evs, STEPS, "the buffer back", |e| {
        e.iter().any(|x| matches!(x, Ev::Sent(..)))
    });
    let back = evs.iter().find_map(|x| match x {
        Ev::Sent(c, b) if *c == id => Some(b),
        _ => None,
    });
    let back = back.expect("Sent for this connection");
    assert!(back.is_empty(), "a returned buffer is cleared");
    assert!(back.capacity() >= 4096, "a returned buffer keeps its capacity");
}

/// Megabytes each way arrive whole and in order; several queued sends keep their order.
pub fn large_transfers_in_order<H: Harness>(h: &mut H) {
    let (mut q, addr) = setup(h);
    let (mut c, id) = accept_one(h, &mut q, addr);
    let up = pattern(3 << 20, 1);
    c.write(&up);
    let mut evs = Vec::new();
    until(h, &mut q, &mut evs, STEPS * 4, "3 MiB upstream", |e| {
        received(e, id).len() >= up.len()
    });
    assert!(received(&evs, id) == up, "upstream bytes differ");
    let parts = [pattern(1 << 20, 2), pattern(7, 3), pattern(2 << 20, 4)];
    for p in &parts {
        q.send(id, p.clone()).expect("send");
    }
    let want: Vec<u8> = parts.concat();
    let got = read_exact(h, &mut q, &mut c, want.len(), &mut evs);
    assert!(got == want, "downstream bytes differ or are out of order");
    until(h, &mut q, &mut evs, STEPS, "three buffers back", |e| {
        e.iter().filter(|x| matches!(x, Ev::Sent(c, _) if *c == id)).count() >= 3
    });
}

/// Many connections at once, each answered with its own bytes.
pub fn many_connections<H: Harness>(h: &mut H) {
    const N: usize = 100;
    let (mut q, addr) = setup(h);
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = h.connect(addr);
        c.write(format!("client {i:03}").as_bytes());
        clients.push(c);
    }
    let mut evs = Vec::new();
    let mut by_conn: HashMap<ConnId, Vec<u8>> = HashMap::new();
    until(h, &mut q, &mut evs, STEPS, "100 requests", |e| {
        by_conn.clear();
        for x in e {
            if let Ev::Data(c, b) = x {
                by_conn.entry(*c).or_default().extend_from_slice(b);
            }
        }
        by_conn.len() == N && by_conn.values().all(|v| v.len() == 10)
    });
    for (c, req) in &by_conn {
        let mut reply = b"re: ".to_vec();
        reply.extend_from_slice(req);
        q.send(*c, reply).expect("send");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("re: client {i:03}");
        let got = read_exact(h, &mut q, c, want.len(), &mut evs);
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    assert_eq!(q.stats().accepted as usize, N);
}

/// The peer closing is reported once; the id is dead afterwards.
pub fn peer_close<H: Harness>(h: &mut H) {
    let (mut q, addr) = setup(h);
    let (mut c, id) = accept_one(h, &mut q, addr);
    c.write(b"bye");
    c.close();
    let mut evs = Vec::new();
    until(h, &mut q, &mut evs, STEPS, "the close", |e| {
        e.iter().any(|x| matches!(x, Ev::Closed(..)))
    });
    assert_eq!(received(&evs, id), b"bye", "bytes sent before the close arrive first");
    let closes = evs.iter().filter(|x| matches!(x, Ev::Closed(c, _) if *c == id)).count();
    assert_eq!(closes, 1);
    let pos_close = evs.iter().position(|x| matches!(x, Ev::Closed(..))).expect("closed");
    assert!(
        !evs[pos_close + 1..]
            .iter()
            .any(|x| matches!(x, Ev::Data(c, _) if *c == id)),
        "no data after Closed"
    );
    let err = q.send(id, vec![1, 2, 3]).expect_err("send on a closed connection");
    assert_eq!(err.into_buf(), vec![1, 2, 3], "the refused buffer comes back");
}

/// Closing a connection ends the client's stream; sends on it are refused; a new connection in
/// the same slot is not reachable through the old id.
pub fn local_close_and_stale_ids<H: Harness>(h: &mut H) {
    let (mut q, addr) = setup(h);
    let (mut c, id) = accept_one(h, &mut q, addr);
    q.send(id, b"last words".to_vec()).expect("send");
    let mut evs = Vec::new();
    let got = read_exact(h, &mut q, &mut c, 10, &mut evs);
    assert_eq!(got, b"last words");
    q.close(id);
    let mut ended = false;
    for _ in 0..STEPS {
        let mut sink = Vec::new();
        if !c.read(&mut sink) {
            ended = true;
            break;
        }
        drain(&mut q, &mut evs);
        h.step();
    }
    assert!(ended, "the client saw no end of stream after close");
    assert!(q.send(id, vec![9]).is_err(), "send on a closed id");
    let (mut c2, id2) = accept_one(h, &mut q, addr);
    assert_ne!(id, id2);
    q.close(id); // stale: must not touch the new connection
    assert!(q.send(id, b"wrong".to_vec()).is_err());
    q.send(id2, b"right".to_vec()).expect("send on the new connection");
    let got = read_exact(h, &mut q, &mut c2, 5, &mut evs);
    assert_eq!(got, b"right");
}

/// A paused connection delivers little (what was already taken) until resumed; then everything
/// arrives, in order.
pub fn paused_receive_holds_back<H: Harness>(h: &mut H) {
    let (mut q, addr) = setup(h);
    let (mut c, id) = accept_one(h, &mut q, addr);
    let mut evs = Vec::new();
    c.write(b"first");
    until(h, &mut q, &mut evs, STEPS, "5 bytes", |e| received(e, id).len() >= 5);
    q.set_recv_paused(id, true);
    let before = received(&evs, id).len();
    let body = pattern(8 << 20, 9);
    c.write(&body);
    let mut sink = Vec::new();
    for _ in 0..200 {
        c.read(&mut sink);
        drain(&mut q, &mut evs);
        h.step();
    }
    let while_paused = received(&evs, id).len() - before;
    assert!(
        while_paused <= 1 << 20,
        "{while_paused} bytes delivered while paused (at most what was already read is allowed)"
    );
    q.set_recv_paused(id, false);
    let mut sink = Vec::new();
    for _ in 0..STEPS * 8 {
        c.read(&mut sink); // lets a kernel client write what its socket did not take yet
        drain(&mut q, &mut evs);
        if received(&evs, id).len() >= 5 + body.len() {
            break;
        }
        h.step();
    }
    let all = received(&evs, id);
    assert_eq!(all.len(), 5 + body.len(), "bytes after resuming: {}", summary(&evs));
    assert_eq!(&all[..5], b"first");
    assert!(all[5..] == body[..], "bytes differ after pause and resume");
}

/// `poll` returns early when a watched descriptor is readable.
#[cfg(target_os = "linux")]
pub fn watched_fd_wakes_poll<H: Harness>(h: &mut H) {
    use super::{Doorbell, EventFdDoorbell};
    if !h.has_fds() {
        return;
    }
    let mut q = h.queue();
    let bell = std::sync::Arc::new(EventFdDoorbell::new().expect("eventfd"));
    q.watch_fd(bell.fd().expect("fd")).expect("watch");
    let b2 = std::sync::Arc::clone(&bell);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        b2.ring();
    });
    let start = Instant::now();
    // Woken within the 30 s timeout: by the doorbell (a spurious early return also passes,
    // so loop until the bell was seen).
    while !bell.drain() {
        q.poll(Duration::from_secs(30)).expect("poll");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "poll did not wake on the watched fd"
        );
    }
    t.join().expect("ringer");
}

/// Every check, in order.
pub fn run_all<H: Harness>(h: &mut H) {
    echo(h);
    large_transfers_in_order(h);
    many_connections(h);
    peer_close(h);
    local_close_and_stale_ids(h);
    paused_receive_holds_back(h);
    #[cfg(target_os = "linux")]
    watched_fd_wakes_poll(h);
}

// ----- harnesses -----

/// Kernel-socket backends (epoll, io_uring): clients are non-blocking `TcpStream`s on loopback.
pub struct KernelHarness<Q, F: FnMut() -> Q> {
    make: F,
}

impl<Q: NetQueue, F: FnMut() -> Q> KernelHarness<Q, F> {
    pub fn new(make: F) -> KernelHarness<Q, F> {
        KernelHarness { make }
    }
}

/// A loopback client that buffers what the socket does not take yet.
pub struct KernelClient {
    s: std::net::TcpStream,
    pending: Vec<u8>,
    eof: bool,
}

impl KernelClient {
    fn pump(&mut self) {
        use std::io::Write;
        while !self.pending.is_empty() {
            match self.s.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.pending.clear();
                    break;
                }
            }
        }
    }
}

impl TestClient for KernelClient {
    fn write(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.pump();
    }
    fn read(&mut self, out: &mut Vec<u8>) -> bool {
        use std::io::Read;
        self.pump();
        let mut buf = [0u8; 65536];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        !self.eof
    }
    fn close(&mut self) {
        self.pump();
        let _ = self.s.shutdown(std::net::Shutdown::Write);
    }
}

impl<Q: NetQueue, F: FnMut() -> Q> Harness for KernelHarness<Q, F> {
    type Q = Q;
    type C = KernelClient;
    fn queue(&mut self) -> Q {
        (self.make)()
    }
    fn connect(&mut self, addr: SocketAddr) -> KernelClient {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_nonblocking(true).expect("nonblocking");
        s.set_nodelay(true).expect("nodelay");
        KernelClient {
            s,
            pending: Vec::new(),
            eof: false,
        }
    }
    fn step(&mut self) {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The simulated network: clients are [`SimClient`]s; a step is one tick.
pub struct SimHarness {
    world: SimWorld,
}

impl SimHarness {
    pub fn new(world: SimWorld) -> SimHarness {
        SimHarness { world }
    }
}

/// A simulated client that buffers writes until the harness steps (so it behaves like a
/// socket with a send buffer).
pub struct SimTestClient {
    c: SimClient,
}

impl TestClient for SimTestClient {
    fn write(&mut self, bytes: &[u8]) {
        let _ = self.c.write(bytes);
    }
    fn read(&mut self, out: &mut Vec<u8>) -> bool {
        self.c.read(out)
    }
    fn close(&mut self) {
        self.c.close();
    }
}

impl Harness for SimHarness {
    type Q = super::sim::SimNet;
    type C = SimTestClient;
    fn queue(&mut self) -> Self::Q {
        self.world.queue()
    }
    fn connect(&mut self, addr: SocketAddr) -> SimTestClient {
        SimTestClient {
            c: self.world.connect(addr).expect("connect"),
        }
    }
    fn step(&mut self) {
        self.world.tick();
    }
    fn listen_addr(&self) -> SocketAddr {
        "10.0.0.1:0".parse().expect("literal")
    }
    fn has_fds(&self) -> bool {
        false
    }
}
