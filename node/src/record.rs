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
//!
//! Decoding is total: for any input bytes [`decode_header`], [`verify_body`], [`decode`] and
//! [`WblockHeader::decode`] return a value or an error, never panic, never read past the buffer
//! and never allocate more than the buffer holds. Encoding panics on programmer errors (a record
//! that breaks a limit), because writing a record that the decoder would reject loses data.

use crate::digest::Digest;
use crate::particle::{Bin, BinName, ParticleError, ParticleType, Value, BIN_NAME_MAX_BYTES};

/// First 4 bytes of every record header, `b"BRec"` read little-endian.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"BRec");
/// First 4 bytes of every written wblock, `b"BWbk"` read little-endian.
pub const WBLOCK_MAGIC: u32 = u32::from_le_bytes(*b"BWbk");
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Bytes of a wblock header; the first record starts here.
pub const WBLOCK_HEADER_BYTES: usize = 64;
/// Records start and end on this granularity, bytes.
pub const RBLOCK_BYTES: usize = 16;
/// Most bins in one record (spec §10.4).
pub const RECORD_MAX_BINS: usize = 32_767;
/// Longest set name, bytes (spec §10.4).
pub const SET_NAME_MAX_BYTES: usize = 63;

/// Header flag: the record is a tombstone (a delete); it has no bins.
pub const FLAG_TOMBSTONE: u8 = 0x01;
/// Header flag: the body starts with `[u8 set_len][set]`.
pub const FLAG_HAS_SET: u8 = 0x02;
/// Header flag: the body holds `[u8 key particle type][u32 key_len][key]`.
pub const FLAG_HAS_KEY: u8 = 0x04;
/// Every flag bit this format defines; a header with another bit set is corrupt.
pub const FLAGS_KNOWN: u8 = FLAG_TOMBSTONE | FLAG_HAS_SET | FLAG_HAS_KEY;

/// A record magic with at most this many bits wrong, on a header whose checksum passes, is a
/// damaged header ([`RecordError::HeaderCorrupt`]) rather than no record ([`decode_header`]).
pub const MAGIC_FLIP_MAX_BITS: u32 = 2;

/// Smallest body: `[u16 n_bins]` alone.
const BODY_MIN_BYTES: usize = 2;
/// Smallest encoded bin: a 1-byte name and an empty value
/// (`[u8 name_len][name][u8 ptype][u32 value_len]`).
const BIN_MIN_BYTES: usize = 1 + 1 + 1 + 4;

const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RBLOCK_BYTES));
const _: () = assert!(WBLOCK_HEADER_BYTES.is_multiple_of(RBLOCK_BYTES));
const _: () = assert!(RBLOCK_BYTES.is_power_of_two());
// The set length and bin name length are single bytes; the bin count is a u16.
const _: () = assert!(SET_NAME_MAX_BYTES <= u8::MAX as usize);
const _: () = assert!(BIN_NAME_MAX_BYTES <= u8::MAX as usize);
const _: () = assert!(RECORD_MAX_BINS <= u16::MAX as usize);

/// A stored user key: its particle type and wire bytes (spec §3.3 KEY field).
///
/// The record format treats the key as opaque: any type byte and up to `u32::MAX` bytes are
/// stored and read back unchanged; checking that it is a valid key is the caller's job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The key's particle type id (1 integer, 2 double, 3 string, 4 or another blob type).
    pub ptype: u8,
    /// The key's wire bytes (an integer as 8 bytes big-endian).
    pub bytes: Vec<u8>,
}

/// The fixed part of a record: what the header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The record's digest (spec §4).
    pub digest: Digest,
    /// Generation, bumped by every write (wraps as the server's 16-bit one does).
    pub generation: u16,
    /// Seconds since 2010-01-01 UTC; 0 = never expires.
    pub void_time: u32,
    /// Last-update time, ms since 2010-01-01 UTC.
    pub lut_ms: u64,
    /// See the header table.
    pub origin_seq: u64,
    /// A delete: the record has no bins and hides older versions of the digest.
    pub tombstone: bool,
}

/// A whole record. A tombstone has no bins.
///
/// Stored bins have a non-empty name and a non-`Nil` value. The format does not check that bin
/// names are unique, nor that a live record has at least one bin; the shard engine does.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The header's fields.
    pub meta: RecordMeta,
    /// Set name, empty for none (at most 63 bytes).
    pub set_name: Vec<u8>,
    /// The user key, when the client sent it with the write.
    pub key: Option<StoredKey>,
    /// The bins, in storage order.
    pub bins: Vec<Bin>,
}

/// What a header says, after its checksum was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record's fixed fields (`meta.tombstone` mirrors [`FLAG_TOMBSTONE`] in `flags`).
    pub meta: RecordMeta,
    /// Header + body bytes, unpadded.
    pub total_len: u32,
    /// CRC32C of the body bytes (`total_len - 64` of them after the header).
    pub body_crc: u32,
    /// The flag byte: a combination of [`FLAGS_KNOWN`] bits.
    pub flags: u8,
    /// Low 32 bits of the sequence number of the wblock the record was written into.
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
    Stale {
        /// Low 32 bits of the sequence the header carries.
        found: u32,
        /// Low 32 bits of the sequence expected.
        expected: u32,
    },
    /// The header checksum failed: nothing in it can be trusted.
    #[error("record header checksum mismatch")]
    HeaderCorrupt,
    /// The header is valid but the body checksum failed; `padded_len` lets a scan skip it.
    #[error("record body checksum mismatch")]
    BodyCorrupt {
        /// The digest the (valid) header names.
        digest: Digest,
        /// Bytes the record takes on the device, to skip it.
        padded_len: usize,
    },
    /// Fewer bytes than the header or `total_len` needs.
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Checksums pass but the body does not parse.
    #[error("malformed record body: {0}")]
    Malformed(String),
    /// Checksums pass but a bin value does not decode (spec §3.5).
    #[error(transparent)]
    Particle(#[from] ParticleError),
}

/// Unpadded encoded length of `rec`, bytes: the 64-byte header plus the body.
///
/// Pure arithmetic; it does not check limits ([`encode`] does).
pub fn encoded_len(rec: &Record) -> usize {
    let mut len = RECORD_HEADER_BYTES + BODY_MIN_BYTES;
    if !rec.set_name.is_empty() {
        len += 1 + rec.set_name.len();
    }
    if let Some(key) = &rec.key {
        len += 1 + 4 + key.bytes.len();
    }
    for bin in &rec.bins {
        len += 1 + bin.name.as_bytes().len() + 1 + 4 + bin.value.wire_len();
    }
    len
}

/// The header flag byte `rec` is written with.
fn flags_of(rec: &Record) -> u8 {
    let mut flags = 0;
    if rec.meta.tombstone {
        flags |= FLAG_TOMBSTONE;
    }
    if !rec.set_name.is_empty() {
        flags |= FLAG_HAS_SET;
    }
    if rec.key.is_some() {
        flags |= FLAG_HAS_KEY;
    }
    flags
}

/// Smallest `total_len` a header with `flags` can carry: every part the flags announce, at its
/// smallest (a 1-byte set name, an empty key), and the bin count.
fn min_total_len(flags: u8) -> usize {
    let mut len = RECORD_HEADER_BYTES + BODY_MIN_BYTES;
    if flags & FLAG_HAS_SET != 0 {
        len += 1 + 1;
    }
    if flags & FLAG_HAS_KEY != 0 {
        len += 1 + 4;
    }
    len
}

/// Writes `rec` at the start of `out`, stamped with `wblock_seq`, zero-pads to [`RBLOCK_BYTES`]
/// and returns the padded length.
///
/// The body is written first, then the header with both checksums.
///
/// # Panics
/// If `out` is shorter than the padded length, or the record breaks a limit (set name over 63
/// bytes, more than [`RECORD_MAX_BINS`] bins, a tombstone with bins) — callers validate first.
/// Also on what the decoder would reject: a bin with an empty name or a `Nil` value, a
/// [`Value::Blob`] with a non-blob type, a key, value or record over `u32::MAX` bytes.
pub fn encode(rec: &Record, wblock_seq: u64, out: &mut [u8]) -> usize {
    assert!(
        rec.set_name.len() <= SET_NAME_MAX_BYTES,
        "set name of {} bytes (max {SET_NAME_MAX_BYTES})",
        rec.set_name.len()
    );
    assert!(
        rec.bins.len() <= RECORD_MAX_BINS,
        "{} bins (max {RECORD_MAX_BINS})",
        rec.bins.len()
    );
    assert!(
        !rec.meta.tombstone || rec.bins.is_empty(),
        "tombstone with {} bins",
        rec.bins.len()
    );
    let total_len = encoded_len(rec);
    let total_len_u32 =
        u32::try_from(total_len).unwrap_or_else(|_| panic!("record of {total_len} bytes does not fit a u32 length"));
    let padded_len = padded(total_len);
    assert!(
        out.len() >= padded_len,
        "record needs {padded_len} bytes, buffer has {}",
        out.len()
    );

    // Body.
    let mut w = Writer {
        buf: &mut out[..total_len],
        pos: RECORD_HEADER_BYTES,
    };
    if !rec.set_name.is_empty() {
        w.put_u8(rec.set_name.len() as u8);
        w.put(&rec.set_name);
    }
    if let Some(key) = &rec.key {
        let key_len = u32::try_from(key.bytes.len()).expect("key over u32::MAX bytes");
        w.put_u8(key.ptype);
        w.put(&key_len.to_le_bytes());
        w.put(&key.bytes);
    }
    w.put(&(rec.bins.len() as u16).to_le_bytes());
    for bin in &rec.bins {
        let name = bin.name.as_bytes();
        assert!(!name.is_empty(), "stored bin with an empty name");
        let ptype = bin.value.particle_type();
        assert!(ptype != ParticleType::Null, "stored bin {:?} is Nil", bin.name);
        let value_len = bin.value.wire_len();
        let value_len_u32 = u32::try_from(value_len).expect("bin value over u32::MAX bytes");
        w.put_u8(name.len() as u8);
        w.put(name);
        w.put_u8(ptype.id());
        w.put(&value_len_u32.to_le_bytes());
        let n = bin.value.encode_wire_into(&mut w.buf[w.pos..]);
        assert_eq!(n, value_len);
        w.pos += n;
    }
    assert_eq!(w.pos, total_len, "encoded_len disagrees with the bytes written");

    // Header.
    let flags = flags_of(rec);
    let m = &rec.meta;
    let body_crc = crc32c::crc32c(&out[RECORD_HEADER_BYTES..total_len]);
    let h = &mut out[..RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&body_crc.to_le_bytes());
    h[12..16].copy_from_slice(&total_len_u32.to_le_bytes());
    h[16..36].copy_from_slice(&m.digest.0);
    h[36..38].copy_from_slice(&m.generation.to_le_bytes());
    h[38] = flags;
    h[39] = 0;
    h[40..44].copy_from_slice(&m.void_time.to_le_bytes());
    h[44..48].copy_from_slice(&(wblock_seq as u32).to_le_bytes());
    h[48..56].copy_from_slice(&m.lut_ms.to_le_bytes());
    h[56..64].copy_from_slice(&m.origin_seq.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[8..]);
    h[4..8].copy_from_slice(&header_crc.to_le_bytes());

    out[total_len..padded_len].fill(0);

    // Check what goes to the disk reads back as this record.
    debug_assert_eq!(
        decode_header(out, Some(wblock_seq)),
        Ok(RecordHeader {
            meta: rec.meta,
            total_len: total_len_u32,
            body_crc,
            flags,
            wblock_seq_lo: wblock_seq as u32,
        })
    );
    debug_assert!(decode(&out[..padded_len], Some(wblock_seq)).is_ok());
    padded_len
}

/// A bounds-checked writer over the record being encoded; overruns are encoder bugs and panic.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn put_u8(&mut self, b: u8) {
        self.put(&[b]);
    }
}

/// Reads a little-endian u32 at `at`; `buf` holds at least `at + 4` bytes.
fn le_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a little-endian u64 at `at`; `buf` holds at least `at + 8` bytes.
fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Whether `buf` starts with `magic`, judged on the bytes it has: `Some(false)` when a byte it
/// has differs (or it is empty), `Some(true)` when all four match, `None` when the bytes it has
/// match but there are fewer than four.
fn magic_at(buf: &[u8], magic: u32) -> Option<bool> {
    let m = magic.to_le_bytes();
    let n = buf.len().min(4);
    if buf.is_empty() || buf[..n] != m[..n] {
        Some(false)
    } else if n == 4 {
        Some(true)
    } else {
        None
    }
}

/// Reads and verifies a record header at the start of `buf`. With `expect_seq`, a header stamped
/// with another wblock sequence is [`RecordError::Stale`].
///
/// Checks, in order: the magic (absent, or `buf` empty: `NoRecord`); 64 bytes present
/// (`Truncated`); the header CRC32C (`HeaderCorrupt`); the wblock sequence (`Stale`); then that
/// the reserved byte is zero, no unknown flag is set and `total_len` covers at least the parts
/// the flags announce (`HeaderCorrupt`). Only bytes `..64` are read.
///
/// One refinement of "magic absent": when the magic is off by at most
/// [`MAGIC_FLIP_MAX_BITS`] bits and bytes 8..64 still match the header checksum in bytes 4..8,
/// the header was written whole and only its magic was damaged (a bit flip). That is
/// `HeaderCorrupt`, so a scan reports it instead of silently ending the wblock there. Other
/// magics (zeros, erased flash, old data) cost no checksum, so a scan that steps through empty
/// space stays cheap.
///
/// # Errors
/// See [`RecordError`]; the body is not checked.
pub fn decode_header(buf: &[u8], expect_seq: Option<u64>) -> Result<RecordHeader, RecordError> {
    match magic_at(buf, RECORD_MAGIC) {
        Some(false) => {
            return Err(match buf.get(..RECORD_HEADER_BYTES) {
                Some(h)
                    if (le_u32(h, 0) ^ RECORD_MAGIC).count_ones() <= MAGIC_FLIP_MAX_BITS
                        && crc32c::crc32c(&h[8..]) == le_u32(h, 4) =>
                {
                    RecordError::HeaderCorrupt
                }
                _ => RecordError::NoRecord,
            })
        }
        None => {
            return Err(RecordError::Truncated {
                need: RECORD_HEADER_BYTES,
                have: buf.len(),
            })
        }
        Some(true) => {}
    }
    let Some(h) = buf.get(..RECORD_HEADER_BYTES) else {
        return Err(RecordError::Truncated {
            need: RECORD_HEADER_BYTES,
            have: buf.len(),
        });
    };
    if crc32c::crc32c(&h[8..]) != le_u32(h, 4) {
        return Err(RecordError::HeaderCorrupt);
    }
    let wblock_seq_lo = le_u32(h, 44);
    if let Some(seq) = expect_seq {
        let expected = seq as u32;
        if wblock_seq_lo != expected {
            return Err(RecordError::Stale {
                found: wblock_seq_lo,
                expected,
            });
        }
    }
    let total_len = le_u32(h, 12);
    let flags = h[38];
    // A checksummed header this build would never write: corrupt, whatever its sequence.
    if flags & !FLAGS_KNOWN != 0 || h[39] != 0 || (total_len as usize) < min_total_len(flags) {
        return Err(RecordError::HeaderCorrupt);
    }
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&h[16..36]);
    Ok(RecordHeader {
        meta: RecordMeta {
            digest: Digest(digest),
            generation: u16::from_le_bytes([h[36], h[37]]),
            void_time: le_u32(h, 40),
            lut_ms: le_u64(h, 48),
            origin_seq: le_u64(h, 56),
            tombstone: flags & FLAG_TOMBSTONE != 0,
        },
        total_len,
        body_crc: le_u32(h, 8),
        flags,
        wblock_seq_lo,
    })
}

/// Verifies the body checksum of a record whose header is `hdr` and which starts at `buf[0]`.
///
/// Reads `buf[64..total_len]`; the padding after it is not checked.
///
/// # Errors
/// `Truncated` or `BodyCorrupt`.
///
/// # Panics
/// If `hdr.total_len` is shorter than a header and a bin count (a `hdr` not from
/// [`decode_header`]).
pub fn verify_body(hdr: &RecordHeader, buf: &[u8]) -> Result<(), RecordError> {
    let total_len = hdr.total_len as usize;
    assert!(
        total_len >= RECORD_HEADER_BYTES + BODY_MIN_BYTES,
        "record header with total_len {total_len}"
    );
    let Some(body) = buf.get(RECORD_HEADER_BYTES..total_len) else {
        return Err(RecordError::Truncated {
            need: total_len,
            have: buf.len(),
        });
    };
    if crc32c::crc32c(body) != hdr.body_crc {
        return Err(RecordError::BodyCorrupt {
            digest: hdr.meta.digest,
            padded_len: hdr.padded_len(),
        });
    }
    Ok(())
}

/// CRC32C lookup table (reflected polynomial `0x82F63B78`), for the error locator below.
const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// `CRC32C_TABLE_INV[T[k] >> 24] = k`: the top bytes of the table are a permutation of 0..256,
/// which makes one step of the CRC register invertible.
const CRC32C_TABLE_INV: [u8; 256] = {
    let mut inv = [0u8; 256];
    let mut seen = [false; 256];
    let mut k = 0;
    while k < 256 {
        let top = (CRC32C_TABLE[k] >> 24) as usize;
        assert!(!seen[top], "CRC32C table top bytes are not a permutation");
        seen[top] = true;
        inv[top] = k as u8;
        k += 1;
    }
    inv
};

/// When `data` fails its CRC32C `stored_crc` and the difference is explained by damage inside
/// exactly one byte, returns that byte's offset and the XOR that repairs it.
///
/// CRC32C is linear: for equal lengths `crc(a) ^ crc(b)` is the init-free CRC of `a ^ b`, and
/// an error confined to byte `j` with pattern `v` has the syndrome `F^(L-1-j)(T[v])`, where `F`
/// is one register step over a zero byte. Stepping the syndrome back with `F⁻¹` at most `L`
/// times finds `j` and `v` (the syndromes of distinct single-byte errors are distinct for any
/// length a wblock can hold). A torn write (whole 4 KiB sectors of other data) matches by
/// accident with a chance of about `255·L / 2³²`. Used by cold start to tell media damage (a
/// bit flip) from a torn write; `docs/FAULT_MODEL.md`.
pub fn crc_error_in_one_byte(data: &[u8], stored_crc: u32) -> Option<(usize, u8)> {
    let syndrome = crc32c::crc32c(data) ^ stored_crc;
    if syndrome == 0 || data.is_empty() {
        return None;
    }
    let mut r = syndrome;
    for n in 0..data.len() {
        let k = CRC32C_TABLE_INV[(r >> 24) as usize];
        if CRC32C_TABLE[k as usize] == r && k != 0 {
            return Some((data.len() - 1 - n, k));
        }
        // F⁻¹: r = F(q) = (q >> 8) ^ T[q & 0xff], and the top byte of r names q & 0xff.
        r = ((r ^ CRC32C_TABLE[k as usize]) << 8) | u32::from(k);
    }
    None
}

/// A record header that failed [`decode_header`] with `HeaderCorrupt`, repaired when its
/// damage is provably small: a magic off by at most [`MAGIC_FLIP_MAX_BITS`] bits over bytes
/// that pass the checksum, damage inside one byte of bytes 8..64 ([`crc_error_in_one_byte`]),
/// or damage inside one byte of the stored checksum. Returns the repaired 64 bytes, which then
/// decode. `None` when `buf` holds no such header.
pub fn repair_record_header(buf: &[u8]) -> Option<[u8; RECORD_HEADER_BYTES]> {
    let h = buf.get(..RECORD_HEADER_BYTES)?;
    let mut fixed = [0u8; RECORD_HEADER_BYTES];
    fixed.copy_from_slice(h);
    let magic = le_u32(h, 0);
    let stored = le_u32(h, 4);
    let computed = crc32c::crc32c(&h[8..]);
    if magic != RECORD_MAGIC {
        if (magic ^ RECORD_MAGIC).count_ones() > MAGIC_FLIP_MAX_BITS || computed != stored {
            return None;
        }
        fixed[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    } else if computed != stored {
        let diff = (computed ^ stored).to_le_bytes();
        if diff.iter().filter(|&&b| b != 0).count() == 1 {
            fixed[4..8].copy_from_slice(&computed.to_le_bytes());
        } else {
            let (j, v) = crc_error_in_one_byte(&h[8..], stored)?;
            fixed[8 + j] ^= v;
        }
    }
    decode_header(&fixed, None).ok().map(|_| fixed)
}

/// Decodes and fully verifies the record at the start of `buf`.
///
/// [`decode_header`], then [`verify_body`], then a full parse of the body: set name 1..=63 bytes,
/// key length within the body, bin count at most [`RECORD_MAX_BINS`] (0 for a tombstone), each
/// bin with a 1..=15-byte name and a value that decodes ([`Value::decode_wire`]) to a non-`Nil`
/// value in its canonical encoding (8-byte integers, bool 0 or 1), and no bytes left over.
///
/// # Errors
/// See [`RecordError`].
pub fn decode(buf: &[u8], expect_seq: Option<u64>) -> Result<Record, RecordError> {
    let hdr = decode_header(buf, expect_seq)?;
    verify_body(&hdr, buf)?;
    let mut r = Reader {
        buf: &buf[RECORD_HEADER_BYTES..hdr.total_len as usize],
    };

    let mut set_name = Vec::new();
    if hdr.flags & FLAG_HAS_SET != 0 {
        let set_len = r.u8("set name length")? as usize;
        if set_len == 0 || set_len > SET_NAME_MAX_BYTES {
            return Err(malformed(format!("set name length {set_len}")));
        }
        set_name = r.take(set_len, "set name")?.to_vec();
    }
    let mut key = None;
    if hdr.flags & FLAG_HAS_KEY != 0 {
        let ptype = r.u8("key type")?;
        let key_len = r.u32("key length")? as usize;
        let bytes = r.take(key_len, "key")?.to_vec();
        key = Some(StoredKey { ptype, bytes });
    }
    let n_bins = r.u16("bin count")? as usize;
    if n_bins > RECORD_MAX_BINS {
        return Err(malformed(format!("{n_bins} bins (max {RECORD_MAX_BINS})")));
    }
    if hdr.meta.tombstone && n_bins != 0 {
        return Err(malformed(format!("tombstone with {n_bins} bins")));
    }
    // Allocate only what the remaining bytes can hold.
    if n_bins * BIN_MIN_BYTES > r.buf.len() {
        return Err(malformed(format!("{n_bins} bins in {} bytes", r.buf.len())));
    }
    let mut bins = Vec::with_capacity(n_bins);
    for i in 0..n_bins {
        bins.push(decode_bin(&mut r, i)?);
    }
    if !r.buf.is_empty() {
        return Err(malformed(format!("{} bytes after the last bin", r.buf.len())));
    }
    Ok(Record {
        meta: hdr.meta,
        set_name,
        key,
        bins,
    })
}

/// Decodes bin number `i` of a body.
fn decode_bin(r: &mut Reader<'_>, i: usize) -> Result<Bin, RecordError> {
    let name_len = r.u8("bin name length")? as usize;
    if name_len == 0 || name_len > BIN_NAME_MAX_BYTES {
        return Err(malformed(format!("bin {i}: name length {name_len}")));
    }
    let name = BinName::new(r.take(name_len, "bin name")?).expect("name length checked");
    let ptype = r.u8("bin type")?;
    let value_len = r.u32("bin value length")? as usize;
    let bytes = r.take(value_len, "bin value")?;
    let value = Value::decode_wire(ptype, bytes)?;
    if value == Value::Nil {
        return Err(malformed(format!("bin {i} ({name:?}) is nil")));
    }
    // Only the canonical encoding is ever written: a short integer or a bool other than 0/1
    // means the bytes were not written by `encode`.
    let canonical = value.wire_len() == bytes.len() && !matches!(value, Value::Bool(_) if bytes[0] > 1);
    if !canonical {
        return Err(malformed(format!(
            "bin {i} ({name:?}): non-canonical type {ptype} value"
        )));
    }
    Ok(Bin { name, value })
}

fn malformed(why: String) -> RecordError {
    RecordError::Malformed(why)
}

/// A bounds-checked reader over a record body; running out of bytes is `Malformed`.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], RecordError> {
        if n > self.buf.len() {
            return Err(malformed(format!("{what}: need {n} bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, RecordError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, RecordError> {
        Ok(le_u32(self.take(4, what)?, 0))
    }
}

/// A write-block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WblockHeader {
    /// Sequence number: per shard, one more for each wblock opened.
    pub seq: u64,
    /// Instance id of the shard region (random at format), so a wblock left by an earlier format
    /// of the region is told apart.
    pub instance_id: u64,
    /// Index of the wblock in the region.
    pub wblock_id: u32,
    /// Size of the wblock, bytes (a multiple of [`RBLOCK_BYTES`], at least the header).
    pub wblock_size_bytes: u32,
}

impl WblockHeader {
    /// Writes the 64-byte header into `out[..64]`.
    ///
    /// # Panics
    /// If `out` is shorter than 64 bytes, or `wblock_size_bytes` is smaller than the header or
    /// not a multiple of [`RBLOCK_BYTES`].
    pub fn encode(&self, out: &mut [u8]) {
        assert!(
            out.len() >= WBLOCK_HEADER_BYTES,
            "wblock header needs 64 bytes, have {}",
            out.len()
        );
        assert!(
            self.size_is_valid(),
            "wblock size {} bytes is not a multiple of {RBLOCK_BYTES} holding the header",
            self.wblock_size_bytes
        );
        let h = &mut out[..WBLOCK_HEADER_BYTES];
        h[0..4].copy_from_slice(&WBLOCK_MAGIC.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.instance_id.to_le_bytes());
        h[24..28].copy_from_slice(&self.wblock_id.to_le_bytes());
        h[28..32].copy_from_slice(&self.wblock_size_bytes.to_le_bytes());
        h[32..64].fill(0);
        let crc = crc32c::crc32c(&h[8..]);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(WblockHeader::decode(out), Ok(Some(*self)));
    }

    /// Reads a header. `Ok(None)` for a free wblock (magic absent).
    ///
    /// "Absent" means the first 4 bytes are not [`WBLOCK_MAGIC`]: zeros as defrag leaves them,
    /// or whatever a never-written region holds. Only bytes `..64` are read.
    ///
    /// # Errors
    /// Magic present but checksum wrong: `HeaderCorrupt`; also when a checksummed header has
    /// nonzero reserved bytes or an impossible wblock size. Fewer than 64 bytes after a magic
    /// (or a prefix of one): `Truncated`.
    pub fn decode(buf: &[u8]) -> Result<Option<WblockHeader>, RecordError> {
        match magic_at(buf, WBLOCK_MAGIC) {
            Some(false) => return Ok(None),
            None => {
                return Err(RecordError::Truncated {
                    need: WBLOCK_HEADER_BYTES,
                    have: buf.len(),
                })
            }
            Some(true) => {}
        }
        let Some(h) = buf.get(..WBLOCK_HEADER_BYTES) else {
            return Err(RecordError::Truncated {
                need: WBLOCK_HEADER_BYTES,
                have: buf.len(),
            });
        };
        if crc32c::crc32c(&h[8..]) != le_u32(h, 4) {
            return Err(RecordError::HeaderCorrupt);
        }
        let hdr = WblockHeader {
            seq: le_u64(h, 8),
            instance_id: le_u64(h, 16),
            wblock_id: le_u32(h, 24),
            wblock_size_bytes: le_u32(h, 28),
        };
        if h[32..].iter().any(|&b| b != 0) || !hdr.size_is_valid() {
            return Err(RecordError::HeaderCorrupt);
        }
        Ok(Some(hdr))
    }

    fn size_is_valid(&self) -> bool {
        let size = self.wblock_size_bytes as usize;
        size >= WBLOCK_HEADER_BYTES && size.is_multiple_of(RBLOCK_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_byte_crc_errors_are_located_and_tears_are_not() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in [1usize, 2, 63, 64, 1000, 4096, 70_000] {
            let data: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            let crc = crc32c::crc32c(&data);
            assert_eq!(crc_error_in_one_byte(&data, crc), None, "no error");
            for _ in 0..20 {
                let j = (rnd() as usize) % len;
                let v = (rnd() as u8).max(1);
                let mut bad = data.clone();
                bad[j] ^= v;
                assert_eq!(crc_error_in_one_byte(&bad, crc), Some((j, v)), "len {len} byte {j} xor {v:#x}");
            }
        }
        // A torn write: a whole sector of other bytes. Not mistaken for a one-byte error.
        let data: Vec<u8> = (0..3 * 4096).map(|_| rnd() as u8).collect();
        let crc = crc32c::crc32c(&data);
        for s in 0..3 {
            let mut torn = data.clone();
            torn[s * 4096..(s + 1) * 4096].fill(0);
            assert_eq!(crc_error_in_one_byte(&torn, crc), None);
        }
    }

    #[test]
    fn small_record_header_damage_is_repaired_and_large_is_not() {
        let rec = Record {
            meta: RecordMeta {
                digest: Digest([7; 20]),
                generation: 3,
                void_time: 0,
                lut_ms: 99,
                origin_seq: 5,
                tombstone: false,
            },
            set_name: Vec::new(),
            key: None,
            bins: Vec::new(),
        };
        let mut buf = vec![0u8; 256];
        let n = encode(&rec, 5, &mut buf);
        let good = decode_header(&buf[..n], None).unwrap();
        for at in 0..RECORD_HEADER_BYTES {
            for v in [1u8, 0x80, 0xff] {
                let mut bad = buf.clone();
                bad[at] ^= v;
                if decode_header(&bad, None) != Err(RecordError::HeaderCorrupt) {
                    continue;
                }
                if at < 4 && (v.count_ones() > MAGIC_FLIP_MAX_BITS) {
                    continue; // a magic changed in many bits is not a record header at all
                }
                let fixed = repair_record_header(&bad).unwrap_or_else(|| panic!("byte {at} xor {v:#x}"));
                assert_eq!(decode_header(&fixed, None).unwrap(), good, "byte {at}");
            }
        }
        let mut two = buf.clone();
        two[20] ^= 1;
        two[40] ^= 1;
        assert_eq!(repair_record_header(&two), None);
    }

    const SEQ: u64 = 0x0000_0007_dead_beef;

    fn bin(name: &str, value: Value) -> Bin {
        Bin {
            name: BinName::new(name.as_bytes()).unwrap(),
            value,
        }
    }

    fn meta(tombstone: bool) -> RecordMeta {
        RecordMeta {
            digest: crate::digest::Digest::compute(b"demo", 3, b"k1"),
            generation: 0xbeef,
            void_time: 0x0102_0304,
            lut_ms: 0x1122_3344_5566_7788,
            origin_seq: 0x99aa_bbcc_ddee_ff00,
            tombstone,
        }
    }

    /// A record with a bin of every stored particle type.
    fn every_type_record() -> Record {
        let mut geo = vec![0, 0, 1];
        geo.extend_from_slice(&[7; 8]);
        geo.extend_from_slice(br#"{"type":"Point","coordinates":[0,0]}"#);
        let mut bins = vec![
            bin("int", Value::Int(-42)),
            bin("min", Value::Int(i64::MIN)),
            bin("max", Value::Int(i64::MAX)),
            bin("float", Value::Float(1.5)),
            bin("str", Value::Str(b"hello".to_vec())),
            bin("empty", Value::Str(Vec::new())),
            bin("t", Value::Bool(true)),
            bin("f", Value::Bool(false)),
            bin("hll", Value::Hll(vec![1, 2, 3])),
            bin("map", Value::Map(vec![0x81, 0xa2, 0x03, 0x61, 0x01])),
            bin("list", Value::List(vec![0x92, 0x01, 0xa2, 0x03, 0x78])),
            bin("geo", Value::GeoJson(geo)),
            bin("fifteen-bytes!!", Value::Blob(ParticleType::Blob, Vec::new())),
        ];
        for (i, t) in [4u8, 7, 8, 9, 10, 11, 12].into_iter().enumerate() {
            let t = ParticleType::from_u8(t).unwrap();
            bins.push(bin(&format!("blob{i}"), Value::Blob(t, vec![i as u8; i])));
        }
        Record {
            meta: meta(false),
            set_name: b"demo".to_vec(),
            key: Some(StoredKey {
                ptype: 3,
                bytes: b"k1".to_vec(),
            }),
            bins,
        }
    }

    fn small_record() -> Record {
        Record {
            meta: meta(false),
            set_name: Vec::new(),
            key: None,
            bins: vec![bin("a", Value::Int(1))],
        }
    }

    /// Encodes into a fresh buffer filled with `0xa5` (so untouched bytes show) and returns it
    /// cut to the padded length.
    fn enc(rec: &Record, seq: u64) -> Vec<u8> {
        let mut buf = vec![0xa5; encoded_len(rec) + 64];
        let n = encode(rec, seq, &mut buf);
        assert_eq!(n, padded(encoded_len(rec)));
        assert_eq!(n % RBLOCK_BYTES, 0);
        assert!(buf[n..].iter().all(|&b| b == 0xa5), "wrote past the padded length");
        buf.truncate(n);
        buf
    }

    /// Recomputes both checksums of the record at the start of `buf`, after a test changed it.
    fn reseal(buf: &mut [u8]) {
        let total_len = le_u32(buf, 12) as usize;
        let body_crc = crc32c::crc32c(&buf[RECORD_HEADER_BYTES..total_len]);
        buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&buf[8..RECORD_HEADER_BYTES]);
        buf[4..8].copy_from_slice(&header_crc.to_le_bytes());
    }

    fn assert_round_trip(rec: &Record) {
        let buf = enc(rec, SEQ);
        let back = decode(&buf, Some(SEQ)).unwrap();
        // Compare through the encoding so NaN floats compare by bits.
        assert_eq!(enc(&back, SEQ), buf);
        assert_eq!(decode(&buf, None).unwrap().bins.len(), rec.bins.len());
        let hdr = decode_header(&buf, Some(SEQ)).unwrap();
        assert_eq!(hdr.meta, rec.meta);
        assert_eq!(hdr.total_len as usize, encoded_len(rec));
        assert_eq!(hdr.padded_len(), buf.len());
        assert_eq!(verify_body(&hdr, &buf), Ok(()));
        // The unpadded bytes are enough.
        assert!(decode(&buf[..encoded_len(rec)], Some(SEQ)).is_ok());
    }

    #[test]
    fn round_trip_every_particle_type() {
        let rec = every_type_record();
        assert_round_trip(&rec);
        assert_eq!(decode(&enc(&rec, SEQ), Some(SEQ)).unwrap(), rec);
    }

    #[test]
    fn round_trip_nan_keeps_bits() {
        let bits = 0x7ff4_0000_0000_0001u64;
        let rec = Record {
            bins: vec![bin("nan", Value::Float(f64::from_bits(bits)))],
            ..small_record()
        };
        let back = decode(&enc(&rec, SEQ), Some(SEQ)).unwrap();
        let Value::Float(f) = back.bins[0].value else {
            panic!("{back:?}")
        };
        assert_eq!(f.to_bits(), bits);
    }

    #[test]
    fn round_trip_with_and_without_set_and_key() {
        for set in [Vec::new(), b"s".to_vec(), vec![b'x'; SET_NAME_MAX_BYTES]] {
            for key in [
                None,
                Some(StoredKey {
                    ptype: 1,
                    bytes: (-7i64).to_be_bytes().to_vec(),
                }),
                Some(StoredKey {
                    ptype: 4,
                    bytes: Vec::new(),
                }),
            ] {
                let rec = Record {
                    set_name: set.clone(),
                    key: key.clone(),
                    ..every_type_record()
                };
                assert_round_trip(&rec);
                assert_eq!(decode(&enc(&rec, SEQ), Some(SEQ)).unwrap(), rec);
            }
        }
    }

    #[test]
    fn round_trip_tombstone() {
        for (set, key) in [
            (Vec::new(), None),
            (
                b"demo".to_vec(),
                Some(StoredKey {
                    ptype: 3,
                    bytes: b"k1".to_vec(),
                }),
            ),
        ] {
            let rec = Record {
                meta: meta(true),
                set_name: set,
                key,
                bins: Vec::new(),
            };
            assert_round_trip(&rec);
            let buf = enc(&rec, SEQ);
            assert_eq!(buf[38] & FLAG_TOMBSTONE, FLAG_TOMBSTONE);
            assert_eq!(decode(&buf, Some(SEQ)).unwrap(), rec);
        }
    }

    #[test]
    fn smallest_record_is_one_header_and_one_rblock() {
        let rec = Record {
            bins: Vec::new(),
            ..small_record()
        };
        assert_eq!(encoded_len(&rec), 66);
        let buf = enc(&rec, SEQ);
        assert_eq!(buf.len(), 80);
        assert_eq!(decode(&buf, Some(SEQ)).unwrap(), rec);
    }

    #[test]
    fn golden_bytes() {
        // Bin "a" = Int(1), no set, no key: body is n_bins + one 14-byte bin.
        let rec = small_record();
        let buf = enc(&rec, SEQ);
        assert_eq!(encoded_len(&rec), 64 + 2 + 1 + 1 + 1 + 4 + 8);
        assert_eq!(buf.len(), 96);
        assert_eq!(&buf[0..4], b"BRec");
        assert_eq!(le_u32(&buf, 4), crc32c::crc32c(&buf[8..64]));
        assert_eq!(le_u32(&buf, 8), crc32c::crc32c(&buf[64..81]));
        assert_eq!(le_u32(&buf, 12), 81);
        assert_eq!(&buf[16..36], &rec.meta.digest.0);
        assert_eq!(&buf[36..38], &[0xef, 0xbe]);
        assert_eq!(buf[38], 0);
        assert_eq!(buf[39], 0);
        assert_eq!(&buf[40..44], &[4, 3, 2, 1]);
        assert_eq!(&buf[44..48], &[0xef, 0xbe, 0xad, 0xde], "low 32 bits of the wblock seq");
        assert_eq!(&buf[48..56], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&buf[56..64], &0x99aa_bbcc_ddee_ff00u64.to_le_bytes());
        assert_eq!(
            &buf[64..81],
            &[1, 0, 1, b'a', 1, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            "n_bins 1 LE, name_len 1, 'a', type 1, len 8 LE, value BE"
        );
        assert!(buf[81..].iter().all(|&b| b == 0), "zero padding");

        // Set and key come before n_bins.
        let rec = Record {
            set_name: b"st".to_vec(),
            key: Some(StoredKey {
                ptype: 3,
                bytes: b"k".to_vec(),
            }),
            bins: Vec::new(),
            ..small_record()
        };
        let buf = enc(&rec, SEQ);
        assert_eq!(buf[38], FLAG_HAS_SET | FLAG_HAS_KEY);
        assert_eq!(&buf[64..76], &[2, b's', b't', 3, 1, 0, 0, 0, b'k', 0, 0, 0]);
    }

    /// The example drawn in `docs/DISK_FORMAT.md`, byte for byte (checksums included).
    #[test]
    fn doc_example_bytes() {
        let rec = Record {
            meta: RecordMeta {
                digest: crate::digest::Digest::compute(b"demo", 3, b"k1"),
                generation: 1,
                void_time: 0,
                lut_ms: 0x0123_4567_89ab,
                origin_seq: 7,
                tombstone: false,
            },
            set_name: b"demo".to_vec(),
            key: Some(StoredKey {
                ptype: 3,
                bytes: b"k1".to_vec(),
            }),
            bins: vec![bin("a", Value::Int(1))],
        };
        #[rustfmt::skip]
        let expect: [u8; 96] = [
            0x42, 0x52, 0x65, 0x63, 0x58, 0xb9, 0xf6, 0x1d, 0xe9, 0x08, 0xe6, 0x9d, 0x5d, 0x00, 0x00, 0x00,
            0xb7, 0x47, 0xf5, 0x85, 0x4d, 0x0b, 0x33, 0x25, 0x99, 0x28, 0xd0, 0xcf, 0xab, 0x7f, 0xad, 0x81,
            0xd6, 0xab, 0xfb, 0xf6, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
            0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x04, 0x64, 0x65, 0x6d, 0x6f, 0x03, 0x02, 0x00, 0x00, 0x00, 0x6b, 0x31, 0x01, 0x00, 0x01, 0x61,
            0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        ];
        assert_eq!(enc(&rec, 7), expect);
        assert_eq!(decode(&expect, Some(7)).unwrap(), rec);

        let mut w = [0u8; 64];
        WblockHeader {
            seq: 7,
            instance_id: 0x1122_3344_5566_7788,
            wblock_id: 3,
            wblock_size_bytes: 1 << 20,
        }
        .encode(&mut w);
        #[rustfmt::skip]
        let expect_w: [u8; 32] = [
            0x42, 0x57, 0x62, 0x6b, 0xa7, 0xc6, 0x1c, 0x78, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,
        ];
        assert_eq!(w[..32], expect_w);
        assert!(w[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn padding_overwrites_stale_bytes() {
        for n in 0..20 {
            let rec = Record {
                bins: vec![bin("s", Value::Str(vec![b'z'; n]))],
                ..small_record()
            };
            let len = encoded_len(&rec);
            let mut buf = vec![0xff; 256];
            let padded_len = encode(&rec, SEQ, &mut buf);
            assert_eq!(padded_len, len.div_ceil(16) * 16);
            assert!(buf[len..padded_len].iter().all(|&b| b == 0));
            assert!(buf[padded_len..].iter().all(|&b| b == 0xff));
        }
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 16);
        assert_eq!(padded(16), 16);
        assert_eq!(padded(17), 32);
    }

    #[test]
    fn no_record_where_magic_is_absent() {
        assert_eq!(decode_header(&[], None), Err(RecordError::NoRecord));
        assert_eq!(decode_header(&[0; 64], Some(1)), Err(RecordError::NoRecord));
        assert_eq!(decode_header(&[0; 3], None), Err(RecordError::NoRecord));
        assert_eq!(decode_header(&[0xff; 4096], None), Err(RecordError::NoRecord));
        assert_eq!(decode(&[0; 4096], None), Err(RecordError::NoRecord));
        assert_eq!(decode_header(&[0; 64], None), Err(RecordError::NoRecord));
        // A magic with a bit or two flipped on an otherwise valid header: whole, but damaged.
        let buf = enc(&small_record(), SEQ);
        for (byte, bits) in [(0, 0x01), (2, 0x10), (3, 0x80), (1, 0x81)] {
            let mut b = buf.clone();
            b[byte] ^= bits;
            assert_eq!(
                decode(&b, Some(SEQ)),
                Err(RecordError::HeaderCorrupt),
                "{byte} {bits:#x}"
            );
            // Not if the rest of the header is damaged too.
            b[20] ^= 1;
            assert_eq!(decode(&b, Some(SEQ)), Err(RecordError::NoRecord));
        }
        // Three bits off, or a zeroed magic: no record, whatever follows.
        let mut b = buf.clone();
        b[0] ^= 0x07;
        assert_eq!(decode(&b, Some(SEQ)), Err(RecordError::NoRecord));
        b[..4].fill(0);
        assert_eq!(decode(&b, Some(SEQ)), Err(RecordError::NoRecord));
        // Fewer than 64 bytes with no magic: nothing to check the checksum on.
        let buf = enc(&small_record(), SEQ);
        let mut short = buf[..40].to_vec();
        short[0] = 0;
        assert_eq!(decode_header(&short, None), Err(RecordError::NoRecord));
    }

    #[test]
    fn truncated() {
        let buf = enc(&every_type_record(), SEQ);
        let total_len = le_u32(&buf, 12) as usize;
        for have in [1, 2, 3, 4, 10, 63] {
            assert_eq!(
                decode_header(&buf[..have], Some(SEQ)),
                Err(RecordError::Truncated { need: 64, have })
            );
        }
        for have in [64, 65, 100, total_len - 1] {
            assert!(decode_header(&buf[..have], Some(SEQ)).is_ok());
            assert_eq!(
                decode(&buf[..have], Some(SEQ)),
                Err(RecordError::Truncated { need: total_len, have })
            );
        }
        let hdr = decode_header(&buf, Some(SEQ)).unwrap();
        assert_eq!(
            verify_body(&hdr, &buf[..100]),
            Err(RecordError::Truncated {
                need: total_len,
                have: 100
            })
        );
    }

    #[test]
    fn any_header_bit_flip_is_header_corrupt() {
        let buf = enc(&every_type_record(), SEQ);
        for byte in 4..RECORD_HEADER_BYTES {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert_eq!(
                    decode_header(&b, Some(SEQ)),
                    Err(RecordError::HeaderCorrupt),
                    "{byte}.{bit}"
                );
                assert_eq!(decode(&b, None), Err(RecordError::HeaderCorrupt));
            }
        }
    }

    #[test]
    fn any_body_bit_flip_is_body_corrupt() {
        let rec = every_type_record();
        let buf = enc(&rec, SEQ);
        let total_len = encoded_len(&rec);
        for byte in RECORD_HEADER_BYTES..total_len {
            for bit in [0, 3, 7] {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                // The header alone still reads.
                assert!(decode_header(&b, Some(SEQ)).is_ok());
                assert_eq!(
                    decode(&b, Some(SEQ)),
                    Err(RecordError::BodyCorrupt {
                        digest: rec.meta.digest,
                        padded_len: buf.len()
                    })
                );
            }
        }
        // Padding is outside the checksum: a flip there is not seen.
        if total_len < buf.len() {
            let mut b = buf.clone();
            b[total_len] ^= 1;
            assert!(decode(&b, Some(SEQ)).is_ok());
        }
    }

    #[test]
    fn stale_sequence() {
        let buf = enc(&small_record(), SEQ);
        assert_eq!(
            decode(&buf, Some(SEQ + 1)),
            Err(RecordError::Stale {
                found: 0xdead_beef,
                expected: 0xdead_bef0
            })
        );
        assert_eq!(
            decode_header(&buf, Some(SEQ - 1)),
            Err(RecordError::Stale {
                found: 0xdead_beef,
                expected: 0xdead_beee
            })
        );
        // Only the low 32 bits are stored and compared.
        assert!(decode(&buf, Some(SEQ + (1 << 32))).is_ok());
        assert!(decode(&buf, None).is_ok());
    }

    /// Makes a checksummed header with the given changes, then decodes it.
    fn resealed(rec: &Record, change: impl FnOnce(&mut Vec<u8>)) -> Result<Record, RecordError> {
        let mut b = enc(rec, SEQ);
        change(&mut b);
        reseal(&mut b);
        decode(&b, Some(SEQ))
    }

    #[test]
    fn checksummed_but_impossible_header_is_header_corrupt() {
        let rec = small_record();
        for flag in [0x08u8, 0x10, 0x80] {
            assert_eq!(resealed(&rec, |b| b[38] |= flag), Err(RecordError::HeaderCorrupt));
        }
        assert_eq!(resealed(&rec, |b| b[39] = 1), Err(RecordError::HeaderCorrupt));
        // has-set needs room for a set; has-key for a key header.
        let tiny = Record {
            bins: Vec::new(),
            ..small_record()
        };
        assert_eq!(
            resealed(&tiny, |b| b[38] = FLAG_HAS_SET),
            Err(RecordError::HeaderCorrupt)
        );
        assert_eq!(
            resealed(&tiny, |b| b[38] = FLAG_HAS_KEY),
            Err(RecordError::HeaderCorrupt)
        );
    }

    #[test]
    fn small_total_len_is_header_corrupt() {
        let rec = small_record();
        for total_len in [0u32, 1, 63, 64, 65] {
            let mut b = enc(&rec, SEQ);
            b[12..16].copy_from_slice(&total_len.to_le_bytes());
            let crc = crc32c::crc32c(&b[8..64]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                decode_header(&b, Some(SEQ)),
                Err(RecordError::HeaderCorrupt),
                "{total_len}"
            );
            assert_eq!(decode(&b, Some(SEQ)), Err(RecordError::HeaderCorrupt));
        }
    }

    fn is_malformed(r: Result<Record, RecordError>) -> bool {
        matches!(r, Err(RecordError::Malformed(_)))
    }

    #[test]
    fn malformed_bodies() {
        let rec = small_record();
        // Body of `small_record`: [01 00][01 'a'][01][08 00 00 00][8 bytes].
        let body = 64;
        // Tombstone flag with a bin.
        assert!(is_malformed(resealed(&rec, |b| b[38] |= FLAG_TOMBSTONE)));
        // Bin count larger than the bins present.
        assert!(is_malformed(resealed(&rec, |b| b[body] = 2)));
        assert!(is_malformed(
            resealed(&rec, |b| b[body..body + 2].copy_from_slice(&u16::MAX.to_le_bytes()))
        ));
        // Zero bins, then 15 unread bytes.
        assert!(is_malformed(resealed(&rec, |b| b[body] = 0)));
        // Empty and 16-byte bin names.
        assert!(is_malformed(resealed(&rec, |b| b[body + 2] = 0)));
        assert!(is_malformed(resealed(&rec, |b| b[body + 2] = 16)));
        // Value length past the end of the body, and huge.
        assert!(is_malformed(resealed(&rec, |b| b[body + 5] = 9)));
        assert!(is_malformed(
            resealed(&rec, |b| b[body + 5..body + 9].copy_from_slice(&u32::MAX.to_le_bytes()))
        ));
        // Nil bin (type 0, length 0: the 8 value bytes are left over or counted as a bin).
        assert!(is_malformed(resealed(&rec, |b| {
            b[body + 4] = 0;
            b[body + 5] = 0;
            b.truncate(body + 9);
            b[12..16].copy_from_slice(&((body + 9) as u32).to_le_bytes());
        })));
        // A short integer (sign-extension is for the wire, not the disk).
        assert!(is_malformed(resealed(&rec, |b| {
            b[body + 5] = 4;
            b[12..16].copy_from_slice(&((body + 13) as u32).to_le_bytes());
        })));
        // Trailing bytes after the last bin within total_len.
        assert!(is_malformed(resealed(&rec, |b| {
            b.resize(body + 32, 0);
            b[12..16].copy_from_slice(&((body + 18) as u32).to_le_bytes());
        })));
        // Bool other than 0/1.
        let brec = Record {
            bins: vec![bin("b", Value::Bool(true))],
            ..small_record()
        };
        assert!(is_malformed(resealed(&brec, |b| b[body + 9] = 2)));
        // Set length 0 and 64 with has-set.
        let srec = Record {
            set_name: b"abc".to_vec(),
            ..small_record()
        };
        assert!(is_malformed(resealed(&srec, |b| b[body] = 0)));
        assert!(is_malformed(resealed(&srec, |b| b[body] = 64)));
        // Key length past the body.
        let krec = Record {
            key: Some(StoredKey {
                ptype: 3,
                bytes: b"k".to_vec(),
            }),
            ..small_record()
        };
        assert!(is_malformed(resealed(&krec, |b| b[body + 1..body + 5]
            .copy_from_slice(&u32::MAX.to_le_bytes()))));
    }

    #[test]
    fn bad_particles_are_particle_errors() {
        let rec = small_record();
        let body = 64;
        assert_eq!(
            resealed(&rec, |b| b[body + 4] = 16),
            Err(RecordError::Particle(ParticleError::UnknownType(16)))
        );
        assert_eq!(
            resealed(&rec, |b| b[body + 4] = 2 /* float */).map(|r| r.bins.len()),
            Ok(1),
            "8 bytes are a valid float"
        );
        let geo = Record {
            bins: vec![bin("g", Value::GeoJson(vec![0, 0, 0, b'{', b'}']))],
            ..small_record()
        };
        assert_eq!(
            resealed(&geo, |b| b[body + 11] = 1 /* ncells 1 */),
            Err(RecordError::Particle(ParticleError::BadGeoJson))
        );
    }

    #[test]
    #[should_panic(expected = "set name")]
    fn encode_rejects_long_set_name() {
        let rec = Record {
            set_name: vec![b's'; 64],
            ..small_record()
        };
        encode(&rec, SEQ, &mut [0; 512]);
    }

    #[test]
    #[should_panic(expected = "tombstone")]
    fn encode_rejects_tombstone_with_bins() {
        let rec = Record {
            meta: meta(true),
            ..small_record()
        };
        encode(&rec, SEQ, &mut [0; 512]);
    }

    #[test]
    #[should_panic(expected = "bins (max")]
    fn encode_rejects_too_many_bins() {
        let rec = Record {
            bins: vec![bin("a", Value::Bool(true)); RECORD_MAX_BINS + 1],
            ..small_record()
        };
        encode(&rec, SEQ, &mut vec![0; 1 << 20]);
    }

    #[test]
    fn encode_max_bins() {
        let rec = Record {
            bins: vec![bin("a", Value::Bool(true)); RECORD_MAX_BINS],
            ..small_record()
        };
        assert_round_trip(&rec);
    }

    #[test]
    #[should_panic(expected = "buffer has")]
    fn encode_rejects_short_buffer() {
        let rec = small_record();
        // 81 bytes fit, but the padded 96 do not.
        encode(&rec, SEQ, &mut [0; 90]);
    }

    #[test]
    #[should_panic(expected = "is Nil")]
    fn encode_rejects_nil_bin() {
        let rec = Record {
            bins: vec![bin("a", Value::Nil)],
            ..small_record()
        };
        encode(&rec, SEQ, &mut [0; 512]);
    }

    #[test]
    #[should_panic(expected = "empty name")]
    fn encode_rejects_empty_bin_name() {
        let rec = Record {
            bins: vec![bin("", Value::Int(1))],
            ..small_record()
        };
        encode(&rec, SEQ, &mut [0; 512]);
    }

    fn wblock_header() -> WblockHeader {
        WblockHeader {
            seq: SEQ,
            instance_id: 0x0123_4567_89ab_cdef,
            wblock_id: 77,
            wblock_size_bytes: 1 << 20,
        }
    }

    #[test]
    fn wblock_header_round_trip_and_bytes() {
        let h = wblock_header();
        let mut buf = [0xa5u8; 80];
        h.encode(&mut buf);
        assert_eq!(&buf[0..4], b"BWbk");
        assert_eq!(le_u32(&buf, 4), crc32c::crc32c(&buf[8..64]));
        assert_eq!(le_u64(&buf, 8), SEQ);
        assert_eq!(le_u64(&buf, 16), h.instance_id);
        assert_eq!(le_u32(&buf, 24), 77);
        assert_eq!(le_u32(&buf, 28), 1 << 20);
        assert!(buf[32..64].iter().all(|&b| b == 0));
        assert!(buf[64..].iter().all(|&b| b == 0xa5));
        assert_eq!(WblockHeader::decode(&buf), Ok(Some(h)));
        assert_eq!(WblockHeader::decode(&buf[..64]), Ok(Some(h)));
    }

    #[test]
    fn wblock_header_errors() {
        assert_eq!(WblockHeader::decode(&[0; 64]), Ok(None));
        assert_eq!(WblockHeader::decode(&[0xff; 64]), Ok(None));
        assert_eq!(WblockHeader::decode(&[]), Ok(None));
        assert_eq!(WblockHeader::decode(&[0; 2]), Ok(None));
        let mut buf = [0u8; 64];
        wblock_header().encode(&mut buf);
        // A record header is not a wblock header.
        assert_eq!(WblockHeader::decode(&enc(&small_record(), SEQ)), Ok(None));
        for have in [1, 3, 4, 63] {
            assert_eq!(
                WblockHeader::decode(&buf[..have]),
                Err(RecordError::Truncated { need: 64, have })
            );
        }
        for byte in 4..64 {
            let mut b = buf;
            b[byte] ^= 0x40;
            assert_eq!(WblockHeader::decode(&b), Err(RecordError::HeaderCorrupt), "byte {byte}");
        }
        // Checksummed, but reserved bytes set or an impossible size.
        let poke = |at: usize, bytes: &[u8]| {
            let mut b = buf;
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let crc = crc32c::crc32c(&b[8..64]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            WblockHeader::decode(&b)
        };
        assert_eq!(poke(40, &[1]), Err(RecordError::HeaderCorrupt));
        assert_eq!(poke(63, &[0x80]), Err(RecordError::HeaderCorrupt));
        for size in [0u32, 16, 48, 65, 4097] {
            assert_eq!(poke(28, &size.to_le_bytes()), Err(RecordError::HeaderCorrupt), "{size}");
        }
        assert!(poke(28, &64u32.to_le_bytes()).is_ok());
    }

    #[test]
    #[should_panic(expected = "wblock size")]
    fn wblock_header_rejects_bad_size() {
        WblockHeader {
            wblock_size_bytes: 100,
            ..wblock_header()
        }
        .encode(&mut [0; 64]);
    }

    /// What a scan of one wblock found.
    #[derive(Debug, Default, PartialEq)]
    struct Scan {
        records: Vec<(usize, Record)>,
        body_corrupt: Vec<usize>,
        /// Offset and reason the scan stopped.
        stop: Option<(usize, RecordError)>,
    }

    /// The scan `docs/DISK_FORMAT.md` describes: start at 64, read a header, stop at `NoRecord`
    /// and `Stale`, skip `BodyCorrupt` by `padded_len`, stop the block at `HeaderCorrupt`.
    fn scan(wblock: &[u8]) -> Scan {
        let mut out = Scan::default();
        let Ok(Some(wh)) = WblockHeader::decode(wblock) else {
            return out;
        };
        let mut pos = WBLOCK_HEADER_BYTES;
        while pos < wblock.len() {
            match decode(&wblock[pos..], Some(wh.seq)) {
                Ok(rec) => {
                    pos += padded(encoded_len(&rec));
                    out.records.push((pos, rec));
                }
                Err(RecordError::BodyCorrupt { padded_len, .. }) => {
                    out.body_corrupt.push(pos);
                    pos += padded_len;
                }
                Err(e) => {
                    out.stop = Some((pos, e));
                    return out;
                }
            }
        }
        out
    }

    /// Fills a wblock of `size` bytes with `recs`; returns the end offset of each record.
    fn fill_wblock(buf: &mut [u8], seq: u64, recs: &[Record]) -> Vec<usize> {
        WblockHeader {
            seq,
            wblock_size_bytes: buf.len() as u32,
            ..wblock_header()
        }
        .encode(buf);
        let mut pos = WBLOCK_HEADER_BYTES;
        let mut ends = Vec::new();
        for r in recs {
            pos += encode(r, seq, &mut buf[pos..]);
            ends.push(pos);
        }
        ends
    }

    fn numbered(i: i64, n: usize) -> Record {
        let mut r = small_record();
        r.meta.digest = crate::digest::Digest::compute(b"", 1, &i.to_be_bytes());
        r.bins = vec![
            bin("a", Value::Int(i)),
            bin("b", Value::Blob(ParticleType::Blob, vec![i as u8; n])),
        ];
        r
    }

    #[test]
    fn scan_stops_at_stale_records_from_an_earlier_life() {
        let mut wb = vec![0u8; 4096];
        let old: Vec<Record> = (0..20).map(|i| numbered(i, 50)).collect();
        fill_wblock(&mut wb, 1, &old);
        assert_eq!(scan(&wb).records.len(), 20);
        // Defrag frees the wblock: only the first 4 bytes are zeroed.
        wb[..4].fill(0);
        assert_eq!(scan(&wb), Scan::default());
        // Second life: fewer, larger records; the old ones remain after them.
        let new: Vec<Record> = (100..103).map(|i| numbered(i, 300)).collect();
        let ends = fill_wblock(&mut wb, 2, &new);
        let s = scan(&wb);
        assert_eq!(s.records.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), new);
        let (at, why) = s.stop.unwrap();
        assert_eq!(at, *ends.last().unwrap());
        assert!(
            matches!(why, RecordError::Stale { .. } | RecordError::NoRecord),
            "{why:?}"
        );
    }

    #[test]
    fn scan_skips_a_corrupt_body_and_stops_at_a_corrupt_header() {
        let mut wb = vec![0u8; 4096];
        let recs: Vec<Record> = (0..6).map(|i| numbered(i, 40)).collect();
        let ends = fill_wblock(&mut wb, 9, &recs);
        wb[ends[1] + 70] ^= 1; // body of record 2
        wb[ends[3] + 20] ^= 1; // header of record 4
        let s = scan(&wb);
        assert_eq!(
            s.records.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            [&recs[0], &recs[1], &recs[3]].map(Clone::clone)
        );
        assert_eq!(s.body_corrupt, [ends[1]]);
        assert_eq!(s.stop, Some((ends[3], RecordError::HeaderCorrupt)));
    }

    #[test]
    fn torn_sectors_never_yield_old_records() {
        // A wblock in its second life whose write tore: each 512-byte sector is either new or old.
        let old: Vec<Record> = (0..40).map(|i| numbered(i, 30)).collect();
        let new: Vec<Record> = (1000..1040).map(|i| numbered(i, 45)).collect();
        let mut old_wb = vec![0u8; 8192];
        fill_wblock(&mut old_wb, 5, &old);
        // Defrag freed it (zeroed the magic) before it was reused.
        old_wb[..4].fill(0);
        let mut new_wb = vec![0u8; 8192];
        fill_wblock(&mut new_wb, 6, &new);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let mut found = 0;
        for _ in 0..200 {
            let mut wb = old_wb.clone();
            for (sector, chunk) in wb.chunks_mut(512).enumerate() {
                if rand::Rng::gen_bool(&mut rng, 0.5) {
                    chunk.copy_from_slice(&new_wb[sector * 512..][..512]);
                }
            }
            let s = scan(&wb);
            for (_, r) in &s.records {
                assert!(
                    new.contains(r),
                    "scan returned a record not written in this life: {r:?}"
                );
            }
            found += s.records.len();
        }
        assert!(found > 0, "some tears keep new records");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b))),
            bytes().prop_map(Value::Str),
            any::<bool>().prop_map(Value::Bool),
            (prop::sample::select(vec![4u8, 7, 8, 9, 10, 11, 12]), bytes())
                .prop_map(|(t, b)| Value::Blob(ParticleType::from_u8(t).unwrap(), b)),
            bytes().prop_map(Value::Hll),
            bytes().prop_map(Value::Map),
            bytes().prop_map(Value::List),
            (0u16..3, bytes()).prop_map(|(n, json)| {
                let mut v = vec![0];
                v.extend_from_slice(&n.to_be_bytes());
                v.extend(std::iter::repeat_n(0x5a, 8 * n as usize));
                v.extend_from_slice(&json);
                Value::GeoJson(v)
            }),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let name = proptest::collection::vec(any::<u8>(), 1..=BIN_NAME_MAX_BYTES);
        let bins = proptest::collection::vec(
            (name, arb_value()).prop_map(|(n, value)| Bin {
                name: BinName::new(&n).unwrap(),
                value,
            }),
            0..8,
        );
        (
            any::<[u8; 20]>(),
            any::<(u16, u32, u64, u64, bool)>(),
            proptest::collection::vec(any::<u8>(), 0..=SET_NAME_MAX_BYTES),
            proptest::option::of((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..30))),
            bins,
        )
            .prop_map(
                |(d, (generation, void_time, lut_ms, origin_seq, tombstone), set_name, key, bins)| Record {
                    meta: RecordMeta {
                        digest: Digest(d),
                        generation,
                        void_time,
                        lut_ms,
                        origin_seq,
                        tombstone,
                    },
                    set_name,
                    key: key.map(|(ptype, bytes)| StoredKey { ptype, bytes }),
                    bins: if tombstone { Vec::new() } else { bins },
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn prop_round_trip(rec in arb_record(), seq in any::<u64>()) {
            let buf = enc(&rec, seq);
            let back = decode(&buf, Some(seq)).unwrap();
            prop_assert_eq!(enc(&back, seq), buf);
            prop_assert_eq!(back.meta, rec.meta);
            prop_assert_eq!(&back.set_name, &rec.set_name);
            prop_assert_eq!(&back.key, &rec.key);
            prop_assert_eq!(back.bins.len(), rec.bins.len());
        }

        #[test]
        fn prop_any_bit_flip_is_an_error(rec in arb_record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = enc(&rec, SEQ);
            let total_len = encoded_len(&rec);
            buf[at.index(total_len)] ^= 1 << bit;
            prop_assert!(decode(&buf, Some(SEQ)).is_err());
        }

        #[test]
        fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), seq in proptest::option::of(any::<u64>())) {
            let _ = decode_header(&bytes, seq);
            let _ = decode(&bytes, seq);
            let _ = WblockHeader::decode(&bytes);
        }

        /// Random bytes behind a valid-looking, checksummed header: the body parser sees garbage.
        #[test]
        fn prop_random_body_never_panics(
            flags in 0u8..8,
            body in proptest::collection::vec(any::<u8>(), 2..200),
            tail in 0usize..16,
        ) {
            let total_len = RECORD_HEADER_BYTES + body.len();
            let mut buf = vec![0u8; total_len + tail];
            buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
            buf[12..16].copy_from_slice(&(total_len as u32).to_le_bytes());
            buf[38] = flags;
            buf[64..total_len].copy_from_slice(&body);
            reseal(&mut buf);
            match decode(&buf, None) {
                Ok(r) => prop_assert_eq!(encoded_len(&r), total_len),
                Err(e) => prop_assert!(matches!(e, RecordError::Malformed(_) | RecordError::Particle(_) | RecordError::HeaderCorrupt), "{:?}", e),
            }
        }

        /// Structured garbage: valid bins with random length fields poked in.
        #[test]
        fn prop_poked_lengths_never_panic(rec in arb_record(), at in any::<prop::sample::Index>(), v in any::<u32>()) {
            let mut buf = enc(&rec, SEQ);
            let total_len = encoded_len(&rec);
            let body_len = total_len - RECORD_HEADER_BYTES;
            let pos = RECORD_HEADER_BYTES + at.index(body_len);
            let n = (total_len - pos).min(4);
            buf[pos..pos + n].copy_from_slice(&v.to_le_bytes()[..n]);
            reseal(&mut buf);
            let _ = decode(&buf, Some(SEQ));
        }
    }
}
