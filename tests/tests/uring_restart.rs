//! Restarts on a real file through io_uring: a crash then cold start, and a clean shutdown then
//! fast restart, must both give back exactly what was acknowledged and flushed.

use bolide_node::config::StorageConfig;
use bolide_node::index::IndexEntry;
use bolide_node::shard::{OpenMode, ReadError};
use bolide_tests::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const FILE_BYTES: u64 = 96 << 20;

fn cfg() -> StorageConfig {
    StorageConfig {
        wblock_size_bytes: 256 << 10,
        max_record_bytes: 128 << 10,
        ..StorageConfig::default()
    }
}

fn live(shard: &UringShard) -> Vec<(bolide_node::digest::Digest, u16, u64)> {
    shard
        .index()
        .iter()
        .filter(|e: &&IndexEntry| !e.is_tombstone())
        .map(|e| (e.digest(), e.generation(), e.lut_ms()))
        .collect()
}

fn check_all(shard: &mut UringShard, model: &HashMap<u32, Option<u32>>) {
    for (&k, &want) in model {
        match (shard.get_blocking(&digest_of(k)), want) {
            (Ok(r), Some(v)) => assert_eq!(version_of(k, &r), v, "key {k}"),
            (Err(ReadError::NotFound), None) => {}
            (got, want) => panic!("key {k}: got {got:?}, want version {want:?}"),
        }
    }
}

#[test]
fn cold_start_and_fast_restart_give_the_same_contents() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.path().join("shard.dat");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let (mut s, rep) = open_file(&path, FILE_BYTES, cfg());
    assert_eq!(rep.mode, OpenMode::Formatted);
    let mut model: HashMap<u32, Option<u32>> = HashMap::new();
    for version in 1..=20_000u32 {
        let k = rng.gen_range(0..3000);
        if rng.gen_bool(0.1) {
            if s.delete_blocking(&digest_of(k)).is_ok() {
                model.insert(k, None);
            }
        } else {
            s.put_blocking(rec(k, version, rng.gen_range(0..4000))).expect("put");
            model.insert(k, Some(version));
        }
    }
    s.flush_blocking().expect("flush");
    let before = live(&s);
    check_all(&mut s, &model);

    // Crash (no shutdown work at all), then cold start.
    drop(s.into_device());
    let (mut s, rep) = open_file(&path, FILE_BYTES, cfg());
    assert_eq!(rep.mode, OpenMode::ColdStart);
    assert_eq!(rep.corrupt_bodies + rep.corrupt_headers, 0, "{rep:?}");
    assert_eq!(live(&s), before, "cold start lost or invented records");
    check_all(&mut s, &model);

    // Clean shutdown, then fast restart.
    let (shut, dev) = s.shutdown().expect("shutdown");
    assert!(shut.image_written, "{shut:?}");
    drop(dev);
    let (mut s, rep) = open_file(&path, FILE_BYTES, cfg());
    assert_eq!(rep.mode, OpenMode::FastRestart, "{rep:?}");
    assert_eq!(live(&s), before, "fast restart differs from cold start");
    check_all(&mut s, &model);

    // A fast restart clears the image pointer: a crash now cold-starts to the same contents.
    drop(s.into_device());
    let (mut s, rep) = open_file(&path, FILE_BYTES, cfg());
    assert_eq!(rep.mode, OpenMode::ColdStart, "{rep:?}");
    assert_eq!(live(&s), before);
    check_all(&mut s, &model);
}

#[test]
fn a_damaged_index_image_falls_back_to_cold_start() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.path().join("shard.dat");
    let (mut s, _) = open_file(&path, FILE_BYTES, cfg());
    let mut model = HashMap::new();
    for k in 0..2000u32 {
        s.put_blocking(rec(k, 1, 300)).expect("put");
        model.insert(k, Some(1));
    }
    let (_, dev) = s.shutdown().expect("shutdown");
    drop(dev);
    // The header (sector 0) lists the image wblocks from byte 72; damage the first one's payload.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut hdr = [0u8; 76];
    f.read_exact(&mut hdr).expect("read header");
    let first = u32::from_le_bytes(hdr[72..76].try_into().unwrap()) as u64;
    f.seek(SeekFrom::Start(first * (256 << 10) + 4096)).expect("seek");
    f.write_all(&[0xA5; 64]).expect("damage");
    f.sync_all().expect("sync");
    drop(f);
    let (mut s, rep) = open_file(&path, FILE_BYTES, cfg());
    assert_eq!(rep.mode, OpenMode::ColdStart, "{rep:?}");
    assert!(rep.fallback_reason.is_some(), "{rep:?}");
    check_all(&mut s, &model);
}
