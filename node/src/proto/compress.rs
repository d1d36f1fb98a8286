//! Compressed AS_MSG, proto type 4 (wire spec §8).
//!
//! ```text
//! [8-byte proto: v2, type 4, size = 8 + compressed_len]
//! [u64 BE: uncompressed length = the whole inner message INCLUDING its own 8-byte proto header]
//! [zlib stream (RFC 1950)]
//! ```
//!
//! The inner message is an ordinary `[proto v2/type 3][as_msg]`. The real CE server answers
//! type 4 with 25 ENTERPRISE_ONLY; Bolide inflates it instead (the spec's recommendation).
//! Replies may always stay uncompressed; [`deflate_reply`] exists for clients that set
//! `info1::COMPRESS_RESPONSE` and for tests.

use std::io::{Read, Write};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::msg::{MsgError, Reply, MSG_HEADER_BYTES};
use super::{
    ProtoHeader, PROTO_HEADER_BYTES, PROTO_SIZE_MAX, PROTO_TYPE_MSG, PROTO_TYPE_MSG_COMPRESSED, PROTO_VERSION,
};

/// Bytes of the uncompressed-length word that starts a type-4 body.
pub const UNCOMPRESSED_LENGTH_BYTES: usize = 8;

/// Largest inflated message accepted: a proto header and a body of [`PROTO_SIZE_MAX`].
pub const INFLATED_MAX: u64 = PROTO_SIZE_MAX + PROTO_HEADER_BYTES as u64;

/// First allocation for the inflated message; it grows with what actually inflates, so a small
/// stream that claims a large length costs no large allocation.
const INFLATE_INITIAL_CAPACITY: u64 = 64 * 1024;

/// Inflates the body of a type-4 proto (the bytes after its 8-byte header) into the complete
/// inner message, `[8-byte proto v2/type 3][as_msg body]` (spec §8).
///
/// The inner proto header has been checked (version 2, type 3, `8 + size` = inflated length),
/// so `&inflated[PROTO_HEADER_BYTES..]` is the body to give to [`super::msg::Msg::parse`].
///
/// Zip-bomb safe: the declared length is checked against [`INFLATED_MAX`] first, inflation
/// stops one byte past the declared length, and memory grows only with bytes actually inflated.
///
/// # Errors
/// [`MsgError::CompressedTooShort`], [`MsgError::BadUncompressedLength`], [`MsgError::Inflate`],
/// [`MsgError::InflatedLengthMismatch`], [`MsgError::BadInnerHeader`]; all answered with result 4
/// (the outer frame was fine, so the connection stays usable).
pub fn inflate_request(body: &[u8]) -> Result<Vec<u8>, MsgError> {
    let (len_word, stream) = body
        .split_first_chunk::<UNCOMPRESSED_LENGTH_BYTES>()
        .ok_or(MsgError::CompressedTooShort { len: body.len() })?;
    let declared = u64::from_be_bytes(*len_word);
    if declared < (PROTO_HEADER_BYTES + MSG_HEADER_BYTES) as u64 || declared > INFLATED_MAX {
        return Err(MsgError::BadUncompressedLength { declared });
    }
    let mut inflated = Vec::with_capacity(declared.min(INFLATE_INITIAL_CAPACITY) as usize);
    // One byte more than declared is enough to tell "too long" without inflating the rest.
    ZlibDecoder::new(stream)
        .take(declared + 1)
        .read_to_end(&mut inflated)
        .map_err(|_| MsgError::Inflate)?;
    let actual = inflated.len() as u64;
    if actual != declared {
        return Err(MsgError::InflatedLengthMismatch { declared, actual });
    }
    let inner: &[u8; PROTO_HEADER_BYTES] = inflated[..PROTO_HEADER_BYTES].try_into().expect("checked length");
    match ProtoHeader::parse(inner) {
        Ok(h) if h.version == PROTO_VERSION && h.ptype == PROTO_TYPE_MSG && h.size + 8 == declared => Ok(inflated),
        _ => Err(MsgError::BadInnerHeader),
    }
}

/// Appends `msg_with_header` (a complete `[proto v2/type 3][as_msg...]` reply) to `out` as a
/// type-4 proto: `[proto v2/type 4][u64 BE len(msg_with_header)][zlib stream]` (spec §8).
///
/// # Panics
/// If `msg_with_header` does not start with a version-2 type-3 proto header whose size matches
/// its length (a programmer error).
pub fn deflate_reply(msg_with_header: &[u8], out: &mut Vec<u8>) {
    let inner = msg_with_header
        .first_chunk::<PROTO_HEADER_BYTES>()
        .expect("reply has a proto header");
    let h = ProtoHeader::parse(inner).expect("reply has a valid proto header");
    assert!(
        h.ptype == PROTO_TYPE_MSG && h.size + PROTO_HEADER_BYTES as u64 == msg_with_header.len() as u64,
        "deflate_reply takes one whole type-3 proto"
    );
    let start = Reply::begin(out);
    out.extend_from_slice(&(msg_with_header.len() as u64).to_be_bytes());
    let mut encoder = ZlibEncoder::new(&mut *out, Compression::fast());
    encoder
        .write_all(msg_with_header)
        .expect("writing to a Vec does not fail");
    encoder.finish().expect("writing to a Vec does not fail");
    Reply::finish(out, start, PROTO_TYPE_MSG_COMPRESSED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::particle::Value;
    use crate::proto::msg::{field_type, info1, op_type, Msg, MsgHeader};
    use crate::proto::result_code;

    /// A type-3 request of `n_bins` string bins, as a client would build it before compressing.
    fn request(n_bins: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        let header = MsgHeader {
            header_sz: 22,
            info1: info1::COMPRESS_RESPONSE,
            info2: 1,
            n_fields: 3,
            n_ops: n_bins as u16,
            ..MsgHeader::default()
        };
        Reply::msg_header(&mut out, &header);
        Reply::write_field(&mut out, field_type::NAMESPACE, b"test");
        Reply::write_field(&mut out, field_type::SET, b"demo");
        Reply::write_field(&mut out, field_type::DIGEST, &[0x5a; 20]);
        for i in 0..n_bins {
            let name = format!("b{i}");
            Reply::write_value_op(&mut out, op_type::WRITE, name.as_bytes(), &Value::Str(vec![b'x'; 100]));
        }
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        out
    }

    /// A type-4 body: `[u64 BE declared][zlib(payload)]`.
    fn compressed_body(declared: u64, payload: &[u8]) -> Vec<u8> {
        let mut body = declared.to_be_bytes().to_vec();
        let mut enc = ZlibEncoder::new(&mut body, Compression::default());
        enc.write_all(payload).unwrap();
        enc.finish().unwrap();
        body
    }

    #[test]
    fn request_round_trip() {
        let plain = request(5);
        let body = compressed_body(plain.len() as u64, &plain);
        assert!(body.len() < plain.len());
        let inflated = inflate_request(&body).unwrap();
        assert_eq!(inflated, plain);
        let msg = Msg::parse(&inflated[PROTO_HEADER_BYTES..]).unwrap();
        assert_eq!((msg.namespace(), msg.ops.len()), (Some(&b"test"[..]), 5));
    }

    #[test]
    fn reply_round_trip() {
        let mut plain = Vec::new();
        let start = Reply::begin(&mut plain);
        Reply::write_header(&mut plain, result_code::OK, 0, 3, 0, 0, 0, 20);
        for i in 0..20 {
            Reply::write_value_op(&mut plain, op_type::READ, format!("bin{i}").as_bytes(), &Value::Int(i));
        }
        Reply::finish(&mut plain, start, PROTO_TYPE_MSG);

        let mut out = vec![0xee];
        deflate_reply(&plain, &mut out);
        let outer = ProtoHeader::parse(out[1..9].try_into().unwrap()).unwrap();
        assert_eq!(outer.ptype, PROTO_TYPE_MSG_COMPRESSED);
        assert_eq!(outer.size as usize, out.len() - 9);
        assert_eq!(inflate_request(&out[9..]).unwrap(), plain);
    }

    #[test]
    fn error_paths() {
        let plain = request(1);
        let n = plain.len() as u64;
        assert_eq!(inflate_request(&[0; 7]), Err(MsgError::CompressedTooShort { len: 7 }));
        assert_eq!(
            inflate_request(&compressed_body(29, &plain)),
            Err(MsgError::BadUncompressedLength { declared: 29 })
        );
        assert_eq!(
            inflate_request(&compressed_body(INFLATED_MAX + 1, &plain)),
            Err(MsgError::BadUncompressedLength {
                declared: INFLATED_MAX + 1
            })
        );
        // Declared shorter than the stream: inflation stops one byte past it.
        assert_eq!(
            inflate_request(&compressed_body(n - 10, &plain)),
            Err(MsgError::InflatedLengthMismatch {
                declared: n - 10,
                actual: n - 9
            })
        );
        assert_eq!(
            inflate_request(&compressed_body(n + 1, &plain)),
            Err(MsgError::InflatedLengthMismatch {
                declared: n + 1,
                actual: n
            })
        );
        // Corrupt zlib: bad header, and a stream cut short.
        let mut body = compressed_body(n, &plain);
        body[8] ^= 0xff;
        assert_eq!(inflate_request(&body), Err(MsgError::Inflate));
        let body = compressed_body(n, &plain);
        assert!(inflate_request(&body[..body.len() / 2]).is_err());
        // Inner header: wrong type, wrong version, size not matching.
        for (at, byte) in [(1, PROTO_TYPE_MSG_COMPRESSED), (0, 3), (7, plain[7] + 1)] {
            let mut bad = plain.clone();
            bad[at] = byte;
            assert_eq!(
                inflate_request(&compressed_body(n, &bad)),
                Err(MsgError::BadInnerHeader)
            );
        }
        assert!(inflate_request(&compressed_body(n, &plain)).is_ok());
        assert_eq!(MsgError::Inflate.result_code(), result_code::PARAMETER);
        assert!(!MsgError::Inflate.closes_connection());
    }

    #[test]
    fn zip_bomb_stops_at_declared_length() {
        // 16 MiB of zeros deflate to about 16 KiB; a declared length of 4 KiB must stop there.
        let bomb = vec![0u8; 16 << 20];
        let body = compressed_body(4096, &bomb);
        assert!(body.len() < 64 * 1024);
        assert_eq!(
            inflate_request(&body),
            Err(MsgError::InflatedLengthMismatch {
                declared: 4096,
                actual: 4097
            })
        );
    }

    #[test]
    #[should_panic(expected = "one whole type-3 proto")]
    fn deflate_reply_rejects_a_partial_proto() {
        let plain = request(1);
        deflate_reply(&plain[..plain.len() - 1], &mut Vec::new());
    }
}
