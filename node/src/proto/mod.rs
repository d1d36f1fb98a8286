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

/// What [`decode_request`] found in one well-formed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// An info request (type 1); its text is not looked at here.
    Info,
    /// An admin request (type 2); not looked at here.
    Admin,
    /// A data command (type 3, or type 4 inflated).
    Msg {
        /// Whether it came compressed (type 4).
        compressed: bool,
        /// Fields in the message.
        n_fields: usize,
        /// Ops in the message.
        n_ops: usize,
        /// Rows of its batch field (41/42), if it has one.
        batch_rows: Option<usize>,
        /// Partitions it scans, if it is a scan (info3 PARTITION_DONE or a PID/DIGEST array).
        scan_partitions: Option<usize>,
    },
}

/// Why [`decode_request`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 8-byte header is bad: close the connection.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// The frame is not exactly an 8-byte header and `size` body bytes.
    #[error("frame of {have} bytes, header says {need}")]
    Length {
        /// 8 + the header's size (0 when the header itself is cut).
        need: u64,
        /// Bytes given.
        have: usize,
    },
    /// A malformed message, its fields or ops (see [`msg::MsgError::result_code`]).
    #[error("message: {0}")]
    Msg(#[from] msg::MsgError),
}

/// Runs every request decoder of this module over one framed request, `[8-byte header][body]`:
/// [`ProtoHeader::parse`], [`compress::inflate_request`] for type 4, [`msg::Msg::parse`], every
/// op's [`msg::Op::bin_name`] and [`msg::Op::decode_value`], the batch rows
/// ([`batch::BatchIndex`], at most 100 000) and the scan fields ([`scan::ScanRequest`]).
///
/// The `request_decoder` fuzz target and the stable smoke test drive it; the server does the
/// same steps itself. It never panics; memory stays proportional to the input (inflation is
/// capped at the declared length, at most 128 MiB).
///
/// # Errors
/// The first [`DecodeError`] met.
pub fn decode_request(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let header: &[u8; PROTO_HEADER_BYTES] = frame.first_chunk().ok_or(DecodeError::Length {
        need: 0,
        have: frame.len(),
    })?;
    let header = ProtoHeader::parse(header)?;
    let body = &frame[PROTO_HEADER_BYTES..];
    if header.size != body.len() as u64 {
        return Err(DecodeError::Length {
            need: header.size + PROTO_HEADER_BYTES as u64,
            have: frame.len(),
        });
    }
    match header.ptype {
        PROTO_TYPE_INFO => Ok(Decoded::Info),
        PROTO_TYPE_ADMIN => Ok(Decoded::Admin),
        PROTO_TYPE_MSG => decode_msg(body, false),
        _ => {
            let inflated = compress::inflate_request(body)?;
            decode_msg(&inflated[PROTO_HEADER_BYTES..], true)
        }
    }
}

/// The body part of [`decode_request`].
fn decode_msg(body: &[u8], compressed: bool) -> Result<Decoded, DecodeError> {
    /// Row limit for the batch check; far above any client's batch, well below what fits in 128 MiB.
    const BATCH_ROWS_MAX: u32 = 100_000;
    let m = msg::Msg::parse(body)?;
    for op in &m.ops {
        op.bin_name()?;
        op.decode_value()?;
    }
    let batch_rows = match batch::batch_field(&m) {
        Some(data) => {
            let rows = batch::BatchIndex::parse(data)?.collect_rows(BATCH_ROWS_MAX)?;
            for row in &rows {
                for op in row.ops.iter() {
                    op.bin_name()?;
                    op.decode_value()?;
                }
            }
            Some(rows.len())
        }
        None => None,
    };
    let is_scan = m.header.info3 & msg::info3::PARTITION_DONE != 0
        || m.field(msg::field_type::PID_ARRAY).is_some()
        || m.field(msg::field_type::DIGEST_ARRAY).is_some();
    let scan_partitions = if is_scan {
        Some(scan::ScanRequest::from_msg(&m)?.partitions.len())
    } else {
        None
    };
    Ok(Decoded::Msg {
        compressed,
        n_fields: m.fields.len(),
        n_ops: m.ops.len(),
        batch_rows,
        scan_partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::particle::Value;
    use msg::{field_type, info1, info2, info3, op_type, MsgHeader, Reply};
    use rand::{Rng, SeedableRng};

    /// A type-3 request with the given header, fields and ops `(op type, name, value)`.
    fn request(header: MsgHeader, fields: &[(u8, &[u8])], ops: &[(u8, &[u8], Value)]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        Reply::msg_header(
            &mut out,
            &MsgHeader {
                header_sz: 22,
                n_fields: fields.len() as u16,
                n_ops: ops.len() as u16,
                ..header
            },
        );
        for (t, d) in fields {
            Reply::write_field(&mut out, *t, d);
        }
        for (t, name, v) in ops {
            Reply::write_value_op(&mut out, *t, name, v);
        }
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        out
    }

    /// Wraps a type-3 frame as a type-4 frame.
    fn compressed(frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress::deflate_reply(frame, &mut out);
        out
    }

    fn batch_body(rows_write: bool) -> Vec<u8> {
        let mut b = 3u32.to_be_bytes().to_vec();
        b.push(0x0d);
        for (i, flags) in [(0u32, if rows_write { 0x1e } else { 0x0a }), (1, 0x01), (5, 0x01)] {
            b.extend_from_slice(&i.to_be_bytes());
            b.extend_from_slice(&[0x10 + i as u8; 20]);
            b.push(flags);
            if flags == 0x01 {
                continue;
            }
            if rows_write {
                b.extend_from_slice(&[0, info2::WRITE | info2::RESPOND_ALL_OPS, 0, 0, 0, 1, 0, 0, 0, 60]);
            } else {
                b.extend_from_slice(&[info1::READ | info1::GET_ALL, 0, 0, 0, 0, 0, 0]);
            }
            b.extend_from_slice(&[0, 2, 0, u8::from(rows_write)]);
            Reply::write_field(&mut b, field_type::NAMESPACE, b"test");
            Reply::write_field(&mut b, field_type::SET, b"demo");
            if rows_write {
                Reply::write_value_op(&mut b, op_type::WRITE, b"a", &Value::Int(1));
            }
        }
        b
    }

    /// The seed corpus: one small frame per request shape (also written to
    /// `fuzz/corpus/request_decoder` by `write_fuzz_seeds`).
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let digest = crate::digest::Digest::compute(b"demo", 3, b"k1").0;
        let ns_set_digest: [(u8, &[u8]); 3] = [
            (field_type::NAMESPACE, b"test"),
            (field_type::SET, b"demo"),
            (field_type::DIGEST, &digest),
        ];
        let put = request(
            MsgHeader {
                info2: info2::WRITE,
                transaction_ttl: 1000,
                ..MsgHeader::default()
            },
            &ns_set_digest,
            &[(op_type::WRITE, b"a", Value::Int(1))],
        );
        let get_with_key = request(
            MsgHeader {
                info1: info1::READ | info1::GET_ALL,
                ..MsgHeader::default()
            },
            &[
                ns_set_digest[0],
                ns_set_digest[1],
                ns_set_digest[2],
                (field_type::KEY, b"\x03k1"),
            ],
            &[],
        );
        let operate = request(
            MsgHeader {
                info1: info1::READ,
                info2: info2::WRITE | info2::RESPOND_ALL_OPS,
                record_ttl: 0xffff_fffe,
                ..MsgHeader::default()
            },
            &ns_set_digest,
            &[
                (op_type::INCR, b"n", Value::Int(-3)),
                (op_type::APPEND, b"s", Value::Str(b"xy".to_vec())),
                (op_type::READ, b"n", Value::Nil),
                (op_type::WRITE, b"l", Value::List(vec![0x92, 0x01, 0xa2, 0x03, 0x78])),
                (op_type::TOUCH, b"", Value::Nil),
            ],
        );
        let batch_read = request(
            MsgHeader {
                info1: info1::BATCH,
                ..MsgHeader::default()
            },
            &[(field_type::BATCH_INDEX, &batch_body(false))],
            &[],
        );
        let batch_write = request(
            MsgHeader {
                info1: info1::BATCH,
                ..MsgHeader::default()
            },
            &[(field_type::BATCH_INDEX, &batch_body(true))],
            &[],
        );
        let pids: Vec<u8> = [0u16, 1, 2, 4095].iter().flat_map(|p| p.to_le_bytes()).collect();
        let scan = request(
            MsgHeader {
                info1: info1::READ,
                info3: info3::PARTITION_DONE,
                record_ttl: u32::MAX,
                ..MsgHeader::default()
            },
            &[
                (field_type::NAMESPACE, b"test"),
                (field_type::SET, b"demo"),
                (field_type::SOCKET_TIMEOUT, &30_000u32.to_be_bytes()),
                (field_type::TASK_ID, &7u64.to_be_bytes()),
                (field_type::PID_ARRAY, &pids),
                (field_type::DIGEST_ARRAY, &digest),
                (field_type::MAX_RECORDS, &100u64.to_be_bytes()),
            ],
            &[(op_type::READ, b"a", Value::Nil)],
        );
        let info = [&ProtoHeader::encode(PROTO_TYPE_INFO, 11)[..], b"node\nbuild\n"].concat();
        let admin = [&ProtoHeader::encode(PROTO_TYPE_ADMIN, 16)[..], &[0, 0, 20, 0], &[0; 12]].concat();
        vec![
            ("put", put.clone()),
            ("get_with_key", get_with_key),
            ("operate", operate),
            ("put_compressed", compressed(&put)),
            ("batch_read_repeat", batch_read),
            ("batch_write", batch_write),
            ("scan", scan),
            ("info", info),
            ("admin", admin),
        ]
    }

    #[test]
    fn seeds_decode() {
        let got: Vec<_> = seeds()
            .into_iter()
            .map(|(name, f)| (name, decode_request(&f)))
            .collect();
        let msg = |compressed, n_fields, n_ops, batch_rows, scan_partitions| {
            Ok(Decoded::Msg {
                compressed,
                n_fields,
                n_ops,
                batch_rows,
                scan_partitions,
            })
        };
        assert_eq!(
            got,
            [
                ("put", msg(false, 3, 1, None, None)),
                ("get_with_key", msg(false, 4, 0, None, None)),
                ("operate", msg(false, 3, 5, None, None)),
                ("put_compressed", msg(true, 3, 1, None, None)),
                ("batch_read_repeat", msg(false, 1, 0, Some(3), None)),
                ("batch_write", msg(false, 1, 0, Some(3), None)),
                ("scan", msg(false, 7, 1, None, Some(5))),
                ("info", Ok(Decoded::Info)),
                ("admin", Ok(Decoded::Admin)),
            ]
        );
        let total: usize = seeds().iter().map(|(_, f)| f.len()).sum();
        assert!(total < 2048, "seed corpus is {total} bytes");
    }

    #[test]
    fn decode_request_errors() {
        let put = seeds().swap_remove(0).1;
        assert_eq!(decode_request(&put[..7]), Err(DecodeError::Length { need: 0, have: 7 }));
        assert_eq!(
            decode_request(&put[..put.len() - 1]),
            Err(DecodeError::Length {
                need: put.len() as u64,
                have: put.len() - 1
            })
        );
        let mut bad = put.clone();
        bad[0] = 1;
        assert_eq!(decode_request(&bad), Err(DecodeError::Frame(FrameError::BadVersion(1))));
        let mut bad = put.clone();
        bad[8] = 21;
        assert!(matches!(
            decode_request(&bad),
            Err(DecodeError::Msg(msg::MsgError::BadHeaderSize { .. }))
        ));
    }

    /// Replaces the body of a frame and fixes up its size.
    fn reframe(ptype: u8, body: &[u8]) -> Vec<u8> {
        [&ProtoHeader::encode(ptype, body.len() as u64)[..], body].concat()
    }

    fn mutate(rng: &mut impl Rng, bytes: &mut Vec<u8>) {
        match rng.gen_range(0..5) {
            0 | 1 => {
                for _ in 0..rng.gen_range(1..5) {
                    if !bytes.is_empty() {
                        let i = rng.gen_range(0..bytes.len());
                        bytes[i] = if rng.gen() {
                            rng.gen()
                        } else {
                            bytes[i] ^ (1 << rng.gen_range(0..8))
                        };
                    }
                }
            }
            2 => bytes.truncate(rng.gen_range(0..=bytes.len())),
            3 => {
                let i = rng.gen_range(0..=bytes.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                bytes.splice(i..i, extra);
            }
            _ => {
                // Interesting values in a size or count position.
                if bytes.len() >= 4 {
                    let i = rng.gen_range(0..bytes.len() - 3);
                    let v: u32 = [0, 1, 0xff, 0xffff, 0x7fff_ffff, u32::MAX][rng.gen_range(0..6)];
                    bytes[i..i + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }

    /// Stable-Rust stand-in for the `request_decoder` fuzz target: thousands of mutated seeds
    /// through [`decode_request`], raw and with the frame (and, for type 4, the compression)
    /// fixed up so the mutations reach the inner decoders. Deterministic (fixed seed).
    #[test]
    fn decode_request_smoke_never_panics() {
        const ITERATIONS: usize = 6000;
        let seeds = seeds();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed_b01d);
        let (mut ok, mut msg_err, mut other_err) = (0, 0, 0);
        for i in 0..ITERATIONS {
            let (_, seed) = &seeds[i % seeds.len()];
            let frame = match rng.gen_range(0..4) {
                // Raw mutation of the whole frame: mostly framing errors.
                0 => {
                    let mut f = seed.clone();
                    mutate(&mut rng, &mut f);
                    f
                }
                // Body mutation with the size fixed up.
                1 | 2 => {
                    let mut body = seed[PROTO_HEADER_BYTES..].to_vec();
                    for _ in 0..rng.gen_range(1..3) {
                        mutate(&mut rng, &mut body);
                    }
                    reframe(seed[1], &body)
                }
                // Mutate the uncompressed message, then compress it (type 4 path).
                _ => {
                    let plain = if seed[1] == PROTO_TYPE_MSG_COMPRESSED {
                        &seeds[0].1
                    } else {
                        seed
                    };
                    if plain[1] != PROTO_TYPE_MSG {
                        continue;
                    }
                    let mut body = plain[PROTO_HEADER_BYTES..].to_vec();
                    mutate(&mut rng, &mut body);
                    compressed(&reframe(PROTO_TYPE_MSG, &body))
                }
            };
            match decode_request(&frame) {
                Ok(_) => ok += 1,
                Err(DecodeError::Msg(_)) => msg_err += 1,
                Err(_) => other_err += 1,
            }
        }
        // The mutations must reach past the framing in both directions.
        assert!(ok > ITERATIONS / 20, "ok {ok}, msg errors {msg_err}, other {other_err}");
        assert!(
            msg_err > ITERATIONS / 5,
            "ok {ok}, msg errors {msg_err}, other {other_err}"
        );
    }

    /// Writes the seed corpus for `cargo fuzz` (see `scripts/fuzz.sh`):
    /// `BOLIDE_FUZZ_SEED_DIR=fuzz/corpus/request_decoder cargo test -p bolide-node write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by scripts/fuzz.sh"]
    fn write_fuzz_seeds() {
        let dir = std::env::var("BOLIDE_FUZZ_SEED_DIR").expect("BOLIDE_FUZZ_SEED_DIR");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, frame) in seeds() {
            std::fs::write(std::path::Path::new(&dir).join(name), frame).unwrap();
        }
    }

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
