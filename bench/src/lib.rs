//! Bolide benchmarks: criterion micro-benchmarks (`benches/`) and benchmark binaries
//! (`src/bin/`). Helpers shared by them live here.

pub mod act;
pub mod act_cli;
pub mod devio;
pub mod loadgen;
pub mod plot;
pub mod probe;

use bolide_node::digest::Digest;
use bolide_node::index::IndexEntry;
use rand::RngCore;

/// A uniformly random digest (what RIPEMD-160 digests look like to the index).
pub fn random_digest(rng: &mut impl RngCore) -> Digest {
    let mut d = [0u8; 20];
    rng.fill_bytes(&mut d);
    Digest(d)
}

/// A plausible index entry for the `i`-th record: 1 KiB records laid end to end.
pub fn entry_for(d: Digest, i: usize) -> IndexEntry {
    let i = i as u64;
    IndexEntry::new(d, (i * 1024) % (1 << 40), 1024, i as u16, 0, i, false)
}
