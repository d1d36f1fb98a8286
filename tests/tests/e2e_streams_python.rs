//! End to end: the official Python client (`aerospike` 19.3.0) against a real `bolide serve`
//! through the multi-record APIs: batch reads/writes (wire spec §7.1–7.2), scans and queries
//! over partitions with pagination and filters (§7.3), and truncate (§2.2), which must hold over
//! a clean restart and over kill -9. The checks themselves are in `tests/e2e/streams.py`.

use bolide_tests::node::{python_client, Node};
use std::path::Path;
use std::process::Command;

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// Runs one mode of streams.py against `node`; panics with the script's output and the node log
/// if any check fails.
fn run(python: &Path, node: &Node, mode: &str) {
    let mut args: Vec<String> = mode.split(' ').map(str::to_string).collect();
    args.insert(1, node.port.to_string());
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/streams.py"))
        .args(&args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "streams.py {mode} failed:\nstdout: {}\nstderr: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn python_client_batch() {
    let python = python_client();
    let node = Node::start(TMP, &[]);
    run(&python, &node, "batch");
    node.stop_and_log();
}

#[test]
fn python_client_scan_and_query() {
    let python = python_client();
    let node = Node::start(TMP, &[]);
    run(&python, &node, "scan");
    node.stop_and_log();
}

/// Set truncates and a namespace truncate, each checked live, then after kill -9 right after
/// the truncate (cold start), then after a clean restart (fast restart); every round also writes
/// into the truncated set, which must stay. `commit_to_device`, so that the records written after
/// a truncate are durable when acknowledged (streams.py gives its calls 20 s: on a machine busy
/// with other I/O such an acknowledgement was seen to take seconds).
#[test]
fn python_client_truncate_survives_restarts() {
    let python = python_client();
    let cfg: &[&str] = &["[storage]", "commit_to_device = true"];
    let node = Node::start(TMP, cfg);
    run(&python, &node, "truncate-sets");
    let node = Node::start_in(TMP, node.kill9(), cfg);
    run(&python, &node, "verify-sets 1");
    let (dir, log) = node.stop();
    assert!(log.contains("shard stopped cleanly"), "{log}");
    let node = Node::start_in(TMP, dir, cfg);
    assert!(node.log().contains("FastRestart"), "{}", node.log());
    run(&python, &node, "verify-sets 2");

    run(&python, &node, "truncate-ns 3");
    let node = Node::start_in(TMP, node.kill9(), cfg);
    run(&python, &node, "verify-ns 1");
    let (dir, log) = node.stop();
    assert!(log.contains("shard stopped cleanly"), "{log}");
    let node = Node::start_in(TMP, dir, cfg);
    run(&python, &node, "verify-ns 2");
    node.stop_and_log();
}
