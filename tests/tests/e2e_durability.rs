//! End to end: kill -9 under write load with `commit_to_device`, restart, and every write the
//! official Python client saw acknowledged is there; then a clean restart takes the fast path and
//! gives the same contents.

use bolide_tests::node::{python_client, Node};
use std::process::Command;

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/durability.py")
}

fn verify(python: &std::path::Path, node: &Node, acked: &std::path::Path) {
    let out = Command::new(python)
        .arg(script())
        .args(["verify", &node.port.to_string()])
        .arg(acked)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let python = python_client();
    let node = Node::start(TMP, &["[storage]", "commit_to_device = true", "flush_max_ms = 1000"]);
    let acked = node.dir.path().join("acked.txt");
    let mut writer = Command::new(&python)
        .arg(script())
        .args(["write", &node.port.to_string(), "20"])
        .arg(&acked)
        .spawn()
        .expect("writer");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let dir = node.kill9();
    let _ = writer.wait();
    let n = std::fs::read_to_string(&acked).expect("acked keys").lines().count();
    assert!(n > 100, "only {n} writes were acknowledged before the kill");

    let node = Node::start_in(TMP, dir, &["[storage]", "commit_to_device = true"]);
    assert!(
        node.log().contains("ColdStart"),
        "expected a cold start after kill -9:\n{}",
        node.log()
    );
    verify(&python, &node, &acked);

    let (dir, log) = node.stop();
    assert!(log.contains("shard stopped cleanly"), "{log}");
    let node = Node::start_in(TMP, dir, &["[storage]", "commit_to_device = true"]);
    assert!(
        node.log().contains("FastRestart"),
        "expected a fast restart after a clean stop:\n{}",
        node.log()
    );
    verify(&python, &node, &acked);
}
