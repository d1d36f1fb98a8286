//! Partition scans (queries without a filter): request fields and the reply stream (wire spec
//! §7.3, §10.1).
//!
//! Request fields: NAMESPACE, SET (left out for a whole-namespace scan), RECORDS_PER_SECOND (u32
//! BE), SOCKET_TIMEOUT (u32 BE ms), TASK_ID (u64 BE), PID_ARRAY (n × u16 **little-endian**),
//! DIGEST_ARRAY (n × 20 bytes: resume the digest's partition strictly after it), MAX_RECORDS (u64
//! BE). The server rejects an empty or over-4096 PID array, duplicate pids and pids ≥ 4096 with
//! 4 PARAMETER.
//!
//! Reply stream: type-3 protos of concatenated messages: one record message per record
//! ([`write_record_header`] + READ ops), optionally partition-done messages
//! ([`write_partition_done`], only for failures), then LAST ([`Reply::write_last`] /
//! [`Reply::last_proto`]).
//!
//! Whether info3 PARTITION_DONE is required (the real server answers 16 without it) is the
//! server's decision; it is in `msg.header.info3`.

use super::msg::{field_type, info1, info3, Msg, MsgError, MsgHeader, Reply, DIGEST_BYTES};
use crate::digest::{Digest, PartitionId, N_PARTITIONS};

/// Bytes of one PID_ARRAY entry.
pub const PID_BYTES: usize = 2;
/// Most entries the PID and DIGEST arrays may hold together (one per partition).
pub const MAX_SCAN_PARTITIONS: usize = N_PARTITIONS;

/// Parses a PID_ARRAY (field 11): u16 **little-endian** partition ids (spec §7.3, §10.1), in
/// request order.
///
/// # Errors
/// [`MsgError::BadPidArray`] (empty or odd length), [`MsgError::TooManyPartitions`] (over 4096),
/// [`MsgError::PartitionOutOfRange`], [`MsgError::DuplicatePartition`]; all result 4.
pub fn parse_pid_array(data: &[u8]) -> Result<Vec<PartitionId>, MsgError> {
    if data.is_empty() || !data.len().is_multiple_of(PID_BYTES) {
        return Err(MsgError::BadPidArray { len: data.len() });
    }
    let n = data.len() / PID_BYTES;
    if n > MAX_SCAN_PARTITIONS {
        return Err(MsgError::TooManyPartitions { n });
    }
    let mut seen = PartitionSet::default();
    let mut pids = Vec::with_capacity(n);
    for entry in data.chunks_exact(PID_BYTES) {
        let pid = u16::from_le_bytes([entry[0], entry[1]]);
        seen.insert(pid)?;
        pids.push(PartitionId(pid));
    }
    Ok(pids)
}

/// Parses a DIGEST_ARRAY (field 12): 20-byte digests, in request order (spec §7.3). Each names
/// its partition ([`Digest::partition_id`]); no partition may appear twice.
///
/// # Errors
/// [`MsgError::BadDigestArray`] (empty or not a multiple of 20 bytes),
/// [`MsgError::TooManyPartitions`], [`MsgError::DuplicatePartition`]; all result 4.
pub fn parse_digest_array(data: &[u8]) -> Result<Vec<Digest>, MsgError> {
    if data.is_empty() || !data.len().is_multiple_of(DIGEST_BYTES) {
        return Err(MsgError::BadDigestArray { len: data.len() });
    }
    let n = data.len() / DIGEST_BYTES;
    if n > MAX_SCAN_PARTITIONS {
        return Err(MsgError::TooManyPartitions { n });
    }
    let mut seen = PartitionSet::default();
    let mut digests = Vec::with_capacity(n);
    for entry in data.chunks_exact(DIGEST_BYTES) {
        let digest = Digest(entry.try_into().expect("chunks of 20"));
        seen.insert(digest.partition_id().0)?;
        digests.push(digest);
    }
    Ok(digests)
}

/// A set of partition ids as a 4096-bit map, for the duplicate checks.
#[derive(Clone)]
struct PartitionSet([u64; N_PARTITIONS / 64]);

impl Default for PartitionSet {
    fn default() -> Self {
        PartitionSet([0; N_PARTITIONS / 64])
    }
}

impl PartitionSet {
    fn insert(&mut self, pid: u16) -> Result<(), MsgError> {
        if usize::from(pid) >= N_PARTITIONS {
            return Err(MsgError::PartitionOutOfRange { pid });
        }
        let (word, bit) = (usize::from(pid) / 64, pid % 64);
        if self.0[word] & (1 << bit) != 0 {
            return Err(MsgError::DuplicatePartition { pid });
        }
        self.0[word] |= 1 << bit;
        Ok(())
    }
}

/// Reads a fixed-size big-endian field (`N` = 4 or 8 bytes); `None` when absent.
fn fixed_field<const N: usize>(msg: &Msg<'_>, ftype: u8) -> Result<Option<[u8; N]>, MsgError> {
    msg.field(ftype)
        .map(|d| {
            d.try_into().map_err(|_| MsgError::BadFieldSize {
                ftype,
                len: d.len(),
                expected: N,
            })
        })
        .transpose()
}

/// One partition to scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanPartition {
    /// The partition.
    pub pid: PartitionId,
    /// Resume strictly after this digest (from DIGEST_ARRAY); `None` = the whole partition.
    pub after: Option<Digest>,
}

/// A partition scan request's options (spec §7.3), borrowed from its [`Msg`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRequest<'a> {
    /// The NAMESPACE field.
    pub namespace: &'a [u8],
    /// The SET field; `None` (or empty) scans the whole namespace.
    pub set: Option<&'a [u8]>,
    /// PID_ARRAY entries (whole partitions) in request order, then DIGEST_ARRAY entries
    /// (resumed partitions). Without either field: all 4096 partitions, whole (the old,
    /// non-partition scan).
    pub partitions: Vec<ScanPartition>,
    /// MAX_RECORDS: the record cap for this node this round; 0 = none.
    pub max_records: u64,
    /// RECORDS_PER_SECOND; 0 = unlimited.
    pub records_per_second: u32,
    /// SOCKET_TIMEOUT, ms; 0 = none.
    pub socket_timeout_ms: u32,
    /// TASK_ID; 0 when absent.
    pub task_id: u64,
    /// info1 GET_NO_BIN_DATA: metadata only, records carry no bins.
    pub no_bin_data: bool,
}

impl<'a> ScanRequest<'a> {
    /// Reads the scan fields of a request (spec §7.3). The ops (bin selection) stay in
    /// `msg.ops`.
    ///
    /// # Errors
    /// [`MsgError::MissingField`] (no namespace), [`MsgError::BadFieldSize`] for the fixed-size
    /// fields, the PID/DIGEST array errors, and [`MsgError::DuplicatePartition`] for a partition
    /// in both arrays; all result 4.
    pub fn from_msg(msg: &Msg<'a>) -> Result<ScanRequest<'a>, MsgError> {
        let namespace = msg.namespace().ok_or(MsgError::MissingField {
            ftype: field_type::NAMESPACE,
        })?;
        let pids = msg.field(field_type::PID_ARRAY).map(parse_pid_array).transpose()?;
        let digests = msg
            .field(field_type::DIGEST_ARRAY)
            .map(parse_digest_array)
            .transpose()?;
        let partitions = match (pids, digests) {
            (None, None) => (0..N_PARTITIONS as u16)
                .map(|p| ScanPartition {
                    pid: PartitionId(p),
                    after: None,
                })
                .collect(),
            (pids, digests) => {
                let (pids, digests) = (pids.unwrap_or_default(), digests.unwrap_or_default());
                let n = pids.len() + digests.len();
                if n > MAX_SCAN_PARTITIONS {
                    return Err(MsgError::TooManyPartitions { n });
                }
                let mut seen = PartitionSet::default();
                let mut partitions = Vec::with_capacity(n);
                for pid in pids {
                    seen.insert(pid.0)?;
                    partitions.push(ScanPartition { pid, after: None });
                }
                for d in digests {
                    seen.insert(d.partition_id().0)?;
                    partitions.push(ScanPartition {
                        pid: d.partition_id(),
                        after: Some(d),
                    });
                }
                partitions
            }
        };
        Ok(ScanRequest {
            namespace,
            set: msg.set(),
            partitions,
            max_records: fixed_field(msg, field_type::MAX_RECORDS)?.map_or(0, u64::from_be_bytes),
            records_per_second: fixed_field(msg, field_type::RECORDS_PER_SECOND)?.map_or(0, u32::from_be_bytes),
            socket_timeout_ms: fixed_field(msg, field_type::SOCKET_TIMEOUT)?.map_or(0, u32::from_be_bytes),
            task_id: fixed_field(msg, field_type::TASK_ID)?.map_or(0, u64::from_be_bytes),
            no_bin_data: msg.header.info1 & info1::GET_NO_BIN_DATA != 0,
        })
    }
}

/// What a scan record message says about its record (spec §7.3).
#[derive(Clone, Copy, Debug)]
pub struct ScanRecord<'r> {
    /// Namespace name (NAMESPACE field, always sent).
    pub namespace: &'r [u8],
    /// Set name; the SET field is sent only when this is non-empty.
    pub set: &'r [u8],
    /// The record's digest (DIGEST field, always sent: the Rust client needs it).
    pub digest: &'r Digest,
    /// The stored key as `(particle type, bytes)`, sent as the KEY field when present.
    pub key: Option<(u8, &'r [u8])>,
    /// Record generation.
    pub generation: u32,
    /// Void time, seconds since 2010-01-01 (0 = never expires).
    pub void_time: u32,
}

/// Appends a scan record message's header and fields (spec §7.3): result 0, info1
/// GET_NO_BIN_DATA when `no_bin_data`, generation, void time, then NAMESPACE, DIGEST, SET (if
/// any) and KEY (if any). Follow it with `n_ops` READ ops ([`Reply::write_value_op`]); returns
/// the header's offset ([`Reply::set_n_ops`]).
pub fn write_record_header(out: &mut Vec<u8>, record: &ScanRecord<'_>, n_ops: u16, no_bin_data: bool) -> usize {
    let n_fields = 2 + u16::from(!record.set.is_empty()) + u16::from(record.key.is_some());
    let at = Reply::msg_header(
        out,
        &MsgHeader {
            info1: if no_bin_data { info1::GET_NO_BIN_DATA } else { 0 },
            n_fields,
            n_ops,
            ..MsgHeader::reply(super::result_code::OK, record.generation, record.void_time)
        },
    );
    Reply::write_field(out, field_type::NAMESPACE, record.namespace);
    Reply::write_field(out, field_type::DIGEST, &record.digest.0);
    if !record.set.is_empty() {
        Reply::write_field(out, field_type::SET, record.set);
    }
    if let Some((ptype, bytes)) = record.key {
        // `[size][KEY][particle type][key bytes]`: the size counts both type bytes.
        let size = u32::try_from(2 + bytes.len()).expect("key under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[field_type::KEY, ptype]);
        out.extend_from_slice(bytes);
    }
    at
}

/// Appends a partition-done message (spec §7.3): header only, info3 PARTITION_DONE,
/// `generation` = partition id. Send it only for a partition that could not be scanned, with
/// 11 UNAVAILABLE (the Rust client fails the stream on any other code). Returns its offset.
pub fn write_partition_done(out: &mut Vec<u8>, pid: PartitionId, result_code: u8) -> usize {
    Reply::msg_header(
        out,
        &MsgHeader {
            info3: info3::PARTITION_DONE,
            ..MsgHeader::reply(result_code, u32::from(pid.0), 0)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::particle::Value;
    use crate::proto::msg::op_type;
    use crate::proto::{result_code, PROTO_HEADER_BYTES, PROTO_TYPE_MSG};

    fn le_pids(pids: &[u16]) -> Vec<u8> {
        pids.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn pid_array_is_little_endian() {
        // pid 1 is `01 00`; read big-endian it would be 256.
        assert_eq!(
            parse_pid_array(&[0x01, 0x00, 0x00, 0x01]).unwrap(),
            [PartitionId(1), PartitionId(256)]
        );
        let all: Vec<u16> = (0..4096).collect();
        let pids = parse_pid_array(&le_pids(&all)).unwrap();
        assert_eq!(pids.len(), 4096);
        assert!(pids.iter().enumerate().all(|(i, p)| usize::from(p.0) == i));
        // 4095 = ff 0f LE; as BE (0x0fff) it is 4095 too, so use 4094 = fe 0f.
        assert_eq!(parse_pid_array(&[0xfe, 0x0f]).unwrap(), [PartitionId(4094)]);
    }

    #[test]
    fn pid_array_errors() {
        assert_eq!(parse_pid_array(&[]), Err(MsgError::BadPidArray { len: 0 }));
        assert_eq!(parse_pid_array(&[1, 0, 2]), Err(MsgError::BadPidArray { len: 3 }));
        assert_eq!(
            parse_pid_array(&le_pids(&[4096])),
            Err(MsgError::PartitionOutOfRange { pid: 4096 })
        );
        // `00 10` read LE is 4096 (out of range); read BE it would be 16.
        assert_eq!(
            parse_pid_array(&[0x00, 0x10]),
            Err(MsgError::PartitionOutOfRange { pid: 4096 })
        );
        assert_eq!(
            parse_pid_array(&le_pids(&[5, 6, 5])),
            Err(MsgError::DuplicatePartition { pid: 5 })
        );
        let too_many: Vec<u16> = (0..4097).map(|i| i % 4096).collect();
        let e = parse_pid_array(&le_pids(&too_many)).unwrap_err();
        assert_eq!(e, MsgError::TooManyPartitions { n: 4097 });
        assert_eq!(e.result_code(), result_code::PARAMETER);
    }

    fn digest_in(pid: u16, fill: u8) -> Digest {
        let mut d = [fill; 20];
        d[..2].copy_from_slice(&pid.to_le_bytes());
        Digest(d)
    }

    #[test]
    fn digest_array() {
        let (a, b) = (digest_in(7, 1), digest_in(4095, 2));
        let data = [a.0, b.0].concat();
        assert_eq!(parse_digest_array(&data).unwrap(), [a, b]);
        assert_eq!(
            parse_digest_array(&data[..39]),
            Err(MsgError::BadDigestArray { len: 39 })
        );
        assert_eq!(parse_digest_array(&[]), Err(MsgError::BadDigestArray { len: 0 }));
        // Partition id uses the low 12 bits: 7 and 7 + 4096 are the same partition.
        let data = [a.0, digest_in(7 + 4096, 3).0].concat();
        assert_eq!(parse_digest_array(&data), Err(MsgError::DuplicatePartition { pid: 7 }));
    }

    /// A scan request as the C client sends it (§3.7, §7.3).
    fn scan_request(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = MsgHeader {
            header_sz: 22,
            info1: info1::READ,
            info3: info3::PARTITION_DONE,
            record_ttl: u32::MAX,
            n_fields: fields.len() as u16,
            ..MsgHeader::default()
        }
        .encode()
        .to_vec();
        for (t, d) in fields {
            Reply::write_field(&mut body, *t, d);
        }
        body
    }

    #[test]
    fn scan_request_fields() {
        let resume = digest_in(9, 4);
        let body = scan_request(&[
            (field_type::NAMESPACE, b"test".to_vec()),
            (field_type::SET, b"demo".to_vec()),
            (field_type::RECORDS_PER_SECOND, 500u32.to_be_bytes().to_vec()),
            (field_type::SOCKET_TIMEOUT, 30_000u32.to_be_bytes().to_vec()),
            (field_type::TASK_ID, 0x1122_3344_5566_7788u64.to_be_bytes().to_vec()),
            (field_type::PID_ARRAY, le_pids(&[3, 1, 2])),
            (field_type::DIGEST_ARRAY, resume.0.to_vec()),
            (field_type::MAX_RECORDS, 1000u64.to_be_bytes().to_vec()),
        ]);
        let msg = Msg::parse(&body).unwrap();
        let scan = ScanRequest::from_msg(&msg).unwrap();
        assert_eq!(scan.namespace, b"test");
        assert_eq!(scan.set, Some(&b"demo"[..]));
        assert_eq!(
            scan.partitions,
            [
                ScanPartition {
                    pid: PartitionId(3),
                    after: None
                },
                ScanPartition {
                    pid: PartitionId(1),
                    after: None
                },
                ScanPartition {
                    pid: PartitionId(2),
                    after: None
                },
                ScanPartition {
                    pid: PartitionId(9),
                    after: Some(resume)
                },
            ]
        );
        assert_eq!(
            (
                scan.max_records,
                scan.records_per_second,
                scan.socket_timeout_ms,
                scan.task_id,
                scan.no_bin_data
            ),
            (1000, 500, 30_000, 0x1122_3344_5566_7788, false)
        );

        // Whole namespace, no arrays, no options: every partition, defaults 0.
        let msg_body = scan_request(&[(field_type::NAMESPACE, b"test".to_vec())]);
        let scan = ScanRequest::from_msg(&Msg::parse(&msg_body).unwrap()).unwrap();
        assert_eq!(
            (scan.set, scan.partitions.len(), scan.max_records, scan.task_id),
            (None, 4096, 0, 0)
        );
        assert!(scan.partitions.iter().all(|p| p.after.is_none()));
    }

    #[test]
    fn scan_request_errors() {
        let from = |fields: &[(u8, Vec<u8>)]| {
            let body = scan_request(fields);
            ScanRequest::from_msg(&Msg::parse(&body).unwrap()).map(|s| s.partitions.len())
        };
        let ns = (field_type::NAMESPACE, b"test".to_vec());
        assert_eq!(
            from(&[(field_type::PID_ARRAY, le_pids(&[1]))]),
            Err(MsgError::MissingField {
                ftype: field_type::NAMESPACE
            })
        );
        assert_eq!(
            from(&[ns.clone(), (field_type::MAX_RECORDS, vec![0; 4])]),
            Err(MsgError::BadFieldSize {
                ftype: field_type::MAX_RECORDS,
                len: 4,
                expected: 8
            })
        );
        assert_eq!(
            from(&[ns.clone(), (field_type::SOCKET_TIMEOUT, vec![0; 8])]),
            Err(MsgError::BadFieldSize {
                ftype: field_type::SOCKET_TIMEOUT,
                len: 8,
                expected: 4
            })
        );
        assert_eq!(
            from(&[ns.clone(), (field_type::PID_ARRAY, vec![])]),
            Err(MsgError::BadPidArray { len: 0 })
        );
        // The same partition in both arrays.
        assert_eq!(
            from(&[
                ns.clone(),
                (field_type::PID_ARRAY, le_pids(&[9])),
                (field_type::DIGEST_ARRAY, digest_in(9, 0).0.to_vec())
            ]),
            Err(MsgError::DuplicatePartition { pid: 9 })
        );
        // 4096 pids plus one digest is over the limit.
        let all: Vec<u16> = (0..4096).collect();
        assert_eq!(
            from(&[
                ns.clone(),
                (field_type::PID_ARRAY, le_pids(&all)),
                (field_type::DIGEST_ARRAY, digest_in(9, 0).0.to_vec())
            ]),
            Err(MsgError::TooManyPartitions { n: 4097 })
        );
        assert_eq!(from(&[ns, (field_type::PID_ARRAY, le_pids(&all))]), Ok(4096));
    }

    #[test]
    fn reply_stream_record_partition_done_last() {
        let digest = Digest::compute(b"demo", 3, b"k1");
        let v = Value::Int(1);
        let mut out = Vec::new();
        let start = Reply::begin(&mut out);
        let rec = ScanRecord {
            namespace: b"test",
            set: b"demo",
            digest: &digest,
            key: Some((3, b"k1")),
            generation: 4,
            void_time: 99,
        };
        let at = write_record_header(&mut out, &rec, 0, false);
        Reply::write_value_op(&mut out, op_type::READ, b"a", &v);
        Reply::set_n_ops(&mut out, at, 1);
        let second = out.len();
        write_record_header(
            &mut out,
            &ScanRecord {
                set: b"",
                key: None,
                ..rec
            },
            0,
            true,
        );
        let third = out.len();
        write_partition_done(&mut out, PartitionId(4095), result_code::UNAVAILABLE);
        let fourth = out.len();
        Reply::write_last(&mut out, result_code::OK);
        Reply::finish(&mut out, start, PROTO_TYPE_MSG);
        assert_eq!(
            u64::from_be_bytes(out[..8].try_into().unwrap()) & 0xffff_ffff_ffff,
            (out.len() - 8) as u64
        );

        let m = Msg::parse(&out[PROTO_HEADER_BYTES..second]).unwrap();
        assert_eq!((m.header.generation, m.header.record_ttl, m.header.info1), (4, 99, 0));
        assert_eq!(
            (m.namespace(), m.set(), m.digest(), m.key()),
            (
                Some(&b"test"[..]),
                Some(&b"demo"[..]),
                Some(digest),
                Some((3, &b"k1"[..]))
            )
        );
        assert_eq!(m.fields.iter().map(|f| f.ftype).collect::<Vec<_>>(), [0, 4, 1, 2]);
        assert_eq!(m.ops[0].decode_value(), Ok(v));

        let m = Msg::parse(&out[second..third]).unwrap();
        assert_eq!(
            (m.header.info1, m.set(), m.key(), m.fields.len()),
            (info1::GET_NO_BIN_DATA, None, None, 2)
        );

        let m = Msg::parse(&out[third..fourth]).unwrap();
        assert_eq!(
            (m.header.info3, m.header.generation, m.header.result_code),
            (info3::PARTITION_DONE, 4095, 11)
        );

        let m = Msg::parse(&out[fourth..]).unwrap();
        assert_eq!((m.header.info3, m.header.result_code), (info3::LAST, 0));
    }
}
