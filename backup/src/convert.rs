//! Between the official client's records and values and the backup file's records.
//!
//! The client decodes list and map bins into `Value::List` / maps; a backup file holds them as
//! the msgpack particle bytes the server stores (wire spec §3.5, §9.4 `L`/`M`), so they are
//! packed again here in Aerospike's msgpack dialect (strings, blobs and GeoJSON as msgpack str
//! with a leading particle-type byte; a K-ordered map with its order-flag ext pair first). On
//! restore the bytes go back verbatim as a whole-bin value of particle type 20 / 19
//! (`Value::Unknown`), exactly as asrestore sends them.

use aerospike::{Key, Value};

use crate::asb::{self, BinValue, UserKey};

/// A bin value the backup cannot represent.
#[derive(Debug, thiserror::Error)]
#[error("bin {bin:?}: {what}")]
pub struct ConvertError {
    pub bin: String,
    pub what: String,
}

// ---------------------------------------------------------------------------------------------
// msgpack (Aerospike dialect)
// ---------------------------------------------------------------------------------------------

fn pack_len(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
    if len < fix_max {
        out.push(fix | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m16);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn pack_str_header(out: &mut Vec<u8>, len: usize) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.push(0xd9);
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn pack_typed_bytes(out: &mut Vec<u8>, particle_type: u8, bytes: &[u8]) {
    pack_str_header(out, bytes.len() + 1);
    out.push(particle_type);
    out.extend_from_slice(bytes);
}

fn pack_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        let u = v as u64;
        if u < 128 {
            out.push(u as u8);
        } else if u <= u8::MAX as u64 {
            out.extend_from_slice(&[0xcc, u as u8]);
        } else if u <= u16::MAX as u64 {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u <= u32::MAX as u64 {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i8::MIN as i64 {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn label(v: &Value) -> String {
    match v {
        Value::Unknown(code, _) => format!("particle type {code}"),
        Value::MultiResult(_) => "multi-result".into(),
        Value::Infinity => "INF".into(),
        Value::Wildcard => "wildcard".into(),
        _ => "this value".into(),
    }
}

/// Packs a value as an element of a list or map particle.
pub fn pack_value(out: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => pack_int(out, *i),
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f64::from(f).to_be_bytes());
        }
        Value::String(s) => pack_typed_bytes(out, 3, s.as_bytes()),
        Value::Blob(b) => pack_typed_bytes(out, asb::particle::BLOB, b),
        Value::GeoJson(s) => pack_typed_bytes(out, 23, s.as_bytes()),
        Value::Hll(b) => pack_typed_bytes(out, asb::particle::HLL, b),
        Value::List(items) => {
            pack_len(out, items.len(), 0x90, 16, 0xdc, 0xdd);
            for item in items {
                pack_value(out, item)?;
            }
        }
        Value::HashMap(m) => {
            pack_len(out, m.len(), 0x80, 16, 0xde, 0xdf);
            for (k, v) in m {
                pack_value(out, k)?;
                pack_value(out, v)?;
            }
        }
        Value::OrderedMap(m) => {
            pack_len(out, m.len(), 0x80, 16, 0xde, 0xdf);
            for (k, v) in m {
                pack_value(out, k)?;
                pack_value(out, v)?;
            }
        }
        Value::SortedMap(m) => {
            // K-ordered: one extra pair, ext(type 0, flags 0x01) → nil, first.
            pack_len(out, m.len() + 1, 0x80, 16, 0xde, 0xdf);
            out.extend_from_slice(&[0xc7, 0x00, 0x01, 0xc0]);
            for (k, v) in m {
                pack_value(out, k)?;
                pack_value(out, v)?;
            }
        }
        Value::KeyValueList(pairs) => {
            pack_len(out, pairs.len(), 0x80, 16, 0xde, 0xdf);
            for (k, v) in pairs {
                pack_value(out, k)?;
                pack_value(out, v)?;
            }
        }
        other => return Err(format!("{} cannot be packed inside a list or map", label(other))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// client → file
// ---------------------------------------------------------------------------------------------

/// A bin value read by the client, as the backup file writes it.
pub fn bin_value_of(name: &str, v: &Value) -> Result<BinValue, ConvertError> {
    let bytes = |particle_type: u8, bytes: &[u8]| BinValue::Bytes {
        particle_type,
        bytes: bytes.to_vec(),
    };
    Ok(match v {
        Value::Nil => BinValue::Nil,
        Value::Bool(b) => BinValue::Bool(*b),
        Value::Int(i) => BinValue::Int(*i),
        Value::Float(f) => BinValue::Float(f64::from(f)),
        Value::String(s) => BinValue::String(s.clone()),
        Value::GeoJson(s) => BinValue::GeoJson(s.clone()),
        Value::Blob(b) => bytes(asb::particle::BLOB, b),
        Value::Hll(b) => bytes(asb::particle::HLL, b),
        Value::List(_) => {
            let mut out = Vec::new();
            pack_value(&mut out, v).map_err(|what| ConvertError { bin: name.into(), what })?;
            BinValue::Bytes {
                particle_type: asb::particle::LIST,
                bytes: out,
            }
        }
        Value::HashMap(_) | Value::OrderedMap(_) | Value::SortedMap(_) | Value::KeyValueList(_) => {
            let mut out = Vec::new();
            pack_value(&mut out, v).map_err(|what| ConvertError { bin: name.into(), what })?;
            BinValue::Bytes {
                particle_type: asb::particle::MAP,
                bytes: out,
            }
        }
        Value::Unknown(code, b) if asb::is_bytes_particle(*code) => bytes(*code, b),
        other => {
            return Err(ConvertError {
                bin: name.into(),
                what: format!("value type {} has no backup form", label(other)),
            })
        }
    })
}

/// The stored user key of a scanned record, if the server returned one.
pub fn user_key_of(key: &Key) -> Option<UserKey> {
    match key.user_key()? {
        Value::Int(i) => Some(UserKey::Int(*i)),
        Value::Float(f) => Some(UserKey::Float(f64::from(f))),
        Value::String(s) => Some(UserKey::String(s.clone())),
        Value::Blob(b) => Some(UserKey::Blob(b.clone())),
        _ => None,
    }
}

/// A scanned record as a backup file record.
pub fn record_of(namespace: &str, rec: &aerospike::Record) -> Result<asb::Record, ConvertError> {
    let key = rec.key.as_ref().ok_or_else(|| ConvertError {
        bin: String::new(),
        what: "scanned record without key/digest".into(),
    })?;
    let set = key.set_name();
    let mut bins = Vec::with_capacity(rec.bins.len());
    for (name, v) in &rec.bins {
        bins.push(asb::Bin {
            name: name.clone(),
            value: bin_value_of(name, v)?,
        });
    }
    Ok(asb::Record {
        key: user_key_of(key),
        namespace: namespace.to_string(),
        digest: key.digest(),
        set: (!set.is_empty()).then(|| set.to_string()),
        // The server's generation is 16-bit (§10.4); the client widens it.
        generation: rec.generation.min(u16::MAX as u32) as u16,
        expiration: rec.expiration(),
        bins,
    })
}

// ---------------------------------------------------------------------------------------------
// file → client
// ---------------------------------------------------------------------------------------------

/// A file bin value as the client writes it; `None` for nil bins (a nil write deletes a bin,
/// so restore leaves them out).
pub fn value_of(v: &BinValue) -> Option<Value> {
    Some(match v {
        BinValue::Nil => return None,
        BinValue::Bool(b) => Value::Bool(*b),
        BinValue::Int(i) => Value::Int(*i),
        BinValue::Float(f) => Value::from(*f),
        BinValue::String(s) => Value::String(s.clone()),
        BinValue::GeoJson(s) => Value::GeoJson(s.clone()),
        BinValue::Bytes { particle_type, bytes } => match *particle_type {
            asb::particle::BLOB => Value::Blob(bytes.clone()),
            asb::particle::HLL => Value::Hll(bytes.clone()),
            // Lists, maps and the language blobs: the particle bytes verbatim.
            other => Value::Unknown(other, bytes.clone()),
        },
    })
}

/// The client key of a file record, in namespace `namespace` (after any mapping): the digest
/// from the file, and the user key when the file has one.
pub fn key_of(namespace: &str, rec: &asb::Record) -> Key {
    let user_key = rec.key.as_ref().map(|k| match k {
        UserKey::Int(i) => Value::Int(*i),
        UserKey::Float(f) => Value::from(*f),
        UserKey::String(s) => Value::String(s.clone()),
        UserKey::Blob(b) => Value::Blob(b.clone()),
    });
    Key::with_digest(namespace, rec.set.clone().unwrap_or_default(), user_key, rec.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        pack_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn msgpack_matches_the_spec_examples() {
        // §3.5: list [1, "x"] is 92 01 a2 03 78.
        assert_eq!(
            packed(&Value::List(vec![Value::Int(1), Value::from("x")])),
            [0x92, 0x01, 0xa2, 0x03, 0x78]
        );
        assert_eq!(packed(&Value::Int(-1)), [0xff]);
        assert_eq!(packed(&Value::Int(-33)), [0xd0, 0xdf]);
        assert_eq!(packed(&Value::Int(200)), [0xcc, 200]);
        assert_eq!(packed(&Value::Int(i64::MIN))[0], 0xd3);
        assert_eq!(packed(&Value::Int(u32::MAX as i64 + 1))[0], 0xcf);
        let long = "y".repeat(40);
        assert_eq!(&packed(&Value::from(long.as_str()))[..3], &[0xd9, 41, 3]);
        let mut sorted = std::collections::BTreeMap::new();
        sorted.insert(Value::from("k"), Value::Int(1));
        assert_eq!(
            packed(&Value::SortedMap(sorted)),
            [0x82, 0xc7, 0x00, 0x01, 0xc0, 0xa2, 0x03, b'k', 0x01]
        );
        let list: Vec<Value> = (0..20).map(Value::Int).collect();
        assert_eq!(&packed(&Value::List(list))[..3], &[0xdc, 0, 20]);
    }

    #[test]
    fn values_map_both_ways() {
        let cases = [
            Value::Bool(true),
            Value::Int(-9),
            Value::from(2.5),
            Value::from("s"),
            Value::GeoJson("{}".into()),
            Value::Blob(vec![1, 2]),
            Value::Hll(vec![3]),
        ];
        for v in cases {
            let b = bin_value_of("b", &v).unwrap();
            assert_eq!(value_of(&b), Some(v));
        }
        let l = bin_value_of("l", &Value::List(vec![Value::Int(1)])).unwrap();
        assert_eq!(value_of(&l), Some(Value::Unknown(20, vec![0x91, 1])));
        assert_eq!(value_of(&BinValue::Nil), None);
    }
}
