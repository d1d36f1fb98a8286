//! End to end: real `bolide serve` processes, the `bolide-backup` binary, the official client.
//!
//! Needs the node binary: `cargo build -p bolide-node --bin bolide` (found under the target dir,
//! or named by `BOLIDE_BIN`). `BACKUP_E2E_RECORDS` changes the record count (default 20 000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aerospike::query::PartitionFilter;
use aerospike::{as_bin, Bins, Key, QueryPolicy, ReadPolicy, Statement, Value, WritePolicy};
use futures::StreamExt;

mod common;
use common::*;

#[test]
fn backup_restore_round_trip_every_bin_type() {
    let n = records_wanted();
    let src = Node::start();
    let dst = Node::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let backup_dir = dir.path().join("full");
    let rt = runtime();
    rt.block_on(put_records(src.port, 0..n, 1));

    let port = src.port.to_string();
    let bdir = backup_dir.to_str().expect("utf8");
    let msg = tool_ok(&[
        "backup",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        bdir,
        "--parallel",
        "4",
        "--file-limit",
        "1",
    ]);
    assert!(msg.contains(&format!("backup done: {n} records")), "{msg}");
    let files = std::fs::read_dir(&backup_dir).expect("dir").count();
    assert!(files > 1, "1 MiB file limit should rotate: {files} file(s)");

    let dport = dst.port.to_string();
    // Batch writes (the default), small batches so that many go out.
    let msg = tool_ok(&[
        "restore",
        "-h",
        "127.0.0.1",
        "-p",
        &dport,
        "-d",
        bdir,
        "--threads",
        "8",
        "--batch-size",
        "50",
    ]);
    assert!(msg.contains(&format!("{n} written")), "{msg}");

    rt.block_on(async {
        let a = scan_all(&connect(src.port).await).await;
        let b = scan_all(&connect(dst.port).await).await;
        assert_eq!(a.len(), n as usize);
        assert_same(&a, &b, 5);
    });

    // A second restore with the default policy changes nothing (generation GT): all fresher.
    let msg = tool_ok(&["restore", "-p", &dport, "-d", bdir]);
    assert!(msg.contains(&format!("{n} fresher")), "{msg}");
    // --unique, one put per record (asrestore's --disable-batch-writes): all existed.
    let msg = tool_ok(&[
        "restore",
        "-p",
        &dport,
        "-d",
        bdir,
        "--unique",
        "--disable-batch-writes",
    ]);
    assert!(msg.contains(&format!("{n} existed")), "{msg}");

    // Change one record on the target: the default policy keeps the newer target version;
    // --replace --no-generation puts the backup's version back whole (the extra bin goes).
    let k0 = Key::new(NS, set_of(0), Value::from("k0")).expect("key");
    rt.block_on(async {
        let c = connect(dst.port).await;
        c.put(&WritePolicy::default(), &k0, &[as_bin!("int", -1), as_bin!("extra", 1)])
            .await
            .expect("put");
    });
    tool_ok(&["restore", "-p", &dport, "-d", bdir]);
    let get_k0 = || {
        rt.block_on(async {
            let c = connect(dst.port).await;
            c.get(&ReadPolicy::default(), &k0, Bins::All).await.expect("get k0")
        })
    };
    assert_eq!(get_k0().bins.get("extra"), Some(&Value::from(1)));
    let msg = tool_ok(&["restore", "-p", &dport, "-d", bdir, "--replace", "--no-generation"]);
    assert!(msg.contains(&format!("{n} written")), "{msg}");
    let r = get_k0();
    assert_eq!(r.bins.get("extra"), None);
    assert_eq!(r.bins.get("int"), Some(&Value::from(-7)));
    drop((src.log(), dst.log()));
}

#[test]
fn single_file_bins_partitions_and_max_records() {
    let src = Node::start();
    let rt = runtime();
    rt.block_on(put_records(src.port, 0..600, 1));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let port = src.port.to_string();

    // stdout, selected bins, one set.
    let out = tool(&["backup", "-p", &port, "-n", NS, "-o", "-", "-s", "s1", "-B", "int,str"]);
    assert!(out.status.success());
    let text = out.stdout;
    assert!(text.starts_with(b"Version 3.1\n# namespace test\n# first-file\n"));
    let mut reader = bolide_backup::asb::AsbReader::new(&text[..], "stdout");
    let mut count = 0;
    while let Some(r) = reader.next_record().expect("parse") {
        count += 1;
        assert_eq!(r.set.as_deref(), Some("s1"));
        let names: Vec<&str> = r.bins.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
    assert_eq!(count, 200);

    // A partition list: two ranges and a single partition give exactly the records of those.
    let f = dir.path().join("part.asb");
    let fs_ = f.to_str().expect("utf8");
    tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-o",
        fs_,
        "-X",
        "0-100,2000-96,4095",
        "-w",
        "2",
    ]);
    let text = std::fs::read(&f).expect("read");
    let mut reader = bolide_backup::asb::AsbReader::new(&text[..], fs_);
    while let Some(r) = reader.next_record().expect("parse") {
        let pid = u16::from_le_bytes([r.digest[0], r.digest[1]]) % 4096;
        assert!(pid < 100 || (2000..2096).contains(&pid) || pid == 4095, "pid {pid}");
    }

    // --max-records and --no-bins.
    let f2 = dir.path().join("max.asb");
    let msg = tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-o",
        f2.to_str().expect("utf8"),
        "-M",
        "50",
        "--no-bins",
        "-w",
        "3",
    ]);
    assert!(msg.contains("backup done: 50 records"), "{msg}");
}

#[test]
fn hand_written_file_restores_and_corrupt_files_fail_with_their_line() {
    let dst = Node::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let port = dst.port.to_string();
    // Aerospike's documented format, written by hand (spec §9.5 plus one record per bin type).
    let key = Key::new(NS, "hand", Value::from("k1")).expect("key");
    let digest = base64_digest(&key);
    let file = format!(
        "Version 3.1\n# namespace test\n# first-file\n\
         * i test hand int-index N 1 int-bin N\n\
         + k S 2 k1\n+ n test\n+ d {digest}\n+ s hand\n+ g 1\n+ t 0\n+ b 6\n\
         - I int-bin 12345\n- S string-bin 5 ab de\n- D d 0.10000000000000001\n- Z z T\n\
         - B b 4 AAEC\n- L l 8 kgGiA3g=\n"
    );
    let good = dir.path().join("hand.asb");
    std::fs::write(&good, file).expect("write");
    let msg = tool_ok(&["restore", "-p", &port, "-i", good.to_str().expect("utf8")]);
    assert!(msg.contains("1 written"), "{msg}");
    runtime().block_on(async {
        let client = connect(dst.port).await;
        let r = client.get(&ReadPolicy::default(), &key, Bins::All).await.expect("get");
        assert_eq!(r.bins.get("int-bin"), Some(&Value::from(12345)));
        assert_eq!(r.bins.get("string-bin"), Some(&Value::from("ab de")));
        assert_eq!(r.bins.get("d"), Some(&Value::from(0.1)));
        assert_eq!(r.bins.get("z"), Some(&Value::Bool(true)));
        assert_eq!(r.bins.get("b"), Some(&Value::Blob(vec![0, 1, 2])));
        assert_eq!(
            r.bins.get("l"),
            Some(&Value::List(vec![Value::from(1), Value::from("x")]))
        );
    });

    // Truncated: the error names the file and line, and how many records went in before it.
    let bad = dir.path().join("bad.asb");
    std::fs::write(
        &bad,
        format!("Version 3.1\n+ n test\n+ d {digest}\n+ s hand\n+ g 1\n+ t 0\n+ b 1\n- I x 1\n+ n test\n+ d {digest}\n+ g 1\n"),
    )
    .expect("write");
    let out = tool(&["restore", "-p", &port, "-i", bad.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:12: unexpected end of file", bad.display())),
        "{err}"
    );
    assert!(err.contains("records restored before the error"), "{err}");

    let wrong = dir.path().join("wrong.asb");
    std::fs::write(&wrong, "Version 2.0\n").expect("write");
    let out = tool(&["restore", "-p", &port, "-i", wrong.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":1: unsupported version"), "{err}");
}

fn base64_digest(key: &Key) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.digest())
}

/// A full backup, then changes, then an incremental one (`--modified-after`): restoring the
/// chain in order gives the source's final state for every created and updated record.
#[test]
fn incremental_chain_restores_latest_state() {
    let src = Node::start();
    let dst = Node::start();
    let rt = runtime();
    rt.block_on(put_records(src.port, 0..1000, 1));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let full = dir.path().join("full");
    let incr = dir.path().join("incr");
    let port = src.port.to_string();
    tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        full.to_str().expect("utf8"),
        "-w",
        "2",
    ]);

    // The LUT filter has second resolution on the command line: cross a second boundary.
    std::thread::sleep(Duration::from_millis(1100));
    let after = now_utc_string();
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(put_records(src.port, 500..1200, 2)); // 500 updated, 200 created
    let msg = tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        incr.to_str().expect("utf8"),
        "--modified-after",
        &after,
    ]);
    assert!(msg.contains("backup done: 700 records"), "{msg}");

    let dport = dst.port.to_string();
    let list = format!("{},{}", full.display(), incr.display());
    let msg = tool_ok(&["restore", "-p", &dport, "--directory-list", &list]);
    assert!(msg.contains("1700 written"), "{msg}");
    rt.block_on(async {
        let a = scan_all(&connect(src.port).await).await;
        let b = scan_all(&connect(dst.port).await).await;
        assert_eq!(a.len(), 1200);
        assert_same(&a, &b, 5);
    });
}

#[test]
fn incremental_chain_with_deletes_restores_the_exact_state() {
    let src = Node::start();
    let dst = Node::start();
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let (full, incr1, incr2) = (
        dir.path().join("full"),
        dir.path().join("incr1"),
        dir.path().join("incr2"),
    );
    let port = src.port.to_string();
    let backup = |d: &std::path::Path, after: Option<&str>| {
        let mut args = vec![
            "backup",
            "-p",
            &port,
            "-n",
            NS,
            "-d",
            d.to_str().expect("utf8"),
            "-w",
            "3",
        ];
        if let Some(a) = after {
            args.extend(["--modified-after", a]);
        }
        tool_ok(&args)
    };

    rt.block_on(put_records(src.port, 0..1000, 1));
    let msg = backup(&full, None);
    assert!(msg.contains("backup done: 1000 records"), "{msg}");
    assert!(!msg.contains("deletion"), "a full backup has no deletion pass: {msg}");
    assert!(!has_asbd(&full));

    // Round 1: 100 updated, 100 created, 100 old ones deleted, 10 new ones deleted again.
    let after1 = time_boundary();
    rt.block_on(async {
        put_records(src.port, 900..1100, 2).await;
        delete_records(src.port, 0..100).await;
        delete_records(src.port, 1050..1060).await;
    });
    let msg = backup(&incr1, Some(&after1));
    assert!(msg.contains("backup done: 190 records"), "{msg}");
    assert!(msg.contains("110 deletion(s)"), "{msg}");

    // Round 2: 50 of the updated ones deleted, 20 deleted ones created again, 10 new.
    let after2 = time_boundary();
    rt.block_on(async {
        delete_records(src.port, 900..950).await;
        put_records(src.port, 0..20, 3).await;
        put_records(src.port, 2000..2010, 3).await;
    });
    let msg = backup(&incr2, Some(&after2));
    assert!(msg.contains("backup done: 30 records"), "{msg}");
    assert!(msg.contains("50 deletion(s)"), "{msg}");

    let dport = dst.port.to_string();
    let list = format!("{},{},{}", full.display(), incr1.display(), incr2.display());
    let msg = tool_ok(&["restore", "-p", &dport, "--directory-list", &list]);
    assert!(
        msg.contains("160 deletion(s) read, 150 deleted, 10 already absent"),
        "{msg}"
    );
    rt.block_on(async {
        let a = scan_all(&connect(src.port).await).await;
        let b = scan_all(&connect(dst.port).await).await;
        assert_eq!(a.len(), 1000 + 100 - 100 - 10 - 50 + 20 + 10);
        assert_same(&a, &b, 5);
        let client = connect(dst.port).await;
        for i in [0u32, 19, 20, 99, 900, 949, 1055] {
            let key = Key::new(NS, set_of(i), Value::from(format!("k{i}"))).expect("key");
            let exists = client.exists(&ReadPolicy::default(), &key).await.expect("exists");
            assert_eq!(exists, i < 20, "record {i} after the chain");
        }
    });

    // A full backup into an incremental's directory: refused, or with --remove-files the old
    // deletion files (.asbd) go too (they would otherwise be applied with the new backup).
    let i1 = incr1.to_str().expect("utf8");
    assert!(!tool(&["backup", "-p", &port, "-n", NS, "-d", i1]).status.success());
    assert!(has_asbd(&incr1), "the incremental's deletions are in .asbd files");
    tool_ok(&["backup", "-p", &port, "-n", NS, "-d", i1, "--remove-files"]);
    assert!(!has_asbd(&incr1));
}

/// Whether `dir` holds a deletion file (`deletes.asbd` or a one-pass `<ns>_NNNNN.asbd`).
fn has_asbd(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".asbd")))
        .unwrap_or(false)
}

/// `--estimate` on a node with a known content: the record count and size come out within 10 %
/// of the truth (a real backup of the same node), and nothing is written.
#[test]
fn estimate_is_close_and_writes_nothing() {
    let src = Node::start();
    let rt = runtime();
    let n = 30_000u32;
    rt.block_on(put_records_padded(src.port, 0..n, 1, 100));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let port = src.port.to_string();
    let never = dir.path().join("never");
    let out = tool(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        never.to_str().expect("utf8"),
        "--estimate",
    ]);
    assert!(out.status.success());
    assert!(!never.exists(), "--estimate writes nothing");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .take(2)
        .map(|t| t.parse().expect("number"))
        .collect();
    assert!(line.starts_with("estimate: "), "{line}");
    let (records, bytes) = (nums[0], nums[1]);
    let real = dir.path().join("real.asb");
    tool_ok(&["backup", "-p", &port, "-n", NS, "-o", real.to_str().expect("utf8")]);
    let real_bytes = std::fs::metadata(&real).expect("stat").len();
    eprintln!("estimate {records} records {bytes} bytes; real {n} records {real_bytes} bytes");
    assert!(records.abs_diff(u64::from(n)) * 10 <= u64::from(n), "{line}");
    assert!(bytes.abs_diff(real_bytes) * 10 <= real_bytes, "{line} vs {real_bytes}");
    assert!(line.contains("sampled"), "{line}");

    // With --compress zstd: the stored size too, within 15 % of a real compressed backup.
    let out = tool(&["backup", "-p", &port, "-n", NS, "--estimate", "--compress", "zstd"]);
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let packed: u64 = line
        .split(" bytes (")
        .nth(1)
        .and_then(|rest| rest.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no compressed size in {line}"));
    let zst = dir.path().join("real.asb.zst");
    tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-o",
        zst.to_str().expect("utf8"),
        "--compress",
        "zstd",
    ]);
    let zst_bytes = std::fs::metadata(&zst).expect("stat").len();
    eprintln!("compressed estimate {packed} bytes; real {zst_bytes} bytes");
    assert!(
        packed.abs_diff(zst_bytes) * 100 <= zst_bytes * 15,
        "{line} vs {zst_bytes}"
    );
    // The progress bar's total: the node's object count.
    let objects = rt.block_on(async { bolide_backup::backup::namespace_objects(&connect(src.port).await, NS).await });
    assert_eq!(objects, Some(u64::from(n)));
}

/// Issue 4: a restore into a node that runs out of space exits non-zero, reports the failures by
/// result code (8, OUT_OF_SPACE, spec §5), and every record it reported as written reads back
/// equal to the source (nothing else is on the target).
#[test]
fn restore_into_a_full_node_reports_out_of_space() {
    let src = Node::start();
    let rt = runtime();
    let n = 20_000u32;
    rt.block_on(put_records_padded(src.port, 0..n, 1, 1024));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let bdir = dir.path().join("b");
    let port = src.port.to_string();
    tool_ok(&["backup", "-p", &port, "-n", NS, "-d", bdir.to_str().expect("utf8")]);
    // Two shards of 8 MiB (8 wblocks of 1 MiB each): far less than the ~30 MB backed up.
    let dst = Node::start_with_shard_bytes(8 << 20);
    let dport = dst.port.to_string();
    let out = tool(&[
        "restore",
        "-p",
        &dport,
        "-d",
        bdir.to_str().expect("utf8"),
        "--threads",
        "4",
    ]);
    assert!(
        !out.status.success(),
        "a restore that could not write everything must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("[result code 8: "),
        "failures counted by result code: {err}"
    );
    assert!(
        err.contains("restore stopped at the first failed record") && err.contains("(result code 8"),
        "the first failure is named: {err}"
    );
    let written: u64 = err
        .split(" written,")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no written count in {err}"));
    assert!(written > 0 && written < u64::from(n), "written {written}");
    rt.block_on(async {
        let want = scan_all(&connect(src.port).await).await;
        let got = scan_all(&connect(dst.port).await).await;
        assert_eq!(
            got.len() as u64,
            written,
            "exactly the records reported written are there"
        );
        for (d, g) in &got {
            let w = want.get(d).expect("a restored record is a source record");
            assert_eq!(g.bins, w.bins);
        }
    });
}

/// Streams every record of `src` and reads it back from `dst` by digest (32 reads in flight),
/// comparing bins, stored key and TTL (within `ttl_slack` s); returns the number compared.
async fn verify_streaming(src: u16, dst: u16, ttl_slack: u64) -> u64 {
    use futures::stream::FuturesUnordered;
    let a = connect(src).await;
    let b = std::sync::Arc::new(connect(dst).await);
    let rs = a
        .query(
            &QueryPolicy::new(),
            PartitionFilter::all(),
            Statement::new(NS, "", Bins::All),
        )
        .await
        .expect("scan");
    let mut stream = rs.into_stream();
    let mut pending = FuturesUnordered::new();
    let mut n = 0u64;
    loop {
        if pending.len() >= 32 {
            pending.next().await;
            continue;
        }
        let Some(r) = stream.next().await else { break };
        let w = r.expect("scan record");
        let b = b.clone();
        pending.push(async move {
            let wk = w.key.clone().expect("key");
            let key = Key::with_digest(NS, wk.set_name(), None, wk.digest());
            let g = b
                .get(&ReadPolicy::default(), &key, Bins::All)
                .await
                .unwrap_or_else(|e| panic!("get {wk:?}: {e}"));
            assert_eq!(g.bins, w.bins, "bins of {wk:?}");
            match (ttl(&w), ttl(&g)) {
                (None, None) => {}
                (Some(x), Some(y)) => assert!(x.abs_diff(y) <= ttl_slack, "ttl {x} vs {y} for {wk:?}"),
                (x, y) => panic!("ttl {x:?} vs {y:?} for {wk:?}"),
            }
        });
        n += 1;
    }
    while pending.next().await.is_some() {}
    n
}

/// The 1 M x 1 KiB round trip (run by hand with release builds; see backup/README.md):
/// `BACKUP_BENCH_RECORDS` (default 1 000 000) records of every bin type plus a 1 KiB blob, backup
/// with --parallel 4 to a directory, restore with 16 writers into a fresh node, every record
/// compared bin by bin. Prints the tools' summary lines (records/s, MiB/s).
#[test]
#[ignore = "long: run by hand with --release"]
fn round_trip_1m_records_1kib() {
    let n: u32 = std::env::var("BACKUP_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let shard_bytes = 4u64 << 30;
    let src = Node::start_with_shard_bytes(shard_bytes);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let bdir = dir.path().join("full");
    let rt = runtime();
    let t = Instant::now();
    rt.block_on(put_records_padded(src.port, 0..n, 1, 1024));
    eprintln!("loaded {n} records in {:.1} s", t.elapsed().as_secs_f64());

    let port = src.port.to_string();
    let b = bdir.to_str().expect("utf8");
    let msg = tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        b,
        "--parallel",
        "4",
        "--progress-secs",
        "30",
    ]);
    assert!(msg.contains(&format!("backup done: {n} records")), "{msg}");
    // Batch writes (the default, 128 records a batch), then one put per record into a second
    // fresh node; both compared record by record.
    for single in [false, true] {
        let dst = Node::start_with_shard_bytes(shard_bytes);
        let dport = dst.port.to_string();
        let mut args = vec![
            "restore",
            "-p",
            &dport,
            "-d",
            b,
            "--threads",
            "16",
            "--progress-secs",
            "30",
        ];
        if single {
            args.push("--disable-batch-writes");
        }
        let msg = tool_ok(&args);
        assert!(msg.contains(&format!("{n} written")), "{msg}");
        let t = Instant::now();
        let compared = rt.block_on(verify_streaming(src.port, dst.port, 30));
        assert_eq!(compared, u64::from(n));
        eprintln!(
            "{} restore: compared {compared} records bin by bin in {:.1} s",
            if single { "single-put" } else { "batched" },
            t.elapsed().as_secs_f64()
        );
    }
}

/// A backup killed (SIGKILL) half way, then `--continue <state>`: the files hold exactly the
/// source's records, each once. Plain .asb files, and zstd + AES-256-GCM framed ones (the
/// resume cuts framed files back to a chunk boundary and seals them).
#[test]
fn killed_backup_continues_without_duplicates_or_gaps() {
    let src = Node::start();
    let rt = runtime();
    let n = 60_000u32;
    rt.block_on(put_records(src.port, 0..n, 1));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let key = dir.path().join("key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").expect("key");
    let key_s = key.to_str().expect("utf8").to_string();
    let want: std::collections::HashSet<[u8; 20]> =
        rt.block_on(async { scan_all(&connect(src.port).await).await.into_keys().collect() });
    for framed in [false, true] {
        let bdir = dir.path().join(if framed { "framed" } else { "plain" });
        let b = bdir.to_str().expect("utf8").to_string();
        let port = src.port.to_string();
        let mut args = vec![
            "backup",
            "-p",
            &port,
            "-n",
            NS,
            "-d",
            &b,
            "-w",
            "2",
            "--file-limit",
            "1",
            // Slow enough (6 s) that the kill below lands mid-backup.
            "--records-per-second",
            "10000",
        ];
        if framed {
            args.extend([
                "--compress",
                "zstd",
                "--encrypt",
                "aes256",
                "--encryption-key-file",
                &key_s,
            ]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
            .args(&args)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Kill (SIGKILL) as soon as the saved state records some progress.
        let state = bdir.join(format!("{NS}.asb.state"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            if text.contains("\nfile ") && (text.contains("\npartial ") || text.contains("\ndone ")) {
                break;
            }
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "the backup ended before any checkpoint"
            );
            assert!(Instant::now() < deadline, "no checkpoint within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(killed, "the backup (at 10 000 records/s) ended before the kill");
        assert!(state.exists(), "a killed backup leaves its state");
        let mut resume: Vec<&str> = args.clone();
        let s = state.to_str().expect("utf8").to_string();
        resume.extend(["--continue", &s]);
        let msg = tool_ok(&resume);
        assert!(msg.contains("backup done"), "{msg}");
        assert!(!state.exists(), "a finished backup removes its state");
        let master = bolide_backup::frame::MasterKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let mut seen = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&bdir).expect("dir") {
            let path = entry.expect("entry").path();
            let name = path.display().to_string();
            let file = std::fs::File::open(&path).expect("open");
            if framed {
                assert!(bolide_backup::frame::check_file(&path, Some(&master)).expect("header"));
            }
            let input = bolide_backup::frame::open_reader(Box::new(file), &name, Some(&master)).expect("open");
            let mut r = bolide_backup::asb::AsbReader::new(input, name);
            while let Some(rec) = r.next_record().expect("parse") {
                assert!(seen.insert(rec.digest), "digest twice in the backup");
            }
        }
        assert_eq!(seen.len(), want.len());
        assert!(seen == want, "backup record set differs from the source");
        eprintln!(
            "framed {framed}: killed mid-backup, resumed; {} records, each once",
            seen.len()
        );
    }
}

/// `--compress zstd`, `--encrypt aes256` and both: directory and single-file backups restore to
/// the source's records; the files are framed (not .asb text) and smaller when compressed.
#[test]
fn compressed_and_encrypted_backups_round_trip() {
    let src = Node::start();
    let rt = runtime();
    rt.block_on(put_records_padded(src.port, 0..3000, 1, 200));
    let want = rt.block_on(async { scan_all(&connect(src.port).await).await });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN KEY-----\nnot a real pem, any bytes do\n-----END KEY-----\n",
    )
    .expect("key");
    let key_s = key.to_str().expect("utf8").to_string();
    let port = src.port.to_string();
    let plain = dir.path().join("plain");
    tool_ok(&["backup", "-p", &port, "-n", NS, "-d", plain.to_str().expect("utf8")]);
    let plain_bytes = dir_bytes(&plain);
    for (name, flags) in [
        ("zstd", vec!["--compress", "zstd"]),
        ("aes", vec!["--encrypt", "aes256", "--encryption-key-file", &key_s]),
        (
            "both",
            vec![
                "--compress",
                "zstd",
                "--encrypt",
                "aes256",
                "--encryption-key-file",
                &key_s,
            ],
        ),
    ] {
        let bdir = dir.path().join(name);
        let b = bdir.to_str().expect("utf8");
        let mut args = vec!["backup", "-p", &port, "-n", NS, "-d", b, "-w", "2"];
        args.extend(flags.iter().copied());
        tool_ok(&args);
        let first = std::fs::read(bdir.join(format!("{NS}_00000.asb"))).expect("read");
        assert_eq!(&first[..8], b"BOLIDEBK", "{name}: a framed file");
        let bytes = dir_bytes(&bdir);
        if name != "aes" {
            assert!(bytes < plain_bytes / 2, "{name}: {bytes} vs plain {plain_bytes}");
        }
        // One file to restore too.
        let one = dir.path().join(format!("{name}.asb"));
        let mut args = vec!["backup", "-p", &port, "-n", NS, "-o", one.to_str().expect("utf8")];
        args.extend(flags.iter().copied());
        tool_ok(&args);

        for (source, path) in [("-d", b), ("-i", one.to_str().expect("utf8"))] {
            let dst = Node::start();
            let dport = dst.port.to_string();
            // The restore's spelling: --compress zstd --encrypt aes256 --encryption-key-file.
            let mut args = vec!["restore", "-p", &dport, source, path];
            args.extend(flags.iter().copied());
            let msg = tool_ok(&args);
            assert!(msg.contains("3000 written"), "{name} {source}: {msg}");
            let got = rt.block_on(async { scan_all(&connect(dst.port).await).await });
            assert_same(&want, &got, 5);
        }
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum()
}

fn node_is_empty(port: u16) -> bool {
    runtime().block_on(async { scan_all(&connect(port).await).await.is_empty() })
}

/// A wrong key is found before any record is written (every file of the chain is checked
/// first, even when the first directory is plain); a truncated or corrupted encrypted file stops
/// the restore with the file named and a non-zero exit.
#[test]
fn wrong_key_and_damaged_encrypted_files_fail_clearly() {
    let src = Node::start();
    let rt = runtime();
    // About 3 MB of .asb text: three 1 MiB chunks, so that damage past the first one leaves
    // records restored before it.
    rt.block_on(put_records_padded(src.port, 0..4000, 1, 300));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let (key, wrong) = (dir.path().join("key"), dir.path().join("wrong"));
    std::fs::write(&key, b"right key").expect("key");
    std::fs::write(&wrong, b"wrong key").expect("key");
    let (key_s, wrong_s) = (key.to_str().expect("utf8"), wrong.to_str().expect("utf8"));
    let port = src.port.to_string();
    let plain = dir.path().join("plain");
    let enc = dir.path().join("enc");
    tool_ok(&["backup", "-p", &port, "-n", NS, "-d", plain.to_str().expect("utf8")]);
    tool_ok(&[
        "backup",
        "-p",
        &port,
        "-n",
        NS,
        "-d",
        enc.to_str().expect("utf8"),
        "--encrypt",
        "aes256",
        "--encryption-key-file",
        key_s,
    ]);

    let dst = Node::start();
    let dport = dst.port.to_string();
    let list = format!("{},{}", plain.display(), enc.display());
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "-p", &dport];
        args.extend(extra);
        tool(&args)
    };
    // Wrong key: refused before anything is written, even the plain first directory.
    let out = restore(&[
        "--directory-list",
        &list,
        "--encrypt",
        "aes256",
        "--encryption-key-file",
        wrong_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: wrong encryption key",
            enc.join(format!("{NS}_00000.asb")).display()
        )),
        "{err}"
    );
    assert!(node_is_empty(dst.port), "nothing written with a wrong key");
    // Stdin: the header is checked before the first record too.
    let out = Command::new(env!("CARGO_BIN_EXE_bolide-backup"))
        .args([
            "restore",
            "-p",
            &dport,
            "-i",
            "-",
            "--encrypt",
            "aes256",
            "--encryption-key-file",
            wrong_s,
        ])
        .stdin(std::fs::File::open(enc.join(format!("{NS}_00000.asb"))).expect("open"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdin>: wrong encryption key"));
    assert!(node_is_empty(dst.port));
    // No key at all.
    let out = restore(&["-d", enc.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --encryption-key-file"));
    assert!(node_is_empty(dst.port));

    // Truncated: the file is named, with the records restored before the error.
    let file = enc.join(format!("{NS}_00000.asb"));
    let bytes = std::fs::read(&file).expect("read");
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).expect("dir");
    let cut = damaged.join("cut.asb");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let out = restore(&[
        "-i",
        cut.to_str().expect("utf8"),
        "--encrypt",
        "aes256",
        "--encryption-key-file",
        key_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}", cut.display())) && err.contains("truncated"),
        "{err}"
    );
    let before = restored_before(&err);
    assert!(before > 0 && before < 4000, "{err}");
    assert_eq!(
        rt.block_on(async { scan_all(&connect(dst.port).await).await.len() as u64 }),
        before
    );

    // Corrupted: one flipped byte in the middle fails the chunk's authentication.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let bad = damaged.join("flipped.asb");
    std::fs::write(&bad, &flipped).expect("write");
    let out = restore(&[
        "-i",
        bad.to_str().expect("utf8"),
        "--encrypt",
        "aes256",
        "--encryption-key-file",
        key_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}", bad.display())) && (err.contains("authentication") || err.contains("corrupt")),
        "{err}"
    );
    assert!(err.contains("records restored before the error"), "{err}");
}

/// The count in "N records restored before the error".
fn restored_before(err: &str) -> u64 {
    err.split(" records restored before the error")
        .next()
        .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restored count in {err}"))
}
