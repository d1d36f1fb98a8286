//! The per-shard RAM primary index: digest → where the newest copy of a record lives, and the
//! metadata needed without touching the device (generation, void-time, LUT, tombstone).
//!
//! One ordered structure per partition, so a partition scan walks records in digest order and
//! can resume strictly after a given digest (wire spec §7.3). Each [`IndexEntry`] is 40 bytes;
//! the whole index targets at most 64 bytes per record including structure overhead (Aerospike's
//! figure), measured by `bench/src/bin/index_mem.rs`.
//!
//! # Representation
//!
//! [`PrimaryIndex`] holds 4096 partitions. A partition is a sorted array of *chunk refs*; each
//! ref (32 bytes) is the first 8 digest bytes (big-endian) of its chunk's first entry beside the
//! chunk itself, a `Vec<IndexEntry>` of 1 to [`CHUNK_MAX_ENTRIES`] entries sorted by digest.
//! Every entry of chunk `i` sorts before every entry of chunk `i + 1`.
//!
//! Digests are RIPEMD-160 output, so within a partition they are uniform: a search guesses the
//! chunk from the digest's 52 non-partition prefix bits, and the slot within the chunk from
//! where those bits fall between this chunk's first prefix and the next one's
//! (interpolation). From the guess it walks at most 8 steps and then bisects, so a good guess
//! costs one or two cache lines per level and a bad one (digests that are not uniform) still
//! only O(log n) compares. Chunks whose 8-byte prefixes tie are told apart by their full first
//! digest. Inside an entry the digest is kept as three big-endian integers, so comparing two
//! digests is three integer compares instead of a `memcmp` call.
//!
//! # Memory model
//!
//! Per record: the 40-byte entry, plus its chunk's spare capacity, plus per chunk the 32-byte
//! ref, plus per partition a 32-byte header (4096 of them, 128 KiB, always allocated) and the
//! ref array's spare capacity. Capacity is managed by hand, never by `Vec`'s doubling:
//!
//! * a chunk grows by at most [`CHUNK_GROW_ENTRIES`] slots at a time (`reserve_exact`; fewer
//!   while it is small), never past [`CHUNK_MAX_ENTRIES`]; after losing entries it is shrunk
//!   when it has more than twice its step spare; a full chunk splits in half (or, when the new
//!   entry lands past its end, spills into the next chunk or a new one, so ascending inserts
//!   fill chunks); the ref array grows by 1/16 of its length (at least 1);
//! * a chunk that falls below [`CHUNK_MIN_ENTRIES`] (by [`PrimaryIndex::remove`] or
//!   [`PrimaryIndex::visit_partition`]) is merged with a neighbour, or evened out with it when
//!   both together are too many for one chunk; empty chunks and empty partitions free their
//!   memory, so memory stays proportional to the live entries under churn;
//! * [`PrimaryIndex::push_sorted`] fills chunks to [`PUSH_FILL_ENTRIES`] with no spare slots,
//!   except that the last chunk of each partition may hold up to that many spare slots until
//!   [`PrimaryIndex::shrink_to_fit`].
//!
//! With random inserts chunks are on average about 69 % full (≈ 44 entries): ≈ 0.7 bytes per
//! record of chunk refs and ≈ 2 spare slots per chunk (≈ 1.7 bytes per record). Measured at
//! 10 M records (`bench/README.md`): 42.2 bytes per record after random inserts, 44.4 after
//! replacing half of them, 40.6 after a bulk load and `shrink_to_fit`.
//! [`PrimaryIndex::heap_bytes`] reports the bytes requested from the allocator, which is what a
//! counting allocator sees; the allocator's own headers and fragmentation come on top (with
//! glibc the process grew by ≈ 47 bytes per record for the 42.2 above).
//!
//! # Complexity
//!
//! With `n` entries in a partition and `c ≈ n / 44` chunks: `get`, `get_mut`, `insert`,
//! `remove` and `iter_partition_after` (to its first item) are O(log n) compares, O(1) cache
//! lines per level for uniform digests; `insert` and `remove` also move at most one chunk's
//! entries (≤ 2.5 KiB) and, when a chunk splits, merges or frees, shift the partition's ref
//! array (32 bytes per chunk, ≈ 1.7 KiB at 2,400 entries per partition). `push_sorted` is
//! amortised O(1). `visit_partition` is O(n). `heap_bytes` is O(partitions + chunks).
//!
//! Partitions far larger than ~100 k entries would spend more time shifting ref arrays on
//! splits; at 10 M records per shard there are about 2,400 per partition.

use crate::digest::{Digest, PartitionId, N_PARTITIONS};

/// Largest byte address (exclusive) an entry can point at: 40 bits of 16-byte rblocks = 16 TiB.
pub const MAX_ADDR_BYTES: u64 = (1 << 40) * 16;
/// Largest record an entry can describe, bytes (19 bits of rblocks = 8 MiB).
pub const MAX_RECORD_BYTES: usize = ((1 << 19) - 1) * 16;
/// Largest LUT an entry holds, ms since 2010 (40 bits, about 34 years).
pub const MAX_LUT_MS: u64 = (1 << 40) - 1;

/// Most entries in one chunk of a partition.
pub const CHUNK_MAX_ENTRIES: usize = 64;
/// A chunk with fewer entries than this is merged with or evened out with a neighbour after
/// removals (unless it is its partition's only chunk).
pub const CHUNK_MIN_ENTRIES: usize = 16;
/// Slots a chunk grows by when it is full and below [`CHUNK_MAX_ENTRIES`].
pub const CHUNK_GROW_ENTRIES: usize = 4;
/// Entries per chunk that [`PrimaryIndex::push_sorted`] fills to before starting a new chunk.
pub const PUSH_FILL_ENTRIES: usize = 60;
/// Two neighbouring chunks are merged when together they hold at most this many entries;
/// otherwise a too-small chunk takes entries from its neighbour.
const MERGE_MAX_ENTRIES: usize = 48;

/// Size of a rblock, the unit of addresses and sizes in an entry.
const RBLOCK_BYTES: u64 = 16;

// Word 3: addr (bits 0..40), size (40..59), tombstone (59), reserved (60..64).
const ADDR_MASK: u64 = (1 << 40) - 1;
const SIZE_SHIFT: u32 = 40;
const SIZE_MASK: u64 = (1 << 19) - 1;
const TOMBSTONE_BIT: u64 = 1 << 59;
const W3_RESERVED: u64 = !((1 << 60) - 1);
// Word 4: lut_ms (bits 0..40), generation (40..56), reserved (56..64).
const LUT_MASK: u64 = MAX_LUT_MS;
const GEN_SHIFT: u32 = 40;
const W4_RESERVED: u64 = !((1 << 56) - 1);

/// Bits of payload in an entry: digest, addr, size, generation, void-time, LUT, tombstone.
const PACKED_BITS: usize = 160 + 40 + 19 + 16 + 32 + 40 + 1;
const _: () = assert!(PACKED_BITS == 308 && PACKED_BITS <= 8 * std::mem::size_of::<IndexEntry>());
const _: () = assert!(MAX_ADDR_BYTES == (ADDR_MASK + 1) * RBLOCK_BYTES);
const _: () = assert!(MAX_RECORD_BYTES as u64 == SIZE_MASK * RBLOCK_BYTES);
const _: () = assert!(CHUNK_MIN_ENTRIES <= MERGE_MAX_ENTRIES / 2);
const _: () = assert!(MERGE_MAX_ENTRIES < CHUNK_MAX_ENTRIES);
const _: () = assert!(PUSH_FILL_ENTRIES <= CHUNK_MAX_ENTRIES);
const _: () = assert!(CHUNK_MAX_ENTRIES / 2 >= CHUNK_MIN_ENTRIES);

/// One index entry, 40 bytes, bit-packed.
///
/// Fields: digest (20 bytes); byte address of the record in the shard's region in 16-byte rblocks
/// (40 bits); record size in rblocks (19 bits); generation (16 bits); void-time (32 bits); LUT in
/// ms since 2010 (40 bits); tombstone (1 bit).
///
/// # Persisted image ([`to_bytes`](Self::to_bytes) / [`from_bytes`](Self::from_bytes))
///
/// Stable, 40 bytes, integers little-endian:
///
/// ```text
/// bytes  0..20  digest, byte for byte as on the wire
/// bytes 20..24  void_time, u32 LE
/// bytes 24..32  u64 LE:  bits  0..40 addr in rblocks (addr_bytes / 16)
///                        bits 40..59 size in rblocks (size_bytes / 16, never 0)
///                        bit  59     tombstone
///                        bits 60..64 reserved, 0
/// bytes 32..40  u64 LE:  bits  0..40 lut_ms (ms since 2010-01-01T00:00:00Z)
///                        bits 40..56 generation
///                        bits 56..64 reserved, 0
/// ```
///
/// In memory the entry is five `u64`s (alignment 8): the digest as big-endian integers in words
/// 0, 1 and the high half of word 2 (so digests compare as integers), void-time in the low half
/// of word 2, and words 3 and 4 as in the image.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    w: [u64; 5],
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 40);
const _: () = assert!(std::mem::align_of::<IndexEntry>() <= 8);
// Style rule: an index entry is at most 64 bytes.
const _: () = assert!(std::mem::size_of::<IndexEntry>() <= 64);

/// A digest as three big-endian integers: orders exactly like the digest's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    hi: u64,
    mid: u64,
    lo: u32,
}

impl Key {
    #[inline]
    fn of(d: &Digest) -> Key {
        let b = &d.0;
        Key {
            hi: u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            mid: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            lo: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        }
    }
}

/// Why a 40-byte image is not a valid [`IndexEntry`] (see [`IndexEntry::try_from_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryImageError {
    /// The size field is 0 rblocks; every record is at least one rblock.
    #[error("index entry image: record size is 0 rblocks")]
    ZeroSize,
    /// One of the reserved bits (60..64 of bytes 24..32, 56..64 of bytes 32..40) is set.
    #[error("index entry image: reserved bits set ({word3:#018x}, {word4:#018x})")]
    ReservedBits {
        /// Bytes 24..32 as read, LE.
        word3: u64,
        /// Bytes 32..40 as read, LE.
        word4: u64,
    },
}

/// Panics unless `addr_bytes` and `size_bytes` fit an entry; returns them in rblocks.
#[inline]
fn location_rblocks(addr_bytes: u64, size_bytes: usize) -> (u64, u64) {
    assert!(
        addr_bytes.is_multiple_of(RBLOCK_BYTES) && addr_bytes < MAX_ADDR_BYTES,
        "index entry: addr_bytes {addr_bytes} not a multiple of 16 below {MAX_ADDR_BYTES}"
    );
    assert!(
        size_bytes > 0 && size_bytes.is_multiple_of(RBLOCK_BYTES as usize) && size_bytes <= MAX_RECORD_BYTES,
        "index entry: size_bytes {size_bytes} not a non-zero multiple of 16 up to {MAX_RECORD_BYTES}"
    );
    (addr_bytes / RBLOCK_BYTES, size_bytes as u64 / RBLOCK_BYTES)
}

impl IndexEntry {
    /// Packs an entry. `addr_bytes` is the record's byte address in the shard's region,
    /// `size_bytes` its padded size, `void_time` its expiry (0 = never), `lut_ms` its last update
    /// time in ms since 2010.
    ///
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
        let (addr, size) = location_rblocks(addr_bytes, size_bytes);
        assert!(lut_ms <= MAX_LUT_MS, "index entry: lut_ms {lut_ms} over {MAX_LUT_MS}");
        let k = Key::of(&digest);
        IndexEntry {
            w: [
                k.hi,
                k.mid,
                (u64::from(k.lo) << 32) | u64::from(void_time),
                addr | (size << SIZE_SHIFT) | if tombstone { TOMBSTONE_BIT } else { 0 },
                lut_ms | (u64::from(generation) << GEN_SHIFT),
            ],
        }
    }

    #[inline]
    fn key(&self) -> Key {
        Key {
            hi: self.w[0],
            mid: self.w[1],
            lo: (self.w[2] >> 32) as u32,
        }
    }

    /// The record's 20-byte digest.
    pub fn digest(&self) -> Digest {
        let mut d = [0u8; 20];
        d[0..8].copy_from_slice(&self.w[0].to_be_bytes());
        d[8..16].copy_from_slice(&self.w[1].to_be_bytes());
        d[16..20].copy_from_slice(&((self.w[2] >> 32) as u32).to_be_bytes());
        Digest(d)
    }
    /// Byte address of the record in the region (multiple of 16).
    pub fn addr_bytes(&self) -> u64 {
        (self.w[3] & ADDR_MASK) * RBLOCK_BYTES
    }
    /// Padded record size, bytes (multiple of 16, at least 16).
    pub fn size_bytes(&self) -> usize {
        (((self.w[3] >> SIZE_SHIFT) & SIZE_MASK) * RBLOCK_BYTES) as usize
    }
    /// The record's generation (wraps at 2^16, as on the wire).
    pub fn generation(&self) -> u16 {
        (self.w[4] >> GEN_SHIFT) as u16
    }
    /// Expiry, seconds since 2010 (0 = never expires).
    pub fn void_time(&self) -> u32 {
        self.w[2] as u32
    }
    /// Last update time, ms since 2010.
    pub fn lut_ms(&self) -> u64 {
        self.w[4] & LUT_MASK
    }
    /// Whether the entry marks a deleted or expired record.
    pub fn is_tombstone(&self) -> bool {
        self.w[3] & TOMBSTONE_BIT != 0
    }
    /// Moves the entry to a new address (defrag); same panics as `new`.
    pub fn set_location(&mut self, addr_bytes: u64, size_bytes: usize) {
        let (addr, size) = location_rblocks(addr_bytes, size_bytes);
        self.w[3] = (self.w[3] & TOMBSTONE_BIT) | addr | (size << SIZE_SHIFT);
    }
    /// Turns the entry into a tombstone in place (expiry of a record whose older copies may
    /// remain on the device).
    pub fn set_tombstone(&mut self) {
        self.w[3] |= TOMBSTONE_BIT;
    }
    /// The 40-byte little-endian image used by the persisted index (layout in the type's doc).
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..20].copy_from_slice(&self.digest().0);
        b[20..24].copy_from_slice(&self.void_time().to_le_bytes());
        b[24..32].copy_from_slice(&self.w[3].to_le_bytes());
        b[32..40].copy_from_slice(&self.w[4].to_le_bytes());
        b
    }
    /// Reads an image written by [`to_bytes`](Self::to_bytes).
    ///
    /// # Panics
    /// When the image is not one `to_bytes` can produce (see
    /// [`try_from_bytes`](Self::try_from_bytes)); the persisted index checks its checksums first,
    /// so this guards against a bug, not against the device.
    pub fn from_bytes(b: &[u8; 40]) -> IndexEntry {
        match IndexEntry::try_from_bytes(b) {
            Ok(e) => e,
            Err(err) => panic!("{err}"),
        }
    }
    /// Reads an image written by [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    /// [`EntryImageError::ZeroSize`] when the size field is 0, [`EntryImageError::ReservedBits`]
    /// when a reserved bit is set.
    pub fn try_from_bytes(b: &[u8; 40]) -> Result<IndexEntry, EntryImageError> {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (word3, word4) = (word(24), word(32));
        if word3 & W3_RESERVED != 0 || word4 & W4_RESERVED != 0 {
            return Err(EntryImageError::ReservedBits { word3, word4 });
        }
        if (word3 >> SIZE_SHIFT) & SIZE_MASK == 0 {
            return Err(EntryImageError::ZeroSize);
        }
        let mut d = [0u8; 20];
        d.copy_from_slice(&b[0..20]);
        let k = Key::of(&Digest(d));
        let void_time = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        Ok(IndexEntry {
            w: [
                k.hi,
                k.mid,
                (u64::from(k.lo) << 32) | u64::from(void_time),
                word3,
                word4,
            ],
        })
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
    /// Keep the entry (with any changes the visitor made).
    Keep,
    /// Remove the entry from the index.
    Remove,
}

/// One chunk: 1..=CHUNK_MAX_ENTRIES entries in digest order.
type Chunk = Vec<IndexEntry>;

/// A chunk and the first 8 digest bytes (big-endian) of its first entry, side by side so that the
/// search over a partition's chunks reads one array and finds the chunk's address there.
struct ChunkRef {
    first: u64,
    entries: Chunk,
}

const _: () = assert!(std::mem::size_of::<ChunkRef>() == 32);

impl ChunkRef {
    fn new(entries: Chunk) -> ChunkRef {
        ChunkRef {
            first: entries[0].key().hi,
            entries,
        }
    }

    /// Whether the chunk's first entry sorts at or before `key` (the full digest is read only
    /// when the 8-byte prefixes tie).
    #[inline]
    fn starts_at_or_before(&self, key: Key) -> bool {
        self.first < key.hi || (self.first == key.hi && self.entries[0].key() <= key)
    }

    fn refresh_first(&mut self) {
        self.first = self.entries[0].key().hi;
    }
}

/// Slots a chunk of `len` entries grows by: [`CHUNK_GROW_ENTRIES`], fewer for small chunks so
/// that sparse partitions do not carry a full step of spare slots per entry.
#[inline]
fn chunk_grow(len: usize) -> usize {
    (len / 8).clamp(1, CHUNK_GROW_ENTRIES)
}

/// Releases a chunk's spare capacity beyond twice its growth step.
#[inline]
fn trim_chunk(c: &mut Chunk) {
    let grow = chunk_grow(c.len());
    if c.capacity() - c.len() > 2 * grow {
        c.shrink_to(c.len() + grow);
    }
}

/// Moves entries between two neighbouring chunks so the left holds half (rounded down) of both.
fn even_out(left: &mut Chunk, right: &mut Chunk) {
    let total = left.len() + right.len();
    let target = total / 2;
    if left.len() < target {
        let k = target - left.len();
        left.reserve_exact(k);
        left.extend_from_slice(&right[..k]);
        right.drain(..k);
    } else if left.len() > target {
        let mut r = Vec::with_capacity(total - target + chunk_grow(total - target));
        r.extend_from_slice(&left[target..]);
        r.extend_from_slice(right);
        left.truncate(target);
        *right = r;
    }
    trim_chunk(left);
    trim_chunk(right);
}

/// Chunk-array growth step for a partition with `n` chunks.
#[inline]
fn chunk_array_step(n: usize) -> usize {
    (n / 16).max(1)
}

/// Bits of a digest's first 8 bytes that vary within a partition (see [`rank`]).
const RANK_BITS: u32 = 52;

/// The digest prefix `hi` (first 8 bytes, big-endian) without the 12 partition-id bits (byte 0
/// and the low nibble of byte 1): within a partition it orders like `hi` and, digests being
/// uniformly random, is uniform over `0..2^52`, which is what interpolation needs.
#[inline]
fn rank(hi: u64) -> u64 {
    ((hi >> 4) & (0xf << 48)) | (hi & ((1 << 48) - 1))
}

/// Where among `n ≥ 1` items spread uniformly over ranks `lo..hi` the rank `r` falls, clamped
/// to `0..n`. Only a starting point: the searches below never trust it.
#[inline]
fn interpolate(r: u64, lo: u64, hi: u64, n: usize) -> usize {
    if r <= lo || hi <= lo {
        return 0;
    }
    let g = (r - lo) as f64 * n as f64 / (hi - lo) as f64;
    (g as usize).min(n - 1)
}

/// Steps the searches walk linearly from an interpolated guess before they bisect.
const SCAN_STEPS: usize = 8;

/// The number of leading `i` in `0..n` for which `pred(i)` holds (`pred` must be true, then
/// false over `0..n`), found by walking up to [`SCAN_STEPS`] from `guess`, then bisecting the
/// rest: O(1) probes near a good guess, O(log n) whatever the guess.
#[inline]
fn partition_point_from(n: usize, guess: usize, pred: impl Fn(usize) -> bool) -> usize {
    if n == 0 {
        return 0;
    }
    let mut i = guess.min(n - 1);
    let (mut lo, mut hi) = if pred(i) {
        // The answer is in i+1..=n.
        let stop = (i + 1 + SCAN_STEPS).min(n);
        i += 1;
        while i < stop {
            if !pred(i) {
                return i;
            }
            i += 1;
        }
        (i, n)
    } else {
        // The answer is in 0..=i.
        let stop = i.saturating_sub(SCAN_STEPS);
        while i > stop {
            if pred(i - 1) {
                return i;
            }
            i -= 1;
        }
        (0, i)
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// One partition's ordered entries. Invariants (checked by `check` in tests): every chunk is
/// non-empty, sorted, at most `CHUNK_MAX_ENTRIES` long; chunks are in order; each `first` is
/// the prefix of its chunk's first entry; `len` is the sum of chunk lengths; capacities are
/// within their growth steps.
#[derive(Default)]
struct Partition {
    chunks: Vec<ChunkRef>,
    len: usize,
}

impl Partition {
    /// The chunk `key` belongs in: the last chunk whose first entry is ≤ `key`, or 0 when `key`
    /// sorts before every chunk. The partition must have a chunk.
    #[inline]
    fn chunk_for(&self, key: Key) -> usize {
        let cs = &self.chunks;
        debug_assert!(!cs.is_empty());
        let guess = interpolate(rank(key.hi), 0, 1 << RANK_BITS, cs.len());
        partition_point_from(cs.len(), guess, |i| cs[i].starts_at_or_before(key)).saturating_sub(1)
    }

    /// Interpolated position of `key` in chunk `ci`, whose entries span the ranks from its first
    /// entry to the next chunk's first (or the partition's end).
    #[inline]
    fn guess_in(&self, ci: usize, key: Key) -> usize {
        let cs = &self.chunks;
        let end = cs.get(ci + 1).map_or(1 << RANK_BITS, |c| rank(c.first));
        interpolate(rank(key.hi), rank(cs[ci].first), end, cs[ci].entries.len())
    }

    /// Where `key` is: `(chunk, Ok(pos))` when present, `(chunk, Err(pos))` where it would go.
    #[inline]
    fn locate(&self, key: Key) -> Option<(usize, Result<usize, usize>)> {
        if self.chunks.is_empty() {
            return None;
        }
        let ci = self.chunk_for(key);
        let es = &self.chunks[ci].entries;
        let pos = partition_point_from(es.len(), self.guess_in(ci, key), |i| es[i].key() < key);
        let found = pos < es.len() && es[pos].key() == key;
        Some((ci, if found { Ok(pos) } else { Err(pos) }))
    }

    /// The entries after `key`: the rest of its chunk, and the chunks after.
    fn after(&self, key: Key) -> (&[IndexEntry], &[ChunkRef]) {
        if self.chunks.is_empty() {
            return (&[], &[]);
        }
        let ci = self.chunk_for(key);
        let es = &self.chunks[ci].entries;
        let pos = partition_point_from(es.len(), self.guess_in(ci, key), |i| es[i].key() <= key);
        (&es[pos..], &self.chunks[ci + 1..])
    }

    fn get(&self, key: Key) -> Option<&IndexEntry> {
        match self.locate(key)? {
            (ci, Ok(pos)) => Some(&self.chunks[ci].entries[pos]),
            (_, Err(_)) => None,
        }
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut IndexEntry> {
        match self.locate(key)? {
            (ci, Ok(pos)) => Some(&mut self.chunks[ci].entries[pos]),
            (_, Err(_)) => None,
        }
    }

    /// Inserts a chunk at index `at` (its first entry must sort after chunk `at - 1` and its
    /// last before chunk `at`), growing the chunk array in steps.
    fn insert_chunk(&mut self, at: usize, entries: Chunk) {
        let n = self.chunks.len();
        if n == self.chunks.capacity() {
            self.chunks.reserve_exact(chunk_array_step(n));
        }
        self.chunks.insert(at, ChunkRef::new(entries));
    }

    /// Removes chunk `at` and releases chunk-array capacity.
    fn remove_chunk(&mut self, at: usize) {
        self.chunks.remove(at);
        let n = self.chunks.len();
        if n == 0 {
            self.chunks = Vec::new();
        } else if self.chunks.capacity() > n + 2 * chunk_array_step(n) {
            self.chunks.shrink_to(n + chunk_array_step(n));
        }
    }

    /// Inserts a new entry at `pos` of chunk `ci` (which must be where it sorts).
    fn insert_at(&mut self, ci: usize, pos: usize, entry: IndexEntry) {
        let n = self.chunks[ci].entries.len();
        if n < CHUNK_MAX_ENTRIES {
            let c = &mut self.chunks[ci];
            if n == c.entries.capacity() {
                c.entries.reserve_exact(chunk_grow(n).min(CHUNK_MAX_ENTRIES - n));
            }
            c.entries.insert(pos, entry);
            if pos == 0 {
                c.first = entry.key().hi;
            }
            return;
        }
        if pos == n {
            // Past the end of a full chunk: the front of the next chunk, or a chunk of its own,
            // so that ascending inserts leave full chunks behind.
            if ci + 1 < self.chunks.len() && self.chunks[ci + 1].entries.len() < CHUNK_MAX_ENTRIES {
                return self.insert_at(ci + 1, 0, entry);
            }
            return self.insert_chunk(ci + 1, vec![entry]);
        }
        // Split in half.
        let mid = CHUNK_MAX_ENTRIES / 2;
        let c = &mut self.chunks[ci];
        let mut right = Vec::with_capacity(CHUNK_MAX_ENTRIES - mid + chunk_grow(mid));
        right.extend_from_slice(&c.entries[mid..]);
        c.entries.truncate(mid);
        c.entries.shrink_to(mid + chunk_grow(mid));
        if pos <= mid {
            c.entries.insert(pos, entry);
            c.refresh_first();
        } else {
            right.insert(pos - mid, entry);
        }
        self.insert_chunk(ci + 1, right);
    }

    fn insert(&mut self, entry: IndexEntry) -> Option<IndexEntry> {
        match self.locate(entry.key()) {
            None => self.insert_chunk(0, vec![entry]),
            Some((ci, Ok(pos))) => return Some(std::mem::replace(&mut self.chunks[ci].entries[pos], entry)),
            Some((ci, Err(pos))) => self.insert_at(ci, pos, entry),
        }
        self.len += 1;
        None
    }

    /// Restores the invariants around chunk `ci` after it lost entries: frees it when empty,
    /// merges or evens it out with a neighbour when small, trims its capacity.
    fn repair_after_removal(&mut self, ci: usize) {
        let n = self.chunks[ci].entries.len();
        if n == 0 {
            self.remove_chunk(ci);
            return;
        }
        self.chunks[ci].refresh_first();
        let n_chunks = self.chunks.len();
        if n >= CHUNK_MIN_ENTRIES || n_chunks == 1 {
            trim_chunk(&mut self.chunks[ci].entries);
            return;
        }
        // Pair with the smaller neighbour; `a` is the left chunk of the pair.
        let len_of = |i: usize| self.chunks[i].entries.len();
        let a = if ci == 0 {
            0
        } else if ci + 1 == n_chunks || len_of(ci - 1) <= len_of(ci + 1) {
            ci - 1
        } else {
            ci
        };
        let (l, r) = self.chunks.split_at_mut(a + 1);
        let (left, right) = (&mut l[a], &mut r[0]);
        if left.entries.len() + right.entries.len() <= MERGE_MAX_ENTRIES {
            left.entries.reserve_exact(right.entries.len());
            left.entries.extend_from_slice(&right.entries);
            trim_chunk(&mut left.entries);
            self.remove_chunk(a + 1);
        } else {
            even_out(&mut left.entries, &mut right.entries);
            right.refresh_first();
        }
    }

    fn remove(&mut self, key: Key) -> Option<IndexEntry> {
        let (ci, pos) = match self.locate(key)? {
            (ci, Ok(pos)) => (ci, pos),
            (_, Err(_)) => return None,
        };
        let old = self.chunks[ci].entries.remove(pos);
        self.len -= 1;
        self.repair_after_removal(ci);
        Some(old)
    }

    fn push_sorted(&mut self, entry: IndexEntry) {
        if let Some(last) = self.chunks.last_mut() {
            let es = &mut last.entries;
            let tail = es[es.len() - 1];
            assert!(
                entry.key() > tail.key(),
                "push_sorted: digest {:?} does not sort after the partition's last {:?}",
                entry.digest(),
                tail.digest()
            );
            if es.len() < PUSH_FILL_ENTRIES {
                if es.len() == es.capacity() {
                    es.reserve_exact(PUSH_FILL_ENTRIES - es.len());
                }
                es.push(entry);
                self.len += 1;
                return;
            }
        }
        let mut c = Vec::with_capacity(PUSH_FILL_ENTRIES);
        c.push(entry);
        self.insert_chunk(self.chunks.len(), c);
        self.len += 1;
    }

    /// Rebuilds the chunk list after arbitrary removals: drops empty chunks, merges or evens out
    /// chunks below `CHUNK_MIN_ENTRIES`, trims capacities, recomputes prefixes.
    fn normalize(&mut self) {
        let old = std::mem::take(&mut self.chunks);
        let mut out: Vec<ChunkRef> = Vec::with_capacity(old.len());
        for mut c in old {
            if c.entries.is_empty() {
                continue;
            }
            if let Some(last) = out.last_mut() {
                let (l, n) = (last.entries.len(), c.entries.len());
                if l < CHUNK_MIN_ENTRIES || n < CHUNK_MIN_ENTRIES {
                    if l + n <= MERGE_MAX_ENTRIES {
                        last.entries.reserve_exact(n);
                        last.entries.extend_from_slice(&c.entries);
                        continue;
                    }
                    even_out(&mut last.entries, &mut c.entries);
                }
            }
            out.push(c);
        }
        for c in &mut out {
            trim_chunk(&mut c.entries);
            c.refresh_first();
        }
        if out.is_empty() {
            out = Vec::new();
        } else {
            out.shrink_to(out.len() + chunk_array_step(out.len()));
        }
        self.chunks = out;
    }

    fn shrink_to_fit(&mut self) {
        for c in &mut self.chunks {
            c.entries.shrink_to_fit();
        }
        self.chunks.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<ChunkRef>()
            + self.chunks.iter().map(|c| c.entries.capacity()).sum::<usize>() * std::mem::size_of::<IndexEntry>()
    }

    /// Panics unless every invariant of the partition holds.
    #[cfg(test)]
    fn check(&self, pid: usize) {
        let mut n = 0;
        let mut prev: Option<Key> = None;
        for (i, c) in self.chunks.iter().enumerate() {
            let es = &c.entries;
            assert!(
                !es.is_empty() && es.len() <= CHUNK_MAX_ENTRIES,
                "chunk {i} len {}",
                es.len()
            );
            assert!(es.capacity() <= CHUNK_MAX_ENTRIES + 2 * CHUNK_GROW_ENTRIES);
            let last = i + 1 == self.chunks.len();
            assert!(
                es.capacity() - es.len() <= 2 * chunk_grow(es.len()) || (last && es.capacity() == PUSH_FILL_ENTRIES),
                "chunk {i}: len {} capacity {}",
                es.len(),
                es.capacity()
            );
            assert_eq!(c.first, es[0].key().hi);
            for e in es {
                assert_eq!(e.digest().partition_id().0 as usize, pid);
                if let Some(p) = prev {
                    assert!(p < e.key(), "out of order in chunk {i}");
                }
                prev = Some(e.key());
            }
            n += es.len();
        }
        assert_eq!(n, self.len);
        let step = chunk_array_step(self.chunks.len());
        assert!(self.chunks.capacity() <= self.chunks.len() + 2 * step);
        if self.chunks.is_empty() {
            assert_eq!(self.chunks.capacity(), 0);
        }
    }
}

/// The primary index of one shard: 4096 ordered partition trees (only the shard's own partitions
/// ever hold entries). See the module doc for the representation, memory model and complexity.
pub struct PrimaryIndex {
    /// Indexed by partition id; exactly `N_PARTITIONS` long.
    partitions: Box<[Partition]>,
    len: usize,
}

impl PrimaryIndex {
    /// An empty index (allocates the 4096 empty partition headers, 32 bytes each).
    pub fn new() -> PrimaryIndex {
        let partitions: Box<[Partition]> = (0..N_PARTITIONS).map(|_| Partition::default()).collect();
        PrimaryIndex { partitions, len: 0 }
    }

    #[inline]
    fn partition(&self, pid: PartitionId) -> &Partition {
        assert!((pid.0 as usize) < N_PARTITIONS, "partition id {} out of range", pid.0);
        &self.partitions[pid.0 as usize]
    }

    #[inline]
    fn partition_mut(&mut self, pid: PartitionId) -> &mut Partition {
        assert!((pid.0 as usize) < N_PARTITIONS, "partition id {} out of range", pid.0);
        &mut self.partitions[pid.0 as usize]
    }

    /// Entries, tombstones included.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries in one partition.
    ///
    /// # Panics
    /// If `pid` is not below 4096 (as for every method taking a partition id).
    pub fn partition_len(&self, pid: PartitionId) -> usize {
        self.partition(pid).len
    }
    /// The entry for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<&IndexEntry> {
        self.partition(digest.partition_id()).get(Key::of(digest))
    }
    /// The entry for `digest`, to change in place. The caller must not replace it with an entry of
    /// another digest (the partition would lose its order); use [`insert`](Self::insert) for that.
    pub fn get_mut(&mut self, digest: &Digest) -> Option<&mut IndexEntry> {
        self.partition_mut(digest.partition_id()).get_mut(Key::of(digest))
    }
    /// Inserts or replaces; returns the entry it replaced.
    pub fn insert(&mut self, entry: IndexEntry) -> Option<IndexEntry> {
        let old = self.partition_mut(entry.digest().partition_id()).insert(entry);
        if old.is_none() {
            self.len += 1;
        }
        old
    }
    /// Removes the entry for `digest`; returns it, or `None` when there was none.
    pub fn remove(&mut self, digest: &Digest) -> Option<IndexEntry> {
        let old = self.partition_mut(digest.partition_id()).remove(Key::of(digest));
        if old.is_some() {
            self.len -= 1;
        }
        old
    }
    /// The partition's entries in digest order, starting strictly after `after` (from the first
    /// when `None`). `after` need not be in the index.
    pub fn iter_partition_after<'a>(
        &'a self,
        pid: PartitionId,
        after: Option<&Digest>,
    ) -> impl Iterator<Item = &'a IndexEntry> + 'a {
        let part = self.partition(pid);
        let (head, rest): (&'a [IndexEntry], &'a [ChunkRef]) = match after {
            None => (&[], &part.chunks),
            Some(d) => part.after(Key::of(d)),
        };
        head.iter().chain(rest.iter().flat_map(|c| c.entries.iter()))
    }
    /// Every entry, partition by partition, each in digest order.
    pub fn iter(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        self.partitions
            .iter()
            .flat_map(|p| p.chunks.iter().flat_map(|c| c.entries.iter()))
    }
    /// Visits every entry of a partition in digest order; the visitor may change an entry (not its
    /// digest) or remove it. Returns how many were removed.
    ///
    /// # Panics
    /// If the visitor changes an entry's digest.
    pub fn visit_partition(&mut self, pid: PartitionId, mut f: impl FnMut(&mut IndexEntry) -> Visit) -> usize {
        let part = self.partition_mut(pid);
        let mut removed = 0;
        for chunk in &mut part.chunks {
            chunk.entries.retain_mut(|e| {
                let key = e.key();
                let v = f(e);
                assert!(
                    e.key() == key,
                    "visit_partition: visitor changed digest {:?}",
                    e.digest()
                );
                match v {
                    Visit::Keep => true,
                    Visit::Remove => {
                        removed += 1;
                        false
                    }
                }
            });
        }
        if removed > 0 {
            part.len -= removed;
            part.normalize();
            self.len -= removed;
        }
        removed
    }
    /// Appends an entry known to sort after every entry already in its partition (bulk load from
    /// a persisted index, which is stored in order). Faster than `insert`. Fills chunks to
    /// [`PUSH_FILL_ENTRIES`]; call [`shrink_to_fit`](Self::shrink_to_fit) after the load to
    /// release the spare slots of each partition's last chunk.
    ///
    /// # Panics
    /// If the digest does not sort after the partition's last entry.
    pub fn push_sorted(&mut self, entry: IndexEntry) {
        self.partition_mut(entry.digest().partition_id()).push_sorted(entry);
        self.len += 1;
    }
    /// Releases every spare slot (chunks and chunk arrays), e.g. after a bulk load. O(chunks);
    /// the next insert into a chunk then reallocates it.
    pub fn shrink_to_fit(&mut self) {
        for p in self.partitions.iter_mut() {
            p.shrink_to_fit();
        }
    }
    /// Heap bytes held by the index structure (entries, slack and node overhead), as allocated:
    /// the bytes requested from the allocator, not counting the allocator's own per-allocation
    /// overhead. O(partitions + chunks).
    pub fn heap_bytes(&self) -> usize {
        self.partitions.len() * std::mem::size_of::<Partition>()
            + self.partitions.iter().map(Partition::heap_bytes).sum::<usize>()
    }
    /// Number of chunks over all partitions (for statistics: `len() / chunk_count()` is the mean
    /// fill). O(partitions).
    pub fn chunk_count(&self) -> usize {
        self.partitions.iter().map(|p| p.chunks.len()).sum()
    }

    /// Panics unless every invariant holds.
    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.partitions.len(), N_PARTITIONS);
        let mut n = 0;
        for (pid, p) in self.partitions.iter().enumerate() {
            p.check(pid);
            n += p.len;
        }
        assert_eq!(n, self.len);
    }
}

impl Default for PrimaryIndex {
    fn default() -> Self {
        PrimaryIndex::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeMap;

    fn random_digest(rng: &mut ChaCha8Rng) -> Digest {
        let mut d = [0u8; 20];
        rng.fill_bytes(&mut d);
        Digest(d)
    }

    /// A random digest in partition `pid`.
    fn digest_in(rng: &mut ChaCha8Rng, pid: u16) -> Digest {
        let mut d = random_digest(rng);
        d.0[0] = pid as u8;
        d.0[1] = (d.0[1] & 0xf0) | (pid >> 8) as u8;
        assert_eq!(d.digest_pid(), pid);
        d
    }

    trait Pid {
        fn digest_pid(&self) -> u16;
    }
    impl Pid for Digest {
        fn digest_pid(&self) -> u16 {
            self.partition_id().0
        }
    }

    fn entry(rng: &mut ChaCha8Rng, d: Digest) -> IndexEntry {
        IndexEntry::new(
            d,
            rng.gen_range(0..MAX_ADDR_BYTES / 16) * 16,
            rng.gen_range(1..=MAX_RECORD_BYTES / 16) * 16,
            rng.gen(),
            rng.gen(),
            rng.gen_range(0..=MAX_LUT_MS),
            rng.gen_bool(0.1),
        )
    }

    // ---- IndexEntry ----

    #[test]
    fn entry_fields_round_trip_at_extremes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let digests = [Digest([0; 20]), Digest([0xff; 20]), random_digest(&mut rng)];
        let addrs = [0, 16, MAX_ADDR_BYTES - 16, 0x0012_3456_7890];
        let sizes = [16, MAX_RECORD_BYTES, 4096];
        let gens = [0, 1, u16::MAX];
        let voids = [0, 1, u32::MAX];
        let luts = [0, 1, MAX_LUT_MS];
        let mut n = 0;
        for &d in &digests {
            for &a in &addrs {
                for &s in &sizes {
                    for &g in &gens {
                        for &v in &voids {
                            for &l in &luts {
                                for t in [false, true] {
                                    let e = IndexEntry::new(d, a, s, g, v, l, t);
                                    assert_eq!(e.digest(), d);
                                    assert_eq!(e.addr_bytes(), a);
                                    assert_eq!(e.size_bytes(), s);
                                    assert_eq!(e.generation(), g);
                                    assert_eq!(e.void_time(), v);
                                    assert_eq!(e.lut_ms(), l);
                                    assert_eq!(e.is_tombstone(), t);
                                    let b = e.to_bytes();
                                    assert_eq!(IndexEntry::from_bytes(&b), e);
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(n, 3 * 4 * 3 * 3 * 3 * 3 * 2);
    }

    #[test]
    fn entry_image_layout_is_stable() {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let e = IndexEntry::new(
            Digest(d),
            0x10 * 0x12_3456_789a,
            16 * 0x4_5678,
            0xbeef,
            0xdead_cafe,
            0xab_cdef_0123,
            true,
        );
        let b = e.to_bytes();
        assert_eq!(&b[0..20], &d);
        assert_eq!(b[20..24], 0xdead_cafe_u32.to_le_bytes());
        let w3 = 0x12_3456_789a_u64 | (0x4_5678 << 40) | (1 << 59);
        assert_eq!(b[24..32], w3.to_le_bytes());
        let w4 = 0xab_cdef_0123_u64 | (0xbeef << 40);
        assert_eq!(b[32..40], w4.to_le_bytes());
    }

    #[test]
    fn entry_image_rejects_bad_images() {
        let e = IndexEntry::new(Digest([7; 20]), 32, 48, 1, 2, 3, false);
        for (byte, bit) in [(31, 4), (31, 7), (39, 0), (39, 7)] {
            let mut b = e.to_bytes();
            b[byte] |= 1 << bit;
            assert!(matches!(
                IndexEntry::try_from_bytes(&b),
                Err(EntryImageError::ReservedBits { .. })
            ));
        }
        let mut b = e.to_bytes();
        // size field: bits 40..59 of bytes 24..32 → bytes 29, 30, 31 (low 3 bits).
        b[29] = 0;
        b[30] = 0;
        b[31] &= !0x07;
        assert_eq!(IndexEntry::try_from_bytes(&b), Err(EntryImageError::ZeroSize));
    }

    #[test]
    #[should_panic(expected = "reserved bits set")]
    fn entry_from_bytes_panics_on_bad_image() {
        let mut b = IndexEntry::new(Digest([7; 20]), 32, 48, 1, 2, 3, false).to_bytes();
        b[39] = 0xff;
        IndexEntry::from_bytes(&b);
    }

    #[test]
    fn entry_new_panics_on_fields_that_do_not_fit() {
        let d = Digest([1; 20]);
        let cases: [(u64, usize, u64); 7] = [
            (8, 16, 0),
            (MAX_ADDR_BYTES, 16, 0),
            (0, 0, 0),
            (0, 24, 0),
            (0, MAX_RECORD_BYTES + 16, 0),
            (0, 16, MAX_LUT_MS + 1),
            (!15, 16, 0),
        ];
        for (a, s, l) in cases {
            let r = std::panic::catch_unwind(|| IndexEntry::new(d, a, s, 0, 0, l, false));
            assert!(r.is_err(), "accepted addr {a} size {s} lut {l}");
        }
    }

    #[test]
    fn entry_set_location_and_tombstone() {
        let mut e = IndexEntry::new(Digest([9; 20]), 160, 32, 7, 8, 9, false);
        e.set_location(MAX_ADDR_BYTES - 16, MAX_RECORD_BYTES);
        assert_eq!(
            (e.addr_bytes(), e.size_bytes()),
            (MAX_ADDR_BYTES - 16, MAX_RECORD_BYTES)
        );
        assert_eq!(
            (e.generation(), e.void_time(), e.lut_ms(), e.is_tombstone()),
            (7, 8, 9, false)
        );
        e.set_tombstone();
        assert!(e.is_tombstone());
        e.set_location(0, 16);
        assert!(e.is_tombstone());
        assert_eq!((e.addr_bytes(), e.size_bytes(), e.digest()), (0, 16, Digest([9; 20])));
        assert!(std::panic::catch_unwind(move || e.set_location(17, 16)).is_err());
        assert!(std::panic::catch_unwind(move || e.set_location(16, 0)).is_err());
    }

    #[test]
    fn entry_key_orders_like_digest() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..10_000 {
            let a = random_digest(&mut rng);
            let mut b = a;
            // Often differ only late in the digest.
            let i = rng.gen_range(0..20);
            b.0[i] = rng.gen();
            assert_eq!(Key::of(&a).cmp(&Key::of(&b)), a.cmp(&b));
        }
    }

    #[test]
    fn partition_point_from_agrees_with_bisection_for_any_guess() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..80);
            let answer = rng.gen_range(0..=n);
            let guess = rng.gen_range(0..n + 3);
            assert_eq!(
                partition_point_from(n, guess, |i| i < answer),
                answer,
                "n {n} guess {guess}"
            );
        }
        assert_eq!(partition_point_from(100_000, 0, |i| i < 99_999), 99_999);
        assert_eq!(partition_point_from(100_000, 99_999, |i| i < 1), 1);
    }

    #[test]
    fn rank_orders_like_prefix_within_a_partition() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..10_000 {
            let pid = rng.gen_range(0..N_PARTITIONS as u16);
            let (a, b) = (digest_in(&mut rng, pid), digest_in(&mut rng, pid));
            let (ka, kb) = (Key::of(&a), Key::of(&b));
            assert_eq!(rank(ka.hi).cmp(&rank(kb.hi)), ka.hi.cmp(&kb.hi));
            assert!(rank(ka.hi) < 1 << RANK_BITS);
        }
        assert_eq!(interpolate(5, 5, 5, 10), 0);
        assert_eq!(interpolate(u64::MAX, 0, 1 << RANK_BITS, 10), 9);
        assert_eq!(interpolate(1 << 51, 0, 1 << RANK_BITS, 10), 5);
    }

    // ---- PrimaryIndex ----

    /// Checks the index against the model: len, partition_len, get, order, scans after cut points.
    fn check_against(ix: &PrimaryIndex, model: &BTreeMap<Digest, IndexEntry>, pids: &[u16], rng: &mut ChaCha8Rng) {
        ix.check();
        assert_eq!(ix.len(), model.len());
        assert_eq!(ix.is_empty(), model.is_empty());
        let all: Vec<IndexEntry> = ix.iter().copied().collect();
        let want: Vec<IndexEntry> = model.values().copied().collect();
        // Digest order within a partition; iter() goes partition by partition.
        let mut want_by_pid = want.clone();
        want_by_pid.sort_by_key(|e| (e.digest().partition_id(), e.digest()));
        assert_eq!(all, want_by_pid);
        for (d, e) in model.iter().take(200) {
            assert_eq!(ix.get(d), Some(e));
        }
        for _ in 0..50 {
            assert_eq!(ix.get(&random_digest(rng)), None);
        }
        for &pid in pids {
            let in_pid: Vec<IndexEntry> = want
                .iter()
                .filter(|e| e.digest().partition_id().0 == pid)
                .copied()
                .collect();
            assert_eq!(ix.partition_len(PartitionId(pid)), in_pid.len());
            let got: Vec<IndexEntry> = ix.iter_partition_after(PartitionId(pid), None).copied().collect();
            assert_eq!(got, in_pid);
            for _ in 0..20 {
                // Cut at a present digest, or at an absent one in the same partition.
                let cut = if !in_pid.is_empty() && rng.gen_bool(0.5) {
                    in_pid[rng.gen_range(0..in_pid.len())].digest()
                } else {
                    digest_in(rng, pid)
                };
                let got: Vec<IndexEntry> = ix.iter_partition_after(PartitionId(pid), Some(&cut)).copied().collect();
                let want: Vec<IndexEntry> = in_pid.iter().filter(|e| e.digest() > cut).copied().collect();
                assert_eq!(got, want, "after {cut:?}");
            }
            // Extreme cuts.
            let lo = Digest([0; 20]);
            let hi = Digest([0xff; 20]);
            assert_eq!(
                ix.iter_partition_after(PartitionId(pid), Some(&lo)).count(),
                in_pid.len()
            );
            assert_eq!(ix.iter_partition_after(PartitionId(pid), Some(&hi)).count(), 0);
        }
    }

    /// Random insert/replace/remove/get against a BTreeMap; `make` draws a digest in a partition.
    fn run_model(seed: u64, pids: &[u16], steps: usize, make: impl Fn(&mut ChaCha8Rng, u16) -> Digest) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ix = PrimaryIndex::new();
        let mut model: BTreeMap<Digest, IndexEntry> = BTreeMap::new();
        let mut keys: Vec<Digest> = Vec::new();
        for step in 0..steps {
            // Phases: grow, churn, shrink, regrow.
            let remove_p = match (step * 4) / steps {
                0 => 0.15,
                1 => 0.45,
                2 => 0.8,
                _ => 0.3,
            };
            let pid = pids[rng.gen_range(0..pids.len())];
            let r: f64 = rng.gen();
            if r < remove_p && !keys.is_empty() {
                let i = rng.gen_range(0..keys.len());
                let d = keys.swap_remove(i);
                assert_eq!(ix.remove(&d), model.remove(&d));
                assert_eq!(ix.remove(&d), None);
            } else if r < remove_p + 0.1 && !keys.is_empty() {
                let d = keys[rng.gen_range(0..keys.len())];
                let e = entry(&mut rng, d);
                assert_eq!(ix.insert(e), model.insert(d, e));
            } else if r < remove_p + 0.15 {
                let d = make(&mut rng, pid);
                assert_eq!(ix.remove(&d), model.remove(&d));
                assert_eq!(ix.get(&d), None);
            } else if r < remove_p + 0.25 && !keys.is_empty() {
                let d = keys[rng.gen_range(0..keys.len())];
                assert_eq!(ix.get(&d), model.get(&d));
                let g = rng.gen();
                if let Some(e) = ix.get_mut(&d) {
                    e.set_location(4096, 32);
                    *e = IndexEntry::new(d, 4096, 32, g, 1, 2, false);
                }
                if let Some(e) = model.get_mut(&d) {
                    *e = IndexEntry::new(d, 4096, 32, g, 1, 2, false);
                }
            } else {
                let d = make(&mut rng, pid);
                let e = entry(&mut rng, d);
                if model.insert(d, e).is_none() {
                    keys.push(d);
                    assert_eq!(ix.insert(e), None);
                } else {
                    assert!(ix.insert(e).is_some());
                }
            }
            if step % (steps / 20) == 0 {
                check_against(&ix, &model, pids, &mut rng);
            }
        }
        check_against(&ix, &model, pids, &mut rng);
        // Drain completely: memory returns to the empty index.
        let empty = PrimaryIndex::new().heap_bytes();
        for d in keys {
            assert!(ix.remove(&d).is_some());
        }
        ix.check();
        assert!(ix.is_empty());
        assert_eq!(ix.heap_bytes(), empty);
    }

    #[test]
    fn model_few_partitions_many_chunks() {
        run_model(10, &[0, 7, 4095], 60_000, digest_in);
    }

    #[test]
    fn model_many_partitions() {
        let pids: Vec<u16> = (0..4096).step_by(37).collect();
        run_model(11, &pids, 40_000, digest_in);
    }

    #[test]
    fn model_all_prefixes_tie() {
        // Every digest shares its first 8 bytes: chunk search must fall back to full digests.
        run_model(12, &[0x345], 30_000, |rng, pid| {
            let mut d = digest_in(rng, pid);
            d.0[2..8].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
            d.0[1] = (pid >> 8) as u8 | 0x10;
            d
        });
    }

    #[test]
    fn model_prefixes_tie_in_groups() {
        // Runs of equal prefixes spanning chunk boundaries, mixed with distinct ones.
        run_model(13, &[5, 6], 30_000, |rng, pid| {
            let mut d = digest_in(rng, pid);
            let group = rng.gen_range(0..8u8);
            d.0[2..8].copy_from_slice(&[group, 0, 0, 0, 0, 0]);
            d
        });
    }

    #[test]
    fn ascending_and_descending_inserts_fill_chunks() {
        let mut rng = ChaCha8Rng::seed_from_u64(20);
        let mut ds: Vec<Digest> = (0..20_000).map(|_| digest_in(&mut rng, 9)).collect();
        ds.sort();
        ds.dedup();
        let mut ix = PrimaryIndex::new();
        for &d in &ds {
            ix.insert(entry(&mut rng, d));
        }
        ix.check();
        // Ascending inserts spill into fresh chunks: nearly all chunks full.
        assert!(
            ix.chunk_count() * (CHUNK_MAX_ENTRIES - 1) <= ds.len(),
            "{} chunks",
            ix.chunk_count()
        );
        let mut ix = PrimaryIndex::new();
        for &d in ds.iter().rev() {
            ix.insert(entry(&mut rng, d));
        }
        ix.check();
        assert!(ix.chunk_count() * CHUNK_MAX_ENTRIES / 2 <= ds.len() + CHUNK_MAX_ENTRIES);
        let got: Vec<Digest> = ix.iter().map(|e| e.digest()).collect();
        assert_eq!(got, ds);
    }

    #[test]
    fn push_sorted_then_inserts_and_removes() {
        let mut rng = ChaCha8Rng::seed_from_u64(30);
        let pids = [1u16, 2, 3];
        let mut model = BTreeMap::new();
        for _ in 0..30_000 {
            let pid = pids[rng.gen_range(0..3)];
            let d = digest_in(&mut rng, pid);
            model.insert(d, entry(&mut rng, d));
        }
        let mut ix = PrimaryIndex::new();
        // Interleaved partitions, each in order: what a persisted index load looks like.
        for e in model.values() {
            ix.push_sorted(*e);
        }
        check_against(&ix, &model, &pids, &mut rng);
        let loaded = ix.heap_bytes();
        // Bulk load fills chunks.
        assert_eq!(
            ix.chunk_count(),
            pids.iter()
                .map(|&p| ix.partition_len(PartitionId(p)).div_ceil(PUSH_FILL_ENTRIES))
                .sum()
        );
        ix.shrink_to_fit();
        ix.check();
        assert!(ix.heap_bytes() <= loaded);
        let per = (ix.heap_bytes() - PrimaryIndex::new().heap_bytes()) as f64 / ix.len() as f64;
        assert!(per < 41.0, "{per} bytes per entry after bulk load");
        check_against(&ix, &model, &pids, &mut rng);
        for _ in 0..20_000 {
            let pid = pids[rng.gen_range(0..3)];
            let d = digest_in(&mut rng, pid);
            let e = entry(&mut rng, d);
            assert_eq!(ix.insert(e), model.insert(d, e));
        }
        check_against(&ix, &model, &pids, &mut rng);
        let ds: Vec<Digest> = model.keys().copied().collect();
        for d in ds.iter().step_by(2) {
            assert_eq!(ix.remove(d), model.remove(d));
        }
        check_against(&ix, &model, &pids, &mut rng);
        // push_sorted after inserts and removes, at the end of each partition.
        for &p in &pids {
            let mut d = Digest([0xff; 20]);
            d.0[0] = p as u8;
            d.0[1] = 0xf0 | (p >> 8) as u8;
            let e = entry(&mut rng, d);
            ix.push_sorted(e);
            model.insert(d, e);
        }
        check_against(&ix, &model, &pids, &mut rng);
    }

    #[test]
    #[should_panic(expected = "does not sort after")]
    fn push_sorted_out_of_order_panics() {
        let mut ix = PrimaryIndex::new();
        let mut d = [5u8; 20];
        d[0] = 0;
        d[1] = 0;
        ix.push_sorted(IndexEntry::new(Digest(d), 0, 16, 0, 0, 0, false));
        d[19] = 4;
        ix.push_sorted(IndexEntry::new(Digest(d), 0, 16, 0, 0, 0, false));
    }

    #[test]
    #[should_panic(expected = "does not sort after")]
    fn push_sorted_duplicate_panics() {
        let mut ix = PrimaryIndex::new();
        let e = IndexEntry::new(Digest([3; 20]), 0, 16, 0, 0, 0, false);
        ix.push_sorted(e);
        ix.push_sorted(e);
    }

    #[test]
    fn visit_partition_modifies_and_removes() {
        let mut rng = ChaCha8Rng::seed_from_u64(40);
        let pids = [100u16, 200];
        let mut model = BTreeMap::new();
        let mut ix = PrimaryIndex::new();
        for _ in 0..20_000 {
            let pid = pids[rng.gen_range(0..2)];
            let d = digest_in(&mut rng, pid);
            let e = entry(&mut rng, d);
            assert_eq!(ix.insert(e), model.insert(d, e));
        }
        // Pass 1: tombstone every third, remove runs (to empty whole chunks), keep the rest.
        let mut seen = Vec::new();
        let mut i = 0usize;
        let removed = ix.visit_partition(PartitionId(100), |e| {
            seen.push(e.digest());
            i += 1;
            if (i / 100) % 3 == 1 {
                Visit::Remove
            } else {
                if i.is_multiple_of(3) {
                    e.set_tombstone();
                }
                Visit::Keep
            }
        });
        let in_pid: Vec<Digest> = model.keys().filter(|d| d.partition_id().0 == 100).copied().collect();
        assert_eq!(seen, in_pid);
        let mut n_removed = 0;
        for (i, d) in in_pid.iter().enumerate() {
            let i = i + 1;
            if (i / 100) % 3 == 1 {
                model.remove(d);
                n_removed += 1;
            } else if i % 3 == 0 {
                model.get_mut(d).unwrap().set_tombstone();
            }
        }
        assert_eq!(removed, n_removed);
        check_against(&ix, &model, &pids, &mut rng);
        // Pass 2: sparse removals leave tiny chunks to merge.
        let mut j = 0usize;
        let removed = ix.visit_partition(PartitionId(200), |_| {
            j += 1;
            if j.is_multiple_of(10) {
                Visit::Keep
            } else {
                Visit::Remove
            }
        });
        let in_pid: Vec<Digest> = model.keys().filter(|d| d.partition_id().0 == 200).copied().collect();
        for (j, d) in in_pid.iter().enumerate() {
            if (j + 1) % 10 != 0 {
                model.remove(d);
            }
        }
        assert_eq!(removed, in_pid.len() - in_pid.len() / 10);
        check_against(&ix, &model, &pids, &mut rng);
        let p = &ix.partitions[200];
        if p.chunks.len() > 1 {
            assert!(p.chunks.iter().all(|c| c.entries.len() >= CHUNK_MIN_ENTRIES));
        }
        // Nothing removed, nothing changed.
        assert_eq!(ix.visit_partition(PartitionId(100), |_| Visit::Keep), 0);
        assert_eq!(ix.visit_partition(PartitionId(3000), |_| Visit::Remove), 0);
        // Remove everything.
        let n = ix.partition_len(PartitionId(100));
        assert_eq!(ix.visit_partition(PartitionId(100), |_| Visit::Remove), n);
        model.retain(|d, _| d.partition_id().0 != 100);
        check_against(&ix, &model, &pids, &mut rng);
        assert_eq!(ix.partitions[100].chunks.capacity(), 0);
    }

    #[test]
    #[should_panic(expected = "visitor changed digest")]
    fn visit_partition_rejects_digest_change() {
        let mut ix = PrimaryIndex::new();
        let e = IndexEntry::new(Digest([0; 20]), 0, 16, 0, 0, 0, false);
        ix.insert(e);
        ix.visit_partition(PartitionId(0), |e| {
            *e = IndexEntry::new(Digest([0xf0; 20]), 0, 16, 0, 0, 0, false);
            Visit::Keep
        });
    }

    #[test]
    fn heap_bytes_tracks_size_and_falls_after_mass_removal() {
        let mut rng = ChaCha8Rng::seed_from_u64(50);
        let mut ix = PrimaryIndex::new();
        let empty = ix.heap_bytes();
        assert_eq!(empty, N_PARTITIONS * std::mem::size_of::<Partition>());
        let mut ds = Vec::new();
        for _ in 0..200_000 {
            let d = random_digest(&mut rng);
            ix.insert(entry(&mut rng, d));
            ds.push(d);
        }
        ix.check();
        let full = ix.heap_bytes();
        let per = (full - empty) as f64 / ix.len() as f64;
        // ≈ 49 entries per partition here: mostly one or two chunks each.
        assert!(per < 48.0, "{per} bytes per entry");
        // Churn: replace half the records by new ones, twice; memory must stay bounded.
        for _ in 0..2 {
            for d in ds.iter_mut().step_by(2) {
                ix.remove(d).unwrap();
                *d = random_digest(&mut rng);
                ix.insert(entry(&mut rng, *d));
            }
        }
        ix.check();
        let churned = (ix.heap_bytes() - empty) as f64 / ix.len() as f64;
        assert!(
            churned < per * 1.1,
            "{churned} bytes per entry after churn, {per} before"
        );
        for d in &ds[..190_000] {
            ix.remove(d).unwrap();
        }
        ix.check();
        let after = ix.heap_bytes();
        assert!(
            after - empty < (full - empty) / 10,
            "{after} after removal, {full} before"
        );
        for d in &ds[190_000..] {
            ix.remove(d).unwrap();
        }
        assert_eq!(ix.heap_bytes(), empty);
    }

    #[test]
    fn big_partition_memory_under_random_inserts_and_churn() {
        let mut rng = ChaCha8Rng::seed_from_u64(60);
        let mut ix = PrimaryIndex::new();
        let empty = ix.heap_bytes();
        let mut ds: Vec<Digest> = (0..50_000).map(|_| digest_in(&mut rng, 77)).collect();
        for &d in &ds {
            ix.insert(entry(&mut rng, d));
        }
        let per = (ix.heap_bytes() - empty) as f64 / ix.len() as f64;
        assert!(per < 45.0, "{per} bytes per entry");
        for round in 0..4 {
            for d in ds.iter_mut().skip(round).step_by(3) {
                ix.remove(d).unwrap();
                *d = digest_in(&mut rng, 77);
                ix.insert(entry(&mut rng, *d));
            }
        }
        ix.check();
        let churned = (ix.heap_bytes() - empty) as f64 / ix.len() as f64;
        assert!(churned < 46.0, "{churned} bytes per entry after churn");
    }

    #[test]
    fn partition_id_out_of_range_panics() {
        let ix = PrimaryIndex::new();
        assert!(std::panic::catch_unwind(|| ix.partition_len(PartitionId(4096))).is_err());
    }
}
