//! Fuzz target: bytes read back from a device as a record (`bolide_node::record`, layout in
//! docs/DISK_FORMAT.md "Record"): the header decoder and the full decoder, without and with an
//! expected wblock sequence, must never panic, never allocate from an unchecked length, and
//! never accept what they did not checksum (`decode` and `decode_header` agree on the header).
//! Random bytes almost never pass CRC32C, so each input is also tried with its checksums made
//! right (total length clamped to the input, body CRC at 8..12, header CRC at 4..8): that is
//! what reaches the body decoder (bins, particles, set name, stored key).
#![no_main]

use bolide_node::record;
use libfuzzer_sys::fuzz_target;

/// Decodes `buf` as a record; a record that decodes must have a header that decodes to the
/// same metadata.
fn check(buf: &[u8]) {
    let header = record::decode_header(buf, None);
    if let Ok(r) = record::decode(buf, None) {
        let h = header.expect("a record that decodes has a header that decodes");
        assert_eq!(h.meta, r.meta, "decode and decode_header disagree on the header");
    }
}

fuzz_target!(|buf: &[u8]| {
    check(buf);
    // The same bytes as a record of the wblock with the sequence its first 8 bytes name.
    if let Some(seq) = buf.first_chunk::<8>() {
        let _ = record::decode(buf, Some(u64::from_le_bytes(*seq)));
    }
    if buf.len() >= 64 {
        let mut fixed = buf.to_vec();
        let total_len = (u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes")) as usize).clamp(64, fixed.len());
        fixed[12..16].copy_from_slice(&(total_len as u32).to_le_bytes());
        let body_crc = crc32c::crc32c(&fixed[64..total_len]);
        fixed[8..12].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&fixed[8..64]);
        fixed[4..8].copy_from_slice(&header_crc.to_le_bytes());
        check(&fixed);
    }
});
