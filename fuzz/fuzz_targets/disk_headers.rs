//! Fuzz target: every fixed-layout structure a cold start trusts (docs/DISK_FORMAT.md): the
//! shard region header sector, the wblock header, the index image's block header and its
//! 40-byte index entries. Decoders must never panic; a region header that is not all zeros must
//! never decode as blank (docs/FAULT_MODEL.md: damage is never read as "blank"); a header that
//! decodes must encode back to the same bytes where the format is canonical.
#![no_main]

use bolide_node::index::IndexEntry;
use bolide_node::record::WblockHeader;
use bolide_node::shard::region::{self, HeaderSector, RegionHeader};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 4096;

fuzz_target!(|buf: &[u8]| {
    // The region header: one sector (short inputs are zero-padded, so blank is reachable).
    let mut sector = [0u8; SECTOR];
    let n = buf.len().min(SECTOR);
    sector[..n].copy_from_slice(&buf[..n]);
    if let Ok(HeaderSector::Blank) = RegionHeader::decode(&sector) {
        assert!(sector.iter().all(|&b| b == 0), "a sector with data decoded as blank");
    }
    let _ = RegionHeader::decode(buf);

    // A wblock header, and what it encodes back to.
    if let Ok(Some(h)) = WblockHeader::decode(buf) {
        let mut again = [0u8; 64];
        h.encode(&mut again);
        assert_eq!(WblockHeader::decode(&again), Ok(Some(h)), "a decoded wblock header re-encodes differently");
    }

    // An index image block header, then the payload as 40-byte entries.
    let instance = buf.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
    let _ = region::check_image_block_header(buf, 0, instance);
    for chunk in buf.chunks_exact(40) {
        let image: &[u8; 40] = chunk.try_into().expect("40 bytes");
        if let Ok(e) = IndexEntry::try_from_bytes(image) {
            assert_eq!(IndexEntry::try_from_bytes(&e.to_bytes()), Ok(e), "an index entry image does not round-trip");
        }
    }
});
