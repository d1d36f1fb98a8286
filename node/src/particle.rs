//! Bin values and their particle types (wire spec §3.5).
//!
//! A value is kept in memory and on disk in its wire encoding (big-endian integers and floats,
//! raw strings and blobs, msgpack lists and maps, GeoJSON with its cell header, HLL bytes), so a
//! read is served without conversion.
//!
//! Decoding is total: [`Value::decode_wire`] never panics on any input and only allocates the
//! bytes it was given.

/// Particle type ids (spec §3.5). The discriminant is the wire id.
///
/// Type 16 (VECTOR) and ids the spec does not list are not stored by Bolide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParticleType {
    /// NULL: no bytes; in a write op it deletes the bin.
    Null = 0,
    /// 8-byte big-endian two's-complement i64.
    Integer = 1,
    /// 8-byte big-endian IEEE-754 f64.
    Float = 2,
    /// Raw UTF-8 bytes, no terminator.
    String = 3,
    /// Raw bytes.
    Blob = 4,
    /// Raw bytes (a serialized Java object).
    JavaBlob = 7,
    /// Raw bytes (C#).
    CsharpBlob = 8,
    /// Raw bytes (Python).
    PythonBlob = 9,
    /// Raw bytes (Ruby).
    RubyBlob = 10,
    /// Raw bytes (PHP).
    PhpBlob = 11,
    /// Raw bytes (Erlang).
    ErlangBlob = 12,
    /// One byte, 0 or 1.
    Bool = 17,
    /// Raw HyperLogLog bytes.
    Hll = 18,
    /// A msgpack map.
    Map = 19,
    /// A msgpack array.
    List = 20,
    /// `[u8 flags][u16 BE ncells][ncells × u64][JSON text]`.
    GeoJson = 23,
}

impl ParticleType {
    /// The type for a wire id, or `None` for an id Bolide does not store.
    pub fn from_u8(id: u8) -> Option<ParticleType> {
        use ParticleType as P;
        Some(match id {
            0 => P::Null,
            1 => P::Integer,
            2 => P::Float,
            3 => P::String,
            4 => P::Blob,
            7 => P::JavaBlob,
            8 => P::CsharpBlob,
            9 => P::PythonBlob,
            10 => P::RubyBlob,
            11 => P::PhpBlob,
            12 => P::ErlangBlob,
            17 => P::Bool,
            18 => P::Hll,
            19 => P::Map,
            20 => P::List,
            23 => P::GeoJson,
            _ => return None,
        })
    }

    /// The wire id (spec §3.5).
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// Whether this is one of the blob types (4, 7..=12), the types [`Value::Blob`] may carry.
    pub const fn is_blob(self) -> bool {
        matches!(
            self,
            ParticleType::Blob
                | ParticleType::JavaBlob
                | ParticleType::CsharpBlob
                | ParticleType::PythonBlob
                | ParticleType::RubyBlob
                | ParticleType::PhpBlob
                | ParticleType::ErlangBlob
        )
    }
}

/// Bytes of the GeoJSON particle header before the cell ids: `[u8 flags][u16 BE ncells]`.
pub const GEOJSON_HEADER_BYTES: usize = 3;
/// Bytes of one GeoJSON cell id.
pub const GEOJSON_CELL_BYTES: usize = 8;

/// A bin value. Byte-carrying variants hold the wire encoding of the value.
///
/// Equality is structural except for `Float`, which compares as `f64` (a NaN is not equal to
/// itself; compare `to_bits()` where bit identity matters).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Only in write ops (deletes the bin); never stored.
    Nil,
    /// An integer; 8 bytes big-endian on the wire.
    Int(i64),
    /// A double; 8 bytes big-endian IEEE-754 on the wire, bits preserved (NaN payloads too).
    Float(f64),
    /// UTF-8 bytes as the client sent them (not re-validated).
    Str(Vec<u8>),
    /// A boolean; one byte, 0 or 1, on the wire.
    Bool(bool),
    /// Blob of any blob particle type (4, 7..=12, see [`ParticleType::is_blob`]); holding any
    /// other type is a programmer error that [`Value::particle_type`] panics on.
    Blob(ParticleType, Vec<u8>),
    /// Raw HLL bytes.
    Hll(Vec<u8>),
    /// A msgpack map, bytes as on the wire.
    Map(Vec<u8>),
    /// A msgpack array, bytes as on the wire.
    List(Vec<u8>),
    /// `[u8 flags][u16 BE ncells][ncells × u64][JSON]` as on the wire.
    GeoJson(Vec<u8>),
}

/// A value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParticleError {
    /// A type id Bolide does not store (not in [`ParticleType`], e.g. 16 VECTOR).
    #[error("unknown particle type {0}")]
    UnknownType(u8),
    /// A fixed-size type with the wrong number of bytes, or a NULL with bytes.
    #[error("particle type {ptype}: bad value length {len}")]
    BadLength {
        /// The wire type id.
        ptype: u8,
        /// The value's length, bytes.
        len: usize,
    },
    /// A GeoJSON value shorter than its `[flags][ncells][cells]` header says.
    #[error("geojson value is malformed")]
    BadGeoJson,
}

impl Value {
    /// The particle type this value is sent and stored as (`Nil` is [`ParticleType::Null`]).
    ///
    /// # Panics
    /// If a [`Value::Blob`] carries a non-blob type (a programmer error).
    pub fn particle_type(&self) -> ParticleType {
        match self {
            Value::Nil => ParticleType::Null,
            Value::Int(_) => ParticleType::Integer,
            Value::Float(_) => ParticleType::Float,
            Value::Str(_) => ParticleType::String,
            Value::Bool(_) => ParticleType::Bool,
            Value::Blob(t, _) => {
                assert!(t.is_blob(), "Value::Blob with non-blob particle type {t:?}");
                *t
            }
            Value::Hll(_) => ParticleType::Hll,
            Value::Map(_) => ParticleType::Map,
            Value::List(_) => ParticleType::List,
            Value::GeoJson(_) => ParticleType::GeoJson,
        }
    }

    /// Bytes of the wire encoding: 0 for `Nil`, 8 for `Int` and `Float`, 1 for `Bool`, the byte
    /// count for the others.
    pub fn wire_len(&self) -> usize {
        match self {
            Value::Nil => 0,
            Value::Int(_) | Value::Float(_) => 8,
            Value::Bool(_) => 1,
            Value::Str(b) | Value::Blob(_, b) | Value::Hll(b) | Value::Map(b) | Value::List(b) | Value::GeoJson(b) => {
                b.len()
            }
        }
    }

    /// Appends the wire encoding (spec §3.5): exactly [`Value::wire_len`] bytes.
    ///
    /// Integers are always written as 8 bytes, booleans as 0 or 1.
    pub fn encode_wire(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Value::Nil => {}
            Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
            Value::Float(f) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::Str(b) | Value::Blob(_, b) | Value::Hll(b) | Value::Map(b) | Value::List(b) | Value::GeoJson(b) => {
                out.extend_from_slice(b)
            }
        }
        debug_assert_eq!(out.len() - start, self.wire_len());
    }

    /// Writes the wire encoding into the start of `out` and returns [`Value::wire_len`]; the
    /// allocation-free form of [`Value::encode_wire`] for writing into a device buffer.
    ///
    /// # Panics
    /// If `out` is shorter than [`Value::wire_len`].
    pub fn encode_wire_into(&self, out: &mut [u8]) -> usize {
        let n = self.wire_len();
        assert!(out.len() >= n, "value needs {n} bytes, buffer has {}", out.len());
        let out = &mut out[..n];
        match self {
            Value::Nil => {}
            Value::Int(i) => out.copy_from_slice(&i.to_be_bytes()),
            Value::Float(f) => out.copy_from_slice(&f.to_bits().to_be_bytes()),
            Value::Bool(b) => out[0] = u8::from(*b),
            Value::Str(b) | Value::Blob(_, b) | Value::Hll(b) | Value::Map(b) | Value::List(b) | Value::GeoJson(b) => {
                out.copy_from_slice(b)
            }
        }
        n
    }

    /// Decodes a wire value of particle type `ptype`.
    ///
    /// Type 0 (NULL) with no bytes decodes to [`Value::Nil`]. A boolean byte other than 0 is
    /// `true` (as a C reader would take it; it is written back as 1). An empty integer is
    /// rejected (there is no sign bit to extend). GeoJSON keeps its bytes as they are once the
    /// header length checks out; the JSON text is not parsed. Map and list bytes are not parsed.
    ///
    /// # Errors
    /// Unknown type, wrong length for fixed-size types (integer and float 8 bytes, bool 1 byte;
    /// integers shorter than 8 bytes are sign-extended as the C client allows), malformed GeoJSON
    /// header.
    pub fn decode_wire(ptype: u8, bytes: &[u8]) -> Result<Value, ParticleError> {
        let t = ParticleType::from_u8(ptype).ok_or(ParticleError::UnknownType(ptype))?;
        let bad_len = || ParticleError::BadLength {
            ptype,
            len: bytes.len(),
        };
        Ok(match t {
            ParticleType::Null => {
                if !bytes.is_empty() {
                    return Err(bad_len());
                }
                Value::Nil
            }
            ParticleType::Integer => {
                if bytes.is_empty() || bytes.len() > 8 {
                    return Err(bad_len());
                }
                // Sign-extend from the top bit of the first byte.
                let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0x00 };
                let mut be = [fill; 8];
                be[8 - bytes.len()..].copy_from_slice(bytes);
                Value::Int(i64::from_be_bytes(be))
            }
            ParticleType::Float => {
                let be: [u8; 8] = bytes.try_into().map_err(|_| bad_len())?;
                Value::Float(f64::from_bits(u64::from_be_bytes(be)))
            }
            ParticleType::Bool => match bytes {
                [b] => Value::Bool(*b != 0),
                _ => return Err(bad_len()),
            },
            ParticleType::String => Value::Str(bytes.to_vec()),
            ParticleType::Blob
            | ParticleType::JavaBlob
            | ParticleType::CsharpBlob
            | ParticleType::PythonBlob
            | ParticleType::RubyBlob
            | ParticleType::PhpBlob
            | ParticleType::ErlangBlob => Value::Blob(t, bytes.to_vec()),
            ParticleType::Hll => Value::Hll(bytes.to_vec()),
            ParticleType::Map => Value::Map(bytes.to_vec()),
            ParticleType::List => Value::List(bytes.to_vec()),
            ParticleType::GeoJson => {
                check_geojson(bytes)?;
                Value::GeoJson(bytes.to_vec())
            }
        })
    }
}

/// Checks a GeoJSON particle's `[u8 flags][u16 BE ncells][ncells × 8 bytes]` header fits in
/// `bytes` (spec §3.5). The flags and the JSON text after the cells are not checked.
fn check_geojson(bytes: &[u8]) -> Result<(), ParticleError> {
    let Some(hdr) = bytes.get(..GEOJSON_HEADER_BYTES) else {
        return Err(ParticleError::BadGeoJson);
    };
    let ncells = usize::from(u16::from_be_bytes([hdr[1], hdr[2]]));
    // At most 3 + 65535 × 8 bytes: no overflow on any usize of 32 bits or more.
    if bytes.len() < GEOJSON_HEADER_BYTES + ncells * GEOJSON_CELL_BYTES {
        return Err(ParticleError::BadGeoJson);
    }
    Ok(())
}

/// Longest bin name, bytes (spec §3.4, §10.4).
pub const BIN_NAME_MAX_BYTES: usize = 15;

/// A bin name of 0..=15 bytes, stored inline (bytes past `len` are always zero, so the derived
/// `Eq` and `Hash` compare names).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BinName {
    len: u8,
    bytes: [u8; BIN_NAME_MAX_BYTES],
}

impl BinName {
    /// # Errors
    /// `None` when `name` is longer than 15 bytes. (An empty name is allowed: it never names a
    /// stored bin but appears in read-all ops.)
    pub fn new(name: &[u8]) -> Option<BinName> {
        if name.len() > BIN_NAME_MAX_BYTES {
            return None;
        }
        let mut bytes = [0u8; BIN_NAME_MAX_BYTES];
        bytes[..name.len()].copy_from_slice(name);
        Some(BinName {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name's bytes, 0..=15 of them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for BinName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A named value.
#[derive(Clone, Debug, PartialEq)]
pub struct Bin {
    /// The bin's name.
    pub name: BinName,
    /// The bin's value (never [`Value::Nil`] in a stored record).
    pub value: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_TYPES: [ParticleType; 16] = [
        ParticleType::Null,
        ParticleType::Integer,
        ParticleType::Float,
        ParticleType::String,
        ParticleType::Blob,
        ParticleType::JavaBlob,
        ParticleType::CsharpBlob,
        ParticleType::PythonBlob,
        ParticleType::RubyBlob,
        ParticleType::PhpBlob,
        ParticleType::ErlangBlob,
        ParticleType::Bool,
        ParticleType::Hll,
        ParticleType::Map,
        ParticleType::List,
        ParticleType::GeoJson,
    ];

    fn wire(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode_wire(&mut out);
        assert_eq!(out.len(), v.wire_len());
        let mut into = vec![0xa5; v.wire_len() + 3];
        assert_eq!(v.encode_wire_into(&mut into), v.wire_len());
        assert_eq!(&into[..v.wire_len()], &out[..]);
        assert!(into[v.wire_len()..].iter().all(|&b| b == 0xa5));
        out
    }

    /// Encodes, decodes and checks the value and its bytes come back unchanged.
    fn round_trip(v: Value) {
        let bytes = wire(&v);
        let back = Value::decode_wire(v.particle_type().id(), &bytes).unwrap();
        match (&v, &back) {
            (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits()),
            _ => assert_eq!(back, v),
        }
        assert_eq!(wire(&back), bytes);
    }

    #[test]
    fn from_u8_matches_discriminants() {
        for t in ALL_TYPES {
            assert_eq!(ParticleType::from_u8(t.id()), Some(t));
        }
        let known: Vec<u8> = ALL_TYPES.iter().map(|t| t.id()).collect();
        for id in 0..=u8::MAX {
            assert_eq!(ParticleType::from_u8(id).is_some(), known.contains(&id), "id {id}");
        }
        assert_eq!(ParticleType::from_u8(16), None, "VECTOR is not stored");
    }

    #[test]
    fn blob_types() {
        let blobs: Vec<u8> = ALL_TYPES.iter().filter(|t| t.is_blob()).map(|t| t.id()).collect();
        assert_eq!(blobs, [4, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn integer_edges() {
        for i in [0, 1, -1, 42, i64::MIN, i64::MAX, i64::MIN + 1, 0x7f, 0x80, -0x80, -0x81] {
            round_trip(Value::Int(i));
        }
        assert_eq!(wire(&Value::Int(1)), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(wire(&Value::Int(-2)), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(wire(&Value::Int(i64::MIN)), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn short_integers_sign_extend() {
        let d = |b: &[u8]| Value::decode_wire(1, b);
        assert_eq!(d(&[0x01]), Ok(Value::Int(1)));
        assert_eq!(d(&[0x7f]), Ok(Value::Int(127)));
        assert_eq!(d(&[0x80]), Ok(Value::Int(-128)));
        assert_eq!(d(&[0xff]), Ok(Value::Int(-1)));
        assert_eq!(d(&[0x00, 0xff]), Ok(Value::Int(255)));
        assert_eq!(d(&[0xff, 0x00]), Ok(Value::Int(-256)));
        assert_eq!(d(&[0x80, 0, 0, 0]), Ok(Value::Int(i32::MIN as i64)));
        assert_eq!(
            d(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(Value::Int(0x7f_ffff_ffff_ffff))
        );
        assert_eq!(d(&[]), Err(ParticleError::BadLength { ptype: 1, len: 0 }));
        assert_eq!(d(&[0; 9]), Err(ParticleError::BadLength { ptype: 1, len: 9 }));
    }

    #[test]
    fn floats_keep_their_bits() {
        for f in [
            0.0,
            -0.0,
            1.5,
            -1e300,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            round_trip(Value::Float(f));
        }
        for bits in [0x7ff8_0000_0000_0000u64, 0x7ff0_0000_0000_0001, 0xfff8_dead_beef_0001] {
            let f = f64::from_bits(bits);
            assert!(f.is_nan());
            round_trip(Value::Float(f));
            let back = Value::decode_wire(2, &bits.to_be_bytes()).unwrap();
            let Value::Float(g) = back else { panic!("{back:?}") };
            assert_eq!(g.to_bits(), bits);
        }
        assert_eq!(wire(&Value::Float(1.0)), 1.0f64.to_be_bytes());
        for len in [0, 4, 7, 9] {
            assert_eq!(
                Value::decode_wire(2, &vec![0; len]),
                Err(ParticleError::BadLength { ptype: 2, len })
            );
        }
    }

    #[test]
    fn bools() {
        round_trip(Value::Bool(false));
        round_trip(Value::Bool(true));
        assert_eq!(wire(&Value::Bool(true)), [1]);
        assert_eq!(wire(&Value::Bool(false)), [0]);
        // Documented choice: any nonzero byte is true, written back as 1.
        assert_eq!(Value::decode_wire(17, &[2]), Ok(Value::Bool(true)));
        assert_eq!(Value::decode_wire(17, &[0xff]), Ok(Value::Bool(true)));
        assert_eq!(
            Value::decode_wire(17, &[]),
            Err(ParticleError::BadLength { ptype: 17, len: 0 })
        );
        assert_eq!(
            Value::decode_wire(17, &[0, 1]),
            Err(ParticleError::BadLength { ptype: 17, len: 2 })
        );
    }

    #[test]
    fn byte_types_are_raw() {
        for bytes in [vec![], vec![0u8], b"hello".to_vec(), vec![0xff; 1000]] {
            round_trip(Value::Str(bytes.clone()));
            round_trip(Value::Hll(bytes.clone()));
            round_trip(Value::Map(bytes.clone()));
            round_trip(Value::List(bytes.clone()));
            for t in ALL_TYPES.into_iter().filter(|t| t.is_blob()) {
                round_trip(Value::Blob(t, bytes.clone()));
                assert_eq!(wire(&Value::Blob(t, bytes.clone())), bytes);
            }
            assert_eq!(wire(&Value::Str(bytes.clone())), bytes);
        }
        // The spec's msgpack example: [1, "x"] is kept as sent.
        let list = vec![0x92, 0x01, 0xa2, 0x03, 0x78];
        assert_eq!(Value::decode_wire(20, &list), Ok(Value::List(list.clone())));
        // Not valid UTF-8 or msgpack, and still kept: they are not parsed.
        assert_eq!(Value::decode_wire(3, &[0xff, 0xfe]), Ok(Value::Str(vec![0xff, 0xfe])));
        assert_eq!(Value::decode_wire(19, &[0xc1]), Ok(Value::Map(vec![0xc1])));
    }

    #[test]
    fn nil() {
        round_trip(Value::Nil);
        assert_eq!(Value::Nil.wire_len(), 0);
        assert_eq!(Value::Nil.particle_type(), ParticleType::Null);
        assert_eq!(
            Value::decode_wire(0, &[1]),
            Err(ParticleError::BadLength { ptype: 0, len: 1 })
        );
    }

    #[test]
    fn geojson_header() {
        let json = br#"{"type":"Point","coordinates":[1,2]}"#;
        // What clients send: flags 0, ncells 0.
        let mut v = vec![0, 0, 0];
        v.extend_from_slice(json);
        round_trip(Value::GeoJson(v.clone()));
        // Two cells, as a server could send back.
        let mut v2 = vec![0, 0, 2];
        v2.extend_from_slice(&[0x11; 16]);
        v2.extend_from_slice(json);
        round_trip(Value::GeoJson(v2.clone()));
        // Header with exactly the cells and no JSON text still has a valid header.
        assert!(Value::decode_wire(23, &v2[..3 + 16]).is_ok());
        assert_eq!(Value::decode_wire(23, &v2[..3 + 15]), Err(ParticleError::BadGeoJson));
        assert_eq!(Value::decode_wire(23, &[]), Err(ParticleError::BadGeoJson));
        assert_eq!(Value::decode_wire(23, &[0, 0]), Err(ParticleError::BadGeoJson));
        assert_eq!(
            Value::decode_wire(23, &[0, 0xff, 0xff, 1]),
            Err(ParticleError::BadGeoJson)
        );
        assert_eq!(Value::decode_wire(23, &[0, 0, 0]), Ok(Value::GeoJson(vec![0, 0, 0])));
    }

    #[test]
    fn unknown_types() {
        for id in [5u8, 6, 13, 14, 15, 16, 21, 22, 24, 255] {
            assert_eq!(Value::decode_wire(id, &[1, 2]), Err(ParticleError::UnknownType(id)));
        }
    }

    #[test]
    #[should_panic(expected = "non-blob")]
    fn blob_with_non_blob_type_panics() {
        let _ = Value::Blob(ParticleType::Integer, vec![1]).particle_type();
    }

    #[test]
    fn bin_names() {
        assert_eq!(BinName::new(b"").unwrap().as_bytes(), b"");
        assert_eq!(BinName::new(b"a").unwrap().as_bytes(), b"a");
        let fifteen = [b'x'; 15];
        assert_eq!(BinName::new(&fifteen).unwrap().as_bytes(), fifteen);
        assert_eq!(BinName::new(&[b'x'; 16]), None);
        assert_eq!(BinName::new(b"ab"), BinName::new(b"ab"));
        assert_ne!(BinName::new(b"ab"), BinName::new(b"ab\0"));
        assert_eq!(format!("{:?}", BinName::new(b"bin").unwrap()), "\"bin\"");
    }

    proptest! {
        #[test]
        fn decode_wire_never_panics(ptype in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = Value::decode_wire(ptype, &bytes) {
                prop_assert_eq!(v.particle_type().id(), ptype);
                // Everything but short integers and non-canonical bools re-encodes to the input.
                let short_int = ptype == 1 && bytes.len() < 8;
                let odd_bool = ptype == 17 && bytes[0] > 1;
                if !short_int && !odd_bool {
                    prop_assert_eq!(wire(&v), bytes);
                }
            }
        }

        #[test]
        fn ints_round_trip(i in any::<i64>()) {
            round_trip(Value::Int(i));
        }

        #[test]
        fn floats_round_trip(bits in any::<u64>()) {
            round_trip(Value::Float(f64::from_bits(bits)));
        }
    }
}
