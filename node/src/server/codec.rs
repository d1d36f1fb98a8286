//! Between the wire and the worker: decoding a request into a [`Command`] (or an immediate
//! reply), encoding a [`Reply`], info requests, and filter expressions.

use super::exec::{CmdOp, Command, Reply};
use super::NodeShared;
use crate::proto::msg::{field_type, info1, Msg, Reply as W};
use crate::proto::{exp, info};
use crate::proto::{result_code as rc, PROTO_TYPE_ADMIN, PROTO_TYPE_INFO, PROTO_TYPE_MSG, PROTO_TYPE_MSG_COMPRESSED};
use crate::record::{Record, StoredKey};
use std::sync::atomic::Ordering;

/// What to do with one request.
pub enum Decoded {
    /// A single-record command for the owner of its partition.
    Single(Box<Command>),
    /// An info request: answer from the node's state.
    Info,
    /// Answer these bytes (errors, admin, unsupported requests).
    Reply(Vec<u8>),
    /// The request is unreadable: close the connection.
    Close,
}

fn code_reply(code: u8, last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(30);
    if last {
        let start = W::begin(&mut out);
        W::write_last(&mut out, code);
        W::finish(&mut out, start, PROTO_TYPE_MSG);
    } else {
        W::header_only(&mut out, code, 0, 0);
    }
    out
}

/// Decodes the body of a proto of type `ptype`.
pub fn decode(ptype: u8, body: &[u8], namespace: &str) -> Decoded {
    match ptype {
        PROTO_TYPE_INFO => Decoded::Info,
        // Security is not enabled: the C client then carries on without a session (spec §10.9).
        PROTO_TYPE_ADMIN => {
            let mut out = Vec::with_capacity(24);
            let start = W::begin(&mut out);
            let mut hdr = [0u8; 16];
            hdr[1] = rc::SECURITY_NOT_ENABLED;
            out.extend_from_slice(&hdr);
            W::finish(&mut out, start, PROTO_TYPE_ADMIN);
            Decoded::Reply(out)
        }
        PROTO_TYPE_MSG => decode_msg(body, namespace),
        PROTO_TYPE_MSG_COMPRESSED => match crate::proto::compress::inflate_request(body) {
            Ok(inner) if inner.len() >= crate::proto::PROTO_HEADER_BYTES => {
                decode_msg(&inner[crate::proto::PROTO_HEADER_BYTES..], namespace)
            }
            _ => Decoded::Close,
        },
        _ => Decoded::Close,
    }
}

fn decode_msg(body: &[u8], namespace: &str) -> Decoded {
    let msg = match Msg::parse(body) {
        Ok(m) => m,
        Err(e) if e.closes_connection() => return Decoded::Close,
        Err(e) => return Decoded::Reply(code_reply(e.result_code(), false)),
    };
    let h = msg.header;
    let multi = h.info1 & info1::BATCH != 0 || msg.field(field_type::PID_ARRAY).is_some() || msg.digest().is_none();
    if multi {
        // Batch and scan streams come with a later change; answer a stream-ending error.
        return Decoded::Reply(code_reply(rc::UNSUPPORTED_FEATURE, true));
    }
    if msg.namespace() != Some(namespace.as_bytes()) {
        return Decoded::Reply(code_reply(rc::NAMESPACE_NOT_FOUND, false));
    }
    let Some(digest) = msg.digest() else {
        return Decoded::Reply(code_reply(rc::PARAMETER, false));
    };
    let set_name = msg.set().unwrap_or_default().to_vec();
    if set_name.len() > crate::record::SET_NAME_MAX_BYTES {
        return Decoded::Reply(code_reply(rc::PARAMETER, false));
    }
    let key = msg.key().map(|(ptype, bytes)| StoredKey {
        ptype,
        bytes: bytes.to_vec(),
    });
    let ops = msg
        .ops
        .iter()
        .map(|o| CmdOp {
            op_type: o.op_type,
            particle_type: o.particle_type,
            name: o.name.to_vec(),
            value: o.value.to_vec(),
        })
        .collect();
    Decoded::Single(Box::new(Command {
        digest,
        set_name,
        key,
        info1: h.info1,
        info2: h.info2,
        info3: h.info3,
        generation: h.generation,
        record_ttl: h.record_ttl,
        ops,
        filter_exp: msg.field(field_type::FILTER_EXP).unwrap_or_default().to_vec(),
    }))
}

/// Encodes a single-record reply (spec §3.6, §10.3: no fields, `header_sz` 22).
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let start = W::begin(&mut out);
    let at = W::write_header(&mut out, r.result_code, 0, r.generation, r.void_time, 0, 0, 0);
    for op in &r.ops {
        match &op.value {
            Some(v) => W::write_value_op(&mut out, op.op_type, &op.name, v),
            None => W::write_op(&mut out, op.op_type, 0, &op.name, &[]),
        }
    }
    W::set_n_ops(&mut out, at, r.ops.len().min(u16::MAX as usize) as u16);
    W::finish(&mut out, start, PROTO_TYPE_MSG);
    out
}

/// A stored record as a filter expression sees it.
struct View<'a> {
    rec: &'a Record,
    size: u64,
}

impl exp::RecordView for View<'_> {
    fn digest(&self) -> &[u8; 20] {
        &self.rec.meta.digest.0
    }
    fn last_update_cl_ms(&self) -> u64 {
        self.rec.meta.lut_ms
    }
    fn void_time_cl_s(&self) -> u32 {
        self.rec.meta.void_time
    }
    fn record_size_bytes(&self) -> u64 {
        self.size
    }
    fn set_name(&self) -> Option<&[u8]> {
        Some(&self.rec.set_name)
    }
    fn key_stored(&self) -> Option<bool> {
        Some(self.rec.key.is_some())
    }
    fn bin(&self, name: &[u8]) -> Option<&crate::particle::Value> {
        self.rec
            .bins
            .iter()
            .find(|b| b.name.as_bytes() == name)
            .map(|b| &b.value)
    }
}

/// The compiled filter of a command (field 43), if it has one, as a predicate over a stored
/// record; `now_cl_ms` is the clock for `since_update` and TTL ops.
///
/// # Errors
/// The result code for an expression that does not compile (4, or 16 for unsupported ops).
pub fn filter_for(cmd: &Command, now_cl_ms: u64) -> Result<Option<impl Fn(&Record) -> Result<bool, u8>>, u8> {
    if cmd.filter_exp.is_empty() {
        return Ok(None);
    }
    let expr = exp::compile(&cmd.filter_exp).map_err(|e| e.result_code())?;
    Ok(Some(move |rec: &Record| {
        let size = crate::record::padded(crate::record::encoded_len(rec)) as u64;
        Ok(exp::eval(&expr, &View { rec, size }, now_cl_ms))
    }))
}

/// The node state behind info commands: settings and the gauges the workers publish.
struct Source<'a>(&'a NodeShared);

impl info::InfoSource for Source<'_> {
    fn node_name(&self) -> &str {
        &self.0.node_name
    }
    fn cluster_name(&self) -> &str {
        &self.0.cluster_name
    }
    fn service_endpoint(&self) -> std::net::SocketAddr {
        self.0.listen
    }
    fn namespaces(&self) -> Vec<String> {
        vec![self.0.namespace.clone()]
    }
    fn namespace_stats(&self, ns: &str) -> Option<info::NamespaceStats> {
        (ns == self.0.namespace).then(|| info::NamespaceStats {
            objects: self.0.objects(),
            tombstones: 0,
            data_used_bytes: self.0.sum(&self.0.live_bytes),
            data_total_bytes: self.0.sum(&self.0.capacity_bytes),
            extra: vec![
                ("storage-engine".into(), "device".into()),
                ("default-ttl".into(), "0".into()),
            ],
        })
    }
    fn statistics(&self) -> Vec<(String, String)> {
        vec![
            ("cluster_size".into(), "1".into()),
            ("objects".into(), self.0.objects().to_string()),
            (
                "client_connections".into(),
                self.0.connections.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }
    fn sets(&self, _ns: &str) -> Vec<info::SetStats> {
        Vec::new()
    }
    fn truncate(&mut self, _ns: &str, _set: Option<&str>, _lut_nanos: Option<u64>) -> Result<(), info::TruncateError> {
        Err(info::TruncateError::Failed("truncate is not implemented yet".into()))
    }
    fn latencies(&self) -> Vec<info::LatencyHist> {
        Vec::new()
    }
}

/// Answers an info request: a type-1 proto whose body is `respond`'s text (spec §2.1).
pub fn info_reply(body: &[u8], shared: &NodeShared) -> Vec<u8> {
    let mut out = Vec::new();
    let start = W::begin(&mut out);
    info::respond(body, &mut Source(shared), &mut out);
    W::finish(&mut out, start, PROTO_TYPE_INFO);
    out
}
