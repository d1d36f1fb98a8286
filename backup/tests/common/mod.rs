//! Shared by the end-to-end backup tests: a real `bolide serve` node, the `bolide-backup`
//! binary, records with every bin type, scans and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aerospike::query::PartitionFilter;
use aerospike::{as_bin, Bins, Client, ClientPolicy, Expiration, Key, QueryPolicy, Record, Statement, Value, WritePolicy};
use futures::StreamExt;
pub const NS: &str = "test";

/// A running node on a free loopback port with its own data directory; killed on drop.
pub struct Node {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub child: Child,
}

impl Node {
    pub fn start() -> Node {
        Node::start_with_shard_bytes(268_435_456)
    }

    pub fn start_with_shard_bytes(shard_bytes: u64) -> Node {
        Node::start_with_config(shard_bytes, "")
    }

    /// A node with `extra` appended to its config file (TOML lines).
    pub fn start_with_config(shard_bytes: u64, extra: &str) -> Node {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let cfg = dir.path().join("bolide.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nshard_file_bytes = {shard_bytes}\nworkers = 2\ndata_dir = \"{}\"\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
        let child = Command::new(bolide_tests::node::bolide_bin(env!("CARGO_TARGET_TMPDIR")))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bolide");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "bolide did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Node { port, dir, child }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tool(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args(args)
        .output()
        .expect("run bolide-backup");
    eprintln!(
        "bolide-backup {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn tool_ok(args: &[&str]) -> String {
    let out = tool(args);
    assert!(out.status.success(), "bolide-backup {args:?} failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub async fn connect(port: u16) -> Client {
    Client::new(&ClientPolicy::default(), &format!("127.0.0.1:{port}"))
        .await
        .expect("connect")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn set_of(i: u32) -> &'static str {
    match i % 3 {
        0 => "s1",
        1 => "s2",
        _ => "",
    }
}

/// Record `i` with every bin type the server stores (a TTL on two in three records), plus a
/// `pad` blob bin of `pad` bytes when `pad > 0`.
pub async fn put_record_padded(client: &Client, i: u32, version: u32, pad: usize) {
    let key = Key::new(NS, set_of(i), Value::from(format!("k{i}"))).expect("key");
    let mut map = HashMap::new();
    map.insert(Value::from("a"), Value::from(i64::from(i)));
    map.insert(
        Value::from("b"),
        Value::from(vec![Value::from(1.5), Value::from("x y")]),
    );
    let bins = vec![
        as_bin!("int", i64::from(i) * 1_000_003 - 7),
        as_bin!("float", f64::from(i) / 7.0),
        as_bin!("str", format!("value {i} v{version} with space\nand LF \\")),
        as_bin!("blob", vec![0u8, b'\n', b' ', (i % 256) as u8]),
        as_bin!("bool", i.is_multiple_of(2)),
        as_bin!(
            "list",
            vec![Value::from(i64::from(i)), Value::from("s"), Value::Blob(vec![1, 2])]
        ),
        as_bin!("map", Value::HashMap(map)),
        as_bin!(
            "geo",
            Value::GeoJson(format!(
                "{{\"type\":\"Point\",\"coordinates\":[{},{}]}}",
                i % 90,
                i % 45
            ))
        ),
        as_bin!("version", i64::from(version)),
    ];
    let mut bins = bins;
    if pad > 0 {
        bins.push(as_bin!(
            "pad",
            (0..pad).map(|j| (j as u32 ^ i) as u8).collect::<Vec<u8>>()
        ));
    }
    let wp = WritePolicy {
        send_key: i.is_multiple_of(2),
        expiration: match i % 3 {
            0 => Expiration::Never,
            1 => Expiration::Seconds(3600 + i),
            _ => Expiration::Seconds(86_400 * 30),
        },
        ..WritePolicy::default()
    };
    // A loaded node may answer 18 DEVICE_OVERLOAD (its write cache is full): retry, as the C
    // client does, a bounded number of times.
    let mut tries = 0;
    loop {
        match client.put(&wp, &key, &bins).await {
            Ok(()) => break,
            Err(e) if tries < 50 && [18, 14, 9, -11].contains(&e.result_code()) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            Err(e) => panic!("put {i} (try {}): {e}", tries + 1),
        }
    }
}

pub async fn put_records(port: u16, range: std::ops::Range<u32>, version: u32) {
    put_records_padded(port, range, version, 0).await;
}

pub async fn put_records_padded(port: u16, range: std::ops::Range<u32>, version: u32, pad: usize) {
    let client = std::sync::Arc::new(connect(port).await);
    let mut tasks = Vec::new();
    let workers = 64u32;
    for w in 0..workers {
        let client = client.clone();
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = range.start + w;
            while i < range.end {
                put_record_padded(&client, i, version, pad).await;
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("put task");
    }
}

/// Every record of the namespace, by digest.
pub async fn scan_all(client: &Client) -> HashMap<[u8; 20], Record> {
    let rs = client
        .query(
            &QueryPolicy::new(),
            PartitionFilter::all(),
            Statement::new(NS, "", Bins::All),
        )
        .await
        .expect("scan");
    let mut stream = rs.into_stream();
    let mut out = HashMap::new();
    while let Some(r) = stream.next().await {
        let r = r.expect("scan record");
        let d = r.key.as_ref().expect("key").digest();
        assert!(out.insert(d, r).is_none(), "digest returned twice by the scan");
    }
    out
}

pub fn ttl(r: &Record) -> Option<u64> {
    r.time_to_live().map(|d| d.as_secs())
}

/// Compares two scans record by record, bin by bin; TTLs within `ttl_slack` seconds.
pub fn assert_same(want: &HashMap<[u8; 20], Record>, got: &HashMap<[u8; 20], Record>, ttl_slack: u64) {
    assert_eq!(got.len(), want.len(), "record counts differ");
    for (d, w) in want {
        let g = got
            .get(d)
            .unwrap_or_else(|| panic!("record {d:?} missing after restore"));
        assert_eq!(g.bins, w.bins, "bins of {:?}", w.key);
        let wk = w.key.as_ref().expect("key");
        let gk = g.key.as_ref().expect("key");
        assert_eq!(gk.set_name(), wk.set_name());
        assert_eq!(gk.user_key(), wk.user_key(), "stored key of {wk:?}");
        match (ttl(w), ttl(g)) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(a.abs_diff(b) <= ttl_slack, "ttl {a} vs {b} for {wk:?}"),
            (a, b) => panic!("ttl {a:?} vs {b:?} for {wk:?}"),
        }
    }
}

pub fn records_wanted() -> u32 {
    std::env::var("BACKUP_E2E_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

pub async fn delete_records(port: u16, range: std::ops::Range<u32>) {
    let client = connect(port).await;
    for i in range {
        let key = Key::new(NS, set_of(i), Value::from(format!("k{i}"))).expect("key");
        assert!(
            client.delete(&WritePolicy::default(), &key).await.expect("delete"),
            "record {i} existed"
        );
    }
}

/// Sleeps past the next second boundary, returns that second (UTC, as `--modified-after`
/// takes it), and sleeps past the one after: every write before the call is older than the
/// returned time, every write after it newer.
pub fn time_boundary() -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let t = now_utc_string();
    std::thread::sleep(Duration::from_millis(1100));
    t
}

/// Issue 4: a full backup and two incrementals with records created, updated and deleted
/// (and deleted records created again) between them; the chain restored into an empty node
/// equals the source exactly, deleted records absent.
pub fn now_utc_string() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}_{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// [`tool`] with extra environment variables (object-store credentials).
pub fn tool_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run bolide-backup");
    eprintln!(
        "bolide-backup {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
