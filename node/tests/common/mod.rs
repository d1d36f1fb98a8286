//! Helpers shared by the shard integration tests.
#![allow(dead_code)]

use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_node::clock::ManualClock;
use bolide_node::config::StorageConfig;
use bolide_node::digest::Digest;
use bolide_node::particle::{Bin, BinName, ParticleType, Value};
use bolide_node::record::{Record, StoredKey};
use bolide_node::shard::{Event, OpenReport, PutRecord, Region, Shard, WriteError};

pub type SimShard = Shard<SimDevice, ManualClock>;

/// 2026-11-21 in ms since 2010-01-01.
pub const START_CL_MS: u64 = 532_915_200_000;

pub fn digest_of(key: u32) -> Digest {
    Digest::compute(b"demo", 1, &(key as i64).to_be_bytes())
}

/// Deterministic padding bytes of (key, version).
pub fn pad_bytes(key: u32, version: u32, len: usize) -> Vec<u8> {
    let mut x = (key as u64) << 32 | version as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A record whose bins say which (key, version) it is, with `pad_len` bytes of checkable padding.
pub fn put_rec(key: u32, version: u32, pad_len: usize, void_time: u32) -> PutRecord {
    PutRecord {
        digest: digest_of(key),
        set_name: b"demo".to_vec(),
        key: Some(StoredKey {
            ptype: 1,
            bytes: (key as i64).to_be_bytes().to_vec(),
        }),
        bins: vec![
            Bin {
                name: BinName::new(b"k").unwrap(),
                value: Value::Int(key as i64),
            },
            Bin {
                name: BinName::new(b"v").unwrap(),
                value: Value::Int(version as i64),
            },
            Bin {
                name: BinName::new(b"pad").unwrap(),
                value: Value::Blob(ParticleType::Blob, pad_bytes(key, version, pad_len)),
            },
        ],
        void_time,
    }
}

/// Checks a record read back is intact and returns its (key, version).
pub fn check_rec(rec: &Record) -> (u32, u32) {
    let int = |name: &[u8]| match rec.bins.iter().find(|b| b.name.as_bytes() == name).map(|b| &b.value) {
        Some(Value::Int(i)) => *i as u32,
        other => panic!("bin {name:?} is {other:?}"),
    };
    let (k, v) = (int(b"k"), int(b"v"));
    assert_eq!(rec.meta.digest, digest_of(k), "digest does not match key bin");
    match rec.bins.iter().find(|b| b.name.as_bytes() == b"pad").map(|b| &b.value) {
        Some(Value::Blob(_, bytes)) => assert_eq!(
            bytes,
            &pad_bytes(k, v, bytes.len()),
            "padding of key {k} version {v} differs"
        ),
        other => panic!("pad bin is {other:?}"),
    }
    assert_eq!(rec.set_name, b"demo");
    (k, v)
}

pub fn small_cfg(commit: bool) -> StorageConfig {
    StorageConfig {
        wblock_size_bytes: 128 << 10,
        flush_max_ms: 50,
        commit_to_device: commit,
        max_record_bytes: 64 << 10,
        post_write_cache_wblocks: 2,
        max_write_cache_wblocks: 4,
        nsup_period_ms: 200,
        ..StorageConfig::default()
    }
}

pub fn whole(capacity: u64) -> Region {
    Region {
        offset_bytes: 0,
        len_bytes: capacity,
    }
}

pub fn open_sim(dev: SimDevice, clock: &ManualClock, cfg: StorageConfig) -> (SimShard, OpenReport) {
    let cap = bolide_drivers::BlockDevice::info(&dev).capacity_bytes;
    Shard::open(dev, clock.clone(), cfg, 0, whole(cap)).expect("shard opens")
}

pub fn sim(capacity: u64, seed: u64) -> SimDevice {
    SimDevice::new(SimConfig::new("sim0", capacity, seed))
}

/// Puts with retries while the device is overloaded; returns the ack.
pub fn put_retry(
    shard: &mut SimShard,
    rec: PutRecord,
    token: u64,
    events: &mut Vec<Event>,
) -> Result<bolide_node::shard::Written, WriteError> {
    loop {
        match shard.put(rec.clone(), token) {
            Err(WriteError::Overload(_)) => shard.wait(events),
            other => return other,
        }
    }
}
