//! Replication factor 2 on simulated devices, over many seeds: an in-process server with two
//! workers on two devices, or four workers sharing two devices round-robin (by seed), each
//! worker on its own `SimDevice` (seeded latency and completion order) behind a fault switch, under write load from the official Rust client with `commit_to_device`. Each seed
//! picks the device to fail (every worker on it fails) and the moment (a number of acknowledged
//! writes). Checks, as on
//! io_uring: every acknowledged write reads back and writes go on; then the failed device is
//! replaced by a blank one (the survivor restarts cleanly or after a crash, by seed),
//! re-replication rebuilds the second copy, the survivor's device is failed, and every
//! acknowledged write reads back from the rebuilt copy.
//!
//! `BOLIDE_SIM_SEEDS=N` runs N seeds (default 20); `BOLIDE_SIM_SEED=S` runs only seed S.

use aerospike::{as_bin, Bins, Client, ClientPolicy, Key, ReadPolicy, WritePolicy};
use bolide_drivers::fault::{FaultSwitch, Faulty};
use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::server::{Server, ServerConfig};
use bolide_node::shard::{OpenMode, Region, Shard};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type SimShard = Shard<Faulty<SimDevice>, SystemClock>;

const NS: &str = "test";
const DEVICE_BYTES: u64 = 32 << 20;
const WRITERS: u32 = 4;
const KEYS_PER_WRITER: u32 = 250;

fn storage() -> StorageConfig {
    StorageConfig {
        wblock_size_bytes: 128 << 10,
        max_record_bytes: (128 << 10) - 64,
        flush_max_ms: 5,
        commit_to_device: true,
        ..StorageConfig::default()
    }
}

fn sim(seed: u64, worker: usize) -> SimDevice {
    let mut c = SimConfig::new(format!("sim{worker}"), DEVICE_BYTES, seed * 10 + worker as u64);
    c.latency_polls_max = 8;
    SimDevice::new(c)
}

/// Opens worker `w`'s shard on `dev`; returns it, its switch and whether it was blank.
fn open(dev: SimDevice, w: usize) -> (SimShard, FaultSwitch, bool) {
    let sw = FaultSwitch::new();
    let region = Region {
        offset_bytes: 0,
        len_bytes: DEVICE_BYTES,
    };
    let (shard, report) = Shard::open(
        Faulty::new(dev, sw.clone()),
        SystemClock::new(),
        storage(),
        w as u32,
        region,
    )
    .expect("open shard");
    (shard, sw, report.mode == OpenMode::Formatted)
}

/// Starts a server with one worker per device in `devs`; worker `w` is on physical device
/// `w % 2` (with four workers, two share each device, round-robin as a profile assigns them).
fn start(devs: Vec<SimDevice>) -> (Server<Faulty<SimDevice>, SystemClock>, Vec<FaultSwitch>, u16) {
    let n = devs.len();
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut shards = Vec::new();
    let mut switches = Vec::new();
    let mut fresh = Vec::new();
    for (w, d) in devs.into_iter().enumerate() {
        let (s, sw, f) = open(d, w);
        shards.push(s);
        switches.push(sw);
        fresh.push(f);
    }
    let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], port)), NS, n);
    cfg.replication_factor = 2;
    cfg.device_of = (0..n).map(|w| w % 2).collect();
    cfg.fresh = fresh;
    cfg.fault_switches = switches.clone();
    let server = Server::start(&cfg, shards, vec![None; n]).expect("start server");
    (server, switches, port)
}

fn key(k: u32) -> Key {
    Key::new(NS, "s", aerospike::Value::from(i64::from(k))).expect("key")
}

#[derive(Clone, Copy, Default)]
struct Track {
    acked: u32,
    sent: u32,
}

async fn connect(port: u16) -> Arc<Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}")).await {
            Ok(c) => return Arc::new(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// Overwrites each writer's keys with rising versions until `stop`; counts acknowledgements.
async fn load(client: Arc<Client>, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> Vec<Track> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, acked) = (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let mut track = vec![Track::default(); KEYS_PER_WRITER as usize];
            let mut wp = WritePolicy::default();
            wp.base_policy.total_timeout = 5000;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let slot = (i % KEYS_PER_WRITER) as usize;
                let version = track[slot].sent + 1;
                track[slot].sent = version;
                let bins = [as_bin!("v", i64::from(version)), as_bin!("pad", "p".repeat(100 + slot))];
                if client
                    .put(&wp, &key(w * KEYS_PER_WRITER + slot as u32), &bins)
                    .await
                    .is_ok()
                {
                    track[slot].acked = version;
                    acked.fetch_add(1, Ordering::Relaxed);
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

async fn check_all(client: &Client, tracks: &[Track], seed: u64, phase: &str) {
    let rp = ReadPolicy::default();
    for (k, t) in tracks.iter().enumerate() {
        let got = match client.get(&rp, &key(k as u32), Bins::All).await {
            Ok(rec) => match rec.bins.get("v") {
                Some(aerospike::Value::Int(v)) => Some(*v as u32),
                other => panic!("seed {seed} {phase}: key {k}: bin v is {other:?}"),
            },
            Err(e) if e.to_string().contains("Key not found") => None,
            Err(e) => panic!("seed {seed} {phase}: key {k}: read failed: {e}"),
        };
        match got {
            None => assert_eq!(
                t.acked, 0,
                "seed {seed} {phase}: key {k}: acknowledged version {} lost",
                t.acked
            ),
            Some(v) => assert!(
                v >= t.acked && v <= t.sent,
                "seed {seed} {phase}: key {k}: read {v}, acknowledged {}, sent {}",
                t.acked,
                t.sent
            ),
        }
    }
}

fn wait(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not reached in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_seed(seed: u64, rt: &tokio::runtime::Runtime) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Two workers on two devices, or four sharing them round-robin.
    let workers = if rng.gen_bool(0.5) { 2 } else { 4 };
    let victim = rng.gen_range(0..2usize);
    let fail_at = rng.gen_range(50..1500u64);
    let after = rng.gen_range(100..600u64);
    let survivor_crashes = rng.gen_bool(0.5);
    let on = |dev: usize| (0..workers).filter(move |w| w % 2 == dev);

    // 1. Load; fail the victim device (every worker on it) after `fail_at` acknowledged writes.
    let (server, switches, port) = start((0..workers).map(|w| sim(seed, w)).collect());
    let client = rt.block_on(connect(port));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let task = rt.spawn(load(Arc::clone(&client), Arc::clone(&stop), Arc::clone(&acked)));
    wait(Duration::from_secs(60), "writes before the failure", || {
        acked.load(Ordering::Relaxed) >= fail_at
    });
    for w in on(victim) {
        switches[w].trip();
    }
    let at_failure = acked.load(Ordering::Relaxed);
    wait(Duration::from_secs(60), "writes after the failure", || {
        acked.load(Ordering::Relaxed) >= at_failure + after
    });
    stop.store(true, Ordering::Relaxed);
    let tracks = rt.block_on(task).expect("load");
    wait(Duration::from_secs(10), "failover", || {
        server.shared.failed_devices() == workers / 2
    });
    rt.block_on(check_all(&client, &tracks, seed, "after the failure"));
    drop(client);

    // 2. Replace the victim device with a blank one; the survivor restarts cleanly or after
    // a crash.
    let shards = server.stop();
    let mut devs = Vec::new();
    for (w, shard) in shards.into_iter().enumerate() {
        if w % 2 == victim {
            devs.push(sim(seed + 1000, w));
        } else if survivor_crashes {
            let disk = shard.into_device().into_inner().crash();
            let mut c = SimConfig::new(format!("sim{w}"), DEVICE_BYTES, seed * 10 + 7);
            c.latency_polls_max = 8;
            devs.push(SimDevice::from_disk(disk, c));
        } else {
            devs.push(shard.shutdown().expect("clean shutdown").1.into_inner());
        }
    }
    let (server, switches, port) = start(devs);
    wait(Duration::from_secs(120), "re-replication", || {
        server.shared.sync_remaining.load(Ordering::Relaxed) == 0
    });
    assert_eq!(
        server.shared.pmap.unreplicated(),
        0,
        "seed {seed}: a partition lacks its second copy"
    );

    // 3. Fail the surviving device: everything reads from the rebuilt one.
    for w in on(1 - victim) {
        switches[w].trip();
    }
    let client = rt.block_on(connect(port));
    rt.block_on(check_all(&client, &tracks, seed, "from the rebuilt device"));
    let wp = WritePolicy::default();
    rt.block_on(client.put(&wp, &key(0), &[as_bin!("v", 1_000_000_i64)]))
        .unwrap_or_else(|e| panic!("seed {seed}: write after the second failure: {e}"));
    drop(client);
    drop(server.stop());
    eprintln!(
        "seed {seed}: {workers} workers, failed device {victim} after {at_failure} writes, {after}+ after; survivor {}; ok",
        if survivor_crashes { "crashed" } else { "shut down cleanly" }
    );
}

#[test]
fn sim_device_failure_over_many_seeds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seeds: Vec<u64> = match std::env::var("BOLIDE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("BOLIDE_SIM_SEED")],
        Err(_) => {
            let n: u64 = std::env::var("BOLIDE_SIM_SEEDS").map_or(20, |s| s.parse().expect("BOLIDE_SIM_SEEDS"));
            (1..=n).collect()
        }
    };
    for seed in seeds {
        run_seed(seed, &rt);
    }
}
