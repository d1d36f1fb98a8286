//! Defrag under a sustained in-place overwrite workload on a real file: write 10× the device's
//! capacity over a fixed key set; used space must stay bounded, no write may be refused for
//! space, and every key must read back its newest version, before and after a restart.

use bolide_node::config::StorageConfig;
use bolide_node::shard::{Event, WriteError};
use bolide_tests::*;
use rand::{Rng, SeedableRng};

#[test]
fn defrag_keeps_up_with_overwriting_ten_times_the_capacity() {
    const FILE_BYTES: u64 = 32 << 20;
    const KEYS: u32 = 2000;
    let cfg = StorageConfig {
        wblock_size_bytes: 128 << 10,
        max_record_bytes: 64 << 10,
        flush_max_ms: 10,
        ..StorageConfig::default()
    };
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.path().join("shard.dat");
    let (mut s, _) = open_file(&path, FILE_BYTES, cfg.clone());
    let total = s.space().wblocks_total as u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut latest = vec![0u32; KEYS as usize];
    let mut events: Vec<Event> = Vec::new();
    let mut version = 0u32;
    let mut max_used = 0u64;
    let mut overloads = 0u64;
    // Load every key once (about 2.5 KiB each: 5 MiB live, 16 % of the device).
    let size = |rng: &mut rand_chacha::ChaCha8Rng| rng.gen_range(1500..3500);
    while s.stats().client_bytes < 10 * FILE_BYTES {
        version += 1;
        let k = if version <= KEYS {
            version - 1
        } else {
            rng.gen_range(0..KEYS)
        };
        let r = rec(k, version, size(&mut rng));
        loop {
            match s.put(r.clone(), 0) {
                Ok(_) => break,
                Err(WriteError::Overload(_)) => {
                    overloads += 1;
                    s.wait(&mut events);
                }
                Err(e) => panic!(
                    "write {version} refused: {e} (space {:?}, stats {:?})",
                    s.space(),
                    s.stats()
                ),
            }
        }
        latest[k as usize] = version;
        if version.is_multiple_of(32) {
            s.poll(&mut events);
            events.clear();
            max_used = max_used.max(s.space().wblocks_used as u64);
        }
    }
    s.flush_blocking().expect("flush");
    let st = s.stats().clone();
    let space = s.space();
    eprintln!(
        "wblocks {total}, max used {max_used}, overload waits {overloads}, write amplification {:.2}, {st:?}",
        space.write_amplification
    );
    assert!(
        st.wblocks_freed > total * 5,
        "defrag freed only {} wblocks",
        st.wblocks_freed
    );
    // Live data is ~16 % of the device; with defrag at 50 % live, use must stay well under it all.
    assert!(
        max_used * 100 <= total * 70,
        "used space grew to {max_used} of {total} wblocks"
    );
    for k in 0..KEYS {
        let r = s.get_blocking(&digest_of(k)).unwrap_or_else(|e| panic!("key {k}: {e}"));
        assert_eq!(version_of(k, &r), latest[k as usize], "key {k}");
    }
    drop(s.into_device());
    let (mut s, _) = open_file(&path, FILE_BYTES, cfg);
    for k in 0..KEYS {
        let r = s
            .get_blocking(&digest_of(k))
            .unwrap_or_else(|e| panic!("key {k} after restart: {e}"));
        assert_eq!(version_of(k, &r), latest[k as usize], "key {k} after restart");
    }
}
