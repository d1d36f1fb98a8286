//! Fuzz target: one framed request through every request decoder of `bolide_node::proto`
//! (proto header, inflation of type 4, AS_MSG, op values, batch rows, scan fields; wire spec §1,
//! §3, §7, §8), then the server's decoding into commands, batch rows and scan specs
//! (`server::codec::decode`). The decoders must never panic and never allocate from an unchecked length.
//!
//! Run with `scripts/fuzz.sh`; seeds come from `proto::tests::write_fuzz_seeds`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = bolide_node::proto::decode_request(frame);
    // The server's own decoding of the same frame: commands, batch rows, scan specs, filters.
    if let Some(header) = frame.first_chunk::<8>() {
        if let Ok(h) = bolide_node::proto::ProtoHeader::parse(header) {
            let _ = bolide_node::server::codec::decode(h.ptype, &frame[8..], "test");
        }
    }
});
