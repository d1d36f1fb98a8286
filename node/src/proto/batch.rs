//! Batch-index requests (field 41, and the older field 42) and their reply stream (wire spec
//! §7.1, §7.2).
//!
//! Field data: `[u32 BE row count][u8 batch flags][rows...]`. A row:
//!
//! ```text
//! [u32 BE index][20-byte digest][u8 row flags]
//!   REPEAT (0x01): nothing else; reuse the previous row's namespace/set/attributes/ops.
//!   otherwise: [info1]
//!              [info2][info3]   if HAS_INFO  (0x02)
//!              [info4]          if HAS_INFO4 (0x10)
//!              [u16 BE gen]     if HAS_GEN   (0x04)
//!              [u32 BE ttl]     if HAS_TTL   (0x08)
//!              [u16 BE n_fields][u16 BE n_ops][fields][ops]
//! ```
//!
//! Row flags 0x00 is the old protocol's read row (`info1`, counts, fields, ops), so one parser
//! reads both; field 42 differs from 41 only in carrying a SET field per row, which the generic
//! field list covers. The Rust and C clients send batch flags 0x0D and read rows with flags 0x0A
//! (§0.1).
//!
//! Parsing is zero-copy and allocation-free per row: a row's fields and ops are kept as the
//! validated wire bytes ([`Fields`], [`Ops`]) and iterated on demand; a REPEAT row copies the
//! previous row's slices.
//!
//! Reply: per row an as_msg whose `transaction_ttl` is the row index ([`write_row_header`],
//! [`write_row`]), rows in any order and any number of protos, then a LAST message
//! ([`Reply::write_last`] / [`Reply::last_proto`]).

use super::msg::{
    digest_from, field_type, take_field, take_op, Field, Msg, MsgError, MsgHeader, Op, Reply, DIGEST_BYTES, MAX_N_OPS,
};
use crate::digest::Digest;
use crate::particle::Value;

/// Bytes before the first row: `[u32 count][u8 flags]`.
pub const BATCH_HEADER_BYTES: usize = 5;
/// Smallest row: `[u32 index][digest][u8 flags]` (a REPEAT row).
pub const BATCH_ROW_MIN_BYTES: usize = 4 + DIGEST_BYTES + 1;

/// Batch flags, the byte after the row count (spec §7.1).
pub mod batch_flags {
    /// Allow inline (in-memory) processing.
    pub const ALLOW_INLINE: u8 = 0x01;
    /// Allow inline processing on SSD namespaces.
    pub const ALLOW_INLINE_SSD: u8 = 0x02;
    /// Report every row's error instead of stopping at the first (§7.2).
    pub const RESPOND_ALL_KEYS: u8 = 0x04;
    /// Report error records (new clients always set it).
    pub const REPORT_ERROR_RECORD: u8 = 0x08;
}

/// Row flags (spec §7.1).
pub mod row_flags {
    /// Reuse the previous row's namespace, set, attributes and ops; nothing else follows.
    pub const REPEAT: u8 = 0x01;
    /// `info2` and `info3` follow `info1`.
    pub const HAS_INFO: u8 = 0x02;
    /// A u16 generation follows.
    pub const HAS_GEN: u8 = 0x04;
    /// A u32 record TTL follows.
    pub const HAS_TTL: u8 = 0x08;
    /// `info4` follows.
    pub const HAS_INFO4: u8 = 0x10;
}

/// The data of the batch field of `msg`: field 41, else field 42 (spec §7.1).
pub fn batch_field<'a>(msg: &Msg<'a>) -> Option<&'a [u8]> {
    msg.field(field_type::BATCH_INDEX)
        .or_else(|| msg.field(field_type::BATCH_INDEX_WITH_SET))
}

/// A row's fields as validated wire bytes; iterate with [`Fields::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fields<'a> {
    raw: &'a [u8],
    count: u16,
}

impl<'a> Fields<'a> {
    /// Validates `count` fields at the front of `buf` (as [`Msg::parse`] does); returns them and
    /// the bytes after.
    fn take(buf: &'a [u8], count: u16) -> Result<(Fields<'a>, &'a [u8]), MsgError> {
        let mut rest = buf;
        for index in 0..count {
            rest = take_field(rest, index)?.1;
        }
        let raw = &buf[..buf.len() - rest.len()];
        Ok((Fields { raw, count }, rest))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The fields in wire order.
    pub fn iter(&self) -> FieldIter<'a> {
        FieldIter {
            rest: self.raw,
            left: self.count,
        }
    }

    /// The data of the first field of type `ftype`.
    pub fn get(&self, ftype: u8) -> Option<&'a [u8]> {
        self.iter().find(|f| f.ftype == ftype).map(|f| f.data)
    }
}

/// Iterator over [`Fields`].
#[derive(Clone, Debug)]
pub struct FieldIter<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.left == 0 {
            return None;
        }
        // Validated when the row was parsed, so this does not fail; stop quietly if it did.
        let (field, rest) = take_field(self.rest, 0).ok()?;
        self.rest = rest;
        self.left -= 1;
        Some(field)
    }
}

/// A row's ops as validated wire bytes; iterate with [`Ops::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ops<'a> {
    raw: &'a [u8],
    count: u16,
}

impl<'a> Ops<'a> {
    /// Validates `count` ops at the front of `buf`; returns them and the bytes after.
    fn take(buf: &'a [u8], count: u16) -> Result<(Ops<'a>, &'a [u8]), MsgError> {
        if usize::from(count) > MAX_N_OPS {
            return Err(MsgError::TooManyOps { n_ops: count });
        }
        let mut rest = buf;
        for index in 0..count {
            rest = take_op(rest, index)?.1;
        }
        let raw = &buf[..buf.len() - rest.len()];
        Ok((Ops { raw, count }, rest))
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ops in wire order.
    pub fn iter(&self) -> OpIter<'a> {
        OpIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

/// Iterator over [`Ops`].
#[derive(Clone, Debug)]
pub struct OpIter<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for OpIter<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        if self.left == 0 {
            return None;
        }
        let (op, rest) = take_op(self.rest, 0).ok()?;
        self.rest = rest;
        self.left -= 1;
        Some(op)
    }
}

/// One batch row with REPEAT resolved: a REPEAT row carries its own `index` and `digest` and
/// everything else from the row it repeats (spec §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow<'a> {
    /// Position of the key in the client's batch list (not in this request): goes back as the
    /// reply's `transaction_ttl`.
    pub index: u32,
    /// The key's digest.
    pub digest: Digest,
    /// Whether the row was sent as REPEAT.
    pub repeat: bool,
    /// Row flags of the row that carried the attributes ([`row_flags`]; never REPEAT).
    pub flags: u8,
    /// Read flags (`msg::info1`).
    pub info1: u8,
    /// Write flags (`msg::info2`); 0 without HAS_INFO.
    pub info2: u8,
    /// Misc flags (`msg::info3`); 0 without HAS_INFO.
    pub info3: u8,
    /// Transaction flags (`msg::info4`); 0 without HAS_INFO4.
    pub info4: u8,
    /// Expected generation; 0 without HAS_GEN.
    pub generation: u16,
    /// TTL (writes, §6.3) or read-touch percent (reads); 0 without HAS_TTL.
    pub record_ttl: u32,
    /// NAMESPACE, SET and optional fields (KEY, filter, UDF ...).
    pub fields: Fields<'a>,
    /// The row's ops.
    pub ops: Ops<'a>,
}

impl<'a> BatchRow<'a> {
    /// The NAMESPACE field.
    pub fn namespace(&self) -> Option<&'a [u8]> {
        self.fields.get(field_type::NAMESPACE)
    }

    /// The SET field (possibly empty).
    pub fn set(&self) -> Option<&'a [u8]> {
        self.fields.get(field_type::SET)
    }

    /// The KEY field as `(particle type, key bytes)`; never on a REPEAT row.
    pub fn key(&self) -> Option<(u8, &'a [u8])> {
        self.fields
            .get(field_type::KEY)
            .and_then(|d| d.split_first())
            .map(|(t, v)| (*t, v))
    }
}

/// A batch field whose header (`count`, `flags`) has been read; [`BatchIndex::rows`] parses the
/// rows lazily.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchIndex<'a> {
    /// Batch flags ([`batch_flags`]).
    pub flags: u8,
    /// Row count as sent (at least 1).
    pub count: u32,
    rows: &'a [u8],
}

impl<'a> BatchIndex<'a> {
    /// Reads the header of a field 41/42 body (see [`batch_field`]).
    ///
    /// # Errors
    /// [`MsgError::BatchTruncated`] (fewer than 5 bytes), [`MsgError::BatchEmpty`].
    pub fn parse(data: &'a [u8]) -> Result<BatchIndex<'a>, MsgError> {
        let (head, rows) = data
            .split_first_chunk::<BATCH_HEADER_BYTES>()
            .ok_or(MsgError::BatchTruncated { row: 0 })?;
        let count = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if count == 0 {
            return Err(MsgError::BatchEmpty);
        }
        Ok(BatchIndex {
            flags: head[4],
            count,
            rows,
        })
    }

    /// The rows, parsed one at a time. After the last row, leftover bytes are an error; after an
    /// error the iterator ends.
    pub fn rows(&self) -> BatchRows<'a> {
        BatchRows {
            rest: self.rows,
            left: self.count,
            next_row: 0,
            prev: None,
            done: false,
        }
    }

    /// Parses every row into a vector, first checking `count ≤ max_rows`.
    ///
    /// # Errors
    /// [`MsgError::BatchTooManyRows`] (result 151), or the first row error.
    pub fn collect_rows(&self, max_rows: u32) -> Result<Vec<BatchRow<'a>>, MsgError> {
        if self.count > max_rows {
            return Err(MsgError::BatchTooManyRows {
                count: self.count,
                max: max_rows,
            });
        }
        // At most one row per BATCH_ROW_MIN_BYTES of input, whatever the count says.
        let capacity = (self.count as usize).min(self.rows.len() / BATCH_ROW_MIN_BYTES);
        let mut rows = Vec::with_capacity(capacity);
        for row in self.rows() {
            rows.push(row?);
        }
        Ok(rows)
    }
}

/// Iterator over the rows of a [`BatchIndex`].
#[derive(Clone, Debug)]
pub struct BatchRows<'a> {
    rest: &'a [u8],
    left: u32,
    next_row: u32,
    prev: Option<BatchRow<'a>>,
    done: bool,
}

/// A cursor over a row's bytes that reports truncation as the row's error.
struct Cursor<'a> {
    buf: &'a [u8],
    row: u32,
}

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(MsgError::BatchTruncated { row: self.row })?;
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, MsgError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, MsgError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
}

impl<'a> BatchRows<'a> {
    fn parse_row(&mut self) -> Result<BatchRow<'a>, MsgError> {
        let row = self.next_row;
        let mut c = Cursor { buf: self.rest, row };
        let index = c.u32()?;
        let digest = digest_from(&c.take::<DIGEST_BYTES>()?).expect("20 bytes");
        let flags = c.u8()?;
        let parsed = if flags & row_flags::REPEAT != 0 {
            let prev = self.prev.ok_or(MsgError::BatchRepeatFirst)?;
            if prev.key().is_some() {
                return Err(MsgError::BatchRepeatWithKey { row });
            }
            BatchRow {
                index,
                digest,
                repeat: true,
                ..prev
            }
        } else {
            let info1 = c.u8()?;
            let (info2, info3) = if flags & row_flags::HAS_INFO != 0 {
                (c.u8()?, c.u8()?)
            } else {
                (0, 0)
            };
            let info4 = if flags & row_flags::HAS_INFO4 != 0 { c.u8()? } else { 0 };
            let generation = if flags & row_flags::HAS_GEN != 0 { c.u16()? } else { 0 };
            let record_ttl = if flags & row_flags::HAS_TTL != 0 { c.u32()? } else { 0 };
            let n_fields = c.u16()?;
            let n_ops = c.u16()?;
            let (fields, rest) = Fields::take(c.buf, n_fields)?;
            let (ops, rest) = Ops::take(rest, n_ops)?;
            c.buf = rest;
            BatchRow {
                index,
                digest,
                repeat: false,
                flags,
                info1,
                info2,
                info3,
                info4,
                generation,
                record_ttl,
                fields,
                ops,
            }
        };
        self.rest = c.buf;
        Ok(parsed)
    }
}

impl<'a> Iterator for BatchRows<'a> {
    type Item = Result<BatchRow<'a>, MsgError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            return (!self.rest.is_empty()).then_some(Err(MsgError::TrailingBytes { len: self.rest.len() }));
        }
        match self.parse_row() {
            Ok(row) => {
                self.prev = Some(row);
                self.left -= 1;
                self.next_row += 1;
                Some(Ok(row))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends a row reply header (spec §7.2): `transaction_ttl` = `index`, `n_fields` 0, the
/// row's result, generation and void time (0 = never expires). Follow it with `n_ops` READ ops
/// ([`Reply::write_value_op`]). Returns the header's offset ([`Reply::set_n_ops`]).
pub fn write_row_header(
    out: &mut Vec<u8>,
    index: u32,
    result_code: u8,
    generation: u32,
    void_time: u32,
    n_ops: u16,
) -> usize {
    Reply::msg_header(
        out,
        &MsgHeader {
            transaction_ttl: index,
            n_ops,
            ..MsgHeader::reply(result_code, generation, void_time)
        },
    )
}

/// Appends a whole row reply: the header and one READ op per bin (spec §7.2). For a row with no
/// bins (not found, exists, a write) pass an empty iterator.
///
/// # Panics
/// With more than 65535 bins, or as [`Reply::write_value_op`].
pub fn write_row<'v>(
    out: &mut Vec<u8>,
    index: u32,
    result_code: u8,
    generation: u32,
    void_time: u32,
    bins: impl IntoIterator<Item = (&'v [u8], &'v Value)>,
) {
    let at = write_row_header(out, index, result_code, generation, void_time, 0);
    let mut n_ops: u16 = 0;
    for (name, value) in bins {
        Reply::write_value_op(out, super::msg::op_type::READ, name, value);
        n_ops = n_ops.checked_add(1).expect("at most 65535 bins in a reply");
    }
    Reply::set_n_ops(out, at, n_ops);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::msg::{info1, info2, op_type, MsgHeader};
    use crate::proto::{result_code, ProtoHeader, PROTO_HEADER_BYTES, PROTO_TYPE_MSG};
    use proptest::prelude::*;

    /// Builds rows the way the clients do.
    struct RowWriter(Vec<u8>);

    impl RowWriter {
        fn new(count: u32, flags: u8) -> RowWriter {
            let mut b = count.to_be_bytes().to_vec();
            b.push(flags);
            RowWriter(b)
        }

        fn start(&mut self, index: u32, digest: u8, flags: u8) -> &mut Self {
            self.0.extend_from_slice(&index.to_be_bytes());
            self.0.extend_from_slice(&[digest; 20]);
            self.0.push(flags);
            self
        }

        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }

        /// `[n_fields][n_ops]`, ns + set (+ key) fields, ops.
        fn body(&mut self, ns: &[u8], set: &[u8], key: Option<&[u8]>, ops: &[(&[u8], &Value)]) -> &mut Self {
            let n_fields = 2 + u16::from(key.is_some());
            self.0.extend_from_slice(&n_fields.to_be_bytes());
            self.0.extend_from_slice(&(ops.len() as u16).to_be_bytes());
            Reply::write_field(&mut self.0, field_type::NAMESPACE, ns);
            Reply::write_field(&mut self.0, field_type::SET, set);
            if let Some(k) = key {
                Reply::write_field(&mut self.0, field_type::KEY, k);
            }
            for (name, value) in ops {
                Reply::write_value_op(&mut self.0, op_type::WRITE, name, value);
            }
            self
        }
    }

    /// The Rust 3.0 / C client read batch (§0.1): flags 0x0D, first row 0x0A (INFO + TTL) with
    /// READ|GET_ALL, then REPEAT rows.
    fn client_read_batch() -> Vec<u8> {
        let mut w = RowWriter::new(3, 0x0d);
        w.start(0, 0xa0, 0x0a)
            .bytes(&[info1::READ | info1::GET_ALL, 0, 0])
            .bytes(&0u32.to_be_bytes())
            .body(b"test", b"demo", None, &[]);
        w.start(1, 0xa1, row_flags::REPEAT);
        w.start(7, 0xa7, row_flags::REPEAT);
        w.0
    }

    #[test]
    fn parses_client_read_batch_with_repeat() {
        let data = client_read_batch();
        let batch = BatchIndex::parse(&data).unwrap();
        assert_eq!((batch.flags, batch.count), (0x0d, 3));
        let rows = batch.collect_rows(5000).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.iter()
                .map(|r| (r.index, r.digest.0[0], r.repeat))
                .collect::<Vec<_>>(),
            [(0, 0xa0, false), (1, 0xa1, true), (7, 0xa7, true)]
        );
        for r in &rows {
            assert_eq!(r.namespace(), Some(&b"test"[..]));
            assert_eq!(r.set(), Some(&b"demo"[..]));
            assert_eq!(
                (r.info1, r.info2, r.info3, r.flags),
                (info1::READ | info1::GET_ALL, 0, 0, 0x0a)
            );
            assert_eq!((r.fields.len(), r.ops.len(), r.key()), (2, 0, None));
        }
    }

    #[test]
    fn parses_write_rows_with_every_attribute_and_old_style_rows() {
        let v = Value::Int(5);
        let s = Value::Str(b"x".to_vec());
        let mut w = RowWriter::new(4, 0x0d);
        // Write row 0x1E: INFO + GEN + TTL + INFO4, with a key.
        w.start(10, 1, 0x1e)
            .bytes(&[0, info2::WRITE | info2::RESPOND_ALL_OPS, 0x08, 0x01])
            .bytes(&7u16.to_be_bytes())
            .bytes(&300u32.to_be_bytes())
            .body(b"ns", b"", Some(&[3, b'k']), &[(b"a", &v), (b"b", &s)]);
        // Old-style read row (flags 0): info1 only.
        w.start(11, 2, 0).bytes(&[info1::READ]).body(b"ns2", b"s2", None, &[]);
        w.start(12, 3, row_flags::REPEAT);
        // HAS_GEN only.
        w.start(13, 4, row_flags::HAS_GEN)
            .bytes(&[0])
            .bytes(&9u16.to_be_bytes())
            .body(b"ns", b"", None, &[]);
        let rows = BatchIndex::parse(&w.0).unwrap().collect_rows(4).unwrap();

        let r = &rows[0];
        assert_eq!(
            (r.index, r.info1, r.info2, r.info3, r.info4, r.generation, r.record_ttl),
            (10, 0, info2::WRITE | info2::RESPOND_ALL_OPS, 0x08, 0x01, 7, 300)
        );
        assert_eq!(r.key(), Some((3, &b"k"[..])));
        let ops: Vec<_> = r.ops.iter().collect();
        assert_eq!(ops.len(), 2);
        assert_eq!((ops[0].name, ops[0].decode_value()), (&b"a"[..], Ok(v.clone())));
        assert_eq!((ops[1].name, ops[1].decode_value()), (&b"b"[..], Ok(s.clone())));
        assert_eq!(r.fields.iter().map(|f| f.ftype).collect::<Vec<_>>(), [0, 1, 2]);

        let (old, rep) = (&rows[1], &rows[2]);
        assert_eq!(
            (old.info1, old.info2, old.generation, old.record_ttl),
            (info1::READ, 0, 0, 0)
        );
        assert_eq!(
            (rep.namespace(), rep.set(), rep.index),
            (Some(&b"ns2"[..]), Some(&b"s2"[..]), 12)
        );
        assert_eq!((rows[3].generation, rows[3].info1), (9, 0));
    }

    #[test]
    fn error_paths() {
        fn parse_all(d: &[u8]) -> Result<usize, MsgError> {
            BatchIndex::parse(d)
                .and_then(|b| b.collect_rows(u32::MAX))
                .map(|rows| rows.len())
        }
        assert_eq!(
            BatchIndex::parse(&[0, 0, 0, 1]),
            Err(MsgError::BatchTruncated { row: 0 })
        );
        assert_eq!(BatchIndex::parse(&[0, 0, 0, 0, 0x0d]), Err(MsgError::BatchEmpty));

        let data = client_read_batch();
        let e = BatchIndex::parse(&data).unwrap().collect_rows(2).unwrap_err();
        assert_eq!(e, MsgError::BatchTooManyRows { count: 3, max: 2 });
        assert_eq!(e.result_code(), result_code::BATCH_MAX_REQUESTS);

        // Every truncation of a valid batch is an error, never a panic.
        for cut in 0..data.len() {
            assert!(parse_all(&data[..cut]).is_err(), "cut at {cut}");
        }
        // Count larger than the rows present; trailing bytes after the last row.
        let mut more = data.clone();
        more[3] = 4;
        assert_eq!(parse_all(&more), Err(MsgError::BatchTruncated { row: 3 }));
        let mut extra = data.clone();
        extra.push(0);
        assert_eq!(parse_all(&extra), Err(MsgError::TrailingBytes { len: 1 }));

        // REPEAT first; REPEAT of a row with a key.
        let mut w = RowWriter::new(1, 0);
        w.start(0, 0, row_flags::REPEAT);
        assert_eq!(parse_all(&w.0), Err(MsgError::BatchRepeatFirst));
        let mut w = RowWriter::new(2, 0);
        w.start(0, 0, 0)
            .bytes(&[1])
            .body(b"ns", b"", Some(&[1, 0, 0, 0, 0, 0, 0, 0, 1]), &[]);
        w.start(1, 1, row_flags::REPEAT);
        assert_eq!(parse_all(&w.0), Err(MsgError::BatchRepeatWithKey { row: 1 }));

        // A bad field or op inside a row.
        let mut w = RowWriter::new(1, 0);
        w.start(0, 0, 0).bytes(&[1, 0, 1, 0, 0]);
        Reply::write_field(&mut w.0, field_type::DIGEST, &[0; 3]);
        assert_eq!(parse_all(&w.0), Err(MsgError::BadDigest { len: 3 }));
        let mut w = RowWriter::new(1, 0);
        w.start(0, 0, 0).bytes(&[1, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0]);
        assert_eq!(parse_all(&w.0), Err(MsgError::BadOpSize { index: 0 }));
        let mut w = RowWriter::new(1, 0);
        w.start(0, 0, 0).bytes(&[1, 0, 0, 0x80, 1]);
        assert_eq!(parse_all(&w.0), Err(MsgError::TooManyOps { n_ops: 0x8001 }));

        // The iterator stops after the first error.
        let mut rows = BatchIndex::parse(&more).unwrap().rows();
        assert_eq!(rows.by_ref().filter(Result::is_ok).count(), 3);
        assert_eq!(rows.next(), None);
    }

    #[test]
    fn batch_field_is_41_then_42() {
        let data = client_read_batch();
        for ftype in [field_type::BATCH_INDEX, field_type::BATCH_INDEX_WITH_SET] {
            let mut body = MsgHeader {
                header_sz: 22,
                info1: info1::BATCH,
                n_fields: 1,
                ..MsgHeader::default()
            }
            .encode()
            .to_vec();
            Reply::write_field(&mut body, ftype, &data);
            let msg = Msg::parse(&body).unwrap();
            assert_eq!(batch_field(&msg), Some(&data[..]));
        }
    }

    #[test]
    fn reply_rows_carry_their_index_and_end_with_last() {
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        let a = Value::Int(1);
        let b = Value::Str(b"hi".to_vec());
        write_row(&mut out, 7, result_code::OK, 2, 100, [(&b"a"[..], &a), (&b"b"[..], &b)]);
        write_row(&mut out, 3, result_code::KEY_NOT_FOUND, 0, 0, []);
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        Reply::last_proto(&mut out, result_code::OK);

        let first = ProtoHeader::parse(out[..8].try_into().unwrap()).unwrap();
        let first_end = PROTO_HEADER_BYTES + first.size as usize;
        let body = &out[PROTO_HEADER_BYTES..first_end];
        // Two concatenated messages: the first is 22 + 2 ops (17 + 11 bytes).
        let m1 = Msg::parse(&body[..22 + 17 + 11]).unwrap();
        assert_eq!(
            (
                m1.header.transaction_ttl,
                m1.header.generation,
                m1.header.record_ttl,
                m1.ops.len()
            ),
            (7, 2, 100, 2)
        );
        assert_eq!(m1.ops[1].decode_value(), Ok(b.clone()));
        let m2 = Msg::parse(&body[22 + 17 + 11..]).unwrap();
        assert_eq!(
            (m2.header.transaction_ttl, m2.header.result_code, m2.ops.len()),
            (3, 2, 0)
        );
        let last = ProtoHeader::parse(out[first_end..first_end + 8].try_into().unwrap()).unwrap();
        assert_eq!(last.size, 22);
        let m3 = Msg::parse(&out[first_end + 8..]).unwrap();
        assert_eq!(
            (m3.header.info3, m3.header.result_code),
            (crate::proto::msg::info3::LAST, 0)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_batch_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(b) = BatchIndex::parse(&bytes) {
                for row in b.rows().flatten() {
                    let _ = (row.namespace(), row.key(), row.fields.iter().count());
                    for op in row.ops.iter() {
                        let _ = op.decode_value();
                    }
                }
                let _ = b.collect_rows(1000);
            }
        }

        #[test]
        fn mutated_client_batch_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut data = client_read_batch();
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            if let Ok(b) = BatchIndex::parse(&data) {
                let _ = b.collect_rows(u32::MAX);
            }
        }
    }
}
