//! Fuzz target: one CDT / bit / HLL op (`bolide_node::cdt::apply`, CDT spec §1–§8) with a random
//! payload against a random bin value. The first byte picks the op type, the second the bin's
//! particle type; the rest is split into the bin value and the op payload. The op must never
//! panic, and a modify must leave a value that a plain WRITE accepts again.
#![no_main]

use bolide_node::cdt;
use bolide_node::particle::Value;
use libfuzzer_sys::fuzz_target;

const OP_TYPES: [u8; 6] = [3, 4, 12, 13, 15, 16];

fuzz_target!(|data: &[u8]| {
    let [t, pt, split, rest @ ..] = data else { return };
    let op_type = OP_TYPES[usize::from(*t) % OP_TYPES.len()];
    let cut = usize::from(*split).min(rest.len());
    let (bin_bytes, payload) = rest.split_at(cut);
    let bin = match pt % 4 {
        0 => None,
        1 => cdt::normalize_write(Value::List(bin_bytes.to_vec())).ok(),
        2 => cdt::normalize_write(Value::Map(bin_bytes.to_vec())).ok(),
        _ => Some(Value::Blob(bolide_node::particle::ParticleType::Blob, bin_bytes.to_vec())),
    };
    if let Ok(o) = cdt::apply(op_type, 4, payload, bin.as_ref()) {
        if let Some(v @ (Value::List(_) | Value::Map(_) | Value::Hll(_))) = o.new_value {
            assert!(cdt::normalize_write(v).is_ok(), "a modify stored a value a WRITE refuses");
        }
    }
});
