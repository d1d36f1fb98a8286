//! The on-disk record and write-block header formats (`docs/DISK_FORMAT.md` draws them).
//!
//! Every integer in a header is little-endian. A record is a 64-byte header followed by its body,
//! and takes a whole number of 16-byte rblocks on the device (zero padding after the body).
//!
//! Record header (64 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `RECORD_MAGIC` |
//! | 4 | 4 | header CRC32C over bytes 8..64 |
//! | 8 | 4 | body CRC32C over the body bytes |
//! | 12 | 4 | `total_len`: header + body bytes, unpadded |
//! | 16 | 20 | digest |
//! | 36 | 2 | generation |
//! | 38 | 1 | flags: 0x01 tombstone, 0x02 has set name, 0x04 has stored key |
//! | 39 | 1 | reserved, 0 |
//! | 40 | 4 | void-time, seconds since 2010-01-01 UTC, 0 = never expires |
//! | 44 | 4 | low 32 bits of the sequence number of the wblock the record was written into |
//! | 48 | 8 | last-update time (LUT), milliseconds since 2010-01-01 UTC |
//! | 56 | 8 | origin sequence: the highest wblock sequence issued when the client write happened (kept when defrag moves the record) |
//!
//! Body: `[u8 set_len][set]` if has-set; `[u8 key particle type][u32 key_len][key]` if has-key;
//! `[u16 n_bins]`; then per bin `[u8 name_len][name][u8 particle type][u32 value_len][value]`
//! (value in its wire encoding, spec §3.5).
//!
//! Write-block header (the first 64 bytes of every wblock; records follow at offset 64):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `WBLOCK_MAGIC` |
//! | 4 | 4 | CRC32C over bytes 8..64 |
//! | 8 | 8 | sequence number (per shard, increases by one for each wblock opened) |
//! | 16 | 8 | instance id of the shard region (random at format) |
//! | 24 | 4 | wblock id (index of the wblock in the region) |
//! | 28 | 4 | wblock size, bytes |
//! | 32 | 32 | reserved, 0 |
//!
//! A wblock whose first 4 bytes are zero is free (erased by defrag or never written).

use crate::digest::Digest;
use crate::particle::{Bin, ParticleError};

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"BRec");
pub const WBLOCK_MAGIC: u32 = u32::from_le_bytes(*b"BWbk");
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Bytes of a wblock header; the first record starts here.
pub const WBLOCK_HEADER_BYTES: usize = 64;
/// Records start and end on this granularity, bytes.
pub const RBLOCK_BYTES: usize = 16;
/// Most bins in one record (spec §10.4).
pub const RECORD_MAX_BINS: usize = 32_767;

pub const FLAG_TOMBSTONE: u8 = 0x01;
pub const FLAG_HAS_SET: u8 = 0x02;
pub const FLAG_HAS_KEY: u8 = 0x04;

const _: () = assert!(RECORD_HEADER_BYTES % RBLOCK_BYTES == 0);
const _: () = assert!(WBLOCK_HEADER_BYTES % RBLOCK_BYTES == 0);

/// A stored user key: its particle type and wire bytes (spec §3.3 KEY field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub ptype: u8,
    pub bytes: Vec<u8>,
}

/// The fixed part of a record: what the header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub digest: Digest,
    pub generation: u16,
    /// Seconds since 2010-01-01 UTC; 0 = never expires.
    pub void_time: u32,
    /// Last-update time, ms since 2010-01-01 UTC.
    pub lut_ms: u64,
    /// See the header table.
    pub origin_seq: u64,
    pub tombstone: bool,
}

/// A whole record. A tombstone has no bins.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub meta: RecordMeta,
    /// Set name, empty for none (at most 63 bytes).
    pub set_name: Vec<u8>,
    pub key: Option<StoredKey>,
    pub bins: Vec<Bin>,
}

/// What a header says, after its checksum was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub meta: RecordMeta,
    /// Header + body bytes, unpadded.
    pub total_len: u32,
    pub body_crc: u32,
    pub flags: u8,
    pub wblock_seq_lo: u32,
}

impl RecordHeader {
    /// Bytes the record takes on the device (total_len rounded up to RBLOCK_BYTES).
    pub fn padded_len(&self) -> usize {
        padded(self.total_len as usize)
    }
}

/// `len` rounded up to [`RBLOCK_BYTES`].
pub const fn padded(len: usize) -> usize {
    len.div_ceil(RBLOCK_BYTES) * RBLOCK_BYTES
}

/// Why bytes do not hold a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts here (magic absent): the end of a wblock's records.
    #[error("no record at this position")]
    NoRecord,
    /// A valid record header from an earlier life of this wblock (wrong sequence): also the end of
    /// the wblock's records.
    #[error("stale record (wblock sequence {found:#x}, expected {expected:#x})")]
    Stale { found: u32, expected: u32 },
    /// The header checksum failed: nothing in it can be trusted.
    #[error("record header checksum mismatch")]
    HeaderCorrupt,
    /// The header is valid but the body checksum failed; `padded_len` lets a scan skip it.
    #[error("record body checksum mismatch")]
    BodyCorrupt { digest: Digest, padded_len: usize },
    /// Fewer bytes than the header or `total_len` needs.
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// Checksums pass but the body does not parse.
    #[error("malformed record body: {0}")]
    Malformed(String),
    #[error(transparent)]
    Particle(#[from] ParticleError),
}

/// Unpadded encoded length of `rec`, bytes.
pub fn encoded_len(rec: &Record) -> usize {
    unimplemented!("{rec:?}")
}

/// Writes `rec` at the start of `out`, stamped with `wblock_seq`, zero-pads to [`RBLOCK_BYTES`]
/// and returns the padded length.
///
/// # Panics
/// If `out` is shorter than the padded length, or the record breaks a limit (set name over 63
/// bytes, more than [`RECORD_MAX_BINS`] bins, a tombstone with bins) — callers validate first.
pub fn encode(rec: &Record, wblock_seq: u64, out: &mut [u8]) -> usize {
    unimplemented!("{rec:?}{wblock_seq}{}", out.len())
}

/// Reads and verifies a record header at the start of `buf`. With `expect_seq`, a header stamped
/// with another wblock sequence is [`RecordError::Stale`].
///
/// # Errors
/// See [`RecordError`]; the body is not checked.
pub fn decode_header(buf: &[u8], expect_seq: Option<u64>) -> Result<RecordHeader, RecordError> {
    unimplemented!("{buf:?}{expect_seq:?}")
}

/// Verifies the body checksum of a record whose header is `hdr` and which starts at `buf[0]`.
///
/// # Errors
/// `Truncated` or `BodyCorrupt`.
pub fn verify_body(hdr: &RecordHeader, buf: &[u8]) -> Result<(), RecordError> {
    unimplemented!("{hdr:?}{buf:?}")
}

/// Decodes and fully verifies the record at the start of `buf`.
///
/// # Errors
/// See [`RecordError`].
pub fn decode(buf: &[u8], expect_seq: Option<u64>) -> Result<Record, RecordError> {
    unimplemented!("{buf:?}{expect_seq:?}")
}

/// A write-block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WblockHeader {
    pub seq: u64,
    pub instance_id: u64,
    pub wblock_id: u32,
    pub wblock_size_bytes: u32,
}

impl WblockHeader {
    /// Writes the 64-byte header into `out[..64]`.
    pub fn encode(&self, out: &mut [u8]) {
        unimplemented!("{}", out.len())
    }

    /// Reads a header. `Ok(None)` for a free wblock (magic absent).
    ///
    /// # Errors
    /// Magic present but checksum wrong: `HeaderCorrupt`.
    pub fn decode(buf: &[u8]) -> Result<Option<WblockHeader>, RecordError> {
        unimplemented!("{buf:?}")
    }
}
