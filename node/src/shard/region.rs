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

    /// Decodes a header sector.
    ///
    /// Only a sector of zeros is [`HeaderSector::Blank`] (a region never formatted, or whose
    /// header was zeroed: the caller must still prove the rest blank before formatting). Any
    /// other content is either a valid header or an error that says what is wrong; a damaged
    /// magic is never read as "not formatted".
    ///
    /// # Errors
    /// [`RegionHeaderError`]: a magic that is not Bolide's (damaged, or another program's
    /// data), a checksum mismatch, an unknown version, an impossible image reference.
    pub fn decode(buf: &[u8]) -> Result<HeaderSector, RegionHeaderError> {
        if buf.len() < SECTOR_SIZE {
            return Err(RegionHeaderError::Truncated { have: buf.len() });
        }
        let buf = &buf[..SECTOR_SIZE];
        if buf.iter().all(|&b| b == 0) {
            return Ok(HeaderSector::Blank);
        }
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        let crc_ok = crc32c::crc32c(&buf[12..]) == u32_at(8);
        if buf[0..8] != REGION_MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&buf[0..8]);
            return Err(RegionHeaderError::BadMagic { found, rest_intact: crc_ok });
        }
        if !crc_ok {
            return Err(RegionHeaderError::Checksum {
                stored: u32_at(8),
                computed: crc32c::crc32c(&buf[12..]),
            });
        }
        if u32_at(12) != REGION_FORMAT_VERSION {
            return Err(RegionHeaderError::Version(u32_at(12)));
        }
        let flags = u32_at(36);
        let image = if flags & FLAG_CLEAN_IMAGE != 0 {
            let n = u32_at(68) as usize;
            if n > MAX_IMAGE_WBLOCKS {
                return Err(RegionHeaderError::Field(format!("index image spans {n} wblocks")));
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
        Ok(HeaderSector::Valid(RegionHeader {
            instance_id: u64_at(16),
            wblock_size_bytes: u32_at(24),
            n_wblocks: u32_at(28),
            shard_id: u32_at(32),
            created_ms: u64_at(40),
            image,
        }))
    }
}

/// What the region's header sector holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderSector {
    /// 4096 zero bytes.
    Blank,
    Valid(RegionHeader),
}

/// Why a region header sector is not a valid header. The region is never formatted over one
/// of these unless the operator says so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionHeaderError {
    #[error("header sector is {have} bytes, not {SECTOR_SIZE}")]
    Truncated { have: usize },
    /// Bytes 0..8 are not `BOLIDE\0\x01` and the sector is not all zeros.
    #[error("bytes 0..8 are {} where the region magic {} belongs ({}); this is not a blank region and is not formatted", hex(found), hex(&REGION_MAGIC), if *rest_intact { "the rest of the header passes its checksum: the magic is damaged" } else { "the rest does not pass the header checksum either: damaged, or another program's data" })]
    BadMagic { found: [u8; 8], rest_intact: bool },
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x} over bytes 12..4096)")]
    Checksum { stored: u32, computed: u32 },
    #[error("region format version {0} (this build reads {REGION_FORMAT_VERSION})")]
    Version(u32),
    #[error("{0}")]
    Field(String),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
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
        assert_eq!(RegionHeader::decode(&sector).unwrap(), HeaderSector::Valid(h.clone()));
        sector[100] ^= 1;
        assert!(matches!(RegionHeader::decode(&sector), Err(RegionHeaderError::Checksum { .. })));
        assert_eq!(RegionHeader::decode(&vec![0u8; SECTOR_SIZE]).unwrap(), HeaderSector::Blank);
        let plain = RegionHeader { image: None, ..h };
        plain.encode(&mut sector);
        assert_eq!(RegionHeader::decode(&sector).unwrap(), HeaderSector::Valid(plain));
    }

    /// Issue 12, defect 2: one bit of the magic flipped read as "never formatted".
    #[test]
    fn a_flipped_magic_bit_is_damage_not_blank() {
        let h = RegionHeader {
            instance_id: 7,
            wblock_size_bytes: 1 << 20,
            n_wblocks: 10,
            shard_id: 0,
            created_ms: 1,
            image: None,
        };
        let mut sector = vec![0u8; SECTOR_SIZE];
        h.encode(&mut sector);
        for byte in 0..8 {
            for bit in 0..8 {
                let mut s = sector.clone();
                s[byte] ^= 1 << bit;
                match RegionHeader::decode(&s) {
                    Err(e @ RegionHeaderError::BadMagic { rest_intact: true, .. }) => {
                        assert!(e.to_string().contains("the magic is damaged"), "{e}");
                    }
                    other => panic!("magic byte {byte} bit {bit}: {other:?}"),
                }
            }
        }
        // Another program's data: refused too, and said to be neither blank nor ours.
        let junk = vec![0xa5u8; SECTOR_SIZE];
        assert!(matches!(
            RegionHeader::decode(&junk),
            Err(RegionHeaderError::BadMagic { rest_intact: false, .. })
        ));
        // A zero magic over an otherwise written header is not blank either.
        let mut zeroed_magic = sector.clone();
        zeroed_magic[..8].fill(0);
        assert!(matches!(RegionHeader::decode(&zeroed_magic), Err(RegionHeaderError::BadMagic { .. })));
    }
}
