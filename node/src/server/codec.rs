//! Between the wire and the worker: decoding a request into a [`Command`] (or an immediate
//! reply), encoding a [`Reply`], info requests, and filter expressions.

use super::exec::{CmdOp, Command, Reply};
use super::{NodeShared, NodeView};
use crate::proto::batch::{self, BatchIndex, BatchRow};
use crate::proto::msg::{field_type, info1, Msg, Reply as W};
use crate::proto::msg::{info2, Op};
use crate::proto::scan::{ScanPartition, ScanRecord, ScanRequest};
use crate::proto::{exp, info};
use crate::proto::{result_code as rc, PROTO_TYPE_ADMIN, PROTO_TYPE_INFO, PROTO_TYPE_MSG, PROTO_TYPE_MSG_COMPRESSED};
use crate::record::{Record, StoredKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to do with one request.
pub enum Decoded {
    /// A single-record command for the owner of its partition.
    Single(Box<Command>),
    /// A batch: one command (or a row error) per row, each for the owner of its partition.
    Batch(Vec<BatchItem>),
    /// A partition scan (a query without secondary index): what to return, and the partitions
    /// in request order.
    Scan(Arc<ScanSpec>, Vec<ScanPartition>),
    /// An info request: answer from the node's state.
    Info,
    /// Answer these bytes (errors, admin, unsupported requests).
    Reply(Vec<u8>),
    /// The request is unreadable: close the connection.
    Close,
}

/// Most rows in one batch request (the real server's old `batch-max-requests` default was 5000;
/// clients split larger batches per node, so this only bounds a request's memory).
pub const BATCH_MAX_ROWS: u32 = 100_000;

/// One row of a batch: its index in the client's list and what to run (or the row's error).
pub struct BatchItem {
    pub index: u32,
    pub cmd: Result<Box<Command>, u8>,
}

/// What a scan returns (spec §7.3), shared by the workers that run its parts.
#[derive(Debug)]
pub struct ScanSpec {
    /// The namespace, echoed in every record message.
    pub namespace: Vec<u8>,
    /// Only records of this set; empty = the whole namespace.
    pub set: Vec<u8>,
    /// Bins to return; `None` = all.
    pub bins: Option<Vec<Vec<u8>>>,
    /// Metadata only (info1 GET_NO_BIN_DATA).
    pub no_bin_data: bool,
    /// The compiled filter expression (field 43).
    pub filter: Option<exp::Expr>,
    /// Record cap for this node this round (MAX_RECORDS); 0 = none.
    pub max_records: u64,
    /// RECORDS_PER_SECOND for this node; 0 = unlimited.
    pub records_per_second: u32,
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
    if h.info1 & info1::BATCH != 0 {
        return decode_batch(&msg, namespace);
    }
    if msg.digest().is_none() {
        return decode_scan(&msg, namespace);
    }
    if msg.namespace() != Some(namespace.as_bytes()) {
        return Decoded::Reply(code_reply(rc::NAMESPACE_NOT_FOUND, false));
    }
    // UDFs (record apply) come with a later issue: answer 16 and leave the record alone.
    if msg.field(field_type::UDF_FUNCTION).is_some() || msg.field(field_type::UDF_PACKAGE_NAME).is_some() {
        return Decoded::Reply(code_reply(rc::UNSUPPORTED_FEATURE, false));
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
    let ops = msg.ops.iter().map(cmd_op).collect();
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

fn cmd_op(o: &Op<'_>) -> CmdOp {
    CmdOp {
        op_type: o.op_type,
        particle_type: o.particle_type,
        name: o.name.to_vec(),
        value: o.value.to_vec(),
    }
}

/// A batch request (spec §7.1): every row becomes a command for its partition's owner; rows
/// that cannot run (another namespace, UDF) carry their result code. A malformed batch field
/// answers its result code in a LAST message (§7.2: "a single LAST message is enough").
fn decode_batch(msg: &Msg<'_>, namespace: &str) -> Decoded {
    let Some(data) = batch::batch_field(msg) else {
        return Decoded::Reply(code_reply(rc::PARAMETER, true));
    };
    let rows = match BatchIndex::parse(data).and_then(|b| b.collect_rows(BATCH_MAX_ROWS)) {
        Ok(rows) => rows,
        Err(e) if e.closes_connection() => return Decoded::Close,
        Err(e) => return Decoded::Reply(code_reply(e.result_code(), true)),
    };
    let outer_filter = msg.field(field_type::FILTER_EXP).unwrap_or_default();
    let items = rows
        .iter()
        .map(|row| BatchItem {
            index: row.index,
            cmd: row_command(row, namespace, outer_filter),
        })
        .collect();
    Decoded::Batch(items)
}

fn row_command(row: &BatchRow<'_>, namespace: &str, outer_filter: &[u8]) -> Result<Box<Command>, u8> {
    // Rows from very old clients may carry no fields at all: "just the namespace" (spec §7.1).
    let ns = row.namespace();
    if ns.is_some_and(|n| n != namespace.as_bytes()) {
        return Err(rc::NAMESPACE_NOT_FOUND);
    }
    if row.fields.get(field_type::UDF_FUNCTION).is_some() || row.fields.get(field_type::UDF_PACKAGE_NAME).is_some() {
        return Err(rc::UNSUPPORTED_FEATURE);
    }
    let set_name = row.set().unwrap_or_default().to_vec();
    if set_name.len() > crate::record::SET_NAME_MAX_BYTES {
        return Err(rc::PARAMETER);
    }
    Ok(Box::new(Command {
        digest: row.digest,
        set_name,
        key: row.key().map(|(ptype, bytes)| StoredKey {
            ptype,
            bytes: bytes.to_vec(),
        }),
        info1: row.info1,
        info2: row.info2,
        info3: row.info3,
        generation: u32::from(row.generation),
        record_ttl: row.record_ttl,
        ops: row.ops.iter().map(|o| cmd_op(&o)).collect(),
        filter_exp: row.fields.get(field_type::FILTER_EXP).unwrap_or(outer_filter).to_vec(),
    }))
}

/// A scan or query without a digest (spec §7.3). Secondary-index queries answer 201 (there
/// are no secondary indexes), background jobs and aggregations 16; both in a LAST message.
fn decode_scan(msg: &Msg<'_>, namespace: &str) -> Decoded {
    let req = match ScanRequest::from_msg(msg) {
        Ok(r) => r,
        Err(e) if e.closes_connection() => return Decoded::Close,
        Err(e) => return Decoded::Reply(code_reply(e.result_code(), true)),
    };
    if req.namespace != namespace.as_bytes() {
        return Decoded::Reply(code_reply(rc::NAMESPACE_NOT_FOUND, true));
    }
    if msg.field(field_type::INDEX_RANGE).is_some() || msg.field(field_type::INDEX_NAME).is_some() {
        return Decoded::Reply(code_reply(rc::SINDEX_NOT_FOUND, true));
    }
    let udf = msg.field(field_type::UDF_OP).is_some() || msg.field(field_type::UDF_FUNCTION).is_some();
    if udf || msg.header.info2 & info2::WRITE != 0 {
        return Decoded::Reply(code_reply(rc::UNSUPPORTED_FEATURE, true));
    }
    let filter = match msg.field(field_type::FILTER_EXP).filter(|f| !f.is_empty()) {
        Some(bytes) => match exp::compile(bytes) {
            Ok(e) => Some(e),
            Err(e) => return Decoded::Reply(code_reply(e.result_code(), true)),
        },
        None => None,
    };
    let mut bins = None;
    if !msg.ops.is_empty() {
        let mut names = Vec::with_capacity(msg.ops.len());
        for op in &msg.ops {
            if op.op_type != crate::proto::msg::op_type::READ {
                // Projections through read ops of other kinds (CDT, expressions) come later.
                return Decoded::Reply(code_reply(rc::UNSUPPORTED_FEATURE, true));
            }
            names.push(op.name.to_vec());
        }
        bins = Some(names);
    }
    let spec = ScanSpec {
        namespace: req.namespace.to_vec(),
        set: req.set.unwrap_or_default().to_vec(),
        bins,
        no_bin_data: req.no_bin_data,
        filter,
        max_records: req.max_records,
        records_per_second: req.records_per_second,
    };
    Decoded::Scan(Arc::new(spec), req.partitions)
}

/// Appends one scan record message (spec §7.3) for `rec`, with the bins `spec` selects.
/// Returns false (and appends nothing) when a bin selection matches none of the record's bins:
/// the real server skips such records.
pub fn write_scan_record(out: &mut Vec<u8>, spec: &ScanSpec, rec: &Record) -> bool {
    let bins: Vec<&crate::particle::Bin> = if spec.no_bin_data {
        Vec::new()
    } else {
        match &spec.bins {
            None => rec.bins.iter().collect(),
            Some(names) => {
                let sel: Vec<_> = rec
                    .bins
                    .iter()
                    .filter(|b| names.iter().any(|n| n.as_slice() == b.name.as_bytes()))
                    .collect();
                if sel.is_empty() {
                    return false;
                }
                sel
            }
        }
    };
    let meta = ScanRecord {
        namespace: &spec.namespace,
        set: &rec.set_name,
        digest: &rec.meta.digest,
        key: rec.key.as_ref().map(|k| (k.ptype, k.bytes.as_slice())),
        generation: u32::from(rec.meta.generation),
        void_time: rec.meta.void_time,
    };
    let n_ops = u16::try_from(bins.len()).unwrap_or(u16::MAX);
    crate::proto::scan::write_record_header(out, &meta, n_ops, spec.no_bin_data);
    for b in bins.iter().take(usize::from(n_ops)) {
        W::write_value_op(out, crate::proto::msg::op_type::READ, b.name.as_bytes(), &b.value);
    }
    true
}

/// Encodes a single-record reply (spec §3.6, §10.3: no fields, `header_sz` 22).
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    encode_reply_as(r, 0)
}

/// Encodes a batch row reply (spec §7.2): as [`encode_reply`], with the row's index in
/// `transaction_ttl`, as its own proto.
pub fn encode_row(r: &Reply, index: u32) -> Vec<u8> {
    encode_reply_as(r, index)
}

fn encode_reply_as(r: &Reply, transaction_ttl: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_reply_into(r, transaction_ttl, &mut out);
    out
}

/// Appends `r` as one proto message to `out` (a connection's send buffer: a reply encoded in
/// place costs no allocation and no copy). The space is reserved once, exactly: 8-byte proto
/// header, 22-byte message header, per op 8 bytes plus its name and value (spec §3, §5).
pub(crate) fn encode_reply_into(r: &Reply, transaction_ttl: u32, out: &mut Vec<u8>) {
    let bins = r.record.as_deref().map_or(&[][..], |rec| &rec.bins[..]);
    let ops_bytes: usize = r
        .ops
        .iter()
        .map(|op| 8 + op.name.len() + op.value.as_ref().map_or(0, |v| v.wire_len()))
        .sum::<usize>()
        + bins.iter().map(|b| 8 + b.name.as_bytes().len() + b.value.wire_len()).sum::<usize>();
    out.reserve(8 + 22 + ops_bytes);
    let start = W::begin(out);
    let at = W::write_header(
        out,
        r.result_code,
        0,
        r.generation,
        r.void_time,
        transaction_ttl,
        0,
        0,
    );
    for op in &r.ops {
        match &op.value {
            Some(v) => W::write_value_op(out, op.op_type, &op.name, v),
            None => W::write_op(out, op.op_type, 0, &op.name, &[]),
        }
    }
    for b in bins {
        W::write_value_op(out, crate::proto::msg::op_type::READ, b.name.as_bytes(), &b.value);
    }
    W::set_n_ops(out, at, r.n_ops().min(u16::MAX as usize) as u16);
    W::finish(out, start, PROTO_TYPE_MSG);
}

/// A stored record as a filter expression sees it; `size` is its padded stored size, bytes.
pub(crate) struct StoredView<'a> {
    pub rec: &'a Record,
    pub size: u64,
}

impl exp::RecordView for StoredView<'_> {
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
        Ok(exp::eval(&expr, &StoredView { rec, size }, now_cl_ms))
    }))
}

/// The node state behind info commands: settings and the gauges the workers publish; `now_cl_ms`
/// is the worker's clock (ms since 2010) for truncates without a `lut`.
struct Source<'a> {
    s: &'a NodeShared,
    view: NodeView,
    now_cl_ms: u64,
    /// The node name this view answers with.
    name: String,
}

impl Source<'_> {
    /// `objects` of this view: the worker's master copies, or the whole node's.
    fn objects(&self) -> u64 {
        match self.view.worker {
            Some(w) => self.s.worker_objects(w),
            None => self.s.objects(),
        }
    }

    fn gauge(&self, f: impl Fn(&super::WorkerGauges) -> &std::sync::atomic::AtomicU64) -> u64 {
        match self.view.worker {
            Some(w) => f(&self.s.workers[w]).load(Ordering::Relaxed),
            None => self.s.sum(f),
        }
    }
}

impl Source<'_> {
    /// The data path's figures (this worker's in per-core mode, else the node's): record cache,
    /// reads by source, defrag, write amplification, device queue, refusals. Aerospike's names
    /// where Aerospike has the figure (`cache_read_pct`, `defrag_reads`, `free_wblocks`,
    /// `data_used_pct`), else Bolide's.
    fn data_path_stats(&self) -> Vec<(String, String)> {
        let g = |f: fn(&super::WorkerGauges) -> &AtomicU64| self.gauge(f);
        let pct = |part: u64, all: u64| {
            if all == 0 {
                "0".to_string()
            } else {
                format!("{:.1}", part as f64 * 100.0 / all as f64)
            }
        };
        let (hits, misses) = (g(|w| &w.cache_hits), g(|w| &w.cache_misses));
        let (ram, dev) = (g(|w| &w.reads_ram), g(|w| &w.reads_device));
        let (client, device) = (g(|w| &w.client_bytes), g(|w| &w.device_write_bytes));
        let (used, total) = (g(|w| &w.live_bytes), g(|w| &w.capacity_bytes));
        vec![
            ("record_cache_hits".into(), hits.to_string()),
            ("record_cache_misses".into(), misses.to_string()),
            ("record_cache_hit_pct".into(), pct(hits, hits + misses)),
            ("record_cache_used_bytes".into(), g(|w| &w.cache_used_bytes).to_string()),
            ("reads_from_write_buffer".into(), ram.to_string()),
            ("reads_from_device".into(), dev.to_string()),
            ("cache_read_pct".into(), pct(hits + ram, hits + ram + dev)),
            ("defrag_reads".into(), g(|w| &w.wblocks_defragged).to_string()),
            ("defrag_record_bytes".into(), g(|w| &w.defrag_bytes).to_string()),
            ("client_record_bytes".into(), client.to_string()),
            ("device_write_bytes".into(), device.to_string()),
            (
                "write_amplification".into(),
                if client == 0 {
                    "0".into()
                } else {
                    format!("{:.3}", device as f64 / client as f64)
                },
            ),
            ("free_wblocks".into(), g(|w| &w.wblocks_free).to_string()),
            ("data_used_pct".into(), pct(used, total)),
            ("device_queue_depth".into(), g(|w| &w.device_in_flight).to_string()),
            ("read_corrupt_records".into(), g(|w| &w.read_corrupt).to_string()),
            ("writes_refused_space".into(), g(|w| &w.writes_refused_space).to_string()),
            ("writes_refused_overload".into(), g(|w| &w.writes_refused_overload).to_string()),
            (
                "refused_connections".into(),
                self.s.refused_connections.load(Ordering::Relaxed).to_string(),
            ),
            ("requests".into(), g(|w| &w.requests).to_string()),
            ("cross_core_messages".into(), g(|w| &w.messages_sent).to_string()),
            ("doorbells".into(), g(|w| &w.doorbells).to_string()),
        ]
    }
}

impl info::InfoSource for Source<'_> {
    fn node_name(&self) -> &str {
        &self.name
    }
    fn partition_generation(&self) -> u32 {
        self.s.pmap.generation()
    }
    fn peers(&self) -> Vec<(String, std::net::SocketAddr)> {
        match self.view.worker {
            Some(me) => (0..self.s.workers.len())
                .filter(|&w| w != me)
                .map(|w| (self.s.worker_node_name(w), self.s.worker_endpoint(w)))
                .collect(),
            None => Vec::new(),
        }
    }
    fn replica_bitmaps(&self) -> Vec<[u8; info::PARTITION_BITMAP_BYTES]> {
        match self.view.worker {
            Some(w) => {
                let [master, replica] = self.s.pmap.bitmaps(w);
                if self.s.replication_factor > 1 {
                    vec![master, replica]
                } else {
                    vec![master]
                }
            }
            None => vec![[0xFF; info::PARTITION_BITMAP_BYTES]],
        }
    }
    fn cluster_name(&self) -> &str {
        &self.s.cluster_name
    }
    fn service_endpoint(&self) -> std::net::SocketAddr {
        match self.view.worker {
            Some(w) => self.s.worker_endpoint(w),
            None => self.s.listen,
        }
    }
    fn namespaces(&self) -> Vec<String> {
        vec![self.s.namespace.clone()]
    }
    fn namespace_stats(&self, ns: &str) -> Option<info::NamespaceStats> {
        (ns == self.s.namespace).then(|| info::NamespaceStats {
            objects: self.objects(),
            tombstones: 0,
            data_used_bytes: self.gauge(|w| &w.live_bytes),
            data_total_bytes: self.gauge(|w| &w.capacity_bytes),
            extra: vec![
                ("storage-engine".into(), "device".into()),
                ("default-ttl".into(), "0".into()),
            ],
        })
    }
    fn statistics(&self) -> Vec<(String, String)> {
        let s = self.s;
        let failed = s.failed_devices();
        let unreplicated = if s.replication_factor > 1 {
            s.pmap.unreplicated()
        } else {
            0
        };
        let mut stats: Vec<(String, String)> = vec![
            ("cluster_size".into(), "1".into()),
            ("objects".into(), self.objects().to_string()),
            (
                "client_connections".into(),
                s.connections.load(Ordering::Relaxed).to_string(),
            ),
            // Bolide: replication across cores and devices.
            ("replication_factor".into(), s.replication_factor.to_string()),
            ("degraded".into(), (failed > 0 || unreplicated > 0).to_string()),
            ("failed_devices".into(), failed.to_string()),
            ("partitions_unreplicated".into(), unreplicated.to_string()),
            (
                "partitions_failed_over".into(),
                s.partitions_failed_over.load(Ordering::Relaxed).to_string(),
            ),
            (
                "rereplication_partitions_remaining".into(),
                s.sync_remaining.load(Ordering::Relaxed).to_string(),
            ),
            (
                "rereplicated_records".into(),
                s.rereplicated_records.load(Ordering::Relaxed).to_string(),
            ),
            (
                "rereplication_read_errors".into(),
                s.rereplication_read_errors.load(Ordering::Relaxed).to_string(),
            ),
        ];
        stats.extend(self.data_path_stats());
        stats
    }
    fn fail_device(&mut self, worker: Option<&str>, device: Option<&str>) -> Result<(), String> {
        let s = self.s;
        if s.fault_switches.is_empty() {
            return Err("fault injection is disabled (config key fault_injection)".into());
        }
        let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{v:?} is not a number"));
        let workers: Vec<usize> = match (worker, device) {
            (Some(w), None) => vec![number(w)?],
            (None, Some(d)) => {
                let d = number(d)?;
                (0..s.device_of.len()).filter(|&w| s.device_of[w] == d).collect()
            }
            _ => return Err("give exactly one of worker=N or device=D".into()),
        };
        if workers.is_empty() || workers.iter().any(|&w| w >= s.fault_switches.len()) {
            return Err(format!(
                "no such worker or device (workers 0..{}, devices {:?})",
                s.fault_switches.len(),
                s.device_of
            ));
        }
        for w in workers {
            tracing::warn!(worker = w, "fail-device: failing the device on request");
            s.fault_switches[w].trip();
        }
        Ok(())
    }
    fn config(&self, context: info::ConfigContext<'_>) -> Vec<(String, String)> {
        let s = self.s;
        let live = s.settings.get();
        let kv = |k: &str, v: String| (k.to_string(), v);
        match context {
            info::ConfigContext::Service => vec![
                kv("cluster-name", s.cluster_name.clone()),
                kv("node-id", self.name.clone()),
                kv("proto-fd-idle-ms", live.proto_fd_idle_ms.to_string()),
                kv("proto-fd-max", s.max_connections.to_string()),
                kv("query-max-done", live.query_max_done.to_string()),
                kv("service-threads", s.workers.len().to_string()),
            ],
            info::ConfigContext::Namespace(_) => {
                let st = &s.storage;
                vec![
                    kv("allow-ttl-without-nsup", live.allow_ttl_without_nsup.to_string()),
                    kv("default-read-touch-ttl-pct", live.default_read_touch_ttl_pct.to_string()),
                    kv("default-ttl", live.default_ttl_s.to_string()),
                    kv("max-record-size", st.max_record_bytes.to_string()),
                    // Seconds, as the server; a sub-second period reads as 1.
                    kv("nsup-period", live.nsup_period_ms.div_ceil(1000).to_string()),
                    kv("replication-factor", s.replication_factor.to_string()),
                    kv("storage-engine", "device".into()),
                    kv("storage-engine.commit-to-device", st.commit_to_device.to_string()),
                    kv("storage-engine.defrag-lwm-pct", st.defrag_lwm_pct.to_string()),
                    kv("storage-engine.flush-max-ms", st.flush_max_ms.to_string()),
                    kv("storage-engine.write-block-size", st.wblock_size_bytes.to_string()),
                ]
            }
        }
    }
    fn set_config(&mut self, context: info::ConfigContext<'_>, key: &str, value: &str) -> Result<(), ()> {
        set_config(&self.s.settings, context, key, value)
    }
    fn sets(&self, _ns: &str) -> Vec<info::SetStats> {
        Vec::new()
    }
    fn truncate(&mut self, ns: &str, set: Option<&str>, lut_nanos: Option<u64>) -> Result<(), info::TruncateError> {
        if ns != self.s.namespace {
            return Err(info::TruncateError::UnknownNamespace);
        }
        truncate(self.s, set.map(str::as_bytes), lut_nanos, self.now_cl_ms)
    }
    fn latencies(&self) -> Vec<info::LatencyHist> {
        self.s.latencies.hists(&self.s.namespace)
    }
}

/// `set-config`: changes one of the settings that can change at run time, with the server's
/// value checks (`cfg_info.c` `cfg_set_service`, `cfg_set_namespace`): `proto-fd-idle-ms` and
/// `query-max-done` (0..=10000) of the service; `default-ttl` (seconds, with an optional
/// `s`/`m`/`h`/`d`, at most 10 years, non-zero only with a non-zero `nsup-period` or
/// `allow-ttl-without-nsup`), `nsup-period` (seconds, unit suffix allowed),
/// `allow-ttl-without-nsup` (`true`/`false`) and `default-read-touch-ttl-pct` (0..=100) of the
/// namespace. Every other key (Bolide's storage settings are fixed at start-up) is refused.
fn set_config(live: &crate::config::LiveSettings, context: info::ConfigContext<'_>, key: &str, value: &str) -> Result<(), ()> {
    use info::ConfigContext::{Namespace, Service};
    let int = |v: &str| v.parse::<i64>().map_err(|_| ());
    let old = live.get();
    match (context, key) {
        (Service, "proto-fd-idle-ms") => {
            let ms = u32::try_from(int(value)?).map_err(|_| ())?;
            live.proto_fd_idle_ms.store(u64::from(ms), Ordering::Relaxed);
        }
        (Service, "query-max-done") => {
            let n = int(value)?;
            if !(0..=10_000).contains(&n) {
                return Err(());
            }
            live.query_max_done.store(n as u32, Ordering::Relaxed);
        }
        (Namespace(_), "default-ttl") => {
            let ttl = seconds(value)?;
            if ttl > crate::config::MAX_DEFAULT_TTL_S || (ttl != 0 && old.nsup_period_ms == 0 && !old.allow_ttl_without_nsup) {
                return Err(());
            }
            live.default_ttl_s.store(ttl, Ordering::Relaxed);
        }
        (Namespace(_), "nsup-period") => {
            let s = seconds(value)?;
            live.nsup_period_ms.store(u64::from(s) * 1000, Ordering::Relaxed);
        }
        (Namespace(_), "allow-ttl-without-nsup") => {
            let on = match value {
                "true" => true,
                "false" => false,
                _ => return Err(()),
            };
            live.allow_ttl_without_nsup.store(on, Ordering::Relaxed);
        }
        (Namespace(_), "default-read-touch-ttl-pct") => {
            let pct = int(value)?;
            if !(0..=100).contains(&pct) {
                return Err(());
            }
            live.default_read_touch_ttl_pct.store(pct as u32, Ordering::Relaxed);
        }
        _ => return Err(()),
    }
    tracing::info!(?context, key, value, "set-config: changed");
    Ok(())
}

/// A duration as the server's `cf_str_atoi_seconds`: a number of seconds with an optional
/// unit `s`, `m`, `h` or `d`, fitting in 32 bits.
fn seconds(v: &str) -> Result<u32, ()> {
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c @ ('s' | 'm' | 'h' | 'd' | 'S' | 'M' | 'H' | 'D'))) => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 's'),
    };
    let n: u64 = digits.parse().map_err(|_| ())?;
    let per = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 1,
    };
    u32::try_from(n.checked_mul(per).ok_or(())?).map_err(|_| ())
}

/// Records a truncate of `set` (the whole namespace when `None`) at `lut_nanos` (Unix ns; now
/// when `None`): the new table is saved durably first, then published to the workers, which
/// raise their LUT floor, filter reads and sweep their index (wire spec §2.2 `truncate`).
///
/// # Errors
/// A cut-off after `now_cl_ms` (`LutInFuture`), a set name over 63 bytes, or the table file
/// could not be saved (the truncate did not happen; the table is unchanged).
pub fn truncate(
    shared: &NodeShared,
    set: Option<&[u8]>,
    lut_nanos: Option<u64>,
    now_cl_ms: u64,
) -> Result<(), info::TruncateError> {
    use crate::truncate::{cl_ms_from_unix_ns, MAX_CUTOFF_MS};
    let cutoff = lut_nanos.map_or(now_cl_ms, cl_ms_from_unix_ns);
    if cutoff > now_cl_ms || cutoff > MAX_CUTOFF_MS {
        return Err(info::TruncateError::LutInFuture);
    }
    if let Some(s) = set {
        if s.is_empty() || s.len() > crate::record::SET_NAME_MAX_BYTES {
            return Err(info::TruncateError::Failed(format!(
                "set name must be 1 to {} bytes",
                crate::record::SET_NAME_MAX_BYTES
            )));
        }
    }
    if cutoff == 0 {
        return Ok(()); // before 2010: nothing is that old
    }
    let mut guard = shared
        .truncate
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut table = (**guard).clone();
    if !table.apply(set, cutoff) {
        return Ok(());
    }
    if let Some(path) = &shared.truncate_path {
        if let Err(e) = table.save(path) {
            tracing::error!("truncate not applied: {e}");
            return Err(info::TruncateError::Failed(e.to_string()));
        }
    }
    *guard = Arc::new(table);
    shared.truncate_version.fetch_add(1, Ordering::Release);
    tracing::info!(
        set = %String::from_utf8_lossy(set.unwrap_or_default()),
        cutoff_cl_ms = cutoff,
        "truncate recorded"
    );
    Ok(())
}

/// Answers an info request: a type-1 proto whose body is `respond`'s text (spec §2.1).
pub fn info_reply(body: &[u8], shared: &NodeShared, view: NodeView, now_cl_ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let start = W::begin(&mut out);
    let name = match view.worker {
        Some(w) => shared.worker_node_name(w),
        None => shared.node_name.clone(),
    };
    let mut src = Source {
        s: shared,
        view,
        now_cl_ms,
        name,
    };
    info::respond(body, &mut src, &mut out);
    W::finish(&mut out, start, PROTO_TYPE_INFO);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::msg::{info3, MsgHeader};

    /// An AS_MSG body (no proto header) with these header flags and fields.
    fn body(info1: u8, info2: u8, fields: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        W::msg_header(
            &mut out,
            &MsgHeader {
                header_sz: 22,
                info1,
                info2,
                n_fields: fields.len() as u16,
                ..MsgHeader::default()
            },
        );
        for (t, d) in fields {
            W::write_field(&mut out, *t, d);
        }
        out
    }

    /// The result code and info3 of a reply's first message.
    fn code_of(reply: &[u8]) -> (u8, u8) {
        let m = &reply[crate::proto::PROTO_HEADER_BYTES..];
        (m[5], m[3])
    }

    #[test]
    fn single_record_udf_is_refused_before_it_touches_the_record() {
        let digest = [7u8; 20];
        let b = body(
            0,
            info2::WRITE,
            &[
                (field_type::NAMESPACE, b"test"),
                (field_type::DIGEST, &digest),
                (field_type::UDF_PACKAGE_NAME, b"m"),
                (field_type::UDF_FUNCTION, b"f"),
            ],
        );
        match decode(PROTO_TYPE_MSG, &b, "test") {
            Decoded::Reply(r) => assert_eq!(code_of(&r), (rc::UNSUPPORTED_FEATURE, 0)),
            _ => panic!("a UDF apply must not become a command"),
        }
    }

    #[test]
    fn scans_with_a_secondary_index_or_a_background_write_end_at_once() {
        let pids = [1u8, 0];
        let cases: [(Vec<u8>, u8); 3] = [
            (
                body(
                    info1::READ,
                    0,
                    &[(field_type::NAMESPACE, b"test"), (field_type::INDEX_NAME, b"i")],
                ),
                rc::SINDEX_NOT_FOUND,
            ),
            (
                body(
                    0,
                    info2::WRITE,
                    &[(field_type::NAMESPACE, b"test"), (field_type::PID_ARRAY, &pids)],
                ),
                rc::UNSUPPORTED_FEATURE,
            ),
            (
                body(
                    info1::READ,
                    0,
                    &[(field_type::NAMESPACE, b"nope"), (field_type::PID_ARRAY, &pids)],
                ),
                rc::NAMESPACE_NOT_FOUND,
            ),
        ];
        for (b, code) in cases {
            match decode(PROTO_TYPE_MSG, &b, "test") {
                Decoded::Reply(r) => assert_eq!(code_of(&r), (code, info3::LAST)),
                _ => panic!("expected an immediate LAST {code}"),
            }
        }
        let b = body(
            info1::READ,
            0,
            &[(field_type::NAMESPACE, b"test"), (field_type::PID_ARRAY, &pids)],
        );
        match decode(PROTO_TYPE_MSG, &b, "test") {
            Decoded::Scan(spec, parts) => {
                assert_eq!(parts.len(), 1);
                assert_eq!(parts[0].pid.0, 1);
                assert!(spec.set.is_empty() && spec.bins.is_none() && spec.max_records == 0);
            }
            _ => panic!("a scan"),
        }
    }

    #[test]
    fn batch_rows_keep_their_index_and_their_own_errors() {
        let mut rows = 2u32.to_be_bytes().to_vec();
        rows.push(0x0d);
        for (i, ns) in [(4u32, &b"test"[..]), (9, &b"other"[..])] {
            rows.extend_from_slice(&i.to_be_bytes());
            rows.extend_from_slice(&[i as u8; 20]);
            rows.extend_from_slice(&[0x0a, info1::READ | info1::GET_ALL, 0, 0, 0, 0, 0, 0]);
            rows.extend_from_slice(&[0, 2, 0, 0]);
            W::write_field(&mut rows, field_type::NAMESPACE, ns);
            W::write_field(&mut rows, field_type::SET, b"s");
        }
        let filter = [0x93u8, 0x01, 0x01, 0x01]; // any bytes: kept, compiled per row later
        let b = body(
            info1::BATCH,
            0,
            &[(field_type::FILTER_EXP, &filter), (field_type::BATCH_INDEX, &rows)],
        );
        let Decoded::Batch(items) = decode(PROTO_TYPE_MSG, &b, "test") else {
            panic!("a batch")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].index, 4);
        let cmd = items[0].cmd.as_ref().expect("runs");
        assert_eq!(cmd.digest.0, [4u8; 20]);
        assert_eq!(cmd.set_name, b"s");
        assert_eq!(
            cmd.filter_exp, filter,
            "the batch's filter applies to rows without their own"
        );
        assert_eq!(items[1].index, 9);
        assert_eq!(items[1].cmd.as_ref().err(), Some(&rc::NAMESPACE_NOT_FOUND));
    }
}
