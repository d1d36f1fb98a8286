//! End to end over DPDK (issue 15): a real `bolide serve` process whose profile says
//! `[network] driver = "dpdk"`, on a `net_af_packet` port over a veth pair between two network
//! namespaces this test creates; the official Python client in the other namespace does
//! put/get/batch/scan/truncate through the kernel's TCP to the node's user-space TCP, then 200
//! connections are held open at once.
//!
//! Skips (saying so) only when the machine cannot create network namespaces.
#![cfg(feature = "dpdk")]

use bolide_tests::netns::{self, VethPair};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 3700;

struct DpdkNode {
    child: Child,
    dir: tempfile::TempDir,
    prefix: String,
}

impl DpdkNode {
    fn start(pair: &VethPair) -> DpdkNode {
        let dir = bolide_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"));
        let prefix = format!("bolide-test-e2e-{}", std::process::id());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let profile = format!(
            r#"name = "dpdk-test"
description = "net_af_packet on a veth pair, no hugepages (tests/tests/dpdk_e2e.rs)"
[cpu]
cores = [1]
[[device]]
driver = "uring"
path = "{data}"
shard_file_bytes = 134217728
[network]
driver = "dpdk"
port = "{port}"
ipv4 = "{ip}/24"
no_huge = true
memory_mb = 256
file_prefix = "{prefix}"
"#,
            data = data.display(),
            port = pair.af_packet_vdev(1),
            ip = pair.dpdk_ip,
        );
        let prof = dir.path().join("profile.toml");
        std::fs::write(&prof, profile).expect("write profile");
        // 0.0.0.0: the stack listens on the port's address; the kernel check of the port finds
        // it free in the DPDK side's namespace.
        let cfg = dir.path().join("bolide.toml");
        std::fs::write(&cfg, format!("listen = \"0.0.0.0:{PORT}\"\n")).expect("write config");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
        let bin = bolide_tests::node::bolide_bin(env!("CARGO_TARGET_TMPDIR"));
        let child = pair
            .dpdk_command(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--profile")
            .arg(&prof)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bolide");
        let node = DpdkNode { child, dir, prefix };
        node.wait_ready(pair);
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn wait_ready(&self, pair: &VethPair) {
        let addr = SocketAddr::new(pair.dpdk_ip.into(), PORT);
        let deadline = Instant::now() + Duration::from_secs(60);
        let ns = pair.ns_client.clone();
        let ok = std::thread::spawn(move || {
            VethPair::enter(&ns);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
        .join()
        .expect("ready thread");
        assert!(ok, "bolide over DPDK did not accept on {addr}; log:\n{}", self.log());
    }

    fn stop(mut self) -> String {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        netns::remove_eal_runtime(&self.prefix);
        self.log()
    }
}

fn python(pair: &VethPair, py: &std::path::Path, args: &[&str]) {
    let out = pair
        .client_command(py.to_str().expect("utf8 path"))
        .args(args)
        .env("BOLIDE_HOST", pair.dpdk_ip.to_string())
        .output()
        .expect("run python in the client namespace");
    assert!(
        out.status.success(),
        "python {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One info request (spec §2.1: version 2, type 1, 48-bit length, then the names).
fn info_request(name: &str) -> Vec<u8> {
    let body = format!("{name}\n");
    let mut m = vec![2u8, 1];
    m.extend_from_slice(&(body.len() as u64).to_be_bytes()[2..]);
    m.extend_from_slice(body.as_bytes());
    m
}

fn read_info(s: &mut TcpStream) -> String {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).expect("info header");
    let mut len = [0u8; 8];
    len[2..].copy_from_slice(&h[2..]);
    let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("info body");
    String::from_utf8_lossy(&body).into_owned()
}

/// 200 connections from the client namespace, all open at once, each asking `node` and
/// getting the node's name back.
fn two_hundred_connections(pair: &VethPair) {
    let addr = SocketAddr::new(pair.dpdk_ip.into(), PORT);
    let ns = pair.ns_client.clone();
    let answers = std::thread::spawn(move || {
        VethPair::enter(&ns);
        let mut conns: Vec<TcpStream> = (0..200)
            .map(|i| {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                s
            })
            .collect();
        for s in &mut conns {
            s.write_all(&info_request("node")).expect("send info");
        }
        conns.iter_mut().map(read_info).collect::<Vec<_>>()
    })
    .join()
    .expect("client thread");
    assert_eq!(answers.len(), 200);
    let first = answers[0].clone();
    assert!(first.starts_with("node\t") && first.len() > 6, "answer {first:?}");
    assert!(answers.iter().all(|a| *a == first), "every connection got the same node name");
}

#[test]
fn python_client_over_dpdk() {
    if let Some(why) = netns::cannot_make_namespaces() {
        eprintln!("SKIPPED python_client_over_dpdk: this machine cannot create network namespaces ({why})");
        return;
    }
    let py = bolide_tests::node::python_client();
    let pair = VethPair::new("e2e");
    let t = Instant::now();
    let node = DpdkNode::start(&pair);
    let port = PORT.to_string();
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ping = pair.ping(3, Duration::from_secs(2));
        assert!(ping.is_ok(), "ping through the node's stack: {ping:?}");
        python(&pair, &py, &[concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/python_smoke.py"), &port]);
        python(&pair, &py, &[concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/streams.py"), "batch", &port]);
        python(&pair, &py, &[concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/streams.py"), "scan", &port]);
        python(&pair, &py, &[concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/streams.py"), "truncate-sets", &port]);
        two_hundred_connections(&pair);
    }));
    let log = node.stop();
    if let Err(e) = checks {
        eprintln!("node log:\n{log}");
        std::panic::resume_unwind(e);
    }
    assert!(log.contains("DPDK port started"), "the node served over DPDK; log:\n{log}");
    eprintln!("python client over DPDK: put/get/batch/scan/truncate and 200 connections in {:?}", t.elapsed());
}
