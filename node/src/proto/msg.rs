//! AS_MSG, proto type 3 (wire spec §3): the 22-byte header, fields and ops, zero-copy parsing of
//! requests and a [`Reply`] writer for responses.
//!
//! Body layout: `[22-byte header][n_fields × field][n_ops × op]`, every integer big-endian.
//!
//! * field: `[u32 size][u8 type][size − 1 data bytes]` (`size` counts the type byte, §3.3);
//! * op: `[u32 size][u8 op type][u8 particle type][u8 flags][u8 name_len][name][value]`
//!   (`size = 4 + name_len + value_len`, §3.4). Flag bit 0 ("has LUT") puts 8 bytes of metadata
//!   between the name and the value.
//!
//! [`Msg::parse`] checks the structure only (sizes, counts, the DIGEST and KEY field shapes);
//! what the fields and ops mean is the server's business. Parsing never panics and allocates at
//! most one `Field`/`Op` entry per 5/8 bytes of input.

use super::{result_code, ProtoHeader, PROTO_HEADER_BYTES};
use crate::digest::Digest;
use crate::particle::{BinName, ParticleError, Value};

/// Bytes of the as_msg header; also the only `header_sz` a reply may carry (spec §3.1, §10.10).
pub const MSG_HEADER_BYTES: usize = 22;
/// Most ops one request may carry (`MAX_N_OPS`, spec §10.4); more is result 4.
pub const MAX_N_OPS: usize = 32_768;
/// Bytes before a field's data: `[u32 size][u8 type]` (spec §3.3).
pub const FIELD_HEADER_BYTES: usize = 5;
/// Bytes before an op's name: `[u32 size][op type][particle type][flags][name_len]` (spec §3.4).
pub const OP_HEADER_BYTES: usize = 8;
/// Bytes of the "last update time" an op carries after its name when flag bit 0 is set (§3.4).
pub const OP_LUT_BYTES: usize = 8;
/// Bytes of a digest (DIGEST field, batch rows, DIGEST_ARRAY entries; spec §3.3, §4).
pub const DIGEST_BYTES: usize = 20;

/// `info1` bits: reads (spec §3.2).
pub mod info1 {
    /// The command reads.
    pub const READ: u8 = 0x01;
    /// Return every bin (no ops, or a READ op with an empty name).
    pub const GET_ALL: u8 = 0x02;
    /// Short query hint.
    pub const SHORT_QUERY: u8 = 0x04;
    /// Batch-index request: the body has field 41 (spec §7.1).
    pub const BATCH: u8 = 0x08;
    /// Sent by XDR.
    pub const XDR: u8 = 0x10;
    /// Metadata only (exists / header read): the reply has `n_ops = 0`. In scan records: no bin data.
    pub const GET_NO_BIN_DATA: u8 = 0x20;
    /// Duplicate-resolve reads (AP read mode ALL).
    pub const READ_MODE_AP_ALL: u8 = 0x40;
    /// The client asks for a compressed reply (may be ignored, spec §8).
    pub const COMPRESS_RESPONSE: u8 = 0x80;
}

/// `info2` bits: writes (spec §3.2, §6).
pub mod info2 {
    /// The command writes.
    pub const WRITE: u8 = 0x01;
    /// Delete the record.
    pub const DELETE: u8 = 0x02;
    /// Apply only if record generation == header generation (else result 3).
    pub const GENERATION: u8 = 0x04;
    /// Apply only if header generation > record generation (else result 3).
    pub const GENERATION_GT: u8 = 0x08;
    /// Leave a tombstone (Enterprise; may be treated as a plain delete).
    pub const DURABLE_DELETE: u8 = 0x10;
    /// Fail with 5 if the record exists.
    pub const CREATE_ONLY: u8 = 0x20;
    /// A long AP query may relax partition reservation.
    pub const RELAX_AP_LONG_QUERY: u8 = 0x40;
    /// Reply with one op per request op, in order (TOUCH excepted, §6.4).
    pub const RESPOND_ALL_OPS: u8 = 0x80;
}

/// `info3` bits: misc (spec §3.2).
pub mod info3 {
    /// Reply: last message of a multi-message stream (batch §7.2, scan §7.3).
    pub const LAST: u8 = 0x01;
    /// Commit level master (no effect on one node).
    pub const COMMIT_MASTER: u8 = 0x02;
    /// Request: the client understands partition-done messages. Reply: this message marks a
    /// partition done/failed and `generation` holds its id.
    pub const PARTITION_DONE: u8 = 0x04;
    /// The record must exist (else 2); bins are merged.
    pub const UPDATE_ONLY: u8 = 0x08;
    /// Create, or replace all bins.
    pub const CREATE_OR_REPLACE: u8 = 0x10;
    /// The record must exist (else 2); replace all bins.
    pub const REPLACE_ONLY: u8 = 0x20;
    /// SC read mode bit "type" (AP namespaces ignore it).
    pub const SC_READ_TYPE: u8 = 0x40;
    /// SC read mode bit "relax" (AP namespaces ignore it).
    pub const SC_READ_RELAX: u8 = 0x80;
}

/// `info4` bits: transactions and error-detail verbosity (spec §3.2).
pub mod info4 {
    /// Transaction (MRT) verify read.
    pub const TXN_VERIFY_READ: u8 = 0x01;
    /// Transaction roll forward.
    pub const TXN_ROLL_FORWARD: u8 = 0x02;
    /// Transaction roll back.
    pub const TXN_ROLL_BACK: u8 = 0x04;
    /// Server internal: MRT monitor driven.
    pub const TXN_MONITOR_OP: u8 = 0x08;
    /// Transaction on-locking-only.
    pub const TXN_ON_LOCKING_ONLY: u8 = 0x10;
    /// Error-detail verbosity (bits 5–6); safe to ignore (spec §10.8).
    pub const ERROR_DETAIL_MASK: u8 = 0x60;
}

/// Field types (spec §3.3).
pub mod field_type {
    /// Namespace name bytes, no NUL.
    pub const NAMESPACE: u8 = 0;
    /// Set name bytes; sent (possibly empty) with every single-key command.
    pub const SET: u8 = 1;
    /// `[particle type u8][key bytes]`, only with send-key.
    pub const KEY: u8 = 2;
    /// 7 bytes, little-endian u56 (transactions).
    pub const RECORD_VERSION: u8 = 3;
    /// 20-byte RIPEMD-160 digest (§4).
    pub const DIGEST: u8 = 4;
    /// Transaction (MRT) id: u64 little-endian.
    pub const TXN_ID: u8 = 5;
    /// Transaction (MRT) deadline: u32 little-endian.
    pub const TXN_DEADLINE: u8 = 6;
    /// Scan/query task id: u64 big-endian.
    pub const TASK_ID: u8 = 7;
    /// Scan/query socket timeout: u32 big-endian, ms.
    pub const SOCKET_TIMEOUT: u8 = 9;
    /// Scan/query records per second: u32 big-endian.
    pub const RECORDS_PER_SECOND: u8 = 10;
    /// Partitions to scan in full: n × u16 **little-endian** (§10.1).
    pub const PID_ARRAY: u8 = 11;
    /// Partitions to resume after a digest: n × 20 bytes.
    pub const DIGEST_ARRAY: u8 = 12;
    /// Per-node record cap for this round: u64 big-endian (server name SAMPLE_MAX).
    pub const MAX_RECORDS: u8 = 13;
    /// XDR only.
    pub const LUT: u8 = 14;
    /// Secondary-index resume values: n × i64 **little-endian**.
    pub const BVAL_ARRAY: u8 = 15;
    /// Secondary-index name.
    pub const INDEX_NAME: u8 = 21;
    /// Secondary-index filter range (§7.4).
    pub const INDEX_RANGE: u8 = 22;
    /// Packed CDT context.
    pub const INDEX_CONTEXT: u8 = 23;
    /// Packed index expression.
    pub const INDEX_EXPRESSION: u8 = 24;
    /// 1 byte: 0 default, 1 list, 2 mapkeys, 3 mapvalues.
    pub const INDEX_TYPE: u8 = 26;
    /// UDF package name.
    pub const UDF_PACKAGE_NAME: u8 = 30;
    /// UDF function name.
    pub const UDF_FUNCTION: u8 = 31;
    /// UDF arguments: msgpack list.
    pub const UDF_ARGLIST: u8 = 32;
    /// 1 byte: 0 record UDF, 1 aggregate, 2 background.
    pub const UDF_OP: u8 = 33;
    /// Old query bin list (deprecated).
    pub const QUERY_BINLIST: u8 = 40;
    /// Batch-index body (§7.1).
    pub const BATCH_INDEX: u8 = 41;
    /// Older batch variant (§7.1); parsed like [`BATCH_INDEX`].
    pub const BATCH_INDEX_WITH_SET: u8 = 42;
    /// Packed filter expression; false gives result 27.
    pub const FILTER_EXP: u8 = 43;
    /// Rust client only, server ≥ 8.2.
    pub const WHERE: u8 = 44;
    /// Reply: msgpack map {1: subcode, 2: message}.
    pub const ERROR_DETAILS: u8 = 45;
}

/// Op types (spec §3.4).
pub mod op_type {
    /// Read a bin (empty name: all bins); also the op type of reply bins.
    pub const READ: u8 = 1;
    /// Write a bin; particle type 0 deletes it.
    pub const WRITE: u8 = 2;
    /// CDT (list/map) read.
    pub const CDT_READ: u8 = 3;
    /// CDT (list/map) modify.
    pub const CDT_MODIFY: u8 = 4;
    /// Add an integer or float.
    pub const INCR: u8 = 5;
    /// Expression read.
    pub const EXP_READ: u8 = 7;
    /// Expression modify.
    pub const EXP_MODIFY: u8 = 8;
    /// Append a string or blob.
    pub const APPEND: u8 = 9;
    /// Prepend a string or blob.
    pub const PREPEND: u8 = 10;
    /// Touch: bump the generation, set the TTL from the header; the record must exist.
    pub const TOUCH: u8 = 11;
    /// Blob-bits read.
    pub const BIT_READ: u8 = 12;
    /// Blob-bits modify.
    pub const BIT_MODIFY: u8 = 13;
    /// Delete all bins.
    pub const DELETE: u8 = 14;
    /// HyperLogLog read.
    pub const HLL_READ: u8 = 15;
    /// HyperLogLog modify.
    pub const HLL_MODIFY: u8 = 16;
    /// String read (server ≥ 8.2).
    pub const STRING_READ: u8 = 17;
    /// String modify (server ≥ 8.2).
    pub const STRING_MODIFY: u8 = 18;
    /// To-string (server ≥ 8.2).
    pub const TO_STRING: u8 = 19;
}

/// Op flag bits (spec §3.4).
pub mod op_flags {
    /// Server internal "has LUT": 8 bytes of metadata follow the name. Clients send 0.
    pub const HAS_LUT: u8 = 0x01;
}

/// The 22-byte as_msg header (spec §3.1). Integers are big-endian on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsgHeader {
    /// Header bytes; 22 from every client and in every reply (the parser honours larger values).
    pub header_sz: u8,
    /// Read flags ([`info1`]).
    pub info1: u8,
    /// Write flags ([`info2`]).
    pub info2: u8,
    /// Misc flags ([`info3`]).
    pub info3: u8,
    /// Transaction flags ([`info4`]).
    pub info4: u8,
    /// Request: 0. Reply: a [`result_code`].
    pub result_code: u8,
    /// Request: expected generation. Reply: record generation; partition id in partition-done.
    pub generation: u32,
    /// Request: TTL seconds (§6.3) or read-touch percent. Reply: void time (0 = never expires).
    pub record_ttl: u32,
    /// Request: server-side timeout, ms (0 = none). Reply: 0, or the row index in batch replies.
    pub transaction_ttl: u32,
    /// Number of fields that follow.
    pub n_fields: u16,
    /// Number of ops that follow the fields.
    pub n_ops: u16,
}

impl MsgHeader {
    /// Reads the header from its 22 wire bytes. Total: every byte pattern is a header; the
    /// checks on `header_sz` and `n_ops` are in [`Msg::parse`].
    pub fn parse(b: &[u8; MSG_HEADER_BYTES]) -> MsgHeader {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        MsgHeader {
            header_sz: b[0],
            info1: b[1],
            info2: b[2],
            info3: b[3],
            info4: b[4],
            result_code: b[5],
            generation: u32_at(6),
            record_ttl: u32_at(10),
            transaction_ttl: u32_at(14),
            n_fields: u16::from_be_bytes([b[18], b[19]]),
            n_ops: u16::from_be_bytes([b[20], b[21]]),
        }
    }

    /// The 22 wire bytes.
    pub fn encode(&self) -> [u8; MSG_HEADER_BYTES] {
        let mut b = [0u8; MSG_HEADER_BYTES];
        b[..6].copy_from_slice(&[
            self.header_sz,
            self.info1,
            self.info2,
            self.info3,
            self.info4,
            self.result_code,
        ]);
        b[6..10].copy_from_slice(&self.generation.to_be_bytes());
        b[10..14].copy_from_slice(&self.record_ttl.to_be_bytes());
        b[14..18].copy_from_slice(&self.transaction_ttl.to_be_bytes());
        b[18..20].copy_from_slice(&self.n_fields.to_be_bytes());
        b[20..22].copy_from_slice(&self.n_ops.to_be_bytes());
        b
    }

    /// A reply header (spec §3.1): `header_sz` 22, the given result, generation and void time
    /// (0 = never expires), everything else 0. Adjust with struct update syntax:
    /// `MsgHeader { n_ops: 2, ..MsgHeader::reply(OK, gen, void_time) }`.
    pub fn reply(result_code: u8, generation: u32, void_time: u32) -> MsgHeader {
        MsgHeader {
            header_sz: MSG_HEADER_BYTES as u8,
            result_code,
            generation,
            record_ttl: void_time,
            ..MsgHeader::default()
        }
    }
}

/// One field of a request, borrowed from the body (spec §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// Field type ([`field_type`]).
    pub ftype: u8,
    /// The data after the type byte.
    pub data: &'a [u8],
}

/// One op of a request, borrowed from the body (spec §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op<'a> {
    /// Op type ([`op_type`]).
    pub op_type: u8,
    /// Particle type of `value` (spec §3.5).
    pub particle_type: u8,
    /// Op flags ([`op_flags`]); clients send 0.
    pub flags: u8,
    /// Bin name bytes (not yet checked against the 15-byte limit: see [`Op::bin_name`]).
    pub name: &'a [u8],
    /// The value bytes (after the 8 LUT bytes when [`op_flags::HAS_LUT`] is set).
    pub value: &'a [u8],
}

impl Op<'_> {
    /// The bin name, checked (spec §3.4, §10.4).
    ///
    /// # Errors
    /// [`MsgError::BinNameTooLong`] (result 21) for a name over 15 bytes.
    pub fn bin_name(&self) -> Result<BinName, MsgError> {
        BinName::new(self.name).ok_or(MsgError::BinNameTooLong { len: self.name.len() })
    }

    /// The value decoded with [`Value::decode_wire`] (spec §3.5).
    ///
    /// # Errors
    /// [`MsgError::BadValue`] (result 4) for an unknown particle type or a bad length.
    pub fn decode_value(&self) -> Result<Value, MsgError> {
        Value::decode_wire(self.particle_type, self.value).map_err(MsgError::BadValue)
    }
}

/// A malformed request (or request field), mapped to a reply code by [`MsgError::result_code`].
///
/// Only [`MsgError::HeaderTruncated`] closes the connection ([`MsgError::closes_connection`]);
/// every other error is answered with its result code on the same connection, as the body was
/// fully read and the stream is still in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// The body is shorter than the 22-byte header: nothing is known about the request.
    #[error("as_msg body of {len} bytes is shorter than its 22-byte header")]
    HeaderTruncated {
        /// Body length, bytes.
        len: usize,
    },
    /// `header_sz` under 22 or past the end of the body.
    #[error("as_msg header_sz {header_sz} invalid for a body of {body_len} bytes")]
    BadHeaderSize {
        /// The header's `header_sz`.
        header_sz: u8,
        /// Body length, bytes.
        body_len: usize,
    },
    /// More than [`MAX_N_OPS`] ops.
    #[error("{n_ops} ops, at most 32768 allowed")]
    TooManyOps {
        /// The header's `n_ops`.
        n_ops: u16,
    },
    /// A field's size word or data runs past the end of its buffer.
    #[error("field {index} runs past the end of the message")]
    FieldTruncated {
        /// Field position, from 0.
        index: u16,
    },
    /// A field with size 0 (no room for its type byte).
    #[error("field {index} has size 0")]
    EmptyField {
        /// Field position, from 0.
        index: u16,
    },
    /// An op's size word or bytes run past the end of its buffer.
    #[error("op {index} runs past the end of the message")]
    OpTruncated {
        /// Op position, from 0.
        index: u16,
    },
    /// An op whose size cannot hold its header, name (and LUT).
    #[error("op {index} size is too small for its name")]
    BadOpSize {
        /// Op position, from 0.
        index: u16,
    },
    /// Bytes after the last op (or after the last batch row).
    #[error("{len} bytes after the last op")]
    TrailingBytes {
        /// Extra bytes.
        len: usize,
    },
    /// A DIGEST field that is not 20 bytes.
    #[error("digest field of {len} bytes, expected 20")]
    BadDigest {
        /// Data length, bytes.
        len: usize,
    },
    /// A KEY field without its particle-type byte.
    #[error("key field is empty")]
    EmptyKey,
    /// A fixed-size field (scan options) of the wrong size.
    #[error("field type {ftype} has {len} bytes, expected {expected}")]
    BadFieldSize {
        /// Field type.
        ftype: u8,
        /// Data length, bytes.
        len: usize,
        /// Expected data length, bytes.
        expected: usize,
    },
    /// A field the request needs is missing.
    #[error("missing field type {ftype}")]
    MissingField {
        /// Field type.
        ftype: u8,
    },
    /// A bin name over 15 bytes (result 21).
    #[error("bin name of {len} bytes, at most 15 allowed")]
    BinNameTooLong {
        /// Name length, bytes.
        len: usize,
    },
    /// A value that does not decode for its particle type.
    #[error("bad value: {0}")]
    BadValue(ParticleError),
    /// A compressed body shorter than its 8-byte uncompressed-length word (spec §8).
    #[error("compressed body of {len} bytes has no length word")]
    CompressedTooShort {
        /// Body length, bytes.
        len: usize,
    },
    /// A declared uncompressed length that cannot hold a proto header and an as_msg header, or
    /// is over [`super::PROTO_SIZE_MAX`] + 8 (spec §8).
    #[error("declared uncompressed length {declared} out of range")]
    BadUncompressedLength {
        /// The declared length, bytes.
        declared: u64,
    },
    /// The zlib stream is corrupt.
    #[error("zlib stream does not inflate")]
    Inflate,
    /// The stream inflated to a different length than declared (inflation stops one byte past
    /// the declared length, so `actual` is at most `declared + 1`).
    #[error("inflated {actual} bytes, {declared} declared")]
    InflatedLengthMismatch {
        /// The declared length, bytes.
        declared: u64,
        /// Bytes inflated before stopping.
        actual: u64,
    },
    /// The inflated message's proto header is not version 2, type 3, with `8 + size` equal to
    /// the inflated length (spec §8).
    #[error("inflated message has a bad proto header")]
    BadInnerHeader,
    /// A batch field, or one of its rows, runs past the end of the field (spec §7.1).
    #[error("batch row {row} runs past the end of the batch field")]
    BatchTruncated {
        /// Row position in the field, from 0 (0 also for a field too short for its header).
        row: u32,
    },
    /// A batch with a row count of 0.
    #[error("batch has no rows")]
    BatchEmpty,
    /// More rows than the server allows (result 151 BATCH_MAX_REQUESTS).
    #[error("batch of {count} rows, at most {max} allowed")]
    BatchTooManyRows {
        /// The field's row count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// The first row of a batch carries the REPEAT flag: there is nothing to repeat.
    #[error("first batch row is a REPEAT row")]
    BatchRepeatFirst,
    /// A REPEAT row would repeat a row that carries a KEY field (the key belongs to one digest).
    #[error("batch row {row} repeats a row with a key")]
    BatchRepeatWithKey {
        /// Row position, from 0.
        row: u32,
    },
    /// A PID_ARRAY that is empty or not a whole number of u16 entries (spec §7.3).
    #[error("pid array of {len} bytes")]
    BadPidArray {
        /// Data length, bytes.
        len: usize,
    },
    /// A DIGEST_ARRAY that is not a whole number of 20-byte entries (spec §7.3).
    #[error("digest array of {len} bytes")]
    BadDigestArray {
        /// Data length, bytes.
        len: usize,
    },
    /// More than 4096 partitions in the PID and DIGEST arrays together.
    #[error("{n} partitions requested, at most 4096")]
    TooManyPartitions {
        /// Entries in the arrays.
        n: usize,
    },
    /// A partition id of 4096 or more.
    #[error("partition id {pid} out of range")]
    PartitionOutOfRange {
        /// The id as sent.
        pid: u16,
    },
    /// A partition named twice (in the PID array, the DIGEST array, or both).
    #[error("partition {pid} requested twice")]
    DuplicatePartition {
        /// The partition id.
        pid: u16,
    },
}

impl MsgError {
    /// The result code to answer with (spec §5): 21 for a long bin name, 151 for a batch over
    /// the row limit, otherwise 4 PARAMETER.
    pub fn result_code(&self) -> u8 {
        match self {
            MsgError::BinNameTooLong { .. } => result_code::BIN_NAME_TOO_LONG,
            MsgError::BatchTooManyRows { .. } => result_code::BATCH_MAX_REQUESTS,
            _ => result_code::PARAMETER,
        }
    }

    /// Whether the connection should be closed instead of answered: only when not even the
    /// 22-byte header could be read.
    pub fn closes_connection(&self) -> bool {
        matches!(self, MsgError::HeaderTruncated { .. })
    }
}

/// A parsed AS_MSG request, borrowing its body (spec §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The 22-byte header.
    pub header: MsgHeader,
    /// Fields in wire order.
    pub fields: Vec<Field<'a>>,
    /// Ops in wire order.
    pub ops: Vec<Op<'a>>,
}

impl<'a> Msg<'a> {
    /// Parses a proto-type-3 body (the bytes after the 8-byte proto header, spec §3).
    ///
    /// Checks: the header fits; `22 ≤ header_sz ≤ body length` (fields start at `header_sz`);
    /// `n_ops ≤ 32768`; every field and op lies inside the body; a DIGEST field is 20 bytes and
    /// a KEY field holds at least its type byte; no bytes after the last op.
    ///
    /// # Errors
    /// A [`MsgError`]; see [`MsgError::closes_connection`] for which ones cannot be answered.
    pub fn parse(body: &'a [u8]) -> Result<Msg<'a>, MsgError> {
        let header_bytes: &[u8; MSG_HEADER_BYTES] = body
            .get(..MSG_HEADER_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or(MsgError::HeaderTruncated { len: body.len() })?;
        let header = MsgHeader::parse(header_bytes);
        let header_sz = usize::from(header.header_sz);
        if header_sz < MSG_HEADER_BYTES || header_sz > body.len() {
            return Err(MsgError::BadHeaderSize {
                header_sz: header.header_sz,
                body_len: body.len(),
            });
        }
        if usize::from(header.n_ops) > MAX_N_OPS {
            return Err(MsgError::TooManyOps { n_ops: header.n_ops });
        }
        let mut rest = &body[header_sz..];
        // Capacity bounded by what the remaining bytes could hold, not by the counts alone.
        let mut fields = Vec::with_capacity(usize::from(header.n_fields).min(rest.len() / FIELD_HEADER_BYTES));
        for index in 0..header.n_fields {
            let (field, after) = take_field(rest, index)?;
            fields.push(field);
            rest = after;
        }
        let mut ops = Vec::with_capacity(usize::from(header.n_ops).min(rest.len() / OP_HEADER_BYTES));
        for index in 0..header.n_ops {
            let (op, after) = take_op(rest, index)?;
            ops.push(op);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(MsgError::TrailingBytes { len: rest.len() });
        }
        Ok(Msg { header, fields, ops })
    }

    /// The data of the first field of type `ftype`.
    pub fn field(&self, ftype: u8) -> Option<&'a [u8]> {
        self.fields.iter().find(|f| f.ftype == ftype).map(|f| f.data)
    }

    /// The NAMESPACE field's bytes (not validated as UTF-8).
    pub fn namespace(&self) -> Option<&'a [u8]> {
        self.field(field_type::NAMESPACE)
    }

    /// The SET field's bytes; `Some(b"")` for a set-less single-key command (spec §3.3).
    pub fn set(&self) -> Option<&'a [u8]> {
        self.field(field_type::SET)
    }

    /// The DIGEST field (its 20-byte length was checked by [`Msg::parse`]).
    pub fn digest(&self) -> Option<Digest> {
        self.field(field_type::DIGEST).and_then(digest_from)
    }

    /// The KEY field as `(particle type, key bytes)` (its type byte was checked by [`Msg::parse`]).
    pub fn key(&self) -> Option<(u8, &'a [u8])> {
        self.field(field_type::KEY)
            .and_then(|d| d.split_first())
            .map(|(t, v)| (*t, v))
    }
}

/// A 20-byte slice as a digest; `None` for any other length.
pub fn digest_from(bytes: &[u8]) -> Option<Digest> {
    bytes.try_into().ok().map(Digest)
}

/// Reads a big-endian u32 size word at the start of `buf`.
fn size_word(buf: &[u8]) -> Option<usize> {
    let b: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(b)).ok()
}

/// Takes one field off the front of `buf` (spec §3.3) and checks the shape of DIGEST and KEY
/// fields. `index` is only for the error. Also used for batch-row fields.
pub(crate) fn take_field(buf: &[u8], index: u16) -> Result<(Field<'_>, &[u8]), MsgError> {
    let size = size_word(buf).ok_or(MsgError::FieldTruncated { index })?;
    if size == 0 {
        return Err(MsgError::EmptyField { index });
    }
    let end = size.checked_add(4).ok_or(MsgError::FieldTruncated { index })?;
    let bytes = buf.get(4..end).ok_or(MsgError::FieldTruncated { index })?;
    let field = Field {
        ftype: bytes[0],
        data: &bytes[1..],
    };
    match field.ftype {
        field_type::DIGEST if field.data.len() != DIGEST_BYTES => {
            return Err(MsgError::BadDigest { len: field.data.len() })
        }
        field_type::KEY if field.data.is_empty() => return Err(MsgError::EmptyKey),
        _ => {}
    }
    Ok((field, &buf[end..]))
}

/// Takes one op off the front of `buf` (spec §3.4), skipping the LUT when flag bit 0 is set.
/// `index` is only for the error. Also used for batch-row ops.
pub(crate) fn take_op(buf: &[u8], index: u16) -> Result<(Op<'_>, &[u8]), MsgError> {
    let size = size_word(buf).ok_or(MsgError::OpTruncated { index })?;
    let end = size.checked_add(4).ok_or(MsgError::OpTruncated { index })?;
    // `size` counts the 4 type/flags/name_len bytes, the name, the LUT and the value.
    if end < OP_HEADER_BYTES {
        return Err(MsgError::BadOpSize { index });
    }
    let bytes = buf.get(..end).ok_or(MsgError::OpTruncated { index })?;
    let (op_type, particle_type, flags, name_len) = (bytes[4], bytes[5], bytes[6], usize::from(bytes[7]));
    let after_header = &bytes[OP_HEADER_BYTES..];
    let (name, after_name) = after_header
        .split_at_checked(name_len)
        .ok_or(MsgError::BadOpSize { index })?;
    let value = if flags & op_flags::HAS_LUT != 0 {
        after_name.get(OP_LUT_BYTES..).ok_or(MsgError::BadOpSize { index })?
    } else {
        after_name
    };
    let op = Op {
        op_type,
        particle_type,
        flags,
        name,
        value,
    };
    Ok((op, &buf[end..]))
}

/// Writes replies (and, in tests, requests) into a caller-provided buffer (spec §1, §3).
///
/// A reply is one proto holding one or more as_msg messages:
///
/// ```
/// use bolide_node::proto::{msg::{MsgHeader, Reply, op_type}, result_code, PROTO_TYPE_MSG};
/// use bolide_node::particle::Value;
/// let mut out = Vec::new();
/// let start = Reply::begin(&mut out);
/// Reply::msg_header(&mut out, &MsgHeader { n_ops: 1, ..MsgHeader::reply(result_code::OK, 1, 0) });
/// Reply::write_value_op(&mut out, op_type::READ, b"a", &Value::Int(1));
/// Reply::finish(&mut out, start, PROTO_TYPE_MSG);
/// assert_eq!(out.len(), 8 + 22 + 17);
/// ```
///
/// The counts in a header must match what follows; when they are known only afterwards, write
/// 0 and patch with [`Reply::set_n_fields`] / [`Reply::set_n_ops`]. Writers panic only on
/// programmer errors (a name over 255 bytes, a value over 4 GiB, a bad `start`).
#[derive(Debug)]
pub struct Reply;

impl Reply {
    /// Reserves the 8-byte proto header at the end of `out`; returns its offset for
    /// [`Reply::finish`].
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; PROTO_HEADER_BYTES]);
        start
    }

    /// Appends a 22-byte as_msg header as given (use [`MsgHeader::reply`] to get
    /// `header_sz = 22`); returns its offset for [`Reply::set_n_fields`] / [`Reply::set_n_ops`].
    pub fn msg_header(out: &mut Vec<u8>, header: &MsgHeader) -> usize {
        let at = out.len();
        out.extend_from_slice(&header.encode());
        at
    }

    /// Appends a reply header (`header_sz` 22, info1/info2/info4 0) from its parts; returns its
    /// offset. `void_time` goes in `record_ttl` (0 = never expires).
    #[allow(clippy::too_many_arguments)] // Mirrors the header's fields one to one.
    pub fn write_header(
        out: &mut Vec<u8>,
        result_code: u8,
        info3: u8,
        generation: u32,
        void_time: u32,
        transaction_ttl: u32,
        n_fields: u16,
        n_ops: u16,
    ) -> usize {
        let header = MsgHeader {
            info3,
            transaction_ttl,
            n_fields,
            n_ops,
            ..MsgHeader::reply(result_code, generation, void_time)
        };
        Reply::msg_header(out, &header)
    }

    /// Appends a field: `[u32 BE 1 + len][type][data]` (spec §3.3).
    ///
    /// # Panics
    /// If `data` is 4 GiB or more.
    pub fn write_field(out: &mut Vec<u8>, ftype: u8, data: &[u8]) {
        let size = u32::try_from(data.len() + 1).expect("field data under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.push(ftype);
        out.extend_from_slice(data);
    }

    /// Appends an op with flags 0 and raw value bytes (spec §3.4).
    ///
    /// # Panics
    /// If `name` is over 255 bytes or the op is 4 GiB or more.
    pub fn write_op(out: &mut Vec<u8>, op_type: u8, particle_type: u8, name: &[u8], value: &[u8]) {
        Reply::write_op_header(out, op_type, particle_type, name, value.len());
        out.extend_from_slice(value);
    }

    /// Appends an op whose value is `value` in its wire encoding ([`Value::encode_wire`]) with its
    /// particle type ([`Value::Nil`] gives particle type 0 and no bytes: the "empty result" op).
    ///
    /// # Panics
    /// As [`Reply::write_op`].
    pub fn write_value_op(out: &mut Vec<u8>, op_type: u8, name: &[u8], value: &Value) {
        Reply::write_op_header(out, op_type, value.particle_type().id(), name, value.wire_len());
        value.encode_wire(out);
    }

    fn write_op_header(out: &mut Vec<u8>, op_type: u8, particle_type: u8, name: &[u8], value_len: usize) {
        let name_len = u8::try_from(name.len()).expect("op name at most 255 bytes");
        let size = u32::try_from(4 + name.len() + value_len).expect("op under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[op_type, particle_type, 0, name_len]);
        out.extend_from_slice(name);
    }

    /// Overwrites `n_fields` of the header written at `header_at`.
    ///
    /// # Panics
    /// If `header_at` is not followed by 22 bytes.
    pub fn set_n_fields(out: &mut [u8], header_at: usize, n_fields: u16) {
        out[header_at + 18..header_at + 20].copy_from_slice(&n_fields.to_be_bytes());
    }

    /// Overwrites `n_ops` of the header written at `header_at`.
    ///
    /// # Panics
    /// If `header_at` is not followed by 22 bytes.
    pub fn set_n_ops(out: &mut [u8], header_at: usize, n_ops: u16) {
        out[header_at + 20..header_at + 22].copy_from_slice(&n_ops.to_be_bytes());
    }

    /// Appends the LAST message that ends a batch or scan stream (spec §7.2, §7.3): header only,
    /// info3 LAST, the overall `result_code`. Returns its offset.
    pub fn write_last(out: &mut Vec<u8>, result_code: u8) -> usize {
        Reply::msg_header(
            out,
            &MsgHeader {
                info3: info3::LAST,
                ..MsgHeader::reply(result_code, 0, 0)
            },
        )
    }

    /// Appends a whole proto holding only the LAST message (spec §7.2: the real server sends the
    /// batch trailer as its own proto; the same ends a scan, §7.3).
    pub fn last_proto(out: &mut Vec<u8>, result_code: u8) {
        let start = Reply::begin(out);
        Reply::write_last(out, result_code);
        Reply::finish(out, start, super::PROTO_TYPE_MSG);
    }

    /// Appends a whole single-message proto with no fields and no ops: the reply to a write,
    /// delete, touch, exists or a failed command (spec §3.6, §10.3).
    pub fn header_only(out: &mut Vec<u8>, result_code: u8, generation: u32, void_time: u32) {
        let start = Reply::begin(out);
        Reply::msg_header(out, &MsgHeader::reply(result_code, generation, void_time));
        Reply::finish(out, start, super::PROTO_TYPE_MSG);
    }

    /// Fills in the proto header reserved at `start` by [`Reply::begin`], sizing the body as
    /// everything appended since.
    ///
    /// # Panics
    /// If `start` was not returned by [`Reply::begin`] on this buffer (fewer than 8 bytes follow).
    pub fn finish(out: &mut [u8], start: usize, ptype: u8) {
        let body = out
            .len()
            .checked_sub(start + PROTO_HEADER_BYTES)
            .expect("start from Reply::begin");
        out[start..start + PROTO_HEADER_BYTES].copy_from_slice(&ProtoHeader::encode(ptype, body as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::particle::ParticleType;
    use crate::proto::PROTO_TYPE_MSG;
    use proptest::prelude::*;

    const K1_DIGEST: &str = "b747f5854d0b33259928d0cfab7fad81d6abfbf6";

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Spec §3.6: C-client `put(("test","demo","k1"), {"a": 1})`, total_timeout 1000.
    fn spec_put_request() -> Vec<u8> {
        unhex(&format!(
            "02 03 00 00 00 00 00 52
             16 00 01 00 00 00  00 00 00 00  00 00 00 00  00 00 03 e8  00 03 00 01
             00 00 00 05 00 74 65 73 74
             00 00 00 05 01 64 65 6d 6f
             00 00 00 15 04 {K1_DIGEST}
             00 00 00 0d 02 01 00 01 61 00 00 00 00 00 00 00 01"
        ))
    }

    #[test]
    fn parses_spec_worked_example() {
        let req = spec_put_request();
        let ph = ProtoHeader::parse(req[..8].try_into().unwrap()).unwrap();
        assert_eq!((ph.ptype, ph.size), (PROTO_TYPE_MSG, 82));
        assert_eq!(req.len() - 8, 82);
        let msg = Msg::parse(&req[8..]).unwrap();
        assert_eq!(
            msg.header,
            MsgHeader {
                header_sz: 22,
                info2: info2::WRITE,
                transaction_ttl: 1000,
                n_fields: 3,
                n_ops: 1,
                ..MsgHeader::default()
            }
        );
        assert_eq!(msg.namespace(), Some(&b"test"[..]));
        assert_eq!(msg.set(), Some(&b"demo"[..]));
        assert_eq!(msg.digest(), Some(Digest::compute(b"demo", 3, b"k1")));
        assert_eq!(format!("{:?}", msg.digest().unwrap()), K1_DIGEST);
        assert_eq!(msg.key(), None);
        assert_eq!(msg.ops.len(), 1);
        let op = msg.ops[0];
        assert_eq!(
            (op.op_type, op.particle_type, op.flags, op.name),
            (op_type::WRITE, 1, 0, &b"a"[..])
        );
        assert_eq!(op.decode_value(), Ok(Value::Int(1)));
        assert_eq!(op.bin_name().unwrap().as_bytes(), b"a");
    }

    #[test]
    fn writes_spec_worked_example_replies() {
        let mut out = Vec::new();
        Reply::header_only(&mut out, result_code::OK, 1, 0);
        assert_eq!(
            out,
            unhex("02 03 00 00 00 00 00 16  16 00 00 00 00 00  00 00 00 01  00 00 00 00  00 00 00 00  00 00 00 00")
        );

        // Get reply with one bin: the same header with n_ops = 1, then the READ op.
        let mut out = vec![0xee]; // Unrelated bytes before: offsets are relative.
        let start = Reply::begin(&mut out);
        let at = Reply::write_header(&mut out, result_code::OK, 0, 1, 0, 0, 0, 0);
        Reply::write_value_op(&mut out, op_type::READ, b"a", &Value::Int(1));
        Reply::set_n_ops(&mut out, at, 1);
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        assert_eq!(
            out[1..],
            unhex(
                "02 03 00 00 00 00 00 27  16 00 00 00 00 00  00 00 00 01  00 00 00 00  00 00 00 00  00 00 00 01
                 00 00 00 0d 01 01 00 01 61 00 00 00 00 00 00 00 01"
            )[..]
        );
    }

    #[test]
    fn request_round_trip_through_writer() {
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        let header = MsgHeader {
            header_sz: 22,
            info1: info1::READ,
            info2: info2::WRITE | info2::RESPOND_ALL_OPS,
            info3: info3::UPDATE_ONLY,
            info4: info4::TXN_ROLL_BACK,
            result_code: 0,
            generation: 0xdead_beef,
            record_ttl: 0xffff_fffe,
            transaction_ttl: 77,
            n_fields: 4,
            n_ops: 4,
        };
        Reply::msg_header(&mut out, &header);
        Reply::write_field(&mut out, field_type::NAMESPACE, b"test");
        Reply::write_field(&mut out, field_type::SET, b"");
        Reply::write_field(&mut out, field_type::DIGEST, &[7; 20]);
        Reply::write_field(&mut out, field_type::KEY, &[3, b'k']);
        Reply::write_value_op(&mut out, op_type::WRITE, b"s", &Value::Str(b"hi".to_vec()));
        Reply::write_value_op(&mut out, op_type::WRITE, b"gone", &Value::Nil);
        Reply::write_op(&mut out, op_type::READ, 0, b"", b"");
        Reply::write_value_op(
            &mut out,
            op_type::APPEND,
            b"b",
            &Value::Blob(ParticleType::PythonBlob, vec![1]),
        );
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);

        let msg = Msg::parse(&out[8..]).unwrap();
        assert_eq!(msg.header, header);
        assert_eq!(msg.set(), Some(&b""[..]));
        assert_eq!(msg.digest(), Some(Digest([7; 20])));
        assert_eq!(msg.key(), Some((3, &b"k"[..])));
        assert_eq!(msg.field(field_type::TASK_ID), None);
        let values: Vec<_> = msg.ops.iter().map(|op| op.decode_value().unwrap()).collect();
        assert_eq!(
            values,
            [
                Value::Str(b"hi".to_vec()),
                Value::Nil,
                Value::Nil,
                Value::Blob(ParticleType::PythonBlob, vec![1])
            ]
        );
        assert_eq!(msg.ops[1].name, b"gone");
        assert_eq!(msg.ops[2].name, b"");
    }

    #[test]
    fn header_sz_over_22_and_lut_are_honoured() {
        let mut body = MsgHeader {
            header_sz: 24,
            n_fields: 1,
            n_ops: 1,
            ..MsgHeader::default()
        }
        .encode()
        .to_vec();
        body.extend_from_slice(&[0xaa, 0xbb]); // Header extension, skipped.
        Reply::write_field(&mut body, field_type::NAMESPACE, b"ns");
        // Op with HAS_LUT: size 4 + 1 + 8 + 8.
        body.extend_from_slice(&21u32.to_be_bytes());
        body.extend_from_slice(&[op_type::WRITE, 1, op_flags::HAS_LUT, 1, b'x']);
        body.extend_from_slice(&[9; 8]);
        body.extend_from_slice(&5i64.to_be_bytes());
        let msg = Msg::parse(&body).unwrap();
        assert_eq!(msg.namespace(), Some(&b"ns"[..]));
        assert_eq!(msg.ops[0].decode_value(), Ok(Value::Int(5)));
        assert_eq!(msg.ops[0].flags, op_flags::HAS_LUT);
        // With no value bytes the op still parses; a LUT cut short does not.
        body.truncate(body.len() - 8);
        body[2 + 22 + 7..2 + 22 + 11].copy_from_slice(&13u32.to_be_bytes());
        assert_eq!(Msg::parse(&body).unwrap().ops[0].value, b"");
        body.truncate(body.len() - 1);
        body[2 + 22 + 7..2 + 22 + 11].copy_from_slice(&12u32.to_be_bytes());
        assert_eq!(Msg::parse(&body), Err(MsgError::BadOpSize { index: 0 }));
    }

    fn header(n_fields: u16, n_ops: u16) -> Vec<u8> {
        MsgHeader {
            header_sz: 22,
            n_fields,
            n_ops,
            ..MsgHeader::default()
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn every_error_path() {
        let err = |b: &[u8]| Msg::parse(b).unwrap_err();

        let e = err(&header(0, 0)[..21]);
        assert_eq!(e, MsgError::HeaderTruncated { len: 21 });
        assert!(e.closes_connection());
        assert_eq!(e.result_code(), result_code::PARAMETER);

        let mut b = header(0, 0);
        b[0] = 21;
        let e = err(&b);
        assert_eq!(
            e,
            MsgError::BadHeaderSize {
                header_sz: 21,
                body_len: 22
            }
        );
        assert!(!e.closes_connection());
        b[0] = 23;
        assert_eq!(
            err(&b),
            MsgError::BadHeaderSize {
                header_sz: 23,
                body_len: 22
            }
        );

        assert_eq!(err(&header(0, 32_769)), MsgError::TooManyOps { n_ops: 32_769 });
        // 32768 ops is allowed by the count check (then they must be present).
        assert_eq!(err(&header(0, 32_768)), MsgError::OpTruncated { index: 0 });

        // Fields: size word cut, size 0, data past the end, bad digest, empty key.
        let mut b = header(1, 0);
        b.extend_from_slice(&[0, 0, 0]);
        assert_eq!(err(&b), MsgError::FieldTruncated { index: 0 });
        let mut b = header(1, 0);
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(err(&b), MsgError::EmptyField { index: 0 });
        let mut b = header(2, 0);
        Reply::write_field(&mut b, field_type::SET, b"x");
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(err(&b), MsgError::FieldTruncated { index: 1 });
        let mut b = header(1, 0);
        Reply::write_field(&mut b, field_type::DIGEST, &[0; 19]);
        assert_eq!(err(&b), MsgError::BadDigest { len: 19 });
        let mut b = header(1, 0);
        Reply::write_field(&mut b, field_type::DIGEST, &[0; 21]);
        assert_eq!(err(&b), MsgError::BadDigest { len: 21 });
        let mut b = header(1, 0);
        Reply::write_field(&mut b, field_type::KEY, b"");
        assert_eq!(err(&b), MsgError::EmptyKey);

        // Ops: cut size word, size < 4, name past size, bytes past the body.
        let mut b = header(0, 1);
        b.extend_from_slice(&[0, 0]);
        assert_eq!(err(&b), MsgError::OpTruncated { index: 0 });
        let mut b = header(0, 1);
        b.extend_from_slice(&[0, 0, 0, 3, 1, 0, 0]);
        assert_eq!(err(&b), MsgError::BadOpSize { index: 0 });
        let mut b = header(0, 1);
        b.extend_from_slice(&[0, 0, 0, 5, 1, 0, 0, 2, b'a']);
        assert_eq!(err(&b), MsgError::BadOpSize { index: 0 });
        let mut b = header(0, 2);
        Reply::write_op(&mut b, op_type::READ, 0, b"a", b"");
        b.extend_from_slice(&[0, 0, 0, 9, 1, 0, 0, 1, b'a']);
        assert_eq!(err(&b), MsgError::OpTruncated { index: 1 });

        // Trailing bytes.
        let mut b = header(0, 1);
        Reply::write_op(&mut b, op_type::READ, 0, b"a", b"");
        b.push(0);
        assert_eq!(err(&b), MsgError::TrailingBytes { len: 1 });
    }

    #[test]
    fn op_checks_map_to_result_codes() {
        let op = Op {
            op_type: op_type::WRITE,
            particle_type: 1,
            flags: 0,
            name: b"sixteen_bytes_xx",
            value: &[1, 2],
        };
        let e = op.bin_name().unwrap_err();
        assert_eq!(e, MsgError::BinNameTooLong { len: 16 });
        assert_eq!(e.result_code(), result_code::BIN_NAME_TOO_LONG);
        assert!(Op {
            name: b"fifteen_bytes_x",
            ..op
        }
        .bin_name()
        .is_ok());
        // A 2-byte integer is sign-extended by decode_wire; an unknown type is PARAMETER.
        assert_eq!(op.decode_value(), Ok(Value::Int(0x0102)));
        let e = Op {
            particle_type: 16,
            ..op
        }
        .decode_value()
        .unwrap_err();
        assert_eq!(e.result_code(), result_code::PARAMETER);
    }

    #[test]
    fn writer_counts_and_last_message() {
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        let at = Reply::write_header(&mut out, 0, 0, 0, 0, 5, 0, 0);
        Reply::write_field(&mut out, field_type::NAMESPACE, b"test");
        Reply::set_n_fields(&mut out, at, 1);
        Reply::write_last(&mut out, result_code::KEY_NOT_FOUND);
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        assert_eq!(out.len(), 8 + 22 + 9 + 22);
        let first = Msg::parse(&out[8..8 + 31]).unwrap();
        assert_eq!(
            (first.header.transaction_ttl, first.namespace()),
            (5, Some(&b"test"[..]))
        );
        let last = Msg::parse(&out[8 + 31..]).unwrap();
        assert_eq!(
            last.header,
            MsgHeader {
                info3: info3::LAST,
                ..MsgHeader::reply(2, 0, 0)
            }
        );
    }

    proptest! {
        #[test]
        fn parse_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(msg) = Msg::parse(&bytes) {
                let _ = (msg.namespace(), msg.digest(), msg.key());
                for op in &msg.ops {
                    let _ = (op.bin_name(), op.decode_value());
                }
            }
        }

        #[test]
        fn parse_of_mutated_valid_message_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut req = spec_put_request().split_off(8);
            for (at, byte) in flips {
                let i = at.index(req.len());
                req[i] = byte;
            }
            let end = cut.index(req.len() + 1);
            let _ = Msg::parse(&req[..end]);
            let _ = Msg::parse(&req);
        }

        #[test]
        fn header_round_trips(b in proptest::array::uniform22(any::<u8>())) {
            prop_assert_eq!(MsgHeader::parse(&b).encode(), b);
        }
    }
}
