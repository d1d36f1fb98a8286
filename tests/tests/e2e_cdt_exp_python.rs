//! End to end: expressions (EXP_READ, EXP_MODIFY, filters with list/map/bit/HLL calls, base
//! ops) through the official Python client (`aerospike` 19.3.0) against a real `bolide serve` process (tests/e2e/exp.py
//! checks every answer value by value; the expected values are CE 8.1.2.0's: the script passes
//! unchanged against a real CE server, `exp.py 3100`).

use bolide_tests::node::Node;

#[test]
fn python_client_expressions() {
    let python = bolide_tests::node::python_client();
    let node = Node::start(env!("CARGO_TARGET_TMPDIR"), &[]);
    let out = std::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/exp.py"))
        .arg(node.port.to_string())
        .output()
        .expect("run python");
    let log = node.stop_and_log();
    assert!(
        out.status.success(),
        "python client failed:\nstdout: {}\nstderr: {}\nnode log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
