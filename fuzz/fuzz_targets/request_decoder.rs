//! Fuzz target: one framed request through every request decoder of `bolide_node::proto`
//! (proto header, inflation of type 4, AS_MSG, op values, batch rows, scan fields; wire spec §1,
//! §3, §7, §8). The decoders must never panic and never allocate from an unchecked length.
//!
//! Run with `scripts/fuzz.sh`; seeds come from `proto::tests::write_fuzz_seeds`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = bolide_node::proto::decode_request(frame);
});
