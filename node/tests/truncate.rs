//! Truncate on the simulated device: removal at a LUT cut-off, the LUT floor, space reclaimed by
//! defrag, and truncated records staying gone across crashes and restarts once the persisted
//! table is re-applied (issue 3; on Aerospike CE they come back).

mod common;

use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_node::clock::{Clock, ManualClock};
use bolide_node::config::StorageConfig;
use bolide_node::digest::Digest;
use bolide_node::shard::{OpenMode, ReadError, WriteError};
use bolide_node::truncate::TruncateTable;
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

const CAP: u64 = 8 << 20;

/// Drives the shard until flushes, defrag and erases have nothing left to do.
fn settle(s: &mut SimShard) {
    let mut events = Vec::new();
    let mut last = u64::MAX;
    for _ in 0..1000 {
        s.flush_blocking().unwrap();
        s.poll(&mut events);
        while s.in_flight() > 0 {
            s.wait(&mut events);
        }
        let freed = s.stats().wblocks_freed;
        if freed == last && s.in_flight() == 0 {
            return;
        }
        last = freed;
    }
    panic!("shard did not settle: {:?}", s.stats());
}

fn reopen(
    disk: bolide_drivers::sim::SimDisk,
    clock: &ManualClock,
    cfg: StorageConfig,
    seed: u64,
) -> (SimShard, OpenMode) {
    let (s, rep) = open_sim(
        SimDevice::from_disk(disk, SimConfig::new("sim0", CAP, seed)),
        clock,
        cfg,
    );
    (s, rep.mode)
}

/// Every key of `expect` reads as its version (`None`: `NotFound`, and `peek` gives nothing).
fn check_all(s: &mut SimShard, expect: &BTreeMap<u32, Option<u32>>) {
    for (&k, &v) in expect {
        let got = s.get_blocking(&digest_of(k));
        match v {
            Some(v) => {
                let rec = got.unwrap_or_else(|e| panic!("key {k} version {v}: {e}"));
                assert_eq!(check_rec(&rec), (k, v));
            }
            None => {
                assert_eq!(got, Err(ReadError::NotFound), "key {k} must be gone");
                assert_eq!(s.peek(&digest_of(k)), None, "key {k} must be gone from the index");
            }
        }
    }
}

fn lut_of(s: &SimShard, d: &Digest) -> u64 {
    s.index().get(d).expect("in the index").lut_ms()
}

#[test]
fn truncate_removes_records_and_tombstones_at_or_before_the_cutoff() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 11), &clock, small_cfg(false));
    // Keys 0, 10, .., 40 are deleted before the cut-off (their tombstones are covered), 60 and
    // 70 after it (their tombstones stay).
    for k in 0..100 {
        s.put_blocking(put_rec(k, 1, 300, 0)).unwrap();
        if k % 10 == 5 && k < 50 {
            s.delete_blocking(&digest_of(k - 5)).unwrap();
        }
        clock.advance_ms(1);
    }
    s.delete_blocking(&digest_of(60)).unwrap();
    s.delete_blocking(&digest_of(70)).unwrap();
    // Key 49's LUT is the cut-off: at-or-before includes it.
    let cutoff = lut_of(&s, &digest_of(49));
    let covered = s.index().iter().filter(|e| e.lut_ms() <= cutoff).count();
    assert_eq!(covered, 50, "45 records and 5 tombstones");
    let before = s.index().len();
    let live_before = s.space().live_bytes;
    assert_eq!(s.truncate_all(cutoff), covered);
    assert_eq!(s.index().len(), before - covered);
    assert_eq!(s.stats().truncated, covered as u64);
    assert!(s.space().live_bytes < live_before);
    assert!(s.index().iter().all(|e| e.lut_ms() > cutoff));
    assert_eq!(s.index().iter().filter(|e| e.is_tombstone()).count(), 2);
    let mut expect = BTreeMap::new();
    for k in 0..100 {
        expect.insert(k, if k < 50 || k == 60 || k == 70 { None } else { Some(1) });
    }
    check_all(&mut s, &expect);
    assert_eq!(s.delete_blocking(&digest_of(7)), Err(WriteError::NotFound));
    // Idempotent; a cut-off of 0 means never.
    assert_eq!(s.truncate_all(cutoff), 0);
    assert_eq!(s.truncate_all(0), 0);
    // A truncated key written again starts over at generation 1.
    assert_eq!(s.put_blocking(put_rec(7, 2, 10, 0)).unwrap().generation, 1);
    expect.insert(7, Some(2));
    check_all(&mut s, &expect);
}

#[test]
fn a_write_in_the_same_millisecond_as_the_truncate_is_not_covered() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 12), &clock, small_cfg(false));
    for k in 0..20 {
        s.put_blocking(put_rec(k, 1, 100, 0)).unwrap();
    }
    let cutoff = clock.now_cl_ms();
    assert_eq!(s.truncate_all(cutoff), 20);
    assert_eq!(
        s.lut_floor_ms(),
        cutoff,
        "a truncate raises the LUT floor to its cut-off"
    );
    // The clock has not moved: without the floor this write would get LUT == cut-off.
    let w = s.put_blocking(put_rec(3, 2, 100, 0)).unwrap();
    assert_eq!(w.lut_ms, cutoff + 1);
    assert_eq!(s.truncate_all(cutoff), 0, "the new write is not covered");
    assert_eq!(check_rec(&s.get_blocking(&digest_of(3)).unwrap()), (3, 2));
}

#[test]
fn set_lut_floor_puts_later_writes_above_it_and_never_moves_back() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 13), &clock, small_cfg(false));
    let now = clock.now_cl_ms();
    assert_eq!(s.put_blocking(put_rec(1, 1, 10, 0)).unwrap().lut_ms, now);
    s.set_lut_floor(now + 5_000);
    s.set_lut_floor(now + 10);
    assert_eq!(s.lut_floor_ms(), now + 5_000);
    assert_eq!(s.put_blocking(put_rec(2, 1, 10, 0)).unwrap().lut_ms, now + 5_001);
    assert_eq!(s.put_blocking(put_rec(1, 2, 10, 0)).unwrap().lut_ms, now + 5_001);
    assert_eq!(
        s.put_blocking(put_rec(1, 3, 10, 0)).unwrap().lut_ms,
        now + 5_002,
        "still strictly increasing per record"
    );
    assert_eq!(s.delete_blocking(&digest_of(2)).unwrap().lut_ms, now + 5_002);
    clock.advance_ms(10_000);
    assert_eq!(s.put_blocking(put_rec(3, 1, 10, 0)).unwrap().lut_ms, now + 10_000);
}

#[test]
fn truncate_partition_touches_only_its_partition() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 14), &clock, small_cfg(false));
    for k in 0..3000 {
        s.put_blocking(put_rec(k, 1, 10, 0)).unwrap();
    }
    let cutoff = clock.now_cl_ms();
    clock.advance_ms(1);
    let pid = digest_of(0).partition_id();
    let same: Vec<u32> = (0..3000).filter(|&k| digest_of(k).partition_id() == pid).collect();
    // One more record in the partition, after the cut-off: kept.
    let late = (3000..100_000).find(|&k| digest_of(k).partition_id() == pid).unwrap();
    s.put_blocking(put_rec(late, 1, 10, 0)).unwrap();
    let n = s.index().len();
    assert_eq!(s.truncate_partition(pid, cutoff), same.len());
    assert_eq!(s.index().len(), n - same.len());
    assert_eq!(s.index().partition_len(pid), 1);
    let mut expect: BTreeMap<u32, Option<u32>> = (0..3000).map(|k| (k, Some(1))).collect();
    for k in same {
        expect.insert(k, None);
    }
    expect.insert(late, Some(1));
    check_all(&mut s, &expect);
}

#[test]
fn truncate_record_removes_one_entry_only_if_covered() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 15), &clock, small_cfg(false));
    s.put_blocking(put_rec(1, 1, 10, 0)).unwrap();
    s.put_blocking(put_rec(2, 1, 10, 0)).unwrap();
    let cutoff = clock.now_cl_ms();
    clock.advance_ms(1);
    // Key 2 was replaced after the cut-off (as if after the caller read the old version).
    s.put_blocking(put_rec(2, 2, 10, 0)).unwrap();
    let live = s.space().live_bytes;
    let size1 = s.index().get(&digest_of(1)).unwrap().size_bytes() as u64;
    assert!(!s.truncate_record(&digest_of(2), cutoff));
    assert!(!s.truncate_record(&digest_of(9), cutoff));
    assert!(!s.truncate_record(&digest_of(1), 0));
    assert!(s.truncate_record(&digest_of(1), cutoff));
    assert_eq!(s.space().live_bytes, live - size1);
    assert_eq!(s.lut_floor_ms(), 0, "a single-record removal does not move the floor");
    let expect = BTreeMap::from([(1, None), (2, Some(2))]);
    check_all(&mut s, &expect);
}

#[test]
fn defrag_reclaims_the_space_of_truncated_records() {
    let clock = ManualClock::new(START_CL_MS);
    let (mut s, _) = open_sim(sim(CAP, 16), &clock, small_cfg(false));
    let total = s.space().wblocks_total;
    // About 40 of the 63 data wblocks.
    for k in 0..2400 {
        s.put_blocking(put_rec(k, 1, 2000, 0)).unwrap();
    }
    settle(&mut s);
    let used = s.space().wblocks_used;
    assert!(used >= 38, "{:?}", s.space());
    let cutoff = clock.now_cl_ms();
    clock.advance_ms(1);
    assert_eq!(s.truncate_all(cutoff), 2400);
    assert_eq!(s.space().live_bytes, 0, "no live bytes after truncating everything");
    settle(&mut s);
    assert!(
        s.space().wblocks_free >= total - 3,
        "defrag must free the truncated wblocks: {:?} {:?}",
        s.space(),
        s.stats()
    );
    // As much again fits only because the space came back.
    for k in 2400..4800 {
        s.put_blocking(put_rec(k, 1, 2000, 0)).unwrap();
    }
    settle(&mut s);
    let mut expect: BTreeMap<u32, Option<u32>> = (0..2400).map(|k| (k, None)).collect();
    expect.extend((2400..4800).map(|k| (k, Some(1))));
    check_all(&mut s, &expect);
}

/// Writes the table, as the server does before applying a truncate.
fn persist(table: &mut TruncateTable, path: &Path, cutoff: u64) {
    table.apply(None, cutoff);
    table.save(path).unwrap();
}

#[test]
fn truncated_records_stay_gone_after_a_crash_and_cold_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncate.toml");
    let clock = ManualClock::new(START_CL_MS);
    let cfg = small_cfg(true);
    let (mut s, _) = open_sim(sim(CAP, 17), &clock, cfg.clone());
    let mut expect = BTreeMap::new();
    // Three versions of 0..1500 and deletes of every fifth key: old copies over many wblocks.
    for v in 1..=3 {
        for k in 0..1500 {
            s.put_blocking(put_rec(k, v, 1000, 0)).unwrap();
        }
        clock.advance_ms(3);
    }
    for k in (0..1500).step_by(5) {
        s.delete_blocking(&digest_of(k)).unwrap();
    }
    let cutoff = clock.now_cl_ms();
    let mut table = TruncateTable::new();
    persist(&mut table, &path, cutoff);
    assert_eq!(s.truncate_all(cutoff), 1500);
    // Same millisecond as the cut-off: these survive.
    for k in (0..1500).step_by(7) {
        s.put_blocking(put_rec(k, 4, 500, 0)).unwrap();
    }
    for k in 0..1500 {
        expect.insert(k, if k % 7 == 0 { Some(4) } else { None });
    }
    check_all(&mut s, &expect);
    // Crash with defrag part-way: some old wblocks freed, most still on the device.
    s.flush_blocking().unwrap();
    let disk = s.into_device().crash();

    // Without the table the old copies come back (what Aerospike CE does): the test can see it.
    let (bare, mode) = reopen(disk.clone(), &clock, cfg.clone(), 17);
    assert_eq!(mode, OpenMode::ColdStart);
    let back = (0..1500u32)
        .filter(|k| k % 7 != 0 && bare.peek(&digest_of(*k)).is_some())
        .count();
    assert!(back >= 50, "the crash must leave old copies to resurrect ({back})");
    drop(bare);

    let (mut s, mode) = reopen(disk, &clock, cfg.clone(), 17);
    assert_eq!(mode, OpenMode::ColdStart);
    let table = TruncateTable::load(&path).unwrap();
    assert!(s.reapply_truncate_table(&table) >= back);
    assert_eq!(s.lut_floor_ms(), cutoff);
    check_all(&mut s, &expect);
    // Still gone after defrag has run and another crash.
    s.put_blocking(put_rec(1, 5, 100, 0)).unwrap();
    expect.insert(1, Some(5));
    settle(&mut s);
    check_all(&mut s, &expect);
    let (mut s, _) = reopen(s.into_device().crash(), &clock, cfg, 17);
    s.reapply_truncate_table(&TruncateTable::load(&path).unwrap());
    check_all(&mut s, &expect);
}

#[test]
fn truncated_records_stay_gone_after_a_clean_shutdown_and_fast_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncate.toml");
    let clock = ManualClock::new(START_CL_MS);
    let cfg = small_cfg(false);
    let (mut s, _) = open_sim(sim(CAP, 18), &clock, cfg.clone());
    for v in 1..=2 {
        for k in 0..1000 {
            s.put_blocking(put_rec(k, v, 1000, 0)).unwrap();
        }
        clock.advance_ms(2);
    }
    let cutoff = clock.now_cl_ms();
    let mut table = TruncateTable::new();
    persist(&mut table, &path, cutoff);
    assert_eq!(s.truncate_all(cutoff), 1000);
    for k in (0..1000).step_by(3) {
        s.put_blocking(put_rec(k, 3, 200, 0)).unwrap();
    }
    let expect: BTreeMap<u32, Option<u32>> = (0..1000).map(|k| (k, (k % 3 == 0).then_some(3))).collect();
    let (report, dev) = s.shutdown().unwrap();
    assert!(report.image_written);
    let disk = dev.crash();

    let (mut s, mode) = reopen(disk, &clock, cfg.clone(), 18);
    assert_eq!(mode, OpenMode::FastRestart);
    let table = TruncateTable::load(&path).unwrap();
    assert_eq!(
        s.reapply_truncate_table(&table),
        0,
        "the image holds no truncated entry"
    );
    assert_eq!(s.lut_floor_ms(), cutoff, "the floor comes back from the table");
    check_all(&mut s, &expect);
    // A crash after the fast restart cold-starts; the table still wins.
    let (mut s, mode) = reopen(s.into_device().crash(), &clock, cfg, 18);
    assert_eq!(mode, OpenMode::ColdStart);
    assert!(s.reapply_truncate_table(&table) > 0, "the old copies were found again");
    check_all(&mut s, &expect);
}

/// Seeded runs against a model: puts, deletes, truncates at cut-offs between writes, clock
/// steps of 0..3 ms (often none), defrag, crashes and clean restarts; after each restart the
/// table is loaded from its file and re-applied, and every key must read as the model says.
#[test]
fn seeded_truncate_runs_match_the_model() {
    let mut fast = 0;
    let mut cold = 0;
    for seed in 0..24u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truncate.toml");
        let clock = ManualClock::new(START_CL_MS);
        let cfg = small_cfg(true);
        let (mut s, _) = open_sim(sim(CAP, 100 + seed), &clock, cfg.clone());
        // key → (version, LUT) of the live record.
        let mut model: BTreeMap<u32, Option<(u32, u64)>> = BTreeMap::new();
        let mut version = 0u32;
        for _cycle in 0..3 {
            for _ in 0..400 {
                let k = rng.gen_range(0..300u32);
                match rng.gen_range(0..100u32) {
                    0..=69 => {
                        version += 1;
                        let w = s.put_blocking(put_rec(k, version, rng.gen_range(0..1500), 0)).unwrap();
                        model.insert(k, Some((version, w.lut_ms)));
                    }
                    70..=89 => {
                        let r = s.delete_blocking(&digest_of(k));
                        match model.get(&k).copied().flatten() {
                            Some(_) => {
                                r.unwrap();
                            }
                            None => assert_eq!(r, Err(WriteError::NotFound)),
                        }
                        model.insert(k, None);
                    }
                    90..=93 => {
                        // A cut-off anywhere from a while ago to now.
                        let now = clock.now_cl_ms();
                        let cutoff = now - rng.gen_range(0..30u64).min(now - START_CL_MS);
                        let mut table = TruncateTable::load(&path).unwrap();
                        if table.apply(None, cutoff) {
                            table.save(&path).unwrap();
                        }
                        // Applied a few partitions at a time, as the server does.
                        let mut pid = 0u16;
                        while (pid as usize) < bolide_node::digest::N_PARTITIONS {
                            for _ in 0..rng.gen_range(1..600u32) {
                                if (pid as usize) < bolide_node::digest::N_PARTITIONS {
                                    s.truncate_partition(bolide_node::digest::PartitionId(pid), cutoff);
                                    pid += 1;
                                }
                            }
                            let mut ev = Vec::new();
                            s.poll(&mut ev);
                            assert!(ev.is_empty());
                        }
                        for v in model.values_mut() {
                            if v.is_some_and(|(_, lut)| lut <= cutoff) {
                                *v = None;
                            }
                        }
                    }
                    _ => settle(&mut s),
                }
                if rng.gen_bool(0.3) {
                    clock.advance_ms(rng.gen_range(1..4));
                }
            }
            let expect: BTreeMap<u32, Option<u32>> = model.iter().map(|(k, v)| (*k, v.map(|x| x.0))).collect();
            check_all(&mut s, &expect);
            let disk = if rng.gen_bool(0.5) {
                s.shutdown().unwrap().1.crash()
            } else {
                s.into_device().crash()
            };
            let (s2, mode) = reopen(disk, &clock, cfg.clone(), 100 + seed);
            s = s2;
            match mode {
                OpenMode::FastRestart => fast += 1,
                _ => cold += 1,
            }
            s.reapply_truncate_table(&TruncateTable::load(&path).unwrap());
            check_all(&mut s, &expect);
        }
    }
    assert!(fast > 5 && cold > 5, "fast {fast} cold {cold}");
}
