//! End to end (issue 17), with the official Rust client: `add`/`append` of a value of another
//! type (created on a missing bin, 12 on an existing one) and `touch` + `get_header` in one
//! operate (a header-only answer carries no bin), as Aerospike CE 8.1.2.0 answers.

use aerospike::operations;
use aerospike::{as_bin, Bins, Client, ClientPolicy, Key, ReadPolicy, ResultCode, Value, WritePolicy};
use bolide_tests::node::Node;

fn key(k: &str) -> Key {
    Key::new("test", "compat", Value::from(k)).expect("key")
}

#[test]
fn rust_client_type_mismatches_and_header_only_operate() {
    let node = Node::start(env!("CARGO_TARGET_TMPDIR"), &[]);
    let port = node.port;
    let outcome = std::panic::catch_unwind(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(run(port))
    });
    let log = node.stop_and_log();
    if let Err(panic) = outcome {
        eprintln!("node log:\n{log}");
        std::panic::resume_unwind(panic);
    }
}

/// The same scenario against a real Aerospike server, when `BOLIDE_COMPAT_AGAINST` gives its
/// address (`127.0.0.1:3100`): how the expectations above were checked. Skipped otherwise.
#[test]
fn rust_client_scenario_against_aerospike() {
    let Ok(addr) = std::env::var("BOLIDE_COMPAT_AGAINST") else {
        eprintln!("BOLIDE_COMPAT_AGAINST not set: nothing to compare against");
        return;
    };
    let port: u16 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("BOLIDE_COMPAT_AGAINST is host:port");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(port));
}

async fn run(port: u16) {
    let client = Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let wp = WritePolicy::default();
    let rp = ReadPolicy::default();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let k = key(&format!("types-{run_id}"));
    client
        .put(&wp, &k, &[as_bin!("i", 1), as_bin!("s", "a")])
        .await
        .expect("put");

    // A missing bin is created with the operand, whatever its type.
    client
        .add(&wp, &k, &[as_bin!("new_s", "x")])
        .await
        .expect("add a string to a missing bin");
    client
        .append(&wp, &k, &[as_bin!("new_i", 5)])
        .await
        .expect("append an integer to a missing bin");
    let rec = client.get(&rp, &k, Bins::All).await.expect("get");
    assert_eq!(rec.bins.get("new_s"), Some(&Value::from("x")), "{rec:?}");
    assert_eq!(rec.bins.get("new_i"), Some(&Value::from(5)), "{rec:?}");

    // An existing bin of another type: 12 (bin type), never 4.
    for (what, result) in [
        (
            "add a string to an integer",
            client.add(&wp, &k, &[as_bin!("i", "x")]).await,
        ),
        (
            "add an integer to a string",
            client.add(&wp, &k, &[as_bin!("s", 1)]).await,
        ),
        (
            "add a float to an integer",
            client.add(&wp, &k, &[as_bin!("i", 1.5)]).await,
        ),
        (
            "append an integer to a string",
            client.append(&wp, &k, &[as_bin!("s", 1)]).await,
        ),
        (
            "prepend a string to an integer",
            client.prepend(&wp, &k, &[as_bin!("i", "x")]).await,
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(
            err.server_result_code(),
            Some(ResultCode::BinTypeError),
            "{what}: {err:?}"
        );
    }

    // touch + get_header: the header only, no bins.
    let rec = client
        .operate(&wp, &k, &[operations::touch(), operations::get_header()])
        .await
        .expect("operate touch + get_header");
    assert!(rec.bins.is_empty(), "a header-only answer carries no bin: {rec:?}");
    assert_eq!(rec.generation, 4, "{rec:?}");
    let rec = client
        .operate(&wp, &k, &[operations::touch(), operations::get_bin("i")])
        .await
        .expect("operate touch + get_bin");
    assert_eq!(rec.bins.get("i"), Some(&Value::from(1)), "{rec:?}");
}
