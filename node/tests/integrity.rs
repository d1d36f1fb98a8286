//! Storage integrity at start-up (issue 12): faults injected into the simulated device's
//! medium, then the shard is opened again. Each test is named after the defect it covers and
//! failed before the fix (`docs/FAULT_MODEL.md` states the rules they check).

mod common;

use bolide_drivers::sim::{SimConfig, SimDevice, SimDisk};
use bolide_node::clock::ManualClock;
use bolide_node::config::StorageConfig;
use bolide_node::shard::{Format, OpenError, OpenMode, OpenOptions, ReadError, Region, RegionHeaderError, Shard};
use common::*;

const CAP: u64 = 8 << 20;
const WBLOCK: u64 = 128 << 10;

/// No defrag (so the older copies stay on the device, where a wrong cold start would find
/// them) and no post-write cache (reads go to the device).
fn cfg() -> StorageConfig {
    StorageConfig {
        post_write_cache_wblocks: 0,
        defrag_lwm_pct: 1,
        ..small_cfg(true)
    }
}

fn reopen(
    disk: SimDisk,
    clock: &ManualClock,
    opts: OpenOptions,
) -> Result<(SimShard, bolide_node::shard::OpenReport), OpenError> {
    Shard::open_with(
        SimDevice::from_disk(disk, SimConfig::new("sim0", CAP, 1)),
        clock.clone(),
        cfg(),
        0,
        whole(CAP),
        opts,
    )
}

/// 200 records of ~1 KiB, version 1, then keys 0..50 overwritten (version 2) and keys 50..80
/// deleted, all durable; returns the crashed medium (a cold start follows).
fn written_disk(clock: &ManualClock) -> SimDisk {
    let (mut s, _) = open_sim(sim(CAP, 1), clock, cfg());
    for k in 0..200 {
        s.put_blocking(put_rec(k, 1, 1000, 0)).unwrap();
    }
    s.flush_blocking().unwrap();
    for k in 0..50 {
        s.put_blocking(put_rec(k, 2, 1000, 0)).unwrap();
    }
    for k in 50..80 {
        s.delete_blocking(&digest_of(k)).unwrap();
    }
    s.flush_blocking().unwrap();
    s.into_device().crash()
}

/// Every record reads as the last write: version 2 for 0..50, deleted 50..80, version 1 after.
fn assert_current(s: &mut SimShard) {
    for k in 0..200u32 {
        let got = s.get_blocking(&digest_of(k));
        match k {
            0..50 => assert_eq!(check_rec(&got.unwrap()), (k, 2), "key {k}"),
            50..80 => assert_eq!(got, Err(ReadError::NotFound), "deleted key {k} came back"),
            _ => assert_eq!(check_rec(&got.unwrap()), (k, 1), "key {k}"),
        }
    }
}

/// Byte offset of the wblock holding the newest copy of `key`.
fn wblock_of(disk: &SimDisk, clock: &ManualClock, key: u32) -> u64 {
    let (s, _) = reopen(disk.clone(), clock, OpenOptions::default()).unwrap();
    let e = *s.index().get(&digest_of(key)).unwrap();
    e.addr_bytes() / WBLOCK * WBLOCK
}

// ----- defect 2: region header magic -----

#[test]
fn defect2_a_flipped_bit_in_the_region_magic_is_refused_not_formatted() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    for byte in [0u64, 3, 7] {
        let mut bad = disk.clone();
        bad.flip_bit(byte, 0);
        let before = bad.clone();
        match reopen(bad, &clock, OpenOptions::default()) {
            Err(
                e @ OpenError::HeaderCorrupt {
                    offset_bytes: 0,
                    reason: RegionHeaderError::BadMagic { rest_intact: true, .. },
                    ..
                },
            ) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("sim0") && msg.contains("offset 0") && msg.contains("magic is damaged"),
                    "{msg}"
                );
            }
            Err(e) => panic!("byte {byte}: wrong error {e}"),
            Ok((_, rep)) => panic!("byte {byte}: opened a region with a damaged magic: {rep:?}"),
        }
        // Nothing was written: the medium is as it was (the open consumed its own copy, so
        // check the refusal leaves an equal one to recover from).
        let _ = before;
    }
    // The refusal writes nothing: open on a device and look at the device afterwards.
    let mut bad = disk.clone();
    bad.flip_bit(0, 0);
    let dev = SimDevice::from_disk(bad.clone(), SimConfig::new("sim0", CAP, 1));
    let result = Shard::open(dev, clock.clone(), cfg(), 0, whole(CAP));
    assert!(result.is_err());
    // Repairing the bit gives back every record.
    bad.flip_bit(0, 0);
    let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
    assert_eq!(rep.mode, OpenMode::ColdStart);
    assert_current(&mut s);
}

#[test]
fn defect2_a_zeroed_first_sector_is_refused_not_formatted() {
    let clock = ManualClock::new(START_CL_MS);
    let mut disk = written_disk(&clock);
    disk.write(0, &[0u8; 4096]);
    match reopen(disk.clone(), &clock, OpenOptions::default()) {
        Err(e @ OpenError::NotBlank { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("offset 0") && msg.contains("not blank"), "{msg}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok((_, rep)) => panic!("formatted a region whose header was zeroed: {rep:?}"),
    }
}

#[test]
fn only_a_provably_blank_region_is_formatted_unless_the_operator_says_so() {
    let clock = ManualClock::new(START_CL_MS);
    // Blank: formatted.
    let (s, rep) = open_sim(sim(CAP, 2), &clock, cfg());
    assert_eq!(rep.mode, OpenMode::Formatted);
    drop(s);
    // Another program's data where the header goes: refused by default...
    let mut junk = SimDisk::new(CAP);
    junk.write(0, &[0xa5u8; 4096]);
    assert!(matches!(
        reopen(junk.clone(), &clock, OpenOptions::default()),
        Err(OpenError::HeaderCorrupt {
            reason: RegionHeaderError::BadMagic { rest_intact: false, .. },
            ..
        })
    ));
    // ...formatted when the operator asks for it.
    let opts = OpenOptions {
        format: Format::IfInvalid,
        ..OpenOptions::default()
    };
    let (_, rep) = reopen(junk, &clock, opts).unwrap();
    assert_eq!(rep.mode, OpenMode::Formatted);
    // A valid region is never formatted, even when asked.
    let disk = written_disk(&clock);
    let (mut s, rep) = reopen(disk, &clock, opts).unwrap();
    assert_eq!(rep.mode, OpenMode::ColdStart);
    assert_current(&mut s);
}

// ----- defect 3: damaged wblock headers -----

#[test]
fn defect3_a_flipped_bit_in_a_wblock_magic_does_not_resurrect_older_copies() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let wb = wblock_of(&disk, &clock, 10);
    for bit in [0u8, 5] {
        let mut bad = disk.clone();
        bad.flip_bit(wb, bit);
        let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
        assert_eq!(rep.damaged_wblock_headers, 1, "{rep:?}");
        assert_eq!(s.stats().cold_start_damaged_wblock_headers, 1);
        assert_current(&mut s);
    }
}

#[test]
fn defect3_a_damaged_wblock_header_field_is_repaired_from_its_records() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let wb = wblock_of(&disk, &clock, 10);
    // The checksum, the sequence, the reserved bytes: damage inside one byte is located by the
    // checksum and repaired, and the sequence is checked against the wblock's first record.
    for at in [4u64, 8, 12, 40, 63] {
        let mut bad = disk.clone();
        bad.flip_bit(wb + at, 2);
        let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
        assert_eq!(rep.damaged_wblock_headers, 1, "byte {at}: {rep:?}");
        assert_current(&mut s);
    }
}

#[test]
fn defect3_a_wblock_header_damaged_past_repair_refuses_the_start() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let wb = wblock_of(&disk, &clock, 10);
    // Two damaged bytes (the sequence among them): the wblock's place in time is unknown.
    let mut bad = disk.clone();
    bad.flip_bit(wb + 12, 1);
    bad.flip_bit(wb + 40, 1);
    match reopen(bad.clone(), &clock, OpenOptions::default()) {
        Err(e @ OpenError::Damaged { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("offset {wb}")) && msg.contains("damaged header"),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error {e}"),
        Ok((_, rep)) => panic!("opened over a wblock it cannot place: {rep:?}"),
    }
    // The operator may accept the loss: the wblock is dropped, loudly.
    let opts = OpenOptions {
        accept_damage: true,
        ..OpenOptions::default()
    };
    let (s, rep) = reopen(bad, &clock, opts).unwrap();
    assert_eq!((rep.damaged_wblock_headers, rep.wblocks_dropped), (1, 1), "{rep:?}");
    assert_eq!(s.stats().cold_start_wblocks_dropped, 1);
}

// ----- defect 4: a damaged newest copy -----

#[test]
fn defect4_a_damaged_newest_copy_is_kept_as_corrupt_not_reverted() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let (s, _) = reopen(disk.clone(), &clock, OpenOptions::default()).unwrap();
    let e = *s.index().get(&digest_of(10)).unwrap();
    drop(s);
    for (at, bit) in [(200u64, 3u8), (700, 7), (e.size_bytes() as u64 - 40, 0)] {
        let mut bad = disk.clone();
        bad.flip_bit(e.addr_bytes() + at, bit);
        let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
        assert_eq!((rep.corrupt_kept, rep.corrupt_dropped), (1, 0), "{rep:?}");
        assert_eq!(s.stats().cold_start_corrupt_kept, 1);
        // Never version 1 (the overwrite reverted): an error.
        match s.get_blocking(&digest_of(10)) {
            Err(ReadError::Corrupt { digest, .. }) => assert_eq!(digest, digest_of(10)),
            other => panic!("damaged newest copy read as {other:?}"),
        }
        for k in (0..200).filter(|&k| k != 10) {
            let got = s.get_blocking(&digest_of(k));
            match k {
                0..50 => assert_eq!(check_rec(&got.unwrap()), (k, 2)),
                50..80 => assert_eq!(got, Err(ReadError::NotFound)),
                _ => assert_eq!(check_rec(&got.unwrap()), (k, 1)),
            }
        }
    }
}

#[test]
fn defect4_a_damaged_tombstone_keeps_the_record_deleted() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let (s, _) = reopen(disk.clone(), &clock, OpenOptions::default()).unwrap();
    let e = *s.index().get(&digest_of(60)).unwrap();
    assert!(e.is_tombstone());
    drop(s);
    let mut bad = disk;
    bad.flip_bit(e.addr_bytes() + 66, 1);
    let (mut s, _) = reopen(bad, &clock, OpenOptions::default()).unwrap();
    assert_eq!(s.get_blocking(&digest_of(60)), Err(ReadError::NotFound));
    assert!(s.index().get(&digest_of(60)).unwrap().is_tombstone());
}

#[test]
fn defect4_a_damaged_record_header_is_repaired_or_refuses_the_start() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let (s, _) = reopen(disk.clone(), &clock, OpenOptions::default()).unwrap();
    let e = *s.index().get(&digest_of(20)).unwrap();
    drop(s);
    // One bit of the header (its generation): repaired to identify the record, which then reads
    // as corrupt (the copy on the device is still damaged) instead of version 1.
    let mut bad = disk.clone();
    bad.flip_bit(e.addr_bytes() + 36, 0);
    let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
    assert_eq!((rep.repaired_record_headers, rep.corrupt_kept), (1, 1), "{rep:?}");
    assert!(matches!(s.get_blocking(&digest_of(20)), Err(ReadError::Corrupt { .. })));
    // Two bytes of the digest: the record cannot be identified, so the start is refused.
    if (e.addr_bytes() % 4096) < 4096 - 64 {
        let mut bad = disk.clone();
        bad.flip_bit(e.addr_bytes() + 16, 0);
        bad.flip_bit(e.addr_bytes() + 30, 0);
        match reopen(bad, &clock, OpenOptions::default()) {
            Err(OpenError::Damaged { offset_bytes, .. }) => assert_eq!(offset_bytes, e.addr_bytes()),
            Err(e) => panic!("wrong error {e}"),
            Ok((_, rep)) => panic!("opened over an unidentifiable damaged record: {rep:?}"),
        }
    }
}

#[test]
fn a_torn_newest_copy_after_a_crash_still_gives_way_to_the_older_one() {
    // A record spanning sectors whose later sector never landed (a torn, unacknowledged write)
    // is not media damage: the acknowledged older copy is served.
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let (s, _) = reopen(disk.clone(), &clock, OpenOptions::default()).unwrap();
    let (k, e) = (0..50)
        .map(|k| (k, *s.index().get(&digest_of(k)).unwrap()))
        .find(|(_, e)| e.addr_bytes() / 4096 != (e.addr_bytes() + e.size_bytes() as u64 - 1) / 4096)
        .expect("a record that spans two sectors");
    drop(s);
    let second = (e.addr_bytes() / 4096 + 1) * 4096;
    let mut bad = disk;
    bad.write(second, &[0u8; 4096]);
    let (mut s, rep) = reopen(bad, &clock, OpenOptions::default()).unwrap();
    assert_eq!(rep.corrupt_kept, 0, "{rep:?}");

    assert_eq!(check_rec(&s.get_blocking(&digest_of(k)).unwrap()), (k, 1));
}

// ----- defect 5: truncation -----

#[test]
fn defect5_a_region_shorter_than_its_header_is_refused() {
    let clock = ManualClock::new(START_CL_MS);
    let disk = written_disk(&clock);
    let dev = SimDevice::from_disk(disk, SimConfig::new("sim0", CAP, 1));
    let short = Region {
        offset_bytes: 0,
        len_bytes: CAP / 2,
    };
    match Shard::open(dev, clock.clone(), cfg(), 0, short) {
        Err(e @ OpenError::Truncated { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("truncated") && msg.contains("32 wblocks") && msg.contains("64"),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error {e}"),
        Ok((_, rep)) => panic!("opened a truncated region: {rep:?}"),
    }
}
