//! The shard region header and the persisted index image (`docs/DISK_FORMAT.md`, "Shard region
//! header and persisted index").
//!
//! A shard owns a byte range of a device, its *region*, cut into wblocks. Wblock 0 is reserved:
//! its first 4 KiB sector holds the [`RegionHeader`]. On a clean shutdown the index is written
//! into free wblocks as an image, and the header points at them; the next start loads the image
//! instead of scanning every wblock.
//!
//! Region header (one 4096-byte sector, little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BOLIDE\0\x01` |
//! | 8 | 4 | CRC32C over bytes 12..4096 |
//! | 12 | 4 | format version (1) |
//! | 16 | 8 | instance id (random, chosen at format) |
//! | 24 | 4 | wblock size, bytes |
//! | 28 | 4 | wblocks in the region (wblock 0 included) |
//! | 32 | 4 | shard id |
//! | 36 | 4 | flags: 0x1 = a clean-shutdown index image is valid |
//! | 40 | 8 | created, ms since 2010-01-01 |
//! | 48 | 8 | next wblock sequence at shutdown (image only) |
//! | 56 | 8 | image length, bytes (payload, without per-wblock headers) |
//! | 64 | 4 | image CRC32C over the payload |
//! | 68 | 4 | image wblock count `n` |
//! | 72 | 4·n | image wblock ids, in payload order |
//!
//! Each image wblock starts with a 64-byte image-block header (magic `BImg`, index in the image,
//! instance id) so it never reads as a data wblock; the payload continues after it.
//!
//! Image payload: `[u64 entries][u32 wblocks][u32 reserved]`, then per wblock
//! `[u64 seq][u8 used][7 reserved]` (16 bytes), then the index entries in index order, 40 bytes
//! each ([`crate::index::IndexEntry::to_bytes`]).

use crate::record::RecordError;
use bolide_drivers::SECTOR_SIZE;

pub const REGION_MAGIC: [u8; 8] = *b"BOLIDE\x00\x01";
pub const REGION_FORMAT_VERSION: u32 = 1;
pub const FLAG_CLEAN_IMAGE: u32 = 0x1;
/// Most wblocks an index image can span (the ids must fit in the header sector).
pub const MAX_IMAGE_WBLOCKS: usize = (SECTOR_SIZE - 72) / 4;
pub const IMAGE_BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"BImg");
pub const IMAGE_BLOCK_HEADER_BYTES: usize = 64;
/// Bytes per wblock in the image's block table.
pub const IMAGE_BLOCK_ENTRY_BYTES: usize = 16;
/// Bytes of the image payload header.
pub const IMAGE_HEADER_BYTES: usize = 16;

/// The decoded region header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionHeader {
    pub instance_id: u64,
    pub wblock_size_bytes: u32,
    pub n_wblocks: u32,
    pub shard_id: u32,
    pub created_ms: u64,
    /// Present when the last shutdown left a valid index image.
    pub image: Option<ImageRef>,
}

/// Where a clean shutdown left the index image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub next_seq: u64,
    pub len_bytes: u64,
    pub crc: u32,
    pub wblocks: Vec<u32>,
}

impl RegionHeader {
    /// Encodes into one sector.
    ///
    /// # Panics
    /// If `out` is not exactly one sector or the image spans more than [`MAX_IMAGE_WBLOCKS`].
    pub fn encode(&self, out: &mut [u8]) {
        assert_eq!(out.len(), SECTOR_SIZE);
        out.fill(0);
        out[0..8].copy_from_slice(&REGION_MAGIC);
        out[12..16].copy_from_slice(&REGION_FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.instance_id.to_le_bytes());
        out[24..28].copy_from_slice(&self.wblock_size_bytes.to_le_bytes());
        out[28..32].copy_from_slice(&self.n_wblocks.to_le_bytes());
        out[32..36].copy_from_slice(&self.shard_id.to_le_bytes());
        out[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        if let Some(img) = &self.image {
            assert!(img.wblocks.len() <= MAX_IMAGE_WBLOCKS);
            out[36..40].copy_from_slice(&FLAG_CLEAN_IMAGE.to_le_bytes());
            out[48..56].copy_from_slice(&img.next_seq.to_le_bytes());
            out[56..64].copy_from_slice(&img.len_bytes.to_le_bytes());
            out[64..68].copy_from_slice(&img.crc.to_le_bytes());
            out[68..72].copy_from_slice(&(img.wblocks.len() as u32).to_le_bytes());
            for (i, id) in img.wblocks.iter().enumerate() {
                out[72 + 4 * i..76 + 4 * i].copy_from_slice(&id.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header sector. `Ok(None)` when the region was never formatted (magic absent).
    ///
    /// # Errors
    /// Magic present but the checksum, version or a field is wrong: `HeaderCorrupt`/`Malformed`.
    pub fn decode(buf: &[u8]) -> Result<Option<RegionHeader>, RecordError> {
        if buf.len() < SECTOR_SIZE {
            return Err(RecordError::Truncated {
                need: SECTOR_SIZE,
                have: buf.len(),
            });
        }
        let buf = &buf[..SECTOR_SIZE];
        if buf[0..8] != REGION_MAGIC {
            return Ok(None);
        }
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        if crc32c::crc32c(&buf[12..]) != u32_at(8) {
            return Err(RecordError::HeaderCorrupt);
        }
        if u32_at(12) != REGION_FORMAT_VERSION {
            return Err(RecordError::Malformed(format!(
                "region format version {} (this build reads {REGION_FORMAT_VERSION})",
                u32_at(12)
            )));
        }
        let flags = u32_at(36);
        let image = if flags & FLAG_CLEAN_IMAGE != 0 {
            let n = u32_at(68) as usize;
            if n > MAX_IMAGE_WBLOCKS {
                return Err(RecordError::Malformed(format!("index image spans {n} wblocks")));
            }
            Some(ImageRef {
                next_seq: u64_at(48),
                len_bytes: u64_at(56),
                crc: u32_at(64),
                wblocks: (0..n).map(|i| u32_at(72 + 4 * i)).collect(),
            })
        } else {
            None
        };
        Ok(Some(RegionHeader {
            instance_id: u64_at(16),
            wblock_size_bytes: u32_at(24),
            n_wblocks: u32_at(28),
            shard_id: u32_at(32),
            created_ms: u64_at(40),
            image,
        }))
    }
}

/// Writes the 64-byte header of image wblock number `index`.
pub fn encode_image_block_header(out: &mut [u8], index: u32, instance_id: u64) {
    out[..IMAGE_BLOCK_HEADER_BYTES].fill(0);
    out[0..4].copy_from_slice(&IMAGE_BLOCK_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&index.to_le_bytes());
    out[8..16].copy_from_slice(&instance_id.to_le_bytes());
}

/// Checks the header of image wblock number `index`.
pub fn check_image_block_header(buf: &[u8], index: u32, instance_id: u64) -> bool {
    buf.len() >= IMAGE_BLOCK_HEADER_BYTES
        && buf[0..4] == IMAGE_BLOCK_MAGIC.to_le_bytes()
        && buf[4..8] == index.to_le_bytes()
        && buf[8..16] == instance_id.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_corruption() {
        let h = RegionHeader {
            instance_id: 0xdead_beef,
            wblock_size_bytes: 1 << 20,
            n_wblocks: 100,
            shard_id: 3,
            created_ms: 12345,
            image: Some(ImageRef {
                next_seq: 77,
                len_bytes: 4000,
                crc: 9,
                wblocks: vec![5, 9, 2],
            }),
        };
        let mut sector = vec![0u8; SECTOR_SIZE];
        h.encode(&mut sector);
        assert_eq!(RegionHeader::decode(&sector).unwrap(), Some(h.clone()));
        sector[100] ^= 1;
        assert_eq!(RegionHeader::decode(&sector), Err(RecordError::HeaderCorrupt));
        assert_eq!(RegionHeader::decode(&vec![0u8; SECTOR_SIZE]).unwrap(), None);
        let plain = RegionHeader { image: None, ..h };
        plain.encode(&mut sector);
        assert_eq!(RegionHeader::decode(&sector).unwrap(), Some(plain));
    }
}
