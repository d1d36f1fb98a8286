//! End to end against a real S3-protocol server: moto's standalone server (`moto_server`, from
//! `pip install 'moto[server]'`; `scripts/test.sh` installs it) started by each test on
//! 127.0.0.1, a port in 3500-3599. Backups to `s3://` restore record by record; files bigger
//! than a part go up as multipart uploads; an outage of the store (a proxy in front of it
//! stopped) is retried and reported; a killed backup and one that failed on a long outage are
//! continued with `--continue`, every record exactly once.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bolide_backup::target::Target;

mod common;
use common::*;

const CREDS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// The next port to try in the backup room's range (tests of this binary run in parallel).
static NEXT_PORT: Mutex<u16> = Mutex::new(3500);

fn free_port() -> u16 {
    let mut next = NEXT_PORT.lock().expect("port lock");
    for _ in 0..100 {
        let p = *next;
        *next = if p >= 3599 { 3500 } else { p + 1 };
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 3500-3599");
}

/// A moto S3 server with one bucket, killed on drop.
struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    fn start(bucket: &str) -> Moto {
        // A port checked free can be taken before moto binds it (tests start servers in
        // parallel): a server that exits or does not answer the bucket creation is started
        // again on another port.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server (pip install 'moto[server]'; scripts/test.sh does)");
            let mut moto = Moto { port, child };
            match moto.create_bucket(bucket) {
                Ok(()) => return moto,
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// Waits for the server and creates the bucket (moto accepts an unsigned request).
    fn create_bucket(&mut self, bucket: &str) -> Result<(), String> {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("moto_server on {port} exited: {status}"));
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let sent = write!(
                    s,
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut answer = String::new();
                if sent.is_ok() && s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no bucket on {port} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the store: stopping it is an outage as the client sees one
/// (connections dropped, new ones refused); starting it again on the same port ends it.
struct Proxy {
    port: u16,
    upstream: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking");
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut list = conns2.lock().expect("conns");
                        list.push(client.try_clone().expect("clone"));
                        list.push(server.try_clone().expect("clone"));
                        for (mut from, mut to) in [
                            (client.try_clone().expect("clone"), server.try_clone().expect("clone")),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            upstream,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every connection.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            a.join().expect("proxy accept thread");
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restart(&mut self) {
        self.stop();
        *self = Proxy::start(self.port, self.upstream);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test's own view of `s3://bucket/prefix` on `endpoint`.
fn store(endpoint: &str, bucket: &str, prefix: &str) -> Target {
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_allow_http(true)
        .build()
        .expect("s3 client");
    Target::object(Arc::new(s3), prefix, &format!("s3://{bucket}"))
}

/// Every record digest in the backup files of `t`, asserting none appears twice.
fn digests_once(t: &Target) -> HashSet<[u8; 20]> {
    let mut seen = HashSet::new();
    for (name, _) in t.list().expect("list") {
        if !name.ends_with(".asb") {
            continue;
        }
        let input = bolide_backup::frame::open_reader(t.open(&name).expect("open"), &name, None).expect("reader");
        let mut r = bolide_backup::asb::AsbReader::new(input, name.clone());
        while let Some(rec) = r.next_record().expect("parse") {
            assert!(seen.insert(rec.digest), "a digest twice in the backup ({name})");
        }
    }
    seen
}

fn source_digests(port: u16) -> HashSet<[u8; 20]> {
    runtime().block_on(async { scan_all(&connect(port).await).await.into_keys().collect() })
}

/// Full backup to s3:// (files of two 8 MiB parts and more: multipart uploads), restored into
/// an empty node and compared record by record; a compressed and encrypted one likewise.
#[test]
fn s3_backup_restores_record_by_record() {
    let moto = Moto::start("bkt");
    let src = Node::start();
    let rt = runtime();
    // About 30 MiB of .asb text: each of the two jobs' files spans two parts or more.
    rt.block_on(put_records_padded(src.port, 0..24_000, 1, 800));
    let want = rt.block_on(async { scan_all(&connect(src.port).await).await });
    let port = src.port.to_string();
    let ep = moto.endpoint();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let key = dir.path().join("key");
    std::fs::write(&key, b"object store test key").expect("key");
    let key_s = key.to_str().expect("utf8");
    for (prefix, framed) in [("full", false), ("framed", true)] {
        let url = format!("s3://bkt/nightly/{prefix}");
        let mut args = vec![
            "backup", "-p", &port, "-n", NS, "-d", &url, "-w", "2", "--s3-endpoint-override", &ep,
        ];
        if framed {
            args.extend(["--compress", "zstd", "--encrypt", "aes256", "--encryption-key-file", key_s]);
        }
        let out = tool_env(&args, &CREDS);
        assert!(out.status.success(), "backup to {url}");
        let t = store(&ep, "bkt", &format!("nightly/{prefix}"));
        let files = t.list().expect("list");
        assert!(files.iter().all(|(n, _)| n.ends_with(".asb")), "{files:?}");
        assert!(!files.iter().any(|(n, _)| n.ends_with(".state")), "the state is removed");
        if !framed {
            assert!(
                files.iter().any(|(_, size)| *size > 2 * bolide_backup::target::PART_BYTES as u64),
                "a file spans more than two parts: {files:?}"
            );
            assert_eq!(digests_once(&t), want.keys().copied().collect::<HashSet<_>>());
        }
        // A second backup into the same prefix needs --remove-files.
        let again = tool_env(&args, &CREDS);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already holds backup files"));

        let dst = Node::start();
        let dport = dst.port.to_string();
        let mut rargs = vec!["restore", "-p", &dport, "-d", &url, "--s3-endpoint-override", &ep];
        if framed {
            // The restore's spelling, as for local backups.
            rargs.extend(["--compress", "zstd", "--encrypt", "aes256", "--encryption-key-file", key_s]);
        }
        let out = tool_env(&rargs, &CREDS);
        assert!(out.status.success(), "restore from {url}");
        let got = rt.block_on(async { scan_all(&connect(dst.port).await).await });
        assert_same(&want, &got, 5);
    }
}

/// The store goes away for 3 s in the middle of a backup: the client's retries are reported on
/// stderr and the backup completes whole.
#[test]
fn s3_outage_mid_backup_is_retried_and_reported() {
    let moto = Moto::start("bkt");
    let mut proxy = Proxy::start(free_port(), moto.port);
    let src = Node::start();
    let rt = runtime();
    rt.block_on(put_records_padded(src.port, 0..20_000, 1, 200));
    let want = source_digests(src.port);
    let port = src.port.to_string();
    let ep = proxy.endpoint();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args([
            "backup", "-p", &port, "-n", NS, "-d", "s3://bkt/outage", "-w", "2",
            "--s3-endpoint-override", &ep,
            // 1 MiB files (an upload about every 0.3 s) over about 5 s.
            "--file-limit", "1", "--records-per-second", "4000",
        ])
        .envs(CREDS)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    proxy.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().expect("try_wait").is_none(), "the backup ended during the outage");
    proxy.restart();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "the backup failed over a 3 s outage");
    assert!(stderr.contains("retry"), "no retry reported: {stderr}");
    assert_eq!(digests_once(&store(&moto.endpoint(), "bkt", "outage")), want);
}

/// The S3 server itself stopped (SIGSTOP: it holds its connections and answers nothing) for
/// 4 s in the middle of a backup, then continued: requests time out (`--object-timeout-secs
/// 1`), the retries are reported on stderr, and the backup completes with every record once.
#[test]
fn s3_server_stopped_mid_backup_is_retried_and_reported() {
    let moto = Moto::start("bkt");
    let src = Node::start();
    let rt = runtime();
    rt.block_on(put_records_padded(src.port, 0..20_000, 1, 200));
    let want = source_digests(src.port);
    let port = src.port.to_string();
    let ep = moto.endpoint();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args([
            "backup", "-p", &port, "-n", NS, "-d", "s3://bkt/stopped", "-w", "2",
            "--s3-endpoint-override", &ep, "--object-timeout-secs", "1",
            "--file-limit", "1", "--records-per-second", "4000",
        ])
        .envs(CREDS)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    let pid = moto.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP").success());
    std::thread::sleep(Duration::from_secs(4));
    let running = child.try_wait().expect("try_wait").is_none();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT").success());
    assert!(running, "the backup ended while the server was stopped");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "the backup failed over a 4 s server stop");
    assert!(stderr.contains("retry"), "no retry reported: {stderr}");
    assert_eq!(digests_once(&store(&ep, "bkt", "stopped")), want);
}

/// A backup killed (SIGKILL) midway (as soon as the state names a completed file, and again
/// later, with many files and partitions split across files), and one that gives up on a long
/// outage (its last state save fails too), all finish with `--continue`: every record once in
/// the files, none missing, and the backup restored into an empty node equals the source record
/// by record. `BACKUP_CONTINUE_RECORDS` changes the size (30 000 by default).
#[test]
fn s3_killed_or_failed_backup_continues() {
    let moto = Moto::start("bkt");
    let mut proxy = Proxy::start(free_port(), moto.port);
    let src = Node::start();
    let rt = runtime();
    let n: u32 = std::env::var("BACKUP_CONTINUE_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    rt.block_on(put_records_padded(src.port, 0..n, 1, 200));
    let want = rt.block_on(async { scan_all(&connect(src.port).await).await });
    let want_digests: HashSet<[u8; 20]> = want.keys().copied().collect();
    let port = src.port.to_string();
    for (prefix, how, files_first) in [("killed", "kill", 1), ("killed-late", "kill", 6), ("failed", "outage", 1)] {
        let url = format!("s3://bkt/{prefix}");
        let ep = proxy.endpoint();
        let args = vec![
            "backup", "-p", &port, "-n", NS, "-d", &url, "-w", "2", "--s3-endpoint-override", &ep,
            "--file-limit", "1", "--records-per-second", "5000", "--object-retry-secs", "2",
        ];
        let mut child = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
            .args(&args)
            .envs(CREDS)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Wait until the state in the bucket names `files_first` completed files.
        let t = store(&moto.endpoint(), "bkt", prefix);
        let state_name = format!("{NS}.asb.state");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = t.read_small(&state_name).expect("read state").unwrap_or_default();
            if String::from_utf8_lossy(&text).matches("\nfile ").count() >= files_first {
                break;
            }
            assert!(child.try_wait().expect("try_wait").is_none(), "the backup ended before a checkpoint");
            assert!(Instant::now() < deadline, "no checkpoint within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        if how == "kill" {
            assert!(child.try_wait().expect("try_wait").is_none(), "the backup ended before the kill");
            child.kill().expect("kill");
            let _ = child.wait();
        } else {
            proxy.stop();
            let out = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!("{stderr}");
            assert!(!out.status.success(), "the backup succeeded without its store");
            assert!(stderr.contains("resume with --continue"), "{stderr}");
            proxy.restart();
        }
        let mut resume = args.clone();
        resume.extend(["--continue", state_name.as_str()]);
        let out = tool_env(&resume, &CREDS);
        assert!(out.status.success(), "--continue after {how} ({prefix})");
        assert!(t.read_small(&state_name).expect("read").is_none(), "the state is removed");
        assert_eq!(digests_once(&t), want_digests, "after {how} ({prefix})");
        let dst = Node::start();
        let dport = dst.port.to_string();
        let out = tool_env(&["restore", "-p", &dport, "-d", &url, "--s3-endpoint-override", &ep], &CREDS);
        assert!(out.status.success(), "restore of {url}");
        let got = rt.block_on(async { scan_all(&connect(dst.port).await).await });
        assert_same(&want, &got, 5);
    }
}

/// One write of the chain test's writer: record `key` set to `version` (`None`: deleted),
/// acknowledged between `start_ms` and `end_ms` (Unix ms, the test's clock; the node's is the
/// same host's).
#[derive(Clone, Copy)]
struct Op {
    key: u32,
    version: Option<u32>,
    start_ms: i64,
    end_ms: i64,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Issue 16's chain: `bolide-backup service` runs a full and then an incremental every 2 s
/// (a cron schedule with seconds) to s3:// while a writer creates, updates, deletes and creates
/// again records the whole time. Then `restore --target --time T` to three times (after the
/// full, after an incremental in the middle, after the last run) into empty nodes, each compared
/// record by record with the source's state: a scan is not a snapshot, so for the last run
/// included (started S, finished E) every record must be in a state it had between S and E
/// (all writes acknowledged before S applied, none started after E), bins checked against the
/// version written; a record no write touched in that window must be exactly as at S.
///
/// Defrag is held back (`defrag_lwm_pct = 1`): at the default 50 % this churn (3 000 keys
/// rewritten and deleted at random) had defrag drop tombstones within a second of their delete
/// (a wblock holding a record's older copy and its tombstone freed whole), so an incremental
/// two seconds later could not see the delete: the documented limit of tombstone capture
/// (docs/OPERATIONS.md, "Incremental backups and deletes"), not a gap of the chain.
#[test]
fn s3_chain_with_writes_restores_to_three_times() {
    let moto = Moto::start("bkt");
    let src = Node::start_with_config(268_435_456, "[storage]\ndefrag_lwm_pct = 1\n");
    let rt = runtime();
    let keys = 3000u32;
    rt.block_on(put_records(src.port, 0..2000, 1));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let cfg = dir.path().join("bolide.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\n[[backup.policy]]\nname = \"chain\"\nnamespace = \"{NS}\"\n\
             target = \"s3://bkt/chain\"\nschedule = \"*/2 * * * * *\"\noverlap_secs = 1\nparallel = 2\n\
             s3_endpoint_override = \"{}\"\n",
            src.port,
            moto.endpoint()
        ),
    )
    .expect("config");
    // The writer: one op at a time (so a key's ops are ordered), each logged with its times.
    let t0 = unix_ms();
    let mut initial: Vec<Op> = (0..2000)
        .map(|key| Op { key, version: Some(1), start_ms: 0, end_ms: t0 - 1 })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, port) = (stop.clone(), src.port);
        rt.spawn(async move {
            let client = connect(port).await;
            let mut log = Vec::new();
            let mut exists: Vec<bool> = (0..keys).map(|k| k < 2000).collect();
            let mut version = 2u32;
            let mut x = 0x9e37_79b9_u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = (x % u64::from(keys)) as u32;
                let start_ms = unix_ms();
                let v = if exists[key as usize] && x.is_multiple_of(3) {
                    let k = aerospike::Key::new(NS, set_of(key), aerospike::Value::from(format!("k{key}"))).expect("key");
                    assert!(client.delete(&aerospike::WritePolicy::default(), &k).await.expect("delete"));
                    None
                } else {
                    version += 1;
                    put_record_padded(&client, key, version, 0).await;
                    Some(version)
                };
                exists[key as usize] = v.is_some();
                log.push(Op { key, version: v, start_ms, end_ms: unix_ms() });
            }
            log
        })
    };
    let mut service = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args(["service", "--config", cfg.to_str().expect("utf8")])
        .envs(CREDS)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn service");
    // Wait for the full and four incrementals in the catalogue.
    let root = store(&moto.endpoint(), "bkt", "chain");
    let deadline = Instant::now() + Duration::from_secs(90);
    let cat = loop {
        let cat = bolide_backup::catalogue::Catalogue::load(&root).expect("catalogue");
        if cat.runs.len() >= 5 {
            break cat;
        }
        assert!(service.try_wait().expect("try_wait").is_none(), "the service ended");
        assert!(Instant::now() < deadline, "five runs did not happen within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    let _ = service.kill();
    let out = service.wait_with_output().expect("service");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let mut ops = rt.block_on(writer).expect("writer");
    assert!(ops.len() > 1000, "the writer wrote only {} times", ops.len());
    let runs: Vec<_> = cat.runs.iter().take(5).cloned().collect();
    assert!(runs.iter().all(|r| r.ok()), "{cat}");
    assert_eq!(runs[0].kind, bolide_backup::catalogue::Kind::Full);
    assert!(runs[1..].iter().all(|r| r.kind == bolide_backup::catalogue::Kind::Incremental));
    let during = |r: &bolide_backup::catalogue::Run| {
        ops.iter().filter(|o| o.end_ms >= r.started_ms && o.start_ms <= r.finished_ms).count()
    };
    for r in &runs {
        eprintln!("run {} {}..{}: {} writes during it, {} deletes", r.id, r.started_ms, r.finished_ms, during(r), r.deletes);
    }
    assert!(runs[1..].iter().any(|r| r.deletes > 0), "no incremental captured a delete");
    initial.append(&mut ops);
    let ops = initial;
    let ep = moto.endpoint();
    for k in [0usize, 2, 4] {
        let last = &runs[k];
        // The allowed states of every key: after each of its ops from the last one acknowledged
        // before `last` started to the last one started before it finished.
        let mut by_key: HashMap<u32, Vec<Op>> = HashMap::new();
        for o in &ops {
            by_key.entry(o.key).or_default().push(*o);
        }
        let time = last.finished_ms.to_string();
        let dst = Node::start();
        let dport = dst.port.to_string();
        let out = tool_env(
            &["restore", "-p", &dport, "--target", "s3://bkt/chain", "--time", &time, "--s3-endpoint-override", &ep],
            &CREDS,
        );
        assert!(out.status.success(), "restore to {time}");
        let got = rt.block_on(async { scan_all(&connect(dst.port).await).await });
        let mut got_by_key: HashMap<u32, &aerospike::Record> = HashMap::new();
        for r in got.values() {
            let Some(aerospike::Value::String(s)) = r.bins.get("str") else { panic!("no str bin: {r:?}") };
            let key: u32 = s.strip_prefix("value ").and_then(|t| t.split(' ').next()).and_then(|t| t.parse().ok()).expect("key in str");
            assert!(got_by_key.insert(key, r).is_none(), "key {key} twice");
        }
        let (mut exact, mut windowed) = (0, 0);
        for key in 0..keys {
            let hist = by_key.get(&key).map_or(&[][..], Vec::as_slice);
            let lo = hist.iter().take_while(|o| o.end_ms < last.started_ms).count();
            let hi = hist.iter().take_while(|o| o.start_ms <= last.finished_ms).count().max(lo);
            // State after j ops: the version of op j-1 (None: absent / deleted).
            let state = |j: usize| if j == 0 { None } else { hist[j - 1].version };
            let allowed: Vec<Option<u32>> = (lo..=hi).map(state).collect();
            if lo == hi { exact += 1 } else { windowed += 1 }
            let have = got_by_key.get(&key).map(|r| {
                let v = match r.bins.get("version") {
                    Some(aerospike::Value::Int(v)) => *v as u32,
                    other => panic!("key {key}: version bin {other:?}"),
                };
                // Every bin as the writer wrote that version.
                assert_eq!(r.bins.get("int"), Some(&aerospike::Value::Int(i64::from(key) * 1_000_003 - 7)), "key {key}");
                assert_eq!(
                    r.bins.get("str"),
                    Some(&aerospike::Value::String(format!("value {key} v{v} with space\nand LF \\"))),
                    "key {key}"
                );
                assert_eq!(r.bins.len(), 9, "key {key}: bins {:?}", r.bins.keys().collect::<Vec<_>>());
                v
            });
            if !allowed.contains(&have) {
                let d = aerospike::Key::new(NS, set_of(key), aerospike::Value::from(format!("k{key}"))).expect("key").digest();
                for r in &runs {
                    let t = root.child(&r.id);
                    for (name, _) in t.list().expect("list") {
                        let input = bolide_backup::frame::open_reader(t.open(&name).expect("open"), &name, None).expect("reader");
                        let mut rd = bolide_backup::asb::AsbReader::new(input, name.clone());
                        while let Some(rec) = rd.next_record().expect("parse") {
                            if rec.digest == d {
                                eprintln!("key {key} in run {} file {name}: {} bins", r.id, rec.bins.len());
                            }
                        }
                    }
                }
            }
            assert!(
                allowed.contains(&have),
                "restore to run {k} ({}): key {key} is {have:?}, allowed {allowed:?}; its writes (version, start, end ms): {:?}; runs (start, end, after s): {:?}",
                last.id,
                hist.iter().map(|o| (o.version, o.start_ms, o.end_ms)).collect::<Vec<_>>(),
                runs.iter().map(|r| (r.started_ms, r.finished_ms, r.after)).collect::<Vec<_>>()
            );
        }
        eprintln!("restore to run {k}: {} records; {exact} keys exact, {windowed} written during the run", got.len());
    }
}
