//! End to end: a real `bolide serve` process on a free loopback port, driven by the official
//! Rust client (`aerospike` 3.0 from crates.io, async on tokio, no TLS).
//!
//! `Client::new` runs the client's whole info tend sequence (seed validation with `node`,
//! `cluster-name`, `build`, `partition-generation`; `peers-clear-std`; `replicas`; then the
//! periodic tend), so connecting at all checks the info answers of wire spec §2.3/§2.6. The rest
//! covers the single-record commands the node serves: put/get/select/exists/delete/touch/operate
//! and the write policies.

use std::time::Duration;

use aerospike::operations;
use aerospike::{
    as_bin, as_blob, as_key, as_list, as_map, as_val, Bins, Client, ClientPolicy, ErrorKind, Expiration,
    GenerationPolicy, Key, ReadPolicy, RecordExistsAction, ResultCode, Value, WritePolicy,
};
use bolide_tests::node::Node;

const NS: &str = "test";
const SET: &str = "demo";

fn key(k: impl Into<Value>) -> Key {
    Key::new(NS, SET, k.into()).expect("key")
}

#[test]
fn rust_client_single_record_operations() {
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
    match outcome {
        Ok(checks) => eprintln!("rust client: {checks} checks passed"),
        Err(panic) => {
            eprintln!("node log:\n{log}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// The whole scenario against one node; returns the number of checks made.
async fn run(port: u16) -> usize {
    let mut checks = 0usize;
    macro_rules! check {
        ($cond:expr, $($msg:tt)*) => {{
            checks += 1;
            assert!($cond, $($msg)*);
        }};
    }

    // Connect: the seed is validated and the partition map must form (all 4096 partitions).
    let client = Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
        .await
        .expect("Client::new (info tend sequence)");
    check!(client.is_connected(), "client connected");
    // Per-core mode: each of the node's two workers is a node of its own.
    let nodes = if bolide_tests::node::per_core_mode() { 2 } else { 1 };
    check!(client.nodes().len() == nodes, "{nodes} node(s), got {:?}", client.node_names());
    check!(client.partition_map_complete(), "partition map complete");
    check!(
        client.is_strong_consistency(NS) == Some(false),
        "namespace {NS} in the map as AP: {:?}",
        client.is_strong_consistency(NS)
    );

    let wp = WritePolicy::default();
    let rp = ReadPolicy::default();

    // put with several bin types, get all bins.
    let k1 = key("k1");
    let bins = [
        as_bin!("i", 42),
        as_bin!("neg", -7_i64),
        as_bin!("s", "hello"),
        as_bin!("f", 1.5_f64),
        as_bin!("b", as_blob!(vec![0_u8, 1, 255])),
        as_bin!("t", true),
        as_bin!("l", as_list!(1, "x", 2.5_f64, as_list!(3))),
        as_bin!("m", as_map!("k" => 2, "n" => "v")),
    ];
    client.put(&wp, &k1, &bins).await.expect("put k1");
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get k1");
    check!(rec.generation == 1, "generation 1 after create, got {}", rec.generation);
    check!(rec.bins.len() == bins.len(), "all bins back: {:?}", rec.bins);
    for b in &bins {
        check!(
            rec.bins.get(&b.name) == Some(&b.value),
            "bin {}: wrote {:?}, read {:?}",
            b.name,
            b.value,
            rec.bins.get(&b.name)
        );
    }
    check!(
        rec.time_to_live().is_none(),
        "default ttl: never expires, got {:?}",
        rec.time_to_live()
    );

    // get selected bins (a missing name is simply absent).
    let rec = client.get(&rp, &k1, ["s", "i", "missing"]).await.expect("select");
    check!(rec.bins.len() == 2, "select returned {:?}", rec.bins);
    check!(
        rec.bins.get("s") == Some(&Value::from("hello")),
        "select s: {:?}",
        rec.bins
    );
    check!(rec.bins.get("i") == Some(&Value::from(42)), "select i: {:?}", rec.bins);

    // header only.
    let rec = client.get(&rp, &k1, Bins::None).await.expect("get header");
    check!(rec.bins.is_empty() && rec.generation == 1, "header: {rec:?}");

    // exists true/false.
    check!(client.exists(&rp, &k1).await.expect("exists k1"), "k1 exists");
    check!(
        !client.exists(&rp, &key("nope")).await.expect("exists nope"),
        "nope does not exist"
    );

    // get of a missing key: KeyNotFound from the server.
    let err = client
        .get(&rp, &key("nope"), Bins::All)
        .await
        .expect_err("get nope must fail");
    check!(
        err.server_result_code() == Some(ResultCode::KeyNotFoundError),
        "get nope: {err:?}"
    );

    // update merges bins, generation bumps.
    client.put(&wp, &k1, &[as_bin!("i", 43)]).await.expect("update k1");
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get k1 after update");
    check!(rec.generation == 2, "generation 2 after update, got {}", rec.generation);
    check!(rec.bins.get("i") == Some(&Value::from(43)), "updated i: {:?}", rec.bins);
    check!(
        rec.bins.get("s") == Some(&Value::from("hello")),
        "update keeps s: {:?}",
        rec.bins
    );

    // a nil bin in a put deletes that bin.
    client
        .put(&wp, &k1, &[as_bin!("neg", None)])
        .await
        .expect("delete bin neg");
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get k1 after bin delete");
    check!(
        !rec.bins.contains_key("neg") && rec.generation == 3,
        "bin delete: {rec:?}"
    );

    // write policies: CreateOnly on an existing record.
    let create_only = WritePolicy {
        record_exists_action: RecordExistsAction::CreateOnly,
        ..WritePolicy::default()
    };
    let err = client
        .put(&create_only, &k1, &[as_bin!("i", 0)])
        .await
        .expect_err("create-only");
    check!(
        err.server_result_code() == Some(ResultCode::KeyExistsError),
        "create-only on an existing record: {err:?}"
    );
    client
        .put(&create_only, &key("fresh"), &[as_bin!("i", 1)])
        .await
        .expect("create-only new");

    // UpdateOnly on a missing record.
    let update_only = WritePolicy {
        record_exists_action: RecordExistsAction::UpdateOnly,
        ..WritePolicy::default()
    };
    let err = client
        .put(&update_only, &key("nope"), &[as_bin!("i", 0)])
        .await
        .expect_err("update-only");
    check!(
        err.server_result_code() == Some(ResultCode::KeyNotFoundError),
        "update-only on a missing record: {err:?}"
    );

    // generation EQ: a stale generation fails, the current one succeeds.
    let mut gen_eq = WritePolicy {
        generation_policy: GenerationPolicy::ExpectGenEqual,
        generation: 1,
        ..WritePolicy::default()
    };
    let err = client
        .put(&gen_eq, &k1, &[as_bin!("i", 0)])
        .await
        .expect_err("gen mismatch");
    check!(
        err.server_result_code() == Some(ResultCode::GenerationError),
        "generation mismatch: {err:?}"
    );
    gen_eq.generation = 3;
    client.put(&gen_eq, &k1, &[as_bin!("i", 44)]).await.expect("gen match");
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get after gen put");
    check!(rec.generation == 4, "generation 4, got {}", rec.generation);
    check!(
        rec.bins.get("i") == Some(&Value::from(44)),
        "gen put value: {:?}",
        rec.bins
    );

    // Replace drops the other bins.
    let replace = WritePolicy {
        record_exists_action: RecordExistsAction::Replace,
        ..WritePolicy::default()
    };
    client.put(&replace, &k1, &[as_bin!("z", 9)]).await.expect("replace");
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get after replace");
    check!(
        rec.bins.len() == 1 && rec.bins.get("z") == Some(&Value::from(9)),
        "replace: {:?}",
        rec.bins
    );

    // add / append / prepend.
    client.add(&wp, &k1, &[as_bin!("z", 5)]).await.expect("add");
    let k2 = key("k2");
    client.append(&wp, &k2, &[as_bin!("t", "b")]).await.expect("append");
    client.prepend(&wp, &k2, &[as_bin!("t", "a")]).await.expect("prepend");
    let rec = client.get(&rp, &k1, ["z"]).await.expect("get z");
    check!(rec.bins.get("z") == Some(&Value::from(14)), "add: {:?}", rec.bins);
    let rec = client.get(&rp, &k2, Bins::All).await.expect("get k2");
    check!(
        rec.bins.get("t") == Some(&Value::from("ab")),
        "append/prepend: {:?}",
        rec.bins
    );

    // touch: sets the TTL and bumps the generation; touch of a missing record fails.
    let gen_before = client.get(&rp, &k1, Bins::None).await.expect("header").generation;
    let ttl100 = WritePolicy {
        expiration: Expiration::Seconds(100),
        ..WritePolicy::default()
    };
    client.touch(&ttl100, &k1).await.expect("touch");
    let rec = client.get(&rp, &k1, Bins::None).await.expect("header after touch");
    let ttl = rec.time_to_live();
    check!(
        ttl.is_some_and(|t| t > Duration::ZERO && t <= Duration::from_secs(100)),
        "ttl after touch: {ttl:?}"
    );
    check!(
        rec.generation == gen_before + 1,
        "touch bumps generation: {} -> {}",
        gen_before,
        rec.generation
    );
    let err = client.touch(&wp, &key("nope")).await.expect_err("touch nope");
    check!(
        err.server_result_code() == Some(ResultCode::KeyNotFoundError),
        "touch of a missing record: {err:?}"
    );

    // operate: add + get + put, one positional result per op.
    let ops = [
        operations::add(&as_bin!("z", 1)),
        operations::get_bin("z"),
        operations::put(&as_bin!("w", "v")),
    ];
    let rec = client.operate(&wp, &k1, &ops).await.expect("operate");
    check!(
        rec.results == Some(vec![Value::Nil, Value::from(15), Value::Nil]),
        "operate results: {:?} (bins {:?})",
        rec.results,
        rec.bins
    );
    let rec = client.get(&rp, &k1, Bins::All).await.expect("get after operate");
    check!(
        rec.bins.get("z") == Some(&Value::from(15)) && rec.bins.get("w") == Some(&Value::from("v")),
        "after operate: {:?}",
        rec.bins
    );
    // operate with get() (all bins) after a write.
    let ops = [operations::add(&as_bin!("z", 10)), operations::get()];
    let rec = client.operate(&wp, &k1, &ops).await.expect("operate add+get all");
    check!(
        rec.bins.get("z") == Some(&Value::from(25)) && rec.bins.get("w") == Some(&Value::from("v")),
        "operate add + get all: {:?}",
        rec.bins
    );

    // operate with a touch op (header op: a positional result, no bin) and the TTL it sets.
    let rec = client
        .operate(&ttl100, &k1, &[operations::touch(), operations::get_bin("w")])
        .await
        .expect("operate touch");
    check!(
        rec.bins.get("w") == Some(&Value::from("v")),
        "operate touch + read: {rec:?}"
    );
    check!(
        rec.time_to_live().is_some_and(|t| t <= Duration::from_secs(100)),
        "operate touch ttl: {:?}",
        rec.time_to_live()
    );

    // type errors: add to a string bin, append to an integer bin.
    let err = client
        .add(&wp, &k1, &[as_bin!("w", 1)])
        .await
        .expect_err("add to string");
    check!(
        err.server_result_code() == Some(ResultCode::BinTypeError),
        "add to a string bin: {err:?}"
    );
    let err = client
        .append(&wp, &k1, &[as_bin!("z", "x")])
        .await
        .expect_err("append to int");
    check!(
        err.server_result_code() == Some(ResultCode::BinTypeError),
        "append to an integer bin: {err:?}"
    );

    // ReplaceOnly on a missing record; ExpectGenGreater; delete with a stale generation.
    let replace_only = WritePolicy {
        record_exists_action: RecordExistsAction::ReplaceOnly,
        ..WritePolicy::default()
    };
    let err = client
        .put(&replace_only, &key("nope"), &[as_bin!("i", 0)])
        .await
        .expect_err("replace-only");
    check!(
        err.server_result_code() == Some(ResultCode::KeyNotFoundError),
        "replace-only on a missing record: {err:?}"
    );
    let current = client.get(&rp, &k1, Bins::None).await.expect("header").generation;
    let mut gen_gt = WritePolicy {
        generation_policy: GenerationPolicy::ExpectGenGreater,
        generation: current,
        ..WritePolicy::default()
    };
    let err = client
        .put(&gen_gt, &k1, &[as_bin!("g", 1)])
        .await
        .expect_err("gen not greater");
    check!(
        err.server_result_code() == Some(ResultCode::GenerationError),
        "gen-greater with the current generation: {err:?}"
    );
    gen_gt.generation = current + 5;
    client.put(&gen_gt, &k1, &[as_bin!("g", 1)]).await.expect("gen greater");
    let del_gen = WritePolicy {
        generation_policy: GenerationPolicy::ExpectGenEqual,
        generation: 1,
        ..WritePolicy::default()
    };
    let err = client
        .delete(&del_gen, &k1)
        .await
        .expect_err("delete with a stale generation");
    check!(
        err.server_result_code() == Some(ResultCode::GenerationError),
        "delete with a stale generation: {err:?}"
    );

    // blob key, a 100 KiB blob bin, a never-expiring record, a 1 s TTL record.
    let kb = key(vec![1_u8, 2, 3]);
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    client
        .put(&wp, &kb, &[as_bin!("big", as_blob!(big.clone()))])
        .await
        .expect("put big");
    let rec = client.get(&rp, &kb, Bins::All).await.expect("get big");
    check!(
        rec.bins.get("big") == Some(&Value::Blob(big)),
        "100 KiB blob round trip"
    );
    let never = WritePolicy {
        expiration: Expiration::Never,
        ..WritePolicy::default()
    };
    client
        .put(&never, &key("forever"), &[as_bin!("a", 1)])
        .await
        .expect("put never");
    let rec = client.get(&rp, &key("forever"), Bins::None).await.expect("get never");
    check!(rec.time_to_live().is_none(), "never expires: {:?}", rec.time_to_live());
    let ttl1 = WritePolicy {
        expiration: Expiration::Seconds(1),
        ..WritePolicy::default()
    };
    client
        .put(&ttl1, &key("short"), &[as_bin!("a", 1)])
        .await
        .expect("put ttl 1");
    check!(
        client.exists(&rp, &key("short")).await.expect("exists short"),
        "short lives"
    );
    // past its TTL (and across two client tends of 1 s each).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    check!(
        !client.exists(&rp, &key("short")).await.expect("exists short later"),
        "short expired"
    );
    check!(
        client.is_connected() && client.nodes().len() == nodes,
        "still connected after tends"
    );

    // operate delete op removes the record.
    let k3 = key("k3");
    client.put(&wp, &k3, &[as_bin!("a", 1)]).await.expect("put k3");
    client
        .operate(&wp, &k3, &[operations::delete()])
        .await
        .expect("operate delete");
    check!(
        !client.exists(&rp, &k3).await.expect("exists k3"),
        "operate delete removed k3"
    );

    // delete, then get → KeyNotFound; delete again reports it did not exist.
    check!(client.delete(&wp, &k1).await.expect("delete k1"), "delete k1 existed");
    check!(!client.exists(&rp, &k1).await.expect("exists after delete"), "k1 gone");
    let err = client.get(&rp, &k1, Bins::All).await.expect_err("get after delete");
    check!(
        err.server_result_code() == Some(ResultCode::KeyNotFoundError),
        "get after delete: {err:?}"
    );
    check!(
        !client.delete(&wp, &k1).await.expect("delete k1 again"),
        "second delete: not existed"
    );

    // 200 keys across partitions (integer and string keys).
    let keys: Vec<Key> = (0..200_i64)
        .map(|i| if i % 2 == 0 { key(i) } else { key(format!("key-{i}")) })
        .collect();
    let mut partitions: Vec<usize> = keys.iter().map(Key::partition_id).collect();
    partitions.sort_unstable();
    partitions.dedup();
    check!(
        partitions.len() > 150,
        "keys spread over {} partitions",
        partitions.len()
    );
    for (i, k) in keys.iter().enumerate() {
        client
            .put(&wp, k, &[as_bin!("i", i as i64), as_bin!("p", k.partition_id() as i64)])
            .await
            .unwrap_or_else(|e| panic!("put key {i}: {e:?}"));
    }
    for (i, k) in keys.iter().enumerate() {
        let rec = client
            .get(&rp, k, Bins::All)
            .await
            .unwrap_or_else(|e| panic!("get key {i}: {e:?}"));
        check!(
            rec.bins.get("i") == Some(&Value::from(i as i64))
                && rec.bins.get("p") == Some(&Value::from(k.partition_id() as i64))
                && rec.generation == 1,
            "key {i}: {rec:?}"
        );
    }

    // a namespace the node does not serve: not in the partition map, so the client refuses it.
    let err = client
        .put(&wp, &as_key!("nosuchns", SET, "x"), &[as_bin!("a", 1)])
        .await
        .expect_err("unknown namespace must fail");
    check!(
        matches!(err.kind(), ErrorKind::InvalidNamespace)
            && err.result_code() == i32::from(u8::from(ResultCode::InvalidNamespace)),
        "unknown namespace: {err:?}"
    );

    client.close().await.expect("close");
    checks
}
