//! End to end: list, map, context, bitwise and HyperLogLog operations through the official
//! Python client (`aerospike` 19.3.0) against a real `bolide serve` process (tests/e2e/cdt.py
//! checks every answer value by value; CDT spec appendix A gives the expected values).

use bolide_tests::node::Node;

#[test]
fn python_client_cdt_bit_hll_operations() {
    let python = bolide_tests::node::python_client();
    let node = Node::start(env!("CARGO_TARGET_TMPDIR"), &[]);
    let out = std::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cdt.py"))
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
