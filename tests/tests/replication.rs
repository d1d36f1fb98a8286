//! Replication factor 2 across two io_uring file devices, end to end through the official Rust
//! client: a device fails under write load with `commit_to_device`; every acknowledged write
//! stays readable and writes go on; after the device is replaced (restart with an empty device
//! at that slot) re-replication rebuilds the second copy, checked by failing the other device
//! and reading everything again.

use aerospike::{as_bin, Bins, Client, ClientPolicy, Key, ReadPolicy, WritePolicy};
use bolide_tests::node::{info, info_field, Node};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "test";
const WRITERS: u32 = 8;
const KEYS_PER_WRITER: u32 = 500;

/// Two devices (one per worker), small wblocks, group commit.
const PROFILE: &str = r#"
name = "replication-test"
description = "two file devices, one per worker"
[cpu]
cores = [0, 1]
[[device]]
driver = "uring"
path = "{dir}/dev0"
shard_file_bytes = 67108864
queue_depth = 64
[[device]]
driver = "uring"
path = "{dir}/dev1"
shard_file_bytes = 67108864
queue_depth = 64
[storage]
wblock_size_bytes = 131072
max_record_bytes = 131008
flush_max_ms = 20
commit_to_device = true
[network]
driver = "kernel"
polling = "interrupt"
"#;

/// No record cache: phase 3 finds the failed device through client reads, which a cache of
/// the (verified) records would serve from RAM.
const CONFIG: [&str; 3] = [
    "replication_factor = 2",
    "fault_injection = true",
    "record_cache_bytes = 0",
];

fn key(k: u32) -> Key {
    Key::new(NS, "r", aerospike::Value::from(i64::from(k))).expect("key")
}

/// Per key: the last version acknowledged, and the last version sent (acknowledged or not).
#[derive(Clone, Copy, Default, Debug)]
struct Track {
    acked: u32,
    sent: u32,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(port: u16) -> Arc<Client> {
    Arc::new(
        Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
            .await
            .expect("connect"),
    )
}

/// Writers overwrite their own keys with rising versions until `stop`; returns every key's
/// track. `ok_after_fail` counts acknowledged writes once `failed` is set.
async fn write_load(
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    ok_after_fail: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> Vec<Track> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, failed, ok_after_fail, errors) = (
            Arc::clone(&client),
            Arc::clone(&stop),
            Arc::clone(&failed),
            Arc::clone(&ok_after_fail),
            Arc::clone(&errors),
        );
        tasks.push(tokio::spawn(async move {
            let mut track = vec![Track::default(); KEYS_PER_WRITER as usize];
            let mut wp = WritePolicy::default();
            wp.base_policy.total_timeout = 5000;
            let pad = "x".repeat(300);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let slot = (i % KEYS_PER_WRITER) as usize;
                let k = w * KEYS_PER_WRITER + slot as u32;
                let version = track[slot].sent + 1;
                track[slot].sent = version;
                let bins = [as_bin!("v", i64::from(version)), as_bin!("pad", pad.as_str())];
                match client.put(&wp, &key(k), &bins).await {
                    Ok(()) => {
                        track[slot].acked = version;
                        if failed.load(Ordering::Relaxed) {
                            ok_after_fail.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            track
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    all
}

/// Reads every key: an acknowledged version must be there (or a later one that was sent).
async fn check_all(client: &Client, tracks: &[Track]) -> usize {
    let rp = ReadPolicy::default();
    let mut checked = 0;
    for (k, t) in tracks.iter().enumerate() {
        let got = match client.get(&rp, &key(k as u32), Bins::All).await {
            Ok(rec) => match rec.bins.get("v") {
                Some(aerospike::Value::Int(v)) => Some(*v as u32),
                other => panic!("key {k}: bin v is {other:?}"),
            },
            Err(e) if e.to_string().contains("KeyNotFound") || e.to_string().contains("not found") => None,
            Err(e) => panic!("key {k}: read failed: {e}"),
        };
        match got {
            None => assert_eq!(t.acked, 0, "key {k}: acknowledged version {} lost", t.acked),
            Some(v) => assert!(
                v >= t.acked && v <= t.sent,
                "key {k}: read version {v}, acknowledged {}, sent {}",
                t.acked,
                t.sent
            ),
        }
        checked += 1;
    }
    checked
}

fn stat(port: u16, key: &str) -> String {
    info_field(&info(port, "statistics"), key).unwrap_or_else(|| panic!("statistics has no {key}"))
}

fn wait_for(port: u16, key: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let v = stat(port, key);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "statistics {key} is {v}, not {want}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn device_failure_loses_no_acknowledged_write_and_rereplication_restores_two_copies() {
    let tmp = env!("CARGO_TARGET_TMPDIR");
    let node = Node::start_with_profile(tmp, bolide_tests::scratch_dir(tmp), PROFILE, &CONFIG);
    let port = node.port;
    assert_eq!(stat(port, "replication_factor"), "2");
    assert_eq!(stat(port, "degraded"), "false");
    let bad = node.info("fail-device:worker=7");
    assert!(bad.starts_with("ERROR:4:"), "an unknown worker is refused: {bad}");
    let rt = runtime();

    // 1. Write load; fail worker 0's device in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let ok_after = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let client = rt.block_on(connect(port));
    let load = rt.spawn(write_load(
        Arc::clone(&client),
        Arc::clone(&stop),
        Arc::clone(&failed),
        Arc::clone(&ok_after),
        Arc::clone(&errors),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.info("fail-device:worker=0"), "ok");
    failed.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let tracks = rt.block_on(load).expect("load");
    let acked: u64 = tracks.iter().map(|t| u64::from(t.acked)).sum();
    eprintln!(
        "phase 1: {acked} versions acknowledged, {} writes acknowledged after the failure, {} errors",
        ok_after.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert!(
        ok_after.load(Ordering::Relaxed) > 0,
        "writes must go on after the device failure; log:\n{}",
        node.log()
    );
    assert_eq!(stat(port, "degraded"), "true");
    assert_eq!(stat(port, "failed_devices"), "1");
    assert_eq!(stat(port, "partitions_failed_over"), "2048");
    let n = rt.block_on(check_all(&client, &tracks));
    eprintln!("phase 1: {n} keys checked on the surviving device");
    // Writes to the failed worker's partitions are refused with an error, never lost silently:
    // a probe write to every key works (they all live on worker 1 now).
    drop(client);

    // 2. Restart with the failed device still in place: its copies are stale, so the other
    // copy serves until they are reconciled.
    let (dir, _log) = node.stop();
    assert!(
        dir.path().join("bolide-data/stale-devices.toml").exists(),
        "the failed device is recorded as stale"
    );
    let node = Node::start_with_profile(tmp, dir, PROFILE, &CONFIG);
    let port = node.port;
    let client = rt.block_on(connect(port));
    let n = rt.block_on(check_all(&client, &tracks));
    eprintln!("phase 2: {n} keys checked while the stale device is reconciled");
    wait_for(
        port,
        "rereplication_partitions_remaining",
        "0",
        Duration::from_secs(120),
    );
    assert_eq!(stat(port, "degraded"), "false", "log:\n{}", node.log());

    // 3. Fail the other device with no write load: reads that hit it are served from the
    // reconciled copy, and once enough of them failed the worker fails its partitions over.
    assert_eq!(node.info("fail-device:worker=1"), "ok");
    let n = rt.block_on(check_all(&client, &tracks));
    eprintln!("phase 3: {n} keys checked on the reconciled device");
    assert_eq!(stat(port, "failed_devices"), "1", "log:\n{}", node.log());
    assert_eq!(stat(port, "degraded"), "true");
    let n = rt.block_on(check_all(&client, &tracks));
    eprintln!("phase 3: {n} keys checked again after the failover");
    drop(client);

    // 4. Replace device 1 (an empty device at that slot) and restart: re-replication.
    let (dir, _log) = node.stop();
    std::fs::remove_dir_all(dir.path().join("dev1")).expect("remove dev1");
    let node = Node::start_with_profile(tmp, dir, PROFILE, &CONFIG);
    let port = node.port;
    wait_for(
        port,
        "rereplication_partitions_remaining",
        "0",
        Duration::from_secs(120),
    );
    assert_eq!(stat(port, "degraded"), "false", "log:\n{}", node.log());
    let copied: u64 = stat(port, "rereplicated_records").parse().expect("number");
    assert!(
        copied >= u64::from(WRITERS * KEYS_PER_WRITER),
        "only {copied} records re-replicated"
    );

    // 5. Fail device 0: everything must read from the rebuilt device 1.
    assert_eq!(node.info("fail-device:worker=0"), "ok");
    let client = rt.block_on(connect(port));
    let n = rt.block_on(check_all(&client, &tracks));
    eprintln!("phase 5: {n} keys checked on the rebuilt device ({copied} records re-replicated)");
    // And writes go on, on the rebuilt device alone.
    let wp = WritePolicy::default();
    rt.block_on(client.put(&wp, &key(0), &[as_bin!("v", 1_000_000_i64)]))
        .expect("write after the second failure");
    assert_eq!(stat(port, "failed_devices"), "1", "log:\n{}", node.log());
    drop(client);
    let log = node.stop_and_log();
    assert!(log.contains("node degraded"), "the failure is logged:\n{log}");
}

#[test]
fn factor_two_on_one_device_is_refused() {
    let tmp = env!("CARGO_TARGET_TMPDIR");
    let dir = bolide_tests::scratch_dir(tmp);
    let cfg = dir.path().join("bolide.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"{}\"\nworkers = 2\nreplication_factor = 2\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(bolide_tests::node::bolide_bin(tmp))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run bolide");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "factor 2 on one device must not start");
    assert!(
        err.contains("replication_factor") && err.contains("two devices"),
        "the error names the key and the reason: {err}"
    );
}
