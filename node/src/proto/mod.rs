//! The client wire protocol (wire spec §1, §3, §5, §7, §8).
//!
//! Every message in either direction is an 8-byte [`ProtoHeader`] and a body of `size` bytes.
//! [`msg`] parses data commands (proto type 3) and builds their replies, [`compress`] unwraps
//! type 4, [`batch`] and [`scan`] parse the multi-record request fields and write the reply
//! streams, [`result_code`] names the reply codes.
//!
//! Error policy: a [`FrameError`] (bad version, type or size in the 8-byte header) means the
//! byte stream can no longer be trusted, so the connection is closed. A
//! [`msg::MsgError`] inside a well-framed body is answered with
//! [`msg::MsgError::result_code`], unless [`msg::MsgError::closes_connection`] says otherwise.
//!
//! Decoding never panics on any input and never allocates from an unchecked length.

pub mod batch;
pub mod compress;
pub mod exp;
pub mod info;
pub mod msg;
pub mod result_code;
pub mod scan;

/// Bytes of the proto header (spec §1).
pub const PROTO_HEADER_BYTES: usize = 8;
/// The only protocol version (spec §1).
pub const PROTO_VERSION: u8 = 2;
/// Proto type 1: text info request or response (spec §2).
pub const PROTO_TYPE_INFO: u8 = 1;
/// Proto type 2: admin / security (spec §10.9).
pub const PROTO_TYPE_ADMIN: u8 = 2;
/// Proto type 3: AS_MSG data command (spec §3).
pub const PROTO_TYPE_MSG: u8 = 3;
/// Proto type 4: zlib-wrapped AS_MSG (spec §8).
pub const PROTO_TYPE_MSG_COMPRESSED: u8 = 4;
/// Largest body a proto may declare, bytes: 128 MiB, as the C client and the server (spec §1).
pub const PROTO_SIZE_MAX: u64 = 128 * 1024 * 1024;

/// Largest value the 48-bit size field can hold.
const PROTO_SIZE_FIELD_MAX: u64 = (1 << 48) - 1;
const _: () = assert!(PROTO_SIZE_MAX <= PROTO_SIZE_FIELD_MAX);

/// The 8-byte proto header (spec §1): a big-endian u64 `version << 56 | type << 48 | size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoHeader {
    /// Protocol version; always [`PROTO_VERSION`] once parsed.
    pub version: u8,
    /// Proto type, one of the `PROTO_TYPE_*` constants.
    pub ptype: u8,
    /// Body bytes that follow the header (the header is not counted).
    pub size: u64,
}

/// A proto header that cannot be served: the connection must be closed (spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not 2.
    #[error("proto version {0}, expected 2")]
    BadVersion(u8),
    /// A type other than info, admin, msg or compressed msg (type 5 XDR is server-to-server).
    #[error("proto type {0} not served")]
    BadType(u8),
    /// A body over [`PROTO_SIZE_MAX`].
    #[error("proto size {0} over the 128 MiB limit")]
    TooBig(u64),
}

impl ProtoHeader {
    /// Parses and checks a request's proto header (spec §1): version 2, type 1..=4, size at most
    /// [`PROTO_SIZE_MAX`]. A size of 0 is allowed here (an empty info request is valid).
    ///
    /// # Errors
    /// [`FrameError`]: the caller closes the connection.
    pub fn parse(bytes: &[u8; PROTO_HEADER_BYTES]) -> Result<ProtoHeader, FrameError> {
        let word = u64::from_be_bytes(*bytes);
        let header = ProtoHeader {
            version: bytes[0],
            ptype: bytes[1],
            size: word & PROTO_SIZE_FIELD_MAX,
        };
        if header.version != PROTO_VERSION {
            return Err(FrameError::BadVersion(header.version));
        }
        if !matches!(
            header.ptype,
            PROTO_TYPE_INFO | PROTO_TYPE_ADMIN | PROTO_TYPE_MSG | PROTO_TYPE_MSG_COMPRESSED
        ) {
            return Err(FrameError::BadType(header.ptype));
        }
        if header.size > PROTO_SIZE_MAX {
            return Err(FrameError::TooBig(header.size));
        }
        Ok(header)
    }

    /// Encodes a version-2 header for a body of `size` bytes (spec §1).
    ///
    /// # Panics
    /// If `size` does not fit the 48-bit size field (a programmer error: no reply gets near it).
    pub fn encode(ptype: u8, size: u64) -> [u8; PROTO_HEADER_BYTES] {
        assert!(size <= PROTO_SIZE_FIELD_MAX, "proto size {size} does not fit 48 bits");
        (u64::from(PROTO_VERSION) << 56 | u64::from(ptype) << 48 | size).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_spec_example() {
        // Spec §3.6: `02 03 00 00 00 00 00 52`.
        let bytes = ProtoHeader::encode(PROTO_TYPE_MSG, 0x52);
        assert_eq!(bytes, [2, 3, 0, 0, 0, 0, 0, 0x52]);
        let h = ProtoHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            ProtoHeader {
                version: 2,
                ptype: 3,
                size: 0x52
            }
        );
        for ptype in 1..=4 {
            let h = ProtoHeader::parse(&ProtoHeader::encode(ptype, PROTO_SIZE_MAX)).unwrap();
            assert_eq!((h.ptype, h.size), (ptype, PROTO_SIZE_MAX));
        }
        assert_eq!(ProtoHeader::parse(&ProtoHeader::encode(1, 0)).unwrap().size, 0);
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            ProtoHeader::parse(&[3, 3, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::BadVersion(3))
        );
        assert_eq!(
            ProtoHeader::parse(&[2, 5, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::BadType(5))
        );
        assert_eq!(
            ProtoHeader::parse(&[2, 0, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::BadType(0))
        );
        assert_eq!(
            ProtoHeader::parse(&ProtoHeader::encode(3, PROTO_SIZE_MAX + 1)),
            Err(FrameError::TooBig(PROTO_SIZE_MAX + 1))
        );
        assert_eq!(
            ProtoHeader::parse(&[2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooBig(PROTO_SIZE_FIELD_MAX))
        );
    }

    #[test]
    #[should_panic(expected = "does not fit 48 bits")]
    fn encode_rejects_size_over_48_bits() {
        ProtoHeader::encode(3, 1 << 48);
    }
}
