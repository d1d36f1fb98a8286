//! Shard behaviour on the simulated device: reads and writes, restarts, corruption, expiry,
//! space, failures.

mod common;

use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_node::clock::{Clock, ManualClock};
use bolide_node::config::StorageConfig;
use bolide_node::index::IndexEntry;
use bolide_node::shard::{Event, OpenError, OpenMode, ReadError, Shard, WriteError};
use common::*;

const CAP: u64 = 8 << 20;

fn dump(shard: &SimShard) -> Vec<IndexEntry> {
    shard.index().iter().copied().collect()
}

#[test]
fn put_get_delete_and_generations() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, rep) = open_sim(sim(CAP, 1), &clock, small_cfg(false));
    assert_eq!(rep.mode, OpenMode::Formatted);
    let w1 = s.put_blocking(put_rec(7, 1, 100, 0)).unwrap();
    assert_eq!(w1.generation, 1);
    let w2 = s.put_blocking(put_rec(7, 2, 100, 0)).unwrap();
    assert_eq!(w2.generation, 2);
    assert!(w2.lut_ms > w1.lut_ms, "LUT strictly increases per record");
    assert_eq!(check_rec(&s.get_blocking(&digest_of(7)).unwrap()), (7, 2));
    assert_eq!(s.get_blocking(&digest_of(8)), Err(ReadError::NotFound));
    s.delete_blocking(&digest_of(7)).unwrap();
    assert_eq!(s.get_blocking(&digest_of(7)), Err(ReadError::NotFound));
    assert_eq!(s.delete_blocking(&digest_of(7)), Err(WriteError::NotFound));
    // Re-created after a delete: generation starts again at 1.
    assert_eq!(s.put_blocking(put_rec(7, 3, 10, 0)).unwrap().generation, 1);
}

#[test]
fn reads_come_from_the_device_once_evicted_from_ram() {
    let clock = ManualClock::new(START_CL_MS);
    let cfg = StorageConfig {
        post_write_cache_wblocks: 0,
        ..small_cfg(true)
    };
    let (mut s, _) = open_sim(sim(CAP, 2), &clock, cfg);
    for k in 0..200 {
        s.put_blocking(put_rec(k, 1, 2000, 0)).unwrap();
    }
    s.flush_blocking().unwrap();
    for k in 0..150 {
        assert_eq!(check_rec(&s.get_blocking(&digest_of(k)).unwrap()), (k, 1));
    }
    assert!(
        s.stats().reads_device > 0,
        "some reads must have gone to the device: {:?}",
        s.stats()
    );
}

#[test]
fn cold_start_after_a_crash_restores_flushed_contents() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 3), &clock, small_cfg(false));
    for round in 1..=3u32 {
        for k in 0..300 {
            if (k + round) % 7 == 0 {
                let _ = s.delete_blocking(&digest_of(k));
            } else {
                s.put_blocking(put_rec(k, round, (k as usize * 37) % 3000, 0)).unwrap();
            }
        }
    }
    s.flush_blocking().unwrap();
    let before = dump(&s);
    let dev = s.into_device();
    // Cold start from the crashed image.
    let disk = dev.crash();
    let (s, rep) = open_sim(
        SimDevice::from_disk(disk, SimConfig::new("sim0", CAP, 3)),
        &clock,
        small_cfg(false),
    );
    assert_eq!(rep.mode, OpenMode::ColdStart);
    let cold = dump(&s);
    let live = |v: &[IndexEntry]| {
        v.iter()
            .filter(|e| !e.is_tombstone())
            .map(|e| (e.digest(), e.generation(), e.lut_ms()))
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&cold), live(&before));
}

#[test]
fn fast_restart_loads_the_image_and_matches_cold_start() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 4), &clock, small_cfg(false));
    for k in 0..500 {
        s.put_blocking(put_rec(k, 1, 500, 0)).unwrap();
    }
    for k in (0..500).step_by(3) {
        s.delete_blocking(&digest_of(k)).unwrap();
    }
    let before = dump(&s);
    let disk_after_shutdown = {
        let mut s = s;
        s.flush_blocking().unwrap();
        // Shut down cleanly through a wrapper that keeps the device.
        shutdown_keep_device(s)
    };
    let (fast, rep) = open_sim(
        SimDevice::from_disk(disk_after_shutdown.clone(), SimConfig::new("sim0", CAP, 4)),
        &clock,
        small_cfg(false),
    );
    assert_eq!(rep.mode, OpenMode::FastRestart, "{rep:?}");
    assert_eq!(dump(&fast), before);
    // The image pointer is cleared at start: crashing now must cold-start with the same data.
    let (cold, rep) = open_sim(
        SimDevice::from_disk(fast.into_device().crash(), SimConfig::new("sim0", CAP, 4)),
        &clock,
        small_cfg(false),
    );
    assert_eq!(rep.mode, OpenMode::ColdStart, "{rep:?}");
    let strip = |v: Vec<IndexEntry>| v.into_iter().filter(|e| !e.is_tombstone()).collect::<Vec<_>>();
    assert_eq!(strip(dump(&cold)), strip(before));
}

/// Shuts down cleanly and returns the device image (a clean power-off).
fn shutdown_keep_device(s: SimShard) -> bolide_drivers::sim::SimDisk {
    let (report, dev) = s.shutdown().expect("clean shutdown");
    assert!(report.image_written, "{report:?}");
    dev.crash()
}

#[test]
fn a_corrupt_record_is_reported_never_returned_as_data() {
    let clock = ManualClock::new(START_CL_MS);
    let cfg = StorageConfig {
        post_write_cache_wblocks: 0,
        ..small_cfg(true)
    };
    let (mut s, _) = open_sim(sim(CAP, 5), &clock, cfg.clone());
    for k in 0..300 {
        s.put_blocking(put_rec(k, 1, 1000, 0)).unwrap();
    }
    s.flush_blocking().unwrap();
    let e = *s.index().get(&digest_of(10)).unwrap();
    // Flip a bit in the middle of the record's bins, under the running shard.
    s.device_mut().disk_mut().flip_bit(e.addr_bytes() + 200, 3);
    match s.get_blocking(&digest_of(10)) {
        Err(ReadError::Corrupt { digest, .. }) => assert_eq!(digest, digest_of(10)),
        other => panic!("corrupt record read gave {other:?}"),
    }
    assert_eq!(s.stats().read_corrupt, 1);
    assert_eq!(check_rec(&s.get_blocking(&digest_of(11)).unwrap()), (11, 1));
    // A cold start finds no valid copy, and one flipped bit is media damage, not a torn write:
    // the damaged copy is kept, reported, and reads of it keep failing (never NotFound, which
    // would let an older copy or a delete win); others are intact.
    let (mut s, rep) = open_sim(
        SimDevice::from_disk(s.into_device().crash(), SimConfig::new("sim0", CAP, 5)),
        &clock,
        cfg,
    );
    assert_eq!((rep.corrupt_bodies, rep.corrupt_dropped, rep.corrupt_kept), (1, 0, 1), "{rep:?}");
    assert_eq!(s.stats().cold_start_corrupt_kept, 1);
    assert!(matches!(s.get_blocking(&digest_of(10)), Err(ReadError::Corrupt { .. })));
    for k in (0..300).filter(|&k| k != 10) {
        assert_eq!(check_rec(&s.get_blocking(&digest_of(k)).unwrap()), (k, 1));
    }
}

#[test]
fn expired_records_vanish_and_stay_gone() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 6), &clock, small_cfg(true));
    let now_s = clock.now_cl_s();
    // Key 1: an old never-expiring version, then a short-lived one.
    s.put_blocking(put_rec(1, 1, 100, 0)).unwrap();
    s.put_blocking(put_rec(1, 2, 100, now_s + 2)).unwrap();
    s.put_blocking(put_rec(2, 1, 100, now_s + 2)).unwrap();
    s.put_blocking(put_rec(3, 1, 100, 0)).unwrap();
    assert!(s.get_blocking(&digest_of(1)).is_ok());
    clock.advance_ms(3000);
    assert_eq!(s.get_blocking(&digest_of(1)), Err(ReadError::NotFound));
    assert_eq!(s.get_blocking(&digest_of(2)), Err(ReadError::NotFound));
    // Churn other keys so defrag runs over the wblock holding the expired copies.
    let mut events = Vec::new();
    for round in 0..40u32 {
        for k in 100..140 {
            put_retry(&mut s, put_rec(k, round, 3000, 0), 0, &mut events).unwrap();
        }
        s.flush_blocking().unwrap();
        clock.advance_ms(100);
        s.poll(&mut events);
    }
    assert!(s.stats().wblocks_freed > 0, "defrag must have run: {:?}", s.stats());
    let (mut s, _) = open_sim(
        SimDevice::from_disk(s.into_device().crash(), SimConfig::new("sim0", CAP, 6)),
        &clock,
        small_cfg(true),
    );
    assert_eq!(
        s.get_blocking(&digest_of(1)),
        Err(ReadError::NotFound),
        "expired record came back"
    );
    assert_eq!(s.get_blocking(&digest_of(2)), Err(ReadError::NotFound));
    assert_eq!(check_rec(&s.get_blocking(&digest_of(3)).unwrap()), (3, 1));
}

#[test]
fn a_full_device_refuses_writes_and_keeps_serving_reads() {
    let clock = ManualClock::new(START_CL_MS);
    let cap = 2 << 20; // 16 wblocks of 128 KiB
    let (mut s, _) = open_sim(sim(cap, 7), &clock, small_cfg(true));
    let mut acked = Vec::new();
    let mut k = 0;
    loop {
        match s.put_blocking(put_rec(k, 1, 4000, 0)) {
            Ok(_) => acked.push(k),
            Err(WriteError::OutOfSpace) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        k += 1;
        assert!(k < 10_000, "device never filled");
    }
    assert!(acked.len() > 100);
    // A record that needs a new wblock is refused while the reserve is reached.
    for k in 0..20 {
        assert_eq!(
            s.put_blocking(put_rec(90_000 + k, 1, 4000, 0)),
            Err(WriteError::OutOfSpace)
        );
    }
    for &k in &acked {
        assert_eq!(check_rec(&s.get_blocking(&digest_of(k)).unwrap()), (k, 1));
    }
    let (mut s, _) = open_sim(
        SimDevice::from_disk(s.into_device().crash(), SimConfig::new("sim0", cap, 7)),
        &clock,
        small_cfg(true),
    );
    for &k in &acked {
        assert_eq!(check_rec(&s.get_blocking(&digest_of(k)).unwrap()), (k, 1));
    }
}

#[test]
fn limits_and_config_mismatch() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 8), &clock, small_cfg(false));
    match s.put_blocking(put_rec(1, 1, 70_000, 0)) {
        Err(WriteError::RecordTooBig { .. }) => {}
        other => panic!("{other:?}"),
    }
    s.put_blocking(put_rec(1, 1, 10, 0)).unwrap();
    s.flush_blocking().unwrap();
    let dev = s.into_device();
    let other = StorageConfig {
        wblock_size_bytes: 256 << 10,
        ..small_cfg(false)
    };
    match Shard::open(dev, clock.clone(), other, 0, whole(CAP)) {
        Err(OpenError::Mismatch {
            what: "wblock size", ..
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a region formatted with another wblock size"),
    }
}

#[test]
fn a_failed_device_stops_writes_and_ram_reads_go_on() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 9), &clock, small_cfg(false));
    s.put_blocking(put_rec(1, 1, 10, 0)).unwrap();
    let mut dev = s.into_device();
    dev.fail_all();
    // Reopening on a dead device fails cleanly.
    assert!(matches!(
        Shard::open(dev, clock.clone(), small_cfg(false), 0, whole(CAP)),
        Err(OpenError::Device(_))
    ));
    let (mut s, _) = open_sim(sim(CAP, 10), &clock, small_cfg(true));
    s.put_blocking(put_rec(1, 1, 10, 0)).unwrap();
    let mut events = Vec::new();
    let w = s.put(put_rec(2, 1, 10, 0), 77).unwrap();
    assert!(w.pending);
    s.device_mut().fail_all();
    while !events
        .iter()
        .any(|e| matches!(e, bolide_node::shard::Event::WriteDone { token: 77, .. }))
    {
        s.wait(&mut events);
    }
    match &events[..] {
        [bolide_node::shard::Event::WriteDone {
            token: 77,
            result: Err(WriteError::DeviceFailed(_)),
        }] => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.put_blocking(put_rec(3, 1, 10, 0)),
        Err(WriteError::DeviceFailed(_))
    ));
    // Key 1 and key 2 are still in the write buffer: reads are served from RAM.
    assert_eq!(check_rec(&s.get_blocking(&digest_of(1)).unwrap()), (1, 1));
    assert!(s.failure().is_some());
}

#[test]
fn group_commit_covers_many_writes_with_one_device_write() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 11), &clock, small_cfg(true));
    let mut events = Vec::new();
    // 100 writes in one turn: none is acknowledged until a device write covers it.
    for k in 0..100u32 {
        let w = s.put(put_rec(k, 1, 200, 0), k as u64).unwrap();
        assert!(w.pending);
    }
    assert!(events.is_empty());
    let mut acked = std::collections::HashSet::new();
    while acked.len() < 100 {
        s.wait(&mut events);
        for e in events.drain(..) {
            match e {
                Event::WriteDone { token, result: Ok(()) } => assert!(acked.insert(token)),
                other => panic!("{other:?}"),
            }
        }
    }
    // 100 × ~300 bytes fit one wblock: one write covers them all (two if the first turn's write
    // raced the tail).
    assert!(s.stats().device_writes <= 2, "{:?}", s.stats());
    // Writes that arrive while a device write is in flight share the next one.
    for k in 100..110u32 {
        s.put(put_rec(k, 1, 200, 0), k as u64).unwrap();
        s.poll(&mut events);
    }
    while acked.len() < 110 {
        s.wait(&mut events);
        for e in events.drain(..) {
            if let Event::WriteDone { token, result: Ok(()) } = e {
                acked.insert(token);
            }
        }
    }
    assert!(s.stats().device_writes < 2 + 10, "{:?}", s.stats());
}

#[test]
fn a_partial_buffer_is_flushed_after_flush_max_ms() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 12), &clock, small_cfg(false));
    let mut events = Vec::new();
    let w = s.put(put_rec(1, 1, 100, 0), 1).unwrap();
    assert!(!w.pending, "without commit_to_device a write is acknowledged at once");
    s.poll(&mut events);
    clock.advance_ms(small_cfg(false).flush_max_ms - 1);
    s.poll(&mut events);
    assert_eq!(s.stats().device_writes, 0, "flushed before flush_max_ms");
    clock.advance_ms(1);
    s.poll(&mut events);
    assert_eq!(s.stats().device_writes, 1, "not flushed at flush_max_ms");
    // Once that write completes, a crash keeps the record.
    while s.in_flight() > 0 {
        s.wait(&mut events);
    }
    let (mut s, _) = open_sim(
        SimDevice::from_disk(s.into_device().crash(), SimConfig::new("sim0", CAP, 12)),
        &clock,
        small_cfg(false),
    );
    assert_eq!(check_rec(&s.get_blocking(&digest_of(1)).unwrap()), (1, 1));
}

#[test]
fn replica_copies_apply_only_when_newer_and_survive_a_restart() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut master, _) = open_sim(sim(CAP, 31), &clock, small_cfg(false));
    let (mut replica, _) = open_sim(sim(CAP, 32), &clock, small_cfg(false));
    // Two versions on the master; copies carry its generation and LUT.
    master.put_blocking(put_rec(5, 1, 100, 0)).unwrap();
    let v1 = master.get_blocking(&digest_of(5)).unwrap();
    clock.advance_ms(3);
    master.put_blocking(put_rec(5, 2, 100, 0)).unwrap();
    let v2 = master.get_blocking(&digest_of(5)).unwrap();
    assert!(
        replica.put_replica(v2.clone(), 1).unwrap().is_some(),
        "a new copy applies"
    );
    // The older copy arriving late changes nothing; the same copy twice neither.
    assert_eq!(replica.put_replica(v1, 2).unwrap(), None);
    assert_eq!(replica.put_replica(v2.clone(), 3).unwrap(), None);
    let got = replica.get_blocking(&digest_of(5)).unwrap();
    assert_eq!(check_rec(&got), (5, 2));
    assert_eq!(
        (got.meta.generation, got.meta.lut_ms),
        (v2.meta.generation, v2.meta.lut_ms),
        "the copy keeps the master's generation and LUT"
    );
    // A tombstone copy deletes; a tombstone with bins is refused.
    let mut tomb = v2.clone();
    tomb.meta.tombstone = true;
    tomb.meta.lut_ms += 1;
    tomb.meta.generation += 1;
    assert!(matches!(
        replica.put_replica(tomb.clone(), 4),
        Err(WriteError::Invalid(_))
    ));
    tomb.bins.clear();
    tomb.set_name.clear();
    tomb.key = None;
    assert!(replica.put_replica(tomb, 5).unwrap().is_some());
    assert_eq!(replica.get_blocking(&digest_of(5)), Err(ReadError::NotFound));
    // A copy of another record, then a restart from the device: copies are records like any.
    replica.put_replica(v2_of(&mut master, &clock, 6), 6).unwrap();
    assert_eq!(replica.stats().replica_writes, 3);
    let (_, dev) = replica.shutdown().unwrap();
    let (mut again, _) = open_sim(dev, &clock, small_cfg(false));
    assert_eq!(check_rec(&again.get_blocking(&digest_of(6)).unwrap()), (6, 1));
    assert_eq!(again.get_blocking(&digest_of(5)), Err(ReadError::NotFound));
}

fn v2_of(master: &mut SimShard, clock: &ManualClock, key: u32) -> bolide_node::record::Record {
    clock.advance_ms(1);
    master.put_blocking(put_rec(key, 1, 50, 0)).unwrap();
    master.get_blocking(&digest_of(key)).unwrap()
}
