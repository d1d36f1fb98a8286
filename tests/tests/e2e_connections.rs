//! End to end: 500 client connections held open at once, each served (an info request, twice,
//! on every connection), and the node goes on serving after some of them send garbage.

use bolide_tests::node::Node;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn info(s: &mut TcpStream, cmd: &str) -> String {
    let body = format!("{cmd}\n");
    let mut req = ((2u64 << 56) | (1u64 << 48) | body.len() as u64).to_be_bytes().to_vec();
    req.extend_from_slice(body.as_bytes());
    s.write_all(&req).expect("send");
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).expect("reply header");
    assert_eq!((hdr[0], hdr[1]), (2, 1), "info reply header");
    let len = (u64::from_be_bytes(hdr) & ((1 << 48) - 1)) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("reply body");
    String::from_utf8(body).expect("utf8")
}

#[test]
fn five_hundred_connections_are_held_and_served() {
    let node = Node::start(env!("CARGO_TARGET_TMPDIR"), &[]);
    let addr = format!("127.0.0.1:{}", node.port);
    let mut conns: Vec<TcpStream> = (0..500)
        .map(|_| {
            let s = TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            s
        })
        .collect();
    for s in conns.iter_mut() {
        assert!(info(s, "node").starts_with("node\t"));
    }
    // Garbage on some connections: those are closed, the rest keep working.
    for s in conns.iter_mut().take(20) {
        let _ = s.write_all(&[0xff; 64]);
    }
    for s in conns.iter_mut().skip(20) {
        let r = info(s, "namespaces");
        assert_eq!(r, "namespaces\ttest\n");
    }
    for s in conns.iter_mut().take(20) {
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "a connection that sent garbage must be closed"
        );
    }
    let log = node.stop_and_log();
    assert!(
        log.contains("shard stopped cleanly"),
        "log of {} bytes:\n{log}",
        log.len()
    );
}
