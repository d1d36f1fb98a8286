//! The per-shard RAM primary index: digest → where the newest copy of a record lives, and the
//! metadata needed without touching the device (generation, void-time, LUT, tombstone).
//!
//! One ordered structure per partition, so a partition scan walks records in digest order and
//! can resume strictly after a given digest (wire spec §7.3). Each [`IndexEntry`] is 40 bytes;
//! the whole index targets at most 64 bytes per record including structure overhead (Aerospike's
//! figure), measured by `bench/src/bin/index_mem.rs`.

use crate::digest::{Digest, PartitionId, N_PARTITIONS};

/// Largest byte address (exclusive) an entry can point at: 40 bits of 16-byte rblocks = 16 TiB.
pub const MAX_ADDR_BYTES: u64 = (1 << 40) * 16;
/// Largest record an entry can describe, bytes (19 bits of rblocks = 8 MiB).
pub const MAX_RECORD_BYTES: usize = ((1 << 19) - 1) * 16;
/// Largest LUT an entry holds, ms since 2010 (40 bits, about 34 years).
pub const MAX_LUT_MS: u64 = (1 << 40) - 1;

/// One index entry, 40 bytes, bit-packed.
///
/// Fields: digest (20 bytes); byte address of the record in the shard's region in 16-byte rblocks
/// (40 bits); record size in rblocks (19 bits); generation (16 bits); void-time (32 bits); LUT in
/// ms since 2010 (40 bits); tombstone (1 bit).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    // private packed representation chosen by the implementation; size must stay 40 bytes
    _private: [u32; 10],
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 40);

impl IndexEntry {
    /// # Panics
    /// When a field does not fit: `addr_bytes` not a multiple of 16 or ≥ [`MAX_ADDR_BYTES`],
    /// `size_bytes` 0, not a multiple of 16 or over [`MAX_RECORD_BYTES`], `lut_ms` over
    /// [`MAX_LUT_MS`].
    pub fn new(
        digest: Digest,
        addr_bytes: u64,
        size_bytes: usize,
        generation: u16,
        void_time: u32,
        lut_ms: u64,
        tombstone: bool,
    ) -> IndexEntry {
        unimplemented!("{digest:?}{addr_bytes}{size_bytes}{generation}{void_time}{lut_ms}{tombstone}")
    }
    pub fn digest(&self) -> Digest {
        unimplemented!()
    }
    /// Byte address of the record in the region (multiple of 16).
    pub fn addr_bytes(&self) -> u64 {
        unimplemented!()
    }
    /// Padded record size, bytes (multiple of 16).
    pub fn size_bytes(&self) -> usize {
        unimplemented!()
    }
    pub fn generation(&self) -> u16 {
        unimplemented!()
    }
    pub fn void_time(&self) -> u32 {
        unimplemented!()
    }
    pub fn lut_ms(&self) -> u64 {
        unimplemented!()
    }
    pub fn is_tombstone(&self) -> bool {
        unimplemented!()
    }
    /// Moves the entry to a new address (defrag); same panics as `new`.
    pub fn set_location(&mut self, addr_bytes: u64, size_bytes: usize) {
        unimplemented!("{addr_bytes}{size_bytes}")
    }
    /// Turns the entry into a tombstone in place (expiry of a record whose older copies may
    /// remain on the device).
    pub fn set_tombstone(&mut self) {
        unimplemented!()
    }
    /// The 40-byte little-endian image used by the persisted index.
    pub fn to_bytes(&self) -> [u8; 40] {
        unimplemented!()
    }
    pub fn from_bytes(b: &[u8; 40]) -> IndexEntry {
        unimplemented!("{b:?}")
    }
}

impl std::fmt::Debug for IndexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexEntry")
            .field("digest", &self.digest())
            .field("addr", &self.addr_bytes())
            .field("size", &self.size_bytes())
            .field("gen", &self.generation())
            .field("void_time", &self.void_time())
            .field("lut_ms", &self.lut_ms())
            .field("tombstone", &self.is_tombstone())
            .finish()
    }
}

/// What a visitor decides for an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    Keep,
    Remove,
}

/// The primary index of one shard: 4096 ordered partition trees (only the shard's own partitions
/// ever hold entries).
pub struct PrimaryIndex {
    // implementation-defined
    _private: (),
}

impl PrimaryIndex {
    pub fn new() -> PrimaryIndex {
        let _ = N_PARTITIONS;
        unimplemented!()
    }
    /// Entries, tombstones included.
    pub fn len(&self) -> usize {
        unimplemented!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries in one partition.
    pub fn partition_len(&self, pid: PartitionId) -> usize {
        unimplemented!("{pid:?}")
    }
    pub fn get(&self, digest: &Digest) -> Option<&IndexEntry> {
        unimplemented!("{digest:?}")
    }
    pub fn get_mut(&mut self, digest: &Digest) -> Option<&mut IndexEntry> {
        unimplemented!("{digest:?}")
    }
    /// Inserts or replaces; returns the entry it replaced.
    pub fn insert(&mut self, entry: IndexEntry) -> Option<IndexEntry> {
        unimplemented!("{entry:?}")
    }
    pub fn remove(&mut self, digest: &Digest) -> Option<IndexEntry> {
        unimplemented!("{digest:?}")
    }
    /// The partition's entries in digest order, starting strictly after `after` (from the first
    /// when `None`).
    pub fn iter_partition_after<'a>(
        &'a self,
        pid: PartitionId,
        after: Option<&Digest>,
    ) -> impl Iterator<Item = &'a IndexEntry> + 'a {
        unimplemented!("{pid:?}{after:?}");
        #[allow(unreachable_code)]
        std::iter::empty()
    }
    /// Every entry, partition by partition, each in digest order.
    pub fn iter(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        unimplemented!();
        #[allow(unreachable_code)]
        std::iter::empty()
    }
    /// Visits every entry of a partition in digest order; the visitor may change an entry (not its
    /// digest) or remove it. Returns how many were removed.
    pub fn visit_partition(&mut self, pid: PartitionId, f: impl FnMut(&mut IndexEntry) -> Visit) -> usize {
        let _ = (pid, f);
        unimplemented!()
    }
    /// Appends an entry known to sort after every entry already in its partition (bulk load from
    /// a persisted index, which is stored in order). Faster than `insert`.
    ///
    /// # Panics
    /// If the digest does not sort after the partition's last entry.
    pub fn push_sorted(&mut self, entry: IndexEntry) {
        unimplemented!("{entry:?}")
    }
    /// Heap bytes held by the index structure (entries, slack and node overhead), as allocated.
    pub fn heap_bytes(&self) -> usize {
        unimplemented!()
    }
}

impl Default for PrimaryIndex {
    fn default() -> Self {
        PrimaryIndex::new()
    }
}
