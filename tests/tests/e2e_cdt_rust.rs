//! End to end (issue 13), with the official Rust client (`aerospike` 3.0): list, map, bitwise and
//! HyperLogLog operate calls (ordered and unordered, a nested context with create, inverted
//! return types, the write-flag errors) and expression filters over them, every answer checked
//! value by value. The expected values are CE 8.1.2.0's (CDT spec §5–§9): the scenario passes
//! unchanged against a real CE server (`BOLIDE_CDT_AGAINST=127.0.0.1:3100`, below).

use aerospike::expressions::{self as exp, ExpType};
use aerospike::operations::bitwise::{self, BitPolicy, BitwiseOverflowActions, BitwiseResizeFlags};
use aerospike::operations::cdt_context::{ctx_list_index, ctx_map_key_create};
use aerospike::operations::hll::{self, HllPolicy};
use aerospike::operations::maps::{self, MapOrder};
use aerospike::operations::{self, lists, Operation};
use aerospike::{
    as_bin, as_list, as_val, Bins, Client, ClientPolicy, Key, ListOrderType, ListPolicy, ListReturnType, ListSortFlags,
    ListWriteFlags, MapPolicy, MapReturnType, MapWriteFlags, ReadPolicy, ResultCode, Value, WritePolicy,
};
use bolide_tests::node::Node;

#[test]
fn rust_client_cdt_operations_and_filters() {
    let node = Node::start(env!("CARGO_TARGET_TMPDIR"), &[]);
    let port = node.port;
    let outcome = std::panic::catch_unwind(|| runtime().block_on(run(port)));
    let log = node.stop_and_log();
    if let Err(panic) = outcome {
        eprintln!("node log:\n{log}");
        std::panic::resume_unwind(panic);
    }
}

/// The same scenario against a real Aerospike server, when `BOLIDE_CDT_AGAINST` gives its address
/// (`127.0.0.1:3100`): how the expectations were checked. Skipped otherwise.
#[test]
fn rust_client_cdt_scenario_against_aerospike() {
    let Ok(addr) = std::env::var("BOLIDE_CDT_AGAINST") else {
        eprintln!("BOLIDE_CDT_AGAINST not set: nothing to compare against");
        return;
    };
    let port: u16 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("BOLIDE_CDT_AGAINST is host:port");
    runtime().block_on(run(port));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One operate; the per-op results in request order (a write answers nil).
async fn op(client: &Client, k: &Key, ops: &[Operation]) -> Vec<Value> {
    let rec = client
        .operate(&WritePolicy::default(), k, ops)
        .await
        .unwrap_or_else(|e| panic!("operate {ops:?}: {e:?}"));
    rec.results.expect("an operate answers positional results")
}

/// One operate that must fail; its result code.
async fn op_err(client: &Client, k: &Key, ops: &[Operation]) -> Option<ResultCode> {
    match client.operate(&WritePolicy::default(), k, ops).await {
        Ok(rec) => panic!("operate {ops:?} should fail, answered {rec:?}"),
        Err(e) => e.server_result_code(),
    }
}

fn ints(v: &[i64]) -> Value {
    Value::List(v.iter().map(|&i| Value::from(i)).collect())
}

/// A map result as (key, value) pairs in the order the server sent them.
fn pairs(v: &Value) -> Vec<(Value, Value)> {
    match v {
        Value::HashMap(m) => {
            let mut p: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            p.sort_by_key(|(k, _)| format!("{k:?}"));
            p
        }
        Value::OrderedMap(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::SortedMap(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::KeyValueList(l) => l.clone(),
        other => panic!("not a map result: {other:?}"),
    }
}

fn sp(k: &str, v: i64) -> (Value, Value) {
    (Value::from(k), Value::from(v))
}

async fn run(port: u16) {
    let client = Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let k = Key::new("test", "cdt_rust", Value::from(format!("r-{run_id}"))).expect("key");
    let unordered = ListPolicy::default();
    let ordered = ListPolicy::new(ListOrderType::Ordered, ListWriteFlags::DEFAULT);

    // ------------------------------------------------------------------ lists
    let r = op(
        &client,
        &k,
        &[
            lists::append_items(&unordered, "l", vec![as_val!(5), as_val!(1), as_val!(4), as_val!(1)]),
            lists::insert_items(&unordered, "l", 1, vec![as_val!(9)]),
            lists::size("l"),
            lists::get_range("l", 0, 10),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(4), "append_items answers the new size");
    assert_eq!(r[1], Value::from(5), "insert_items answers the new size");
    assert_eq!(r[2], Value::from(5), "size");
    assert_eq!(r[3], ints(&[5, 9, 1, 4, 1]), "unordered: insertion order kept");

    let r = op(
        &client,
        &k,
        &[
            lists::get_by_rank("l", 0, ListReturnType::VALUES),
            lists::get_by_rank_range_count("l", -2, 2, ListReturnType::VALUES),
            lists::get_by_value("l", as_val!(1), ListReturnType::INDEX),
            lists::get_by_value("l", as_val!(1), ListReturnType::COUNT.inverted()),
            lists::get_by_value_range("l", as_val!(2), as_val!(6), ListReturnType::VALUES),
            lists::get_by_value_relative_rank_range_count("l", as_val!(4), 1, 2, ListReturnType::VALUES),
            lists::get_by_index_range_count("l", -2, 2, ListReturnType::REVERSE_INDEX),
            lists::get("l", -1),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(1), "rank 0 is the smallest");
    assert_eq!(r[1], ints(&[5, 9]), "the two largest, in list order");
    assert_eq!(r[2], ints(&[2, 4]), "indexes of every 1");
    assert_eq!(r[3], Value::from(3), "inverted count: elements other than 1");
    assert_eq!(r[4], ints(&[5, 4]), "value range [2, 6) in list order");
    assert_eq!(r[5], ints(&[5, 9]), "relative rank 1 from 4: the next two by value");
    assert_eq!(
        r[6],
        ints(&[0, 1]),
        "reverse indexes of the last two, sorted ascending (as CE)"
    );
    assert_eq!(r[7], Value::from(1), "negative index counts from the end");
    let r = op(
        &client,
        &k,
        &[
            lists::get_by_value("l", as_val!(1), ListReturnType::EXISTS.inverted()),
            lists::get_by_index_range_count("l", 1, 1, ListReturnType::EXISTS.inverted()),
            lists::get_by_index_range_count("l", 0, 5, ListReturnType::EXISTS.inverted()),
            lists::get_by_value_list("l", vec![as_val!(9)], ListReturnType::EXISTS.inverted()),
        ],
    )
    .await;
    assert_eq!(
        r,
        vec![
            Value::Bool(false),
            Value::Bool(true),
            Value::Bool(false),
            Value::Bool(true)
        ],
        "EXISTS|INVERTED: by value, 'nothing selected'; by index range or value list, 'the complement is not empty'"
    );

    let r = op(
        &client,
        &k,
        &[
            lists::increment(&unordered, "l", 1, 10),
            lists::remove_by_value("l", as_val!(1), ListReturnType::COUNT),
            lists::pop("l", 0),
            lists::get_range("l", 0, 10),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(19), "increment answers the new value");
    assert_eq!(r[1], Value::from(2), "remove by value answers how many went");
    assert_eq!(r[2], Value::from(5), "pop answers the element");
    assert_eq!(r[3], ints(&[19, 4]), "what is left");

    // EXISTS|INVERTED on empty collections (CE 8.1.2.0): a list's value selections answer true,
    // rank selections and a map's value selections false.
    let r = op(
        &client,
        &k,
        &[
            lists::append(&unordered, "e", as_val!(1)),
            lists::remove_by_value("e", as_val!(1), ListReturnType::NONE),
            maps::put(&MapPolicy::default(), "em", as_val!("a"), as_val!(1)),
            maps::remove_by_key("em", as_val!("a"), MapReturnType::NONE),
            lists::size("e"),
            lists::get_by_value("e", as_val!(1), ListReturnType::EXISTS.inverted()),
            lists::get_by_rank_range_count("e", 0, 1, ListReturnType::EXISTS.inverted()),
            maps::get_by_value("em", as_val!(1), MapReturnType::EXISTS.inverted()),
            maps::get_by_key_range("em", as_val!("a"), as_val!("z"), MapReturnType::EXISTS.inverted()),
        ],
    )
    .await;
    assert_eq!(
        r[4..].to_vec(),
        vec![
            Value::from(0),
            Value::Bool(true),
            Value::Bool(false),
            Value::Bool(false),
            Value::Bool(true)
        ],
        "EXISTS|INVERTED on an empty list and an empty map"
    );

    // An ordered list: set_order sorts; add-unique refuses a duplicate (24), no-fail skips it.
    let r = op(
        &client,
        &k,
        &[
            lists::append_items(&unordered, "o", vec![as_val!(3), as_val!(1), as_val!(2), as_val!(3)]),
            lists::set_order("o", ListOrderType::Ordered),
            lists::append(&ordered, "o", as_val!(0)),
            lists::get_range("o", 0, 10),
        ],
    )
    .await;
    assert_eq!(r[3], ints(&[0, 1, 2, 3, 3]), "an ordered list keeps its values sorted");
    let unique = ListPolicy::new(ListOrderType::Ordered, ListWriteFlags::ADD_UNIQUE);
    assert_eq!(
        op_err(&client, &k, &[lists::append(&unique, "o", as_val!(2))]).await,
        Some(ResultCode::ElementExists),
        "add-unique with a value already there"
    );
    let unique_no_fail = ListPolicy::new(
        ListOrderType::Ordered,
        ListWriteFlags::ADD_UNIQUE | ListWriteFlags::NO_FAIL,
    );
    let r = op(
        &client,
        &k,
        &[lists::append(&unique_no_fail, "o", as_val!(2)), lists::size("o")],
    )
    .await;
    assert_eq!(r[1], Value::from(5), "add-unique | no-fail: nothing added, no error");
    let r = op(
        &client,
        &k,
        &[
            lists::sort("o", ListSortFlags::DROP_DUPLICATES),
            lists::get_range("o", 0, 10),
        ],
    )
    .await;
    assert_eq!(r[1], ints(&[0, 1, 2, 3]), "sort dropping duplicates");
    assert_eq!(
        op_err(&client, &k, &[lists::insert(&unordered, "o", 0, as_val!(7))]).await,
        Some(ResultCode::OpNotApplicable),
        "insert by index into an ordered list"
    );
    assert_eq!(
        op_err(&client, &k, &[maps::size("l")]).await,
        Some(ResultCode::BinTypeError),
        "a map op on a list bin"
    );

    // ------------------------------------------------------------------ maps
    let key_ordered = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT);
    let items = vec![
        (as_val!("c"), as_val!(3)),
        (as_val!("a"), as_val!(1)),
        (as_val!("d"), as_val!(0)),
        (as_val!("b"), as_val!(2)),
    ];
    let r = op(
        &client,
        &k,
        &[
            maps::put_items(
                &key_ordered,
                "m",
                items.into_iter().collect::<std::collections::HashMap<_, _>>(),
            ),
            maps::get_by_key_range("m", as_val!("b"), as_val!("d"), MapReturnType::KEY_VALUE),
            maps::get_by_key("m", as_val!("c"), MapReturnType::VALUE),
            maps::get_by_rank("m", -1, MapReturnType::KEY),
            maps::get_by_value_range("m", as_val!(1), as_val!(3), MapReturnType::KEY),
            maps::get_by_key("m", as_val!("a"), MapReturnType::INDEX),
            maps::get_by_key("m", as_val!("zz"), MapReturnType::EXISTS),
            maps::get_by_value_relative_rank_range_count("m", as_val!(1), 0, 2, MapReturnType::VALUE),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(4), "put_items answers the size");
    assert_eq!(pairs(&r[1]), vec![sp("b", 2), sp("c", 3)], "key range [b, d)");
    assert_eq!(r[2], Value::from(3), "get by key");
    assert_eq!(r[3], Value::from("c"), "the key of the largest value");
    assert_eq!(r[4], as_list!("a", "b"), "keys with values in [1, 3), in key order");
    assert_eq!(r[5], Value::from(0), "index of a in key order");
    assert_eq!(r[6], Value::Bool(false), "exists of a missing key");
    assert_eq!(r[7], ints(&[1, 2]), "relative rank 0..2 from value 1");

    let create_only = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::CREATE_ONLY);
    assert_eq!(
        op_err(&client, &k, &[maps::put(&create_only, "m", as_val!("a"), as_val!(9))]).await,
        Some(ResultCode::ElementExists),
        "create-only put of an existing key"
    );
    let update_only = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::UPDATE_ONLY);
    assert_eq!(
        op_err(&client, &k, &[maps::put(&update_only, "m", as_val!("zz"), as_val!(9))]).await,
        Some(ResultCode::ElementNotFound),
        "update-only put of a missing key"
    );
    let r = op(
        &client,
        &k,
        &[
            maps::increment_value(&key_ordered, "m", as_val!("a"), as_val!(5)),
            maps::remove_by_key("m", as_val!("d"), MapReturnType::VALUE),
            maps::remove_by_value("m", as_val!(2), MapReturnType::KEY),
            maps::size("m"),
            maps::get_by_index_range_from("m", 0, MapReturnType::KEY_VALUE),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(6), "increment answers the new value");
    assert_eq!(r[1], Value::from(0), "remove by key answers the value");
    assert_eq!(r[2], as_list!("b"), "remove by value answers the keys");
    assert_eq!(r[3], Value::from(2), "size after the removes");
    assert_eq!(pairs(&r[4]), vec![sp("a", 6), sp("c", 3)], "what is left, in key order");

    // ------------------------------------------------------------------ nested contexts
    let r = op(
        &client,
        &k,
        &[
            lists::append(&unordered, "n", as_val!(1))
                .context(vec![ctx_map_key_create(as_val!("x"), MapOrder::KeyOrdered)]),
            lists::append(&unordered, "n", as_val!(2))
                .context(vec![ctx_map_key_create(as_val!("x"), MapOrder::KeyOrdered)]),
            maps::put(&key_ordered, "n", as_val!("k"), as_val!(7))
                .context(vec![ctx_map_key_create(as_val!("y"), MapOrder::KeyOrdered)]),
            operations::get_bin("n"),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(1), "a list created under a new key");
    assert_eq!(r[1], Value::from(2), "appended to the nested list");
    assert_eq!(r[2], Value::from(1), "a map created under a new key");
    let top = pairs(&r[3]);
    assert_eq!(top.len(), 2, "{top:?}");
    assert_eq!(top[0], (as_val!("x"), ints(&[1, 2])), "{top:?}");
    assert_eq!(pairs(&top[1].1), vec![sp("k", 7)], "{top:?}");
    let r = op(
        &client,
        &k,
        &[
            lists::get_by_index("l", 0, ListReturnType::VALUES),
            lists::size("n").context(vec![aerospike::operations::cdt_context::ctx_map_key(as_val!("x"))]),
        ],
    )
    .await;
    assert_eq!(r, vec![Value::from(19), Value::from(2)], "ctx read of the nested list");
    assert_eq!(
        op_err(
            &client,
            &k,
            &[lists::size("l").context(vec![ctx_list_index(0), ctx_list_index(0)])]
        )
        .await,
        Some(ResultCode::OpNotApplicable),
        "a ctx through an integer"
    );

    // ------------------------------------------------------------------ bits
    let bp = BitPolicy::default();
    client
        .put(
            &WritePolicy::default(),
            &k,
            &[as_bin!("b", Value::Blob(vec![0x0f, 0x00, 0xf0, 0x81]))],
        )
        .await
        .expect("put blob");
    let r = op(
        &client,
        &k,
        &[
            bitwise::count("b", 0, 32),
            bitwise::get_int("b", 16, 8, true),
            bitwise::lscan("b", 0, 32, true),
            bitwise::set("b", 8, 8, Value::Blob(vec![0xaa]), &bp),
            bitwise::add("b", 24, 8, 1, false, BitwiseOverflowActions::Fail, &bp),
            bitwise::resize("b", 6, BitwiseResizeFlags::DEFAULT, &bp),
            bitwise::get("b", 0, 48),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(10), "count of set bits");
    assert_eq!(r[1], Value::from(-16), "signed get_int of 0xf0");
    assert_eq!(r[2], Value::from(4), "first set bit");
    assert_eq!(
        r[6],
        Value::Blob(vec![0x0f, 0xaa, 0xf0, 0x82, 0x00, 0x00]),
        "set, add and resize applied in order"
    );
    assert_eq!(
        op_err(
            &client,
            &k,
            &[bitwise::add("b", 16, 8, 0x20, false, BitwiseOverflowActions::Fail, &bp)]
        )
        .await,
        Some(ResultCode::OpNotApplicable),
        "an unsigned add past 255 with overflow fail"
    );
    let r = op(
        &client,
        &k,
        &[
            bitwise::add("b", 16, 8, 0x20, false, BitwiseOverflowActions::Saturate, &bp),
            bitwise::get_int("b", 16, 8, false),
        ],
    )
    .await;
    assert_eq!(r[1], Value::from(255), "saturate");

    // ------------------------------------------------------------------ HLL
    let hp = HllPolicy::default();
    let r = op(
        &client,
        &k,
        &[
            hll::init(&hp, "h", 10),
            hll::add(&hp, "h", vec![as_val!("a"), as_val!("b"), as_val!("c")]),
            hll::add_with_index(
                &hp,
                "h2",
                vec![as_val!("b"), as_val!("c"), as_val!("d"), as_val!("e")],
                10,
            ),
            hll::get_count("h"),
            hll::describe("h"),
        ],
    )
    .await;
    assert_eq!(r[1], Value::from(3), "add answers how many registers changed");
    assert_eq!(r[3], Value::from(3), "count");
    assert_eq!(r[4], ints(&[10, 0]), "describe: index bits, min-hash bits");
    assert_eq!(
        op_err(&client, &k, &[hll::add(&hp, "h3", vec![as_val!("a")])]).await,
        Some(ResultCode::OpNotApplicable),
        "add to a missing bin without index bits"
    );
    let rec = client
        .get(&ReadPolicy::default(), &k, Bins::from(["h2"]))
        .await
        .expect("get h2");
    let h2 = rec.bins.get("h2").expect("h2").clone();
    assert!(matches!(h2, Value::Hll(_)), "an HLL bin reads as HLL: {h2:?}");
    let r = op(
        &client,
        &k,
        &[
            hll::get_union_count("h", vec![h2.clone()]),
            hll::get_intersect_count("h", vec![h2.clone()]),
        ],
    )
    .await;
    assert_eq!(r[0], Value::from(5), "union count {{a..e}}");
    assert_eq!(r[1], Value::from(2), "intersect count {{b, c}}");
    assert_eq!(
        op_err(&client, &k, &[hll::init(&hp, "h", 3)]).await,
        Some(ResultCode::ParameterError),
        "index bits below 4"
    );

    // ------------------------------------------------------------------ expression filters
    let mut rp = ReadPolicy::default();
    rp.base_policy.filter_expression = Some(exp::gt(exp::lists::size(exp::list_bin("l"), &[]), exp::int_val(1)));
    let rec = client
        .get(&rp, &k, Bins::from(["l"]))
        .await
        .expect("a passing list filter");
    assert_eq!(rec.bins.get("l"), Some(&ints(&[19, 4])), "{rec:?}");
    rp.base_policy.filter_expression = Some(exp::eq(
        exp::maps::get_by_key(
            MapReturnType::VALUE,
            ExpType::Int,
            exp::string_val("a"),
            exp::map_bin("m"),
            &[],
        ),
        exp::int_val(99),
    ));
    let err = client.get(&rp, &k, Bins::All).await.expect_err("a failing map filter");
    assert_eq!(err.server_result_code(), Some(ResultCode::FilteredOut), "{err:?}");
    let mut wp = WritePolicy::default();
    wp.base_policy.filter_expression = Some(exp::eq(exp::hll::get_count(exp::hll_bin("h")), exp::int_val(3)));
    client
        .operate(&wp, &k, &[lists::append(&unordered, "l", as_val!(8))])
        .await
        .expect("an operate under a passing HLL filter");
    wp.base_policy.filter_expression = Some(exp::eq(
        exp::bitwise::count(exp::int_val(0), exp::int_val(8), exp::blob_bin("b")),
        exp::int_val(0),
    ));
    let err = client
        .operate(&wp, &k, &[lists::append(&unordered, "l", as_val!(9))])
        .await
        .expect_err("an operate under a failing bit filter");
    assert_eq!(err.server_result_code(), Some(ResultCode::FilteredOut), "{err:?}");
    let r = op(&client, &k, &[lists::get_range("l", 0, 10)]).await;
    assert_eq!(
        r[0],
        ints(&[19, 4, 8]),
        "only the write under the passing filter applied"
    );

    // Atomicity: a failing op leaves every earlier op of the command unapplied.
    assert_eq!(
        op_err(
            &client,
            &k,
            &[
                lists::append(&unordered, "l", as_val!(100)),
                maps::put(&create_only, "m", as_val!("a"), as_val!(0))
            ]
        )
        .await,
        Some(ResultCode::ElementExists)
    );
    let r = op(
        &client,
        &k,
        &[
            lists::size("l"),
            maps::get_by_key("m", as_val!("a"), MapReturnType::VALUE),
        ],
    )
    .await;
    assert_eq!(
        r,
        vec![Value::from(3), Value::from(6)],
        "nothing of the failed command applied"
    );
}
