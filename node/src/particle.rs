//! Bin values and their particle types (wire spec §3.5).
//!
//! A value is kept in memory and on disk in its wire encoding (big-endian integers and floats,
//! raw strings and blobs, msgpack lists and maps, GeoJSON with its cell header, HLL bytes), so a
//! read is served without conversion.

/// Particle type ids (spec §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParticleType {
    Null = 0,
    Integer = 1,
    Float = 2,
    String = 3,
    Blob = 4,
    JavaBlob = 7,
    CsharpBlob = 8,
    PythonBlob = 9,
    RubyBlob = 10,
    PhpBlob = 11,
    ErlangBlob = 12,
    Bool = 17,
    Hll = 18,
    Map = 19,
    List = 20,
    GeoJson = 23,
}

impl ParticleType {
    /// The type for a wire id, or `None` for an id Bolide does not store.
    pub fn from_u8(id: u8) -> Option<ParticleType> {
        unimplemented!("{id}")
    }
}

/// A bin value. Byte-carrying variants hold the wire encoding of the value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Only in write ops (deletes the bin); never stored.
    Nil,
    Int(i64),
    Float(f64),
    /// UTF-8 bytes as the client sent them (not re-validated).
    Str(Vec<u8>),
    Bool(bool),
    /// Blob of any blob particle type (4, 7..=12).
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
    #[error("unknown particle type {0}")]
    UnknownType(u8),
    #[error("particle type {ptype}: bad value length {len}")]
    BadLength { ptype: u8, len: usize },
    #[error("geojson value is malformed")]
    BadGeoJson,
}

impl Value {
    pub fn particle_type(&self) -> ParticleType {
        unimplemented!()
    }

    /// Bytes of the wire encoding.
    pub fn wire_len(&self) -> usize {
        unimplemented!()
    }

    /// Appends the wire encoding (spec §3.5).
    pub fn encode_wire(&self, out: &mut Vec<u8>) {
        unimplemented!("{out:?}")
    }

    /// Decodes a wire value of particle type `ptype`.
    ///
    /// # Errors
    /// Unknown type, wrong length for fixed-size types (integer and float 8 bytes, bool 1 byte;
    /// integers shorter than 8 bytes are sign-extended as the C client allows), malformed GeoJSON
    /// header.
    pub fn decode_wire(ptype: u8, bytes: &[u8]) -> Result<Value, ParticleError> {
        unimplemented!("{ptype}{bytes:?}")
    }
}

/// Longest bin name, bytes (spec §3.4, §10.4).
pub const BIN_NAME_MAX_BYTES: usize = 15;

/// A bin name of 1..=15 bytes, stored inline.
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
        unimplemented!("{name:?}")
    }

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
    pub name: BinName,
    pub value: Value,
}
