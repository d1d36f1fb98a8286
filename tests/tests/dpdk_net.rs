//! The DPDK network backend (issue 15) on a `net_af_packet` port over a veth pair between two
//! network namespaces this test creates: ICMP echo answered by the user-space stack (`ping` from
//! the client namespace), the network conformance suite with kernel-socket clients in the
//! client namespace, and 200 concurrent connections.
//!
//! One test function: EAL can be initialised once per process. Skips (saying so) only when the
//! machine cannot create network namespaces.
#![cfg(feature = "dpdk")]

use bolide_drivers::net::conformance::{self, Harness, TestClient};
use bolide_drivers::net::dpdk::{DpdkConfig, DpdkNet, DpdkPort};
use bolide_drivers::net::{ListenOptions, NetEvent, NetQueue};
use bolide_tests::netns::{self, VethPair};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct DpdkHarness {
    pair: Arc<VethPair>,
    port: Arc<DpdkPort>,
}

/// A kernel client in the client namespace. Writes go through a thread of its own that
/// retries until the stack's window takes them (a socket with an unbounded send buffer), so
/// the suite's large uploads move while it polls the queue.
struct NsClient {
    s: std::net::TcpStream,
    tx: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    eof: bool,
}

fn writer(mut s: std::net::TcpStream, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for chunk in rx {
        let mut off = 0;
        while off < chunk.len() {
            match s.write(&chunk[off..]) {
                Ok(n) => off += n,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::NotConnected)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return,
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

impl NsClient {
    fn new(s: std::net::TcpStream) -> NsClient {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = s.try_clone().expect("clone stream");
        std::thread::spawn(move || writer(w, rx));
        NsClient { s, tx: Some(tx), eof: false }
    }
}

impl TestClient for NsClient {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(bytes.to_vec());
        }
    }
    fn read(&mut self, out: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 65536];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        !self.eof
    }
    fn close(&mut self) {
        // The writer sends what is queued, then half-closes.
        self.tx = None;
    }
}

impl Harness for DpdkHarness {
    type Q = DpdkNet;
    type C = NsClient;
    fn queue(&mut self) -> DpdkNet {
        DpdkNet::new(Arc::clone(&self.port), 0).expect("dpdk queue")
    }
    fn connect(&mut self, addr: SocketAddr) -> NsClient {
        NsClient::new(self.pair.connect_from_client(addr))
    }
    fn step(&mut self) {
        std::thread::sleep(Duration::from_micros(200));
    }
    fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pair.dpdk_ip.into(), 0)
    }
    fn has_fds(&self) -> bool {
        false
    }
}

/// Polls `q` until `stop` is set, answering nothing but what the stack answers itself (ARP,
/// ICMP echo).
fn poll_while(q: &mut DpdkNet, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        q.poll(Duration::ZERO).expect("poll");
        while q.next_event().is_some() {}
    }
}

fn ping_is_answered(h: &mut DpdkHarness) {
    let mut q = h.queue();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pair = Arc::clone(&h.pair);
    let out = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            let r = pair.ping(5, Duration::from_secs(2));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        });
        poll_while(&mut q, &stop);
        pinger.join().expect("ping thread")
    });
    let text = out.unwrap_or_else(|e| panic!("ping from the client namespace failed: {e}"));
    assert!(text.contains("5 received"), "ping output: {text}");
    let (rx, tx, _) = q.frame_counters();
    assert!(rx >= 5 && tx >= 5, "frames received {rx}, sent {tx}");
    eprintln!("ping: {}", text.lines().rev().take(2).collect::<Vec<_>>().join(" / "));
}

/// 200 kernel clients connected at once, each sending its own request and reading its own
/// echo; all stay open until every one was answered.
fn two_hundred_connections(h: &mut DpdkHarness) {
    const N: usize = 200;
    let mut q = h.queue();
    let (_, addr) = q.listen(h.listen_addr(), &ListenOptions::default()).expect("listen");
    let mut clients: Vec<NsClient> = (0..N).map(|_| h.connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write(format!("request {i:04}").as_bytes());
    }
    let mut got: HashMap<_, Vec<u8>> = HashMap::new();
    let mut answered = 0;
    let mut replies: Vec<Vec<u8>> = vec![Vec::new(); N];
    let start = Instant::now();
    while replies.iter().any(|r| r.len() < 16) {
        assert!(start.elapsed() < Duration::from_secs(60), "{answered} of {N} answered in 60 s");
        q.poll(Duration::ZERO).expect("poll");
        let mut to_send = Vec::new();
        while let Some(ev) = q.next_event() {
            if let NetEvent::Received { conn, bytes } = ev {
                let b = got.entry(conn).or_default();
                b.extend_from_slice(bytes);
                if b.len() == 12 {
                    let mut r = b"re: ".to_vec();
                    r.extend_from_slice(b);
                    to_send.push((conn, r));
                }
            }
        }
        for (c, r) in to_send {
            q.send(c, r).expect("send");
            answered += 1;
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.read(&mut replies[i]);
        }
    }
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(r), format!("re: request {i:04}"));
    }
    assert_eq!(q.stats().open as usize, N, "all {N} connections open at once");
    eprintln!("{N} concurrent connections answered in {:?}", start.elapsed());
}

#[test]
fn dpdk_af_packet_backend() {
    if let Some(why) = netns::cannot_make_namespaces() {
        eprintln!("SKIPPED dpdk_af_packet_backend: this machine cannot create network namespaces ({why})");
        return;
    }
    let pair = Arc::new(VethPair::new("net"));
    let prefix = format!("bolide-test-net-{}", std::process::id());
    // EAL and the af_packet socket live in the DPDK side's namespace: enter it first.
    VethPair::enter(&pair.ns_dpdk);
    let mut cfg = DpdkConfig::new(&pair.af_packet_vdev(1), pair.dpdk_ip, 24);
    cfg.file_prefix = prefix.clone();
    cfg.memory_mb = 128;
    cfg.mbufs_per_queue = 4095;
    cfg.rx_descriptors = 512;
    cfg.tx_descriptors = 512;
    let port = DpdkPort::open(&cfg, 1).unwrap_or_else(|e| panic!("DPDK port on {}: {e}", cfg.port));
    let mut h = DpdkHarness {
        pair: Arc::clone(&pair),
        port,
    };
    let t = Instant::now();
    ping_is_answered(&mut h);
    conformance::echo(&mut h);
    conformance::large_transfers_in_order(&mut h);
    conformance::many_connections(&mut h);
    conformance::peer_close(&mut h);
    conformance::local_close_and_stale_ids(&mut h);
    conformance::paused_receive_holds_back(&mut h);
    two_hundred_connections(&mut h);
    eprintln!("dpdk backend checks took {:?}", t.elapsed());
    drop(h);
    netns::remove_eal_runtime(&prefix);
}
