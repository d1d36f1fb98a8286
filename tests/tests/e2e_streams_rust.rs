//! End to end: the official Rust client (`aerospike` 3.0, async on tokio) against a real
//! `bolide serve` through the multi-record APIs: `Client::batch` with read/write/delete rows
//! (wire spec §7.1–7.2), `Client::query_foreach` scans over partition filters with
//! `max_records` pagination, bin selection and filter expressions (§7.3), and `Client::truncate`
//! (§2.2) live, after a clean restart and after kill -9.
//!
//! Scans go through `query_foreach` (a callback per record and a resumable `PartitionFilter`):
//! the `Recordset` stream needs the `futures` crate's `Stream` trait, which this crate does not
//! depend on.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aerospike::expressions::{eq, gt, int_bin, int_val, last_update, le};
use aerospike::operations;
use aerospike::{
    as_bin, AdminPolicy, BatchDeletePolicy, BatchOperation, BatchPolicy, BatchReadPolicy, BatchWritePolicy, Bins,
    Client, ClientPolicy, Expiration, GenerationPolicy, Key, PartitionFilter, QueryPolicy, ReadPolicy, Record,
    RecordExistsAction, ResultCode, Statement, Value, WritePolicy,
};
use bolide_tests::node::Node;

const NS: &str = "test";
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

thread_local! {
    /// Checks made on this test's thread (each test drives its client from its own thread).
    static CHECKS: Cell<usize> = const { Cell::new(0) };
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {{
        CHECKS.with(|c| c.set(c.get() + 1));
        assert!($cond, $($msg)*);
    }};
}

fn key(set: &str, k: impl Into<Value>) -> Key {
    Key::new(NS, set, k.into()).expect("key")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(port: u16) -> Client {
    let client = Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
        .await
        .expect("Client::new");
    check!(client.partition_map_complete(), "partition map complete");
    client
}

/// Runs `f` against a fresh node; on a failed check prints the node log, then re-panics.
fn with_node<F, Fut>(cfg: &[&str], f: F)
where
    F: FnOnce(u16) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let node = Node::start(TMP, cfg);
    let port = node.port;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime().block_on(f(port))));
    let log = node.stop_and_log();
    finish(outcome, &log);
}

fn finish(outcome: std::thread::Result<()>, log: &str) {
    match outcome {
        Ok(()) => eprintln!("rust client: {} checks passed", CHECKS.with(Cell::get)),
        Err(panic) => {
            eprintln!("node log:\n{log}");
            std::panic::resume_unwind(panic);
        }
    }
}

fn int(rec: &Record, bin: &str) -> i64 {
    match rec.bins.get(bin) {
        Some(Value::Int(i)) => *i,
        other => panic!("bin {bin} of {rec:?} is {other:?}"),
    }
}

/// Runs one scan/query through `query_foreach`; returns the records and the resume cursor.
async fn scan(
    client: &Client,
    policy: &QueryPolicy,
    pf: PartitionFilter,
    stmt: Statement,
) -> (Vec<Record>, PartitionFilter) {
    let got: Arc<Mutex<Vec<aerospike::Result<Record>>>> = Arc::default();
    let sink = Arc::clone(&got);
    let mut handle = client
        .query_foreach(policy, pf, stmt, move |rec| {
            sink.lock().expect("lock").push(rec);
            async { true }
        })
        .await
        .expect("query_foreach");
    handle.wait().await.expect("query completes");
    let cursor = handle.partition_filter().expect("cursor after the query");
    let recs = std::mem::take(&mut *got.lock().expect("lock"));
    let recs = recs.into_iter().map(|r| r.expect("record in the stream")).collect();
    (recs, cursor)
}

async fn scan_all(client: &Client, policy: &QueryPolicy, pf: PartitionFilter, set: &str, bins: Bins) -> Vec<Record> {
    scan(client, policy, pf, Statement::new(NS, set, bins)).await.0
}

/// The scan returned every expected `i` exactly once, nothing else, each with the right digest
/// for `set` (when given).
fn exactly(recs: &[Record], expected: &[i64], what: &str, set: Option<&str>) {
    let mut got: Vec<i64> = recs.iter().map(|r| int(r, "i")).collect();
    got.sort_unstable();
    let mut dedup = got.clone();
    dedup.dedup();
    check!(
        dedup.len() == got.len(),
        "{what}: duplicates among {} records",
        got.len()
    );
    let mut want = expected.to_vec();
    want.sort_unstable();
    check!(
        got == want,
        "{what}: got {} records, expected {}: got {:?}",
        got.len(),
        want.len(),
        &got[..got.len().min(40)]
    );
    for r in recs {
        let k = r.key.as_ref().expect("scan records carry their key");
        check!(k.namespace() == NS, "{what}: namespace of {k:?}");
        if let Some(set) = set {
            check!(
                k.digest() == key(set, int(r, "i")).digest(),
                "{what}: digest of record {}",
                int(r, "i")
            );
        }
        check!(r.generation >= 1, "{what}: generation {}", r.generation);
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn rust_client_batch() {
    with_node(&[], batch);
}

async fn batch(port: u16) {
    let client = connect(port).await;
    let set = "rb";
    let wp = WritePolicy::default();
    let (present, n) = (150_i64, 200_i64);
    for i in 0..present {
        client
            .put(&wp, &key(set, i), &[as_bin!("i", i), as_bin!("s", format!("v{i}"))])
            .await
            .expect("put");
    }
    let order: Vec<i64> = (0..n).map(|i| (i * 73) % n).collect();
    let brp = BatchReadPolicy::default();
    let bp = BatchPolicy::default();

    // all bins, selected bins, header only: one row per key, in the caller's order
    for bins in [Bins::All, Bins::from(["s", "nope"]), Bins::None] {
        let mut ops: Vec<BatchOperation> = order
            .iter()
            .map(|&i| BatchOperation::read(&brp, key(set, i), bins.clone()))
            .collect();
        client.batch(&bp, &mut ops).await.expect("batch read");
        for (&i, op) in order.iter().zip(&ops) {
            if i < present {
                check!(
                    op.result_code() == Some(ResultCode::Ok),
                    "row {i} ({bins:?}): {:?}",
                    op.result_code()
                );
                let rec = op.record().expect("record");
                check!(rec.generation == 1, "row {i}: generation {}", rec.generation);
                match &bins {
                    Bins::All => check!(
                        int(rec, "i") == i && rec.bins.get("s") == Some(&Value::from(format!("v{i}"))),
                        "row {i}: {rec:?}"
                    ),
                    Bins::None => check!(rec.bins.is_empty(), "header row {i}: {rec:?}"),
                    _ => check!(
                        rec.bins.len() == 1 && rec.bins.get("s") == Some(&Value::from(format!("v{i}"))),
                        "select row {i}: {rec:?}"
                    ),
                }
            } else {
                check!(
                    op.result_code() == Some(ResultCode::KeyNotFoundError) && op.record().is_none(),
                    "missing row {i} ({bins:?}): {:?} {:?}",
                    op.result_code(),
                    op.record()
                );
            }
        }
    }

    // a filter expression in the batch policy: rows it rejects report FilteredOut
    let fbp = BatchPolicy {
        base_policy: aerospike::BasePolicy {
            filter_expression: Some(gt(int_bin("i"), int_val(100))),
            ..BatchPolicy::default().base_policy
        },
        ..BatchPolicy::default()
    };
    let mut ops: Vec<BatchOperation> = [1_i64, 120, 149, 199, 60]
        .iter()
        .map(|&i| BatchOperation::read(&brp, key(set, i), Bins::All))
        .collect();
    let res = client.batch(&fbp, &mut ops).await;
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    use ResultCode::FilteredOut as FO;
    check!(
        codes
            == vec![
                Some(FO),
                Some(ResultCode::Ok),
                Some(ResultCode::Ok),
                Some(ResultCode::KeyNotFoundError),
                Some(FO)
            ],
        "batch read with a filter: {codes:?} ({res:?})"
    );

    // the same key twice; a key in a namespace the node does not serve fails only its row
    let mut ops = vec![
        BatchOperation::read(&brp, key(set, 3), Bins::All),
        BatchOperation::read(&brp, key(set, 3), Bins::All),
        BatchOperation::read(&brp, Key::new("nosuchns", set, Value::from(1)).expect("key"), Bins::All),
        BatchOperation::read(&brp, key(set, 199), Bins::All),
    ];
    let res = client.batch(&bp, &mut ops).await;
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    check!(
        codes[0] == Some(ResultCode::Ok)
            && codes[1] == Some(ResultCode::Ok)
            && codes[3] == Some(ResultCode::KeyNotFoundError),
        "duplicate keys + unknown namespace: {codes:?} ({res:?})"
    );
    check!(
        !matches!(codes[2], Some(ResultCode::Ok | ResultCode::KeyNotFoundError)) && ops[2].record().is_none(),
        "unknown namespace row: {codes:?}"
    );
    check!(
        int(ops[0].record().expect("rec"), "i") == 3 && int(ops[1].record().expect("rec"), "i") == 3,
        "dup rows"
    );

    // writes, reads and deletes in one batch, one result per row
    client
        .put(&wp, &key(set, "exists"), &[as_bin!("a", 1)])
        .await
        .expect("put exists");
    let create_only = BatchWritePolicy {
        record_exists_action: RecordExistsAction::CreateOnly,
        ..BatchWritePolicy::default()
    };
    let update_only = BatchWritePolicy {
        record_exists_action: RecordExistsAction::UpdateOnly,
        ..BatchWritePolicy::default()
    };
    let gen_eq = BatchWritePolicy {
        generation_policy: GenerationPolicy::ExpectGenEqual,
        generation: 99,
        ..BatchWritePolicy::default()
    };
    let bwp = BatchWritePolicy::default();
    let bdp = BatchDeletePolicy::default();
    let mut ops = vec![
        BatchOperation::write(
            &bwp,
            key(set, "w1"),
            [operations::put(&as_bin!("a", 10)), operations::get_bin("a")],
        ),
        BatchOperation::write(&create_only, key(set, "exists"), [operations::put(&as_bin!("a", 2))]),
        BatchOperation::write(&create_only, key(set, "w2"), [operations::put(&as_bin!("a", 20))]),
        BatchOperation::read(&brp, key(set, 5), Bins::from(["s"])),
        BatchOperation::read(&brp, key(set, "nope"), Bins::All),
        BatchOperation::delete(&bdp, key(set, 7)),
        BatchOperation::delete(&bdp, key(set, "nope")),
        BatchOperation::write(
            &bwp,
            key(set, "exists"),
            [operations::add(&as_bin!("a", 5)), operations::get_bin("a")],
        ),
        BatchOperation::write(&gen_eq, key(set, 8), [operations::put(&as_bin!("s", "x"))]),
        BatchOperation::write(&update_only, key(set, "nope2"), [operations::put(&as_bin!("a", 1))]),
        BatchOperation::read_ops(&brp, key(set, 9), [operations::get_bin("i")]),
    ];
    let res = client.batch(&BatchPolicy::write_default(), &mut ops).await;
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    use ResultCode::{GenerationError, KeyExistsError, KeyNotFoundError, Ok as OK};
    let want = [
        OK,
        KeyExistsError,
        OK,
        OK,
        KeyNotFoundError,
        OK,
        KeyNotFoundError,
        OK,
        GenerationError,
        KeyNotFoundError,
        OK,
    ];
    check!(
        codes == want.map(Some).to_vec(),
        "batch write per-row results: {codes:?} ({res:?})"
    );
    // write rows respond for every op (RESPOND_ALL_OPS): a nil for the write, the value read
    check!(
        ops[0]
            .record()
            .is_some_and(|r| r.results == Some(vec![Value::Nil, Value::from(10)])),
        "write + read row: {:?}",
        ops[0].record()
    );
    check!(
        ops[3]
            .record()
            .is_some_and(|r| r.bins.get("s") == Some(&Value::from("v5")) && r.bins.len() == 1),
        "read row: {:?}",
        ops[3].record()
    );
    check!(
        ops[7]
            .record()
            .is_some_and(|r| r.results == Some(vec![Value::Nil, Value::from(6)])),
        "add + read row: {:?}",
        ops[7].record()
    );
    check!(
        ops[10]
            .record()
            .is_some_and(|r| r.bins.get("i") == Some(&Value::from(9))),
        "read ops row: {:?}",
        ops[10].record()
    );
    let rp = ReadPolicy::default();
    let get = |k: Key| {
        let client = &client;
        let rp = &rp;
        async move { client.get(rp, &k, Bins::All).await }
    };
    check!(
        get(key(set, "w1")).await.expect("w1").bins.get("a") == Some(&Value::from(10)),
        "w1 written"
    );
    check!(
        get(key(set, "w2")).await.expect("w2").bins.get("a") == Some(&Value::from(20)),
        "w2 written"
    );
    let rec = get(key(set, "exists")).await.expect("exists");
    check!(
        rec.bins.get("a") == Some(&Value::from(6)) && rec.generation == 2,
        "the create-only row changed nothing: {rec:?}"
    );
    check!(
        !client.exists(&rp, &key(set, 7)).await.expect("exists 7"),
        "batch delete removed 7"
    );
    check!(
        get(key(set, 8)).await.expect("8").bins.get("s") == Some(&Value::from("v8")),
        "the generation-mismatch row changed nothing"
    );
    check!(
        !client.exists(&rp, &key(set, "nope2")).await.expect("exists nope2"),
        "the update-only row created nothing"
    );

    // a batch of deletes only
    let mut ops: Vec<BatchOperation> = [10_i64, 11, 190, 12]
        .iter()
        .map(|&i| BatchOperation::delete(&bdp, key(set, i)))
        .collect();
    client
        .batch(&BatchPolicy::write_default(), &mut ops)
        .await
        .expect("batch delete");
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    check!(
        codes == vec![Some(OK), Some(OK), Some(KeyNotFoundError), Some(OK)],
        "batch delete rows: {codes:?}"
    );
    for i in [10_i64, 11, 12] {
        check!(!client.exists(&rp, &key(set, i)).await.expect("exists"), "{i} deleted");
    }

    // a record past its TTL reads as not found in a batch
    let ttl1 = WritePolicy {
        expiration: Expiration::Seconds(1),
        ..WritePolicy::default()
    };
    client
        .put(&ttl1, &key(set, "short"), &[as_bin!("a", 1)])
        .await
        .expect("put short");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut ops = vec![
        BatchOperation::read(&brp, key(set, "short"), Bins::All),
        BatchOperation::read(&brp, key(set, 1), Bins::All),
    ];
    client.batch(&bp, &mut ops).await.expect("batch after expiry");
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    check!(
        codes == vec![Some(KeyNotFoundError), Some(OK)],
        "expired record in a batch: {codes:?}"
    );

    client.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------

const N_Q: i64 = 300;

#[test]
fn rust_client_scan_and_query() {
    with_node(&[], scan_and_query);
}

async fn scan_and_query(port: u16) {
    let client = connect(port).await;
    let set = "rq";
    let wp = WritePolicy::default();
    let ttl1 = WritePolicy {
        expiration: Expiration::Seconds(1),
        ..WritePolicy::default()
    };
    for i in 0..10 {
        client
            .put(
                &ttl1,
                &key(set, 10_000 + i),
                &[as_bin!("i", 10_000 + i), as_bin!("n", 99)],
            )
            .await
            .expect("put short");
    }
    for i in 0..N_Q {
        client
            .put(
                &wp,
                &key(set, i),
                &[as_bin!("i", i), as_bin!("s", format!("v{i}")), as_bin!("n", i % 100)],
            )
            .await
            .expect("put");
    }
    for i in 1000..1050_i64 {
        client
            .put(&wp, &key("other", i), &[as_bin!("i", i)])
            .await
            .expect("put other");
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let all: Vec<i64> = (0..N_Q).collect();
    let qp = QueryPolicy::default();

    // every live record of the set once, all bins
    let recs = scan_all(&client, &qp, PartitionFilter::all(), set, Bins::All).await;
    exactly(&recs, &all, "scan all", Some(set));
    for r in &recs {
        let i = int(r, "i");
        check!(
            r.bins.len() == 3 && r.bins.get("s") == Some(&Value::from(format!("v{i}"))) && int(r, "n") == i % 100,
            "scan bins: {r:?}"
        );
    }

    // header only (no bin data): every record, by digest
    let recs = scan_all(&client, &qp, PartitionFilter::all(), set, Bins::None).await;
    let mut got: Vec<[u8; 20]> = recs.iter().map(|r| r.key.as_ref().expect("key").digest()).collect();
    let mut want: Vec<[u8; 20]> = all.iter().map(|&i| key(set, i).digest()).collect();
    got.sort_unstable();
    want.sort_unstable();
    check!(got == want, "header-only scan: {} records", recs.len());
    check!(recs.iter().all(|r| r.bins.is_empty()), "header-only scan has no bins");

    // large records: the reply spans several protos
    let blob: Vec<u8> = (0..16 * 1024).map(|b| (b % 251) as u8).collect();
    for i in 5000..5100_i64 {
        client
            .put(
                &wp,
                &key("bigrec", i),
                &[as_bin!("i", i), as_bin!("b", aerospike::as_blob!(blob.clone()))],
            )
            .await
            .expect("put big");
    }
    let recs = scan_all(&client, &qp, PartitionFilter::all(), "bigrec", Bins::All).await;
    exactly(
        &recs,
        &(5000..5100).collect::<Vec<_>>(),
        "scan of 100 x 16 KiB records",
        Some("bigrec"),
    );
    check!(
        recs.iter().all(|r| r.bins.get("b") == Some(&Value::Blob(blob.clone()))),
        "16 KiB bins intact"
    );

    // bin selection
    let recs = scan_all(
        &client,
        &qp,
        PartitionFilter::all(),
        set,
        Bins::from(["i", "s", "missing"]),
    )
    .await;
    exactly(&recs, &all, "scan select", None);
    check!(
        recs.iter().all(|r| r.bins.len() == 2 && r.bins.contains_key("s")),
        "selected bins only"
    );

    // read operations as the projection
    let mut stmt = Statement::new(NS, set, Bins::All);
    stmt.set_operations([operations::get_bin("s")]);
    let (recs, _) = scan(&client, &qp, PartitionFilter::all(), stmt).await;
    let mut got: Vec<String> = recs
        .iter()
        .map(|r| match r.bins.get("s") {
            Some(Value::String(s)) if r.bins.len() == 1 => s.clone(),
            _ => panic!("projection record {r:?}"),
        })
        .collect();
    got.sort_unstable();
    let mut want: Vec<String> = all.iter().map(|i| format!("v{i}")).collect();
    want.sort_unstable();
    check!(got == want, "query with read operations: {} records", got.len());

    // whole namespace vs a set; a set with nothing in it
    let recs = scan_all(&client, &qp, PartitionFilter::all(), "", Bins::All).await;
    let mut everything = all.clone();
    everything.extend(1000..1050);
    everything.extend(5000..5100);
    exactly(&recs, &everything, "whole namespace", None);
    let recs = scan_all(&client, &qp, PartitionFilter::all(), "other", Bins::All).await;
    exactly(&recs, &(1000..1050).collect::<Vec<_>>(), "set other", Some("other"));
    let recs = scan_all(&client, &qp, PartitionFilter::all(), "nosuchset", Bins::All).await;
    check!(recs.is_empty(), "empty set: {} records", recs.len());

    // partition filters: by id and by range
    let mut by_pid: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for &i in &all {
        by_pid.entry(key(set, i).partition_id()).or_default().push(i);
    }
    let busiest = *by_pid.iter().max_by_key(|(_, v)| v.len()).expect("pids").0;
    let first = *by_pid.keys().next().expect("pid");
    for p in [busiest, first] {
        let recs = scan_all(&client, &qp, PartitionFilter::by_id(p), set, Bins::All).await;
        exactly(&recs, &by_pid[&p], &format!("partition {p}"), Some(set));
    }
    for (begin, count) in [(0, 2048), (2048, 2048), (1000, 500), (4095, 1)] {
        let want: Vec<i64> = all
            .iter()
            .copied()
            .filter(|&i| (begin..begin + count).contains(&key(set, i).partition_id()))
            .collect();
        let recs = scan_all(&client, &qp, PartitionFilter::by_range(begin, count), set, Bins::All).await;
        exactly(&recs, &want, &format!("range {begin}+{count}"), Some(set));
    }
    // after the key's digest in its partition: the server's order within the partition comes
    // from a one-record-per-round pagination; by_key(k) returns exactly what follows k in it
    let one = QueryPolicy {
        max_records: 1,
        ..QueryPolicy::default()
    };
    let mut pf = PartitionFilter::by_id(busiest);
    let mut order: Vec<i64> = Vec::new();
    while !pf.done() {
        let (recs, next) = scan(&client, &one, pf, Statement::new(NS, set, Bins::All)).await;
        check!(recs.len() <= 1, "max_records 1 page of {}", recs.len());
        order.extend(recs.iter().map(|r| int(r, "i")));
        pf = next;
        check!(
            order.len() <= by_pid[&busiest].len(),
            "paging partition {busiest}: {order:?}"
        );
    }
    exactly(
        &scan_all(&client, &qp, PartitionFilter::by_id(busiest), set, Bins::All).await,
        &order,
        "paged partition",
        Some(set),
    );
    for (at, &i) in order.iter().enumerate() {
        let recs = scan_all(&client, &qp, PartitionFilter::by_key(&key(set, i)), set, Bins::All).await;
        exactly(
            &recs,
            &order[at + 1..],
            &format!("after key {i} in partition {busiest} ({order:?})"),
            Some(set),
        );
    }

    // max_records pagination: rounds until the cursor is done; the union is every record once
    for (page, range) in [
        (37_u64, (0, 4096)),
        (1, (1000, 500)),
        (299, (0, 4096)),
        (300, (0, 4096)),
        (1000, (0, 4096)),
    ] {
        let policy = QueryPolicy {
            max_records: page,
            ..QueryPolicy::default()
        };
        let want: Vec<i64> = all
            .iter()
            .copied()
            .filter(|&i| (range.0..range.0 + range.1).contains(&key(set, i).partition_id()))
            .collect();
        let mut pf = PartitionFilter::by_range(range.0, range.1);
        let mut union = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            check!(rounds <= N_Q + 2, "pagination by {page} does not end");
            let (recs, next) = scan(&client, &policy, pf, Statement::new(NS, set, Bins::All)).await;
            check!(recs.len() as u64 <= page, "page of {} > max_records {page}", recs.len());
            union.extend(recs);
            pf = next;
            if pf.done() {
                break;
            }
        }
        exactly(
            &union,
            &want,
            &format!("pagination by {page} over {range:?}"),
            Some(set),
        );
        check!(
            rounds as u64 >= want.len() as u64 / page,
            "pagination by {page}: {rounds} rounds for {} records",
            want.len()
        );
    }

    // filter expressions
    let mut fp = QueryPolicy::default();
    fp.base_policy.filter_expression = Some(gt(int_bin("n"), int_val(50)));
    let recs = scan_all(&client, &fp, PartitionFilter::all(), set, Bins::All).await;
    let want: Vec<i64> = all.iter().copied().filter(|i| i % 100 > 50).collect();
    exactly(&recs, &want, "filter n > 50", Some(set));
    fp.base_policy.filter_expression = Some(eq(int_bin("n"), int_val(7)));
    let recs = scan_all(&client, &fp, PartitionFilter::by_range(0, 2048), set, Bins::All).await;
    let want: Vec<i64> = all
        .iter()
        .copied()
        .filter(|&i| i % 100 == 7 && key(set, i).partition_id() < 2048)
        .collect();
    exactly(&recs, &want, "filter n == 7 over a range", Some(set));

    let t = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let touched: Vec<i64> = (0..N_Q).step_by(7).collect();
    for &i in &touched {
        client.put(&wp, &key(set, i), &[as_bin!("u", 1)]).await.expect("update");
    }
    fp.base_policy.filter_expression = Some(gt(last_update(), int_val(t)));
    let recs = scan_all(&client, &fp, PartitionFilter::all(), set, Bins::All).await;
    exactly(&recs, &touched, "filter last-update > t", Some(set));
    fp.base_policy.filter_expression = Some(le(last_update(), int_val(t)));
    let recs = scan_all(&client, &fp, PartitionFilter::all(), set, Bins::All).await;
    let untouched: Vec<i64> = all.iter().copied().filter(|i| !touched.contains(i)).collect();
    exactly(&recs, &untouched, "filter last-update <= t", Some(set));

    // deleted records are not scanned
    for i in (0..N_Q).step_by(3) {
        client.delete(&wp, &key(set, i)).await.expect("delete");
    }
    let live: Vec<i64> = all.iter().copied().filter(|i| i % 3 != 0).collect();
    let recs = scan_all(&client, &qp, PartitionFilter::all(), set, Bins::All).await;
    exactly(&recs, &live, "scan after deletes", Some(set));

    client.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn rust_client_truncate_survives_restarts() {
    // commit_to_device: the records written after a truncate are durable when acknowledged.
    let cfg: &[&str] = &["[storage]", "commit_to_device = true"];
    let rt = runtime();
    // Runs one phase against `node`; on a failed check prints the node log and re-panics.
    let phase = |node: &Node, what: &str, round: i64| {
        let port = node.port;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let client = connect(port).await;
                match what {
                    "truncate-sets" => truncate_sets(&client).await,
                    "verify-sets" => verify_sets(&client, round).await,
                    "truncate-ns" => truncate_ns(&client, round).await,
                    _ => verify_ns(&client, round).await,
                }
                client.close().await.expect("close");
            });
        }));
        if let Err(panic) = outcome {
            eprintln!("phase {what} {round}; node log:\n{}", node.log());
            std::panic::resume_unwind(panic);
        }
    };
    // A clean restart right after the truncates, then kill -9 (the Python test does the reverse).
    let node = Node::start(TMP, cfg);
    phase(&node, "truncate-sets", 0);
    let (dir, log) = node.stop();
    assert!(log.contains("shard stopped cleanly"), "{log}");
    let node = Node::start_in(TMP, dir, cfg);
    phase(&node, "verify-sets", 1);
    let node = Node::start_in(TMP, node.kill9(), cfg);
    phase(&node, "verify-sets", 2);
    phase(&node, "truncate-ns", 3);
    let (dir, log) = node.stop();
    assert!(log.contains("shard stopped cleanly"), "{log}");
    let node = Node::start_in(TMP, dir, cfg);
    phase(&node, "verify-ns", 1);
    let node = Node::start_in(TMP, node.kill9(), cfg);
    phase(&node, "verify-ns", 2);
    node.stop_and_log();
    eprintln!("rust client: {} checks passed", CHECKS.with(Cell::get));
}

async fn count(client: &Client, set: &str) -> Vec<i64> {
    let recs = scan_all(client, &QueryPolicy::default(), PartitionFilter::all(), set, Bins::All).await;
    let mut ids: Vec<i64> = recs.iter().map(|r| int(r, "i")).collect();
    ids.sort_unstable();
    ids
}

/// Set `ta`: truncated, then 10 written. Set `tb`: untouched. Set `tc`: truncated with a cut-off
/// between its old and new halves. Set `td`: truncated.
async fn truncate_sets(client: &Client) {
    let wp = durable_wp();
    let ap = AdminPolicy { timeout: 20_000 };
    for i in 0..100_i64 {
        for set in ["ta", "tb", "td"] {
            client.put(&wp, &key(set, i), &[as_bin!("i", i)]).await.expect("put");
        }
    }
    for i in 0..50_i64 {
        client
            .put(&wp, &key("tc", i), &[as_bin!("i", i)])
            .await
            .expect("put tc");
    }
    check!(count(client, "ta").await.len() == 100, "ta written");

    client.truncate(&ap, NS, "ta", 0).await.expect("truncate ta");
    check!(count(client, "ta").await.is_empty(), "ta empty after truncate");
    check!(count(client, "tb").await == (0..100).collect::<Vec<_>>(), "tb survives");
    check!(
        !client
            .exists(&ReadPolicy::default(), &key("ta", 5))
            .await
            .expect("exists"),
        "ta/5 gone"
    );
    for i in 500..510_i64 {
        client
            .put(&wp, &key("ta", i), &[as_bin!("i", i)])
            .await
            .expect("put after");
    }
    check!(
        count(client, "ta").await == (500..510).collect::<Vec<_>>(),
        "writes after truncate survive"
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 50..100_i64 {
        client
            .put(&wp, &key("tc", i), &[as_bin!("i", i)])
            .await
            .expect("put tc new");
    }
    client
        .truncate(&ap, NS, "tc", cut)
        .await
        .expect("truncate tc before cut");
    check!(
        count(client, "tc").await == (50..100).collect::<Vec<_>>(),
        "lut truncate keeps the newer half"
    );
    client.truncate(&ap, NS, "td", 0).await.expect("truncate td");

    // a cut-off in the future is refused and removes nothing
    let future = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64 + 3_600_000_000_000;
    let err = client
        .truncate(&ap, NS, "tb", future)
        .await
        .expect_err("a truncate lut in the future must be refused");
    check!(
        count(client, "tb").await.len() == 100,
        "a refused truncate removes nothing: {err:?}"
    );
    verify_sets(client, 0).await;
}

/// The state after the set truncates, with one record per earlier round written into the
/// truncated set `td`; then writes this round's, which must be visible at once and stay.
async fn verify_sets(client: &Client, round: i64) {
    check!(
        count(client, "ta").await == (500..510).collect::<Vec<_>>(),
        "ta after truncate"
    );
    check!(
        count(client, "tb").await == (0..100).collect::<Vec<_>>(),
        "tb after truncate"
    );
    check!(
        count(client, "tc").await == (50..100).collect::<Vec<_>>(),
        "tc after truncate"
    );
    let mut want_td: Vec<i64> = (900..900 + round).collect();
    check!(count(client, "td").await == want_td, "td after truncate, round {round}");
    let brp = BatchReadPolicy::default();
    let mut ops = vec![
        BatchOperation::read(&brp, key("ta", 1), Bins::All),
        BatchOperation::read(&brp, key("ta", 501), Bins::All),
        BatchOperation::read(&brp, key("tc", 1), Bins::All),
        BatchOperation::read(&brp, key("td", 1), Bins::All),
    ];
    client.batch(&BatchPolicy::default(), &mut ops).await.expect("batch");
    let codes: Vec<_> = ops.iter().map(BatchOperation::result_code).collect();
    use ResultCode::{KeyNotFoundError as NF, Ok as OK};
    check!(
        codes == vec![Some(NF), Some(OK), Some(NF), Some(NF)],
        "batch after truncate: {codes:?}"
    );
    let err = client
        .get(&ReadPolicy::default(), &key("td", 2), Bins::All)
        .await
        .expect_err("get of a truncated record");
    check!(
        err.server_result_code() == Some(NF),
        "get of a truncated record: {err:?}"
    );
    client
        .put(&durable_wp(), &key("td", 900 + round), &[as_bin!("i", 900 + round)])
        .await
        .expect("put td");
    want_td.push(900 + round);
    check!(
        count(client, "td").await == want_td,
        "a write into the truncated set, round {round}"
    );
}

/// Checks the set truncates once more, truncates the whole namespace, writes set `te` after it.
async fn truncate_ns(client: &Client, round: i64) {
    verify_sets(client, round).await;
    // a namespace truncate with a cut-off: every set loses what is older, keeps what is newer
    let wp = durable_wp();
    for i in 0..5_i64 {
        client
            .put(&wp, &key("tg", i), &[as_bin!("i", i)])
            .await
            .expect("put tg");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 5..10_i64 {
        client
            .put(&wp, &key("tg", i), &[as_bin!("i", i)])
            .await
            .expect("put tg");
    }
    client
        .truncate(&AdminPolicy { timeout: 20_000 }, NS, "", cut)
        .await
        .expect("truncate namespace before a cut-off");
    let recs = scan_all(client, &QueryPolicy::default(), PartitionFilter::all(), "", Bins::All).await;
    exactly(
        &recs,
        &(5..10).collect::<Vec<_>>(),
        "namespace truncate with a cut-off",
        Some("tg"),
    );
    client
        .truncate(&AdminPolicy { timeout: 20_000 }, NS, "", 0)
        .await
        .expect("truncate namespace");
    check!(count(client, "").await.is_empty(), "namespace empty after its truncate");
    for i in 0..20_i64 {
        client
            .put(&durable_wp(), &key("te", i), &[as_bin!("i", i)])
            .await
            .expect("put te");
    }
    verify_ns(client, 0).await;
}

/// Set `te`'s 20 records and one more per earlier round, nothing else; then writes this round's.
async fn verify_ns(client: &Client, round: i64) {
    let recs = scan_all(client, &QueryPolicy::default(), PartitionFilter::all(), "", Bins::All).await;
    let mut want: Vec<i64> = (0..20).chain(950..950 + round).collect();
    exactly(
        &recs,
        &want,
        &format!("namespace after its truncate, round {round}"),
        Some("te"),
    );
    check!(
        !client
            .exists(&ReadPolicy::default(), &key("tb", 1))
            .await
            .expect("exists"),
        "tb/1 gone after the namespace truncate"
    );
    client
        .put(&durable_wp(), &key("te", 950 + round), &[as_bin!("i", 950 + round)])
        .await
        .expect("put te");
    want.push(950 + round);
    check!(
        count(client, "te").await == want,
        "a write after the namespace truncate, round {round}"
    );
}

/// Generous timeouts for the truncate test's writes: with `commit_to_device` a write is
/// acknowledged after its device write, which on a machine busy with other I/O was seen to take
/// seconds (the default is 1 s).
fn durable_wp() -> WritePolicy {
    let mut wp = WritePolicy::default();
    wp.base_policy.total_timeout = 20_000;
    wp
}
