//! Helpers for Bolide's end-to-end tests: shards on real files through io_uring, and records
//! whose contents can be checked after any restart.
#![forbid(unsafe_code)]

pub mod netns;
pub mod node;

use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_drivers::BlockDevice;
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::digest::Digest;
use bolide_node::particle::{Bin, BinName, ParticleType, Value};
use bolide_node::record::{Record, StoredKey};
use bolide_node::shard::{OpenReport, PutRecord, Region, Shard};
use std::path::Path;

pub type UringShard = Shard<UringDevice, SystemClock>;

/// Opens (creating sparse, `bytes` long) a shard on the file at `path`.
///
/// # Panics
/// If the device or the shard cannot open.
pub fn open_file(path: &Path, bytes: u64, cfg: StorageConfig) -> (UringShard, OpenReport) {
    let opts = UringOptions {
        create_size_bytes: Some(bytes),
        ..UringOptions::default()
    };
    let dev = UringDevice::open(path, &opts).expect("open device file");
    let cap = dev.info().capacity_bytes;
    Shard::open(
        dev,
        SystemClock::new(),
        cfg,
        0,
        Region {
            offset_bytes: 0,
            len_bytes: cap,
        },
    )
    .expect("open shard")
}

/// A scratch directory under `base`; tests pass cargo's `CARGO_TARGET_TMPDIR`, which sits on
/// the build's filesystem (one that supports O_DIRECT, unlike some tmpfs).
pub fn scratch_dir(base: &str) -> tempfile::TempDir {
    tempfile::tempdir_in(base).expect("scratch dir")
}

pub fn digest_of(key: u32) -> Digest {
    Digest::compute(b"e2e", 1, &(key as i64).to_be_bytes())
}

fn pad(key: u32, version: u32, len: usize) -> Vec<u8> {
    let mut x = ((key as u64) << 32) | version as u64 | 1;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// Record (key, version) with `len` bytes of checkable padding.
pub fn rec(key: u32, version: u32, len: usize) -> PutRecord {
    PutRecord {
        digest: digest_of(key),
        set_name: b"e2e".to_vec(),
        key: Some(StoredKey {
            ptype: 1,
            bytes: (key as i64).to_be_bytes().to_vec(),
        }),
        bins: vec![
            Bin {
                name: BinName::new(b"v").expect("name"),
                value: Value::Int(version as i64),
            },
            Bin {
                name: BinName::new(b"s").expect("name"),
                value: Value::Str(format!("key-{key}").into_bytes()),
            },
            Bin {
                name: BinName::new(b"pad").expect("name"),
                value: Value::Blob(ParticleType::Blob, pad(key, version, len)),
            },
        ],
        void_time: 0,
    }
}

/// Checks a record read back is (key, some version) and intact; returns the version.
///
/// # Panics
/// If any bin is wrong.
pub fn version_of(key: u32, r: &Record) -> u32 {
    assert_eq!(r.meta.digest, digest_of(key));
    let v = match &r.bins[0].value {
        Value::Int(v) => *v as u32,
        other => panic!("key {key}: bin v is {other:?}"),
    };
    assert_eq!(
        r.bins[1].value,
        Value::Str(format!("key-{key}").into_bytes()),
        "key {key}"
    );
    match &r.bins[2].value {
        Value::Blob(_, b) => assert_eq!(b, &pad(key, v, b.len()), "key {key} version {v}: padding differs"),
        other => panic!("key {key}: bin pad is {other:?}"),
    }
    v
}
