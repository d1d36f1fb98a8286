//! The per-shard RAM record cache in front of the device (DESIGN.md, "The hot path").
//!
//! Bolide reads records with O_DIRECT, so nothing caches them but this: a verified record read
//! from the device (or written by a client put) is kept, decoded, by digest, under a byte budget (`record_cache_bytes`,
//! split over the shards). The policy is quick_cache's (a CLOCK-Pro variant with a ghost list:
//! a key must be seen twice before it may push hot keys out, so one scan cannot flush the
//! cache); only client commands fill it, never scans, backups or replication.
//!
//! **Staleness.** An entry remembers the version of the record it holds: its LUT, generation
//! and size on the device. A lookup is a hit only when all three still match the live index
//! entry. Every write of a digest gives it a strictly greater LUT (`Shard::put`, including a
//! re-create after a delete or a truncate, which take the LUT floor), so an entry can never
//! answer for another version of its record. A defrag move copies the record's bytes
//! unchanged to another address, so the cached copy stays valid after it (checking the
//! address as well made every defrag move cost a device read: with the default
//! `defrag_lwm_pct`, about as many as the updates themselves).
//!
//! **Write-through.** A client put keeps the record it wrote, under the index entry the write
//! gave it: an update reads the old bins (merge semantics), so without this every update of a
//! record would cost a device read. Deletes drop the entry, to free the memory early.

use crate::digest::Digest;
use crate::index::IndexEntry;
use crate::record::Record;
use quick_cache::unsync::{Cache, DefaultLifecycle};
use quick_cache::Weighter;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Digests are already uniformly random: hashing them again (quick_cache's default is SipHash,
/// about 230 instructions a lookup, three lookups per update) buys nothing.
type DigestHash = BuildHasherDefault<super::cmd::DigestHasher>;

/// A cached record and the version (index entry fields) it is valid for.
#[derive(Clone)]
struct Cached {
    lut_ms: u64,
    generation: u16,
    /// The record's size on the device, bytes (its weight).
    size_bytes: u32,
    rec: Arc<Record>,
}

#[derive(Clone)]
struct BySize;

impl Weighter<Digest, Cached> for BySize {
    fn weight(&self, _: &Digest, v: &Cached) -> u64 {
        // Device bytes plus the decoded tree's overhead, roughly; never 0 (0 is "pinned").
        u64::from(v.size_bytes) + 128
    }
}

/// Hit and miss counts of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    /// Entries found but stale (another version of the record is live).
    pub stale: u64,
}

/// One shard's record cache. `capacity_bytes` 0 disables it (every lookup misses, nothing is
/// kept).
pub struct RecordCache {
    cache: Option<Cache<Digest, Cached, BySize, DigestHash>>,
    capacity_bytes: u64,
    pub counters: CacheCounters,
}

/// Records of this size are assumed when sizing the hash table (it grows as needed).
const TYPICAL_RECORD_BYTES: u64 = 1024;

impl RecordCache {
    pub fn new(capacity_bytes: u64) -> RecordCache {
        let cache = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / TYPICAL_RECORD_BYTES).clamp(16, 1 << 24) as usize;
            Cache::with(items, capacity_bytes, BySize, DigestHash::default(), DefaultLifecycle::default())
        });
        RecordCache {
            cache,
            capacity_bytes,
            counters: CacheCounters::default(),
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes held (the weights of the entries).
    pub fn used_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }

    /// The record `digest` has under its live index entry `entry`, if cached.
    pub fn get(&mut self, digest: &Digest, entry: &IndexEntry) -> Option<Arc<Record>> {
        let Some(cache) = &mut self.cache else {
            self.counters.misses += 1;
            return None;
        };
        match cache.get(digest) {
            Some(c)
                if c.lut_ms == entry.lut_ms()
                    && c.generation == entry.generation()
                    && c.size_bytes as usize == entry.size_bytes() =>
            {
                self.counters.hits += 1;
                Some(Arc::clone(&c.rec))
            }
            Some(_) => {
                self.counters.stale += 1;
                self.counters.misses += 1;
                cache.remove(digest);
                None
            }
            None => {
                self.counters.misses += 1;
                None
            }
        }
    }

    /// Keeps `rec`, read (or written) under the live index entry `entry`.
    pub fn insert(&mut self, entry: &IndexEntry, rec: &Arc<Record>) {
        let Some(cache) = &mut self.cache else { return };
        let size_bytes = entry.size_bytes() as u64;
        // One record may not take more than an eighth of the budget.
        if size_bytes * 8 > self.capacity_bytes {
            return;
        }
        cache.insert(
            rec.meta.digest,
            Cached {
                lut_ms: entry.lut_ms(),
                generation: entry.generation(),
                size_bytes: size_bytes as u32,
                rec: Arc::clone(rec),
            },
        );
    }

    /// Drops `digest`'s entry (it is being written or deleted).
    pub fn forget(&mut self, digest: &Digest) {
        if let Some(cache) = &mut self.cache {
            cache.remove(digest);
        }
    }

    /// Drops everything (truncate).
    pub fn clear(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordMeta;

    fn rec(d: Digest, lut_ms: u64) -> Arc<Record> {
        Arc::new(Record {
            meta: RecordMeta {
                digest: d,
                generation: 1,
                void_time: 0,
                lut_ms,
                origin_seq: 0,
                tombstone: false,
            },
            set_name: b"demo".to_vec(),
            key: None,
            bins: Vec::new(),
        })
    }

    fn digest(k: u8) -> Digest {
        Digest([k; 20])
    }

    fn entry(d: Digest, addr: u64, lut_ms: u64) -> IndexEntry {
        IndexEntry::new(d, addr, 1024, 1, 0, lut_ms, false)
    }

    #[test]
    fn hits_only_for_the_same_version() {
        let mut c = RecordCache::new(1 << 20);
        let d = digest(1);
        let e = entry(d, 4096, 100);
        assert!(c.get(&d, &e).is_none());
        c.insert(&e, &rec(d, 100));
        assert_eq!(c.get(&d, &e).map(|r| r.meta.lut_ms), Some(100));
        // Moved by defrag: another address, the same bytes; still the cached version.
        assert_eq!(c.get(&d, &entry(d, 8192, 100)).map(|r| r.meta.lut_ms), Some(100));
        // Rewritten: a greater LUT (at the same address, a reused wblock) is not the cached one.
        assert!(c.get(&d, &entry(d, 4096, 101)).is_none());
        // The stale entry was dropped, so even the old index entry misses now.
        assert!(c.get(&d, &e).is_none());
        // Another generation or size under the same LUT is not the cached version either.
        c.insert(&e, &rec(d, 100));
        assert!(c.get(&d, &IndexEntry::new(d, 4096, 1024, 2, 0, 100, false)).is_none());
        c.insert(&e, &rec(d, 100));
        assert!(c.get(&d, &IndexEntry::new(d, 4096, 2048, 1, 0, 100, false)).is_none());
        assert_eq!(
            c.counters,
            CacheCounters {
                hits: 2,
                misses: 5,
                stale: 3
            }
        );
    }

    #[test]
    fn stays_within_its_budget_and_forgets() {
        let mut c = RecordCache::new(64 << 10);
        for k in 0..=255u8 {
            let d = digest(k);
            c.insert(&entry(d, 16 * u64::from(k) + 16, 5), &rec(d, 5));
        }
        assert!(c.used_bytes() <= 64 << 10, "{} bytes held", c.used_bytes());
        assert!(c.used_bytes() > 32 << 10, "the budget is used: {}", c.used_bytes());
        let d = digest(255);
        let e = entry(d, 16 * 255 + 16, 5);
        c.insert(&e, &rec(d, 5));
        assert!(c.get(&d, &e).is_some());
        c.forget(&d);
        assert!(c.get(&d, &e).is_none());
        c.clear();
        assert_eq!(c.used_bytes(), 0);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut c = RecordCache::new(0);
        let d = digest(3);
        let e = entry(d, 16, 1);
        c.insert(&e, &rec(d, 1));
        assert!(c.get(&d, &e).is_none());
        assert_eq!(c.used_bytes(), 0);
    }
}
