//! Benchmark (not a timed test: `#[ignore]`, run with `--ignored`): request/reply round trips
//! through each network backend on the same veth pair, same client, one run, interleaved
//! repeats. The server is a plain echo loop over [`NetQueue`] on one thread: DPDK (smoltcp on a
//! `net_af_packet` port), epoll and io_uring (kernel sockets on an address the kernel holds on
//! the same veth end). The client is kernel TCP in the other namespace: `CONNS` connections,
//! each one 64-byte request in flight. Prints one JSON line per run: ops/s, p50/p99 µs, server
//! CPU µs per op (the DPDK server busy-polls: its CPU is the whole core by design).
//!
//! `cargo test -p bolide-tests --features dpdk --release --test dpdk_rtt -- --ignored --nocapture`
#![cfg(feature = "dpdk")]

use bolide_drivers::net::dpdk::{DpdkConfig, DpdkNet, DpdkPort};
use bolide_drivers::net::epoll::EpollNet;
use bolide_drivers::net::uring::{UringNet, UringNetOptions};
use bolide_drivers::net::{ListenOptions, NetEvent, NetQueue};
use bolide_tests::netns::{self, VethPair};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNS: usize = 8;
const MSG: usize = 64;
const SECONDS: f64 = 3.0;

/// CPU time (user + system) of the calling thread, µs (`/proc/thread-self/stat`, clock ticks).
fn thread_cpu_us() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
    let after = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks * 1e6 / 100.0
}

/// Echoes whole messages on every connection until `stop`; returns the server's CPU µs.
fn serve<Q: NetQueue>(q: &mut Q, stop: &AtomicBool, sleeps: bool) -> f64 {
    let cpu0 = thread_cpu_us();
    let mut to_send = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        q.poll(if sleeps { Duration::from_millis(1) } else { Duration::ZERO }).expect("poll");
        while let Some(ev) = q.next_event() {
            if let NetEvent::Received { conn, bytes } = ev {
                to_send.push((conn, bytes.to_vec()));
            }
        }
        for (c, b) in to_send.drain(..) {
            let _ = q.send(c, b);
        }
    }
    thread_cpu_us() - cpu0
}

struct Run {
    ops: u64,
    lat_us: Vec<f64>,
}

fn client(ns: &str, addr: SocketAddr) -> Run {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        VethPair::enter(&ns);
        let handles: Vec<_> = (0..CONNS)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    let req = [7u8; MSG];
                    let mut rep = [0u8; MSG];
                    let mut lat = Vec::new();
                    let end = Instant::now() + Duration::from_secs_f64(SECONDS);
                    while Instant::now() < end {
                        let t = Instant::now();
                        s.write_all(&req).expect("write");
                        s.read_exact(&mut rep).expect("read");
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("client"));
        }
        Run {
            ops: all.len() as u64,
            lat_us: all,
        }
    })
    .join()
    .expect("client thread")
}

fn one<Q: NetQueue>(name: &str, repeat: usize, mut q: Q, addr: SocketAddr, pair: &VethPair, sleeps: bool) {
    let (_, at) = q.listen(addr, &ListenOptions::default()).expect("listen");
    let stop = Arc::new(AtomicBool::new(false));
    let ns = pair.ns_client.clone();
    let stop2 = Arc::clone(&stop);
    let c = std::thread::spawn(move || {
        let r = client(&ns, at);
        stop2.store(true, Ordering::Relaxed);
        r
    });
    let cpu_us = serve(&mut q, &stop, sleeps);
    let mut r = c.join().expect("client");
    r.lat_us.sort_by(f64::total_cmp);
    let pct = |p: f64| r.lat_us[((r.lat_us.len() as f64 * p) as usize).min(r.lat_us.len() - 1)];
    println!(
        "{{\"backend\":\"{name}\",\"repeat\":{repeat},\"conns\":{CONNS},\"msg_bytes\":{MSG},\"seconds\":{SECONDS},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"server_cpu_us_per_op\":{:.2}}}",
        r.ops as f64 / SECONDS,
        pct(0.50),
        pct(0.99),
        cpu_us / r.ops.max(1) as f64
    );
}

#[test]
#[ignore = "benchmark: run with --ignored (needs root for network namespaces)"]
fn round_trips_dpdk_epoll_io_uring() {
    if let Some(why) = netns::cannot_make_namespaces() {
        panic!("this benchmark needs network namespaces: {why}");
    }
    let pair = VethPair::new("rtt");
    VethPair::enter(&pair.ns_dpdk);
    // The kernel's own address on the DPDK side's veth end, for the socket backends.
    let o = pair.dpdk_ip.octets();
    let kernel_ip = Ipv4Addr::new(o[0], o[1], o[2], 3);
    let st = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{kernel_ip}/24"), "dev", &pair.if_dpdk])
        .status()
        .expect("ip addr");
    assert!(st.success());
    let prefix = format!("bolide-bench-rtt-{}", std::process::id());
    let mut cfg = DpdkConfig::new(&pair.af_packet_vdev(1), pair.dpdk_ip, 24);
    cfg.file_prefix = prefix.clone();
    let port = DpdkPort::open(&cfg, 1).expect("dpdk port");
    for repeat in 0..3 {
        one("dpdk", repeat, DpdkNet::new(Arc::clone(&port), 0).expect("queue"), SocketAddr::new(pair.dpdk_ip.into(), 0), &pair, false);
        one("epoll", repeat, EpollNet::new().expect("epoll"), SocketAddr::new(kernel_ip.into(), 0), &pair, true);
        one("io_uring", repeat, UringNet::new(&UringNetOptions::default()).expect("uring"), SocketAddr::new(kernel_ip.into(), 0), &pair, true);
    }
    drop(port);
    netns::remove_eal_runtime(&prefix);
}
