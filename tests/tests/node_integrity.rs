//! Node start-up safety (issue 12), with real `bolide` processes on real shard files through
//! io_uring: one node per data directory, damaged or truncated shard files refused with their
//! path, settings that would change files refused before anything is written. Each test is
//! named after the defect of the issue it covers.

use bolide_tests::node::{bolide_bin, Node};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// Runs `bolide serve` on `config` (written into `dir`), expecting it to refuse to start; returns
/// its stderr. Panics (after stopping it) if it is still running after 30 s.
fn refused(dir: &Path, config: &str) -> String {
    let cfg = dir.join("second.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new(bolide_bin(TMP))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "bolide exited 0; stderr:\n{err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bolide started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config_for(data: &Path, port: u16, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nworkers = 2\nshard_file_bytes = 134217728\n{extra}",
        data.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sizes(data: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn defect1_a_second_node_on_one_data_dir_is_refused_naming_the_holder() {
    let node = Node::start(TMP, &[]);
    let data = node.dir.path().join("data");
    // Another port, the same data directory.
    let err = refused(node.dir.path(), &config_for(&data, free_port(), ""));
    let lock = data.join("bolide.lock");
    assert!(err.contains(&lock.display().to_string()), "{err}");
    assert!(err.contains(&format!("pid {}", node.pid())), "{err}");
    // The first node is untouched and still serves.
    assert_eq!(node.info("status"), "ok");
    let log = node.stop_and_log();
    assert!(log.contains("shard stopped cleanly"), "{log}");
}

#[test]
fn defect2_a_flipped_bit_in_a_shard_files_magic_is_refused_not_formatted() {
    let (dir, _) = Node::start(TMP, &[]).stop();
    let data = dir.path().join("data");
    let file = data.join("shard-0.dat");
    let mut bytes = std::fs::read(&file).unwrap()[..4096].to_vec();
    bytes[0] ^= 1;
    write_at(&file, 0, &bytes);
    let err = refused(dir.path(), &config_for(&data, free_port(), ""));
    assert!(
        err.contains(&file.display().to_string()) && err.contains("offset 0") && err.contains("magic"),
        "{err}"
    );
    // Nothing was written: the damaged sector is as it was.
    assert_eq!(&std::fs::read(&file).unwrap()[..4096], &bytes[..]);
    // Zeroing the whole first 4 KiB is refused too.
    write_at(&file, 0, &[0u8; 4096]);
    let err = refused(dir.path(), &config_for(&data, free_port(), ""));
    assert!(
        err.contains(&file.display().to_string()) && err.contains("not blank"),
        "{err}"
    );
}

#[test]
fn defect5_a_truncated_shard_file_is_refused_not_regrown() {
    let (dir, _) = Node::start(TMP, &[]).stop();
    let data = dir.path().join("data");
    let file = data.join("shard-1.dat");
    for len in [8u64 << 20, 0] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len)
            .unwrap();
        let err = refused(dir.path(), &config_for(&data, free_port(), ""));
        assert!(
            err.contains(&file.display().to_string()) && err.contains("truncated"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "the file was resized");
    }
    // A shard file removed is not recreated blank either.
    std::fs::remove_file(&file).unwrap();
    let err = refused(dir.path(), &config_for(&data, free_port(), ""));
    assert!(err.contains("missing"), "{err}");
    assert!(!file.exists());
}

#[test]
fn defect6_a_changed_shard_file_bytes_is_refused_without_changing_files() {
    let (dir, _) = Node::start(TMP, &[]).stop();
    let data = dir.path().join("data");
    let before = sizes(&data);
    for bytes in [268_435_456u64, 67_108_864] {
        let cfg = config_for(&data, free_port(), "").replace("134217728", &bytes.to_string());
        let err = refused(dir.path(), &cfg);
        assert!(err.contains("shard_file_bytes"), "{err}");
        assert_eq!(sizes(&data), before);
    }
    // A changed worker count under existing data is refused as well (partitions would move).
    let cfg = config_for(&data, free_port(), "").replace("workers = 2", "workers = 1");
    let err = refused(dir.path(), &cfg);
    assert!(err.contains("worker count changed"), "{err}");
    assert_eq!(sizes(&data), before);
}

#[test]
fn defect6_more_than_254_workers_is_refused_before_creating_files() {
    let dir = tempfile::tempdir_in(TMP).unwrap();
    let data = dir.path().join("data");
    let cfg = config_for(&data, free_port(), "").replace("workers = 2", "workers = 255");
    let err = refused(dir.path(), &cfg);
    assert!(err.contains("255 workers"), "{err}");
    assert!(!data.exists() || sizes(&data).is_empty(), "shard files were created");
}

fn write_at(file: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}
