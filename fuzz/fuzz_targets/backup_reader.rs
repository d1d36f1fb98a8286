//! Fuzz target: a backup file as `bolide restore` reads it (backup/src/frame.rs framing, then
//! backup/src/asb.rs, the asbackup "Version 3.1" text format): plain, and framed with a fixed
//! key. The reader must never panic and never allocate from an unchecked length; every entry is
//! either decoded or an error naming the file and line.
#![no_main]

use bolide_backup::asb::AsbReader;
use bolide_backup::frame::{self, MasterKey};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

/// Entries read per input at most (a valid file of tiny records can be long).
const MAX_ENTRIES: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_bytes(&[7u8; 32]);
    for key in [None, Some(&key)] {
        let input = Box::new(Cursor::new(data.to_vec()));
        let Ok(reader) = frame::open_reader(input, "fuzz.asb", key) else { continue };
        let mut asb = AsbReader::new(reader, "fuzz.asb");
        for _ in 0..MAX_ENTRIES {
            match asb.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
