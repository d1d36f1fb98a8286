//! Single-record command semantics: what a read, write, delete, touch or operate does to one
//! record (wire spec §3.2 flags, §3.4 ops, §5 result codes, §6 write semantics, §10.3 reads).
//!
//! This module is pure: [`apply`] takes a decoded command and the record's current state and
//! returns what to store and what to answer. The worker does the I/O (index peek, device read,
//! put/delete, acknowledgement) around it.

use crate::cdt;
use crate::digest::Digest;
use crate::particle::{Bin, BinName, ParticleType, Value, BIN_NAME_MAX_BYTES};
use crate::record::{Record, StoredKey};
use crate::shard::PutRecord;
use std::sync::Arc;

use crate::proto::msg::{info1, info2, info3, op_type, MAX_N_OPS};
use crate::proto::exp;
use crate::proto::result_code as rc;

/// Expression and string ops: a later issue (answered 16 until then). CDT, bit and HLL op types
/// in this list are handled by [`cdt`] first.
pub const OPS_UNSUPPORTED: [u8; 13] = [3, 4, 7, 8, 12, 13, 15, 16, 17, 18, 19, 6, 0];

/// Longest TTL a client may ask for, seconds (10 years, spec §6.3).
pub const MAX_TTL_S: u32 = 315_360_000;
pub const TTL_NEVER: u32 = 0xFFFF_FFFF;
pub const TTL_DONT_UPDATE: u32 = 0xFFFF_FFFE;

/// One op of a request, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdOp {
    pub op_type: u8,
    pub particle_type: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A decoded single-record request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub digest: Digest,
    pub set_name: Vec<u8>,
    pub key: Option<StoredKey>,
    pub info1: u8,
    pub info2: u8,
    pub info3: u8,
    /// Expected generation for generation checks.
    pub generation: u32,
    /// TTL with the special values of spec §6.3.
    pub record_ttl: u32,
    pub ops: Vec<CmdOp>,
    /// The packed filter expression (field 43), empty for none.
    pub filter_exp: Vec<u8>,
}

impl Command {
    pub fn is_write(&self) -> bool {
        self.info2 & info2::WRITE != 0
    }
    pub fn is_delete(&self) -> bool {
        self.info2 & info2::DELETE != 0
    }
    /// Whether [`apply`] needs the record's bins (not just its index metadata).
    pub fn needs_bins(&self) -> bool {
        if !self.filter_exp.is_empty() {
            // The filter may read bins or the set name, which only the stored record has.
            return true;
        }
        if self.is_delete() {
            return false;
        }
        if self.is_write() {
            // A replace with only writes still checks the stored key; reading is cheap enough
            // to always do for writes (merge semantics need the old bins).
            return true;
        }
        self.info1 & info1::GET_NO_BIN_DATA == 0
    }
}

/// A reply op: the request op's type and name, and a value (`None`: particle type 0, no bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct OutOp {
    pub op_type: u8,
    pub name: Vec<u8>,
    pub value: Option<Value>,
}

/// What to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub result_code: u8,
    pub generation: u32,
    /// Seconds since 2010, 0 = never.
    pub void_time: u32,
    pub ops: Vec<OutOp>,
    /// Every bin of this record, answered as READ ops after `ops` (a read of all bins): the
    /// encoder writes them straight from the stored (cached) record, so the reply copies no
    /// value and allocates nothing per bin.
    pub record: Option<Arc<Record>>,
}

impl Reply {
    pub fn code(result_code: u8) -> Reply {
        Reply {
            result_code,
            generation: 0,
            void_time: 0,
            ops: Vec::new(),
            record: None,
        }
    }

    /// The number of ops the reply carries (its `n_ops`): `ops` and the record's bins.
    pub fn n_ops(&self) -> usize {
        self.ops.len() + self.record.as_ref().map_or(0, |r| r.bins.len())
    }

    /// Every op the reply answers, the record's bins copied out as READ ops (for tests and
    /// diagnostics; the data path encodes them from the record).
    pub fn all_ops(&self) -> Vec<OutOp> {
        let bins = self.record.iter().flat_map(|r| r.bins.iter());
        self.ops
            .iter()
            .cloned()
            .chain(bins.map(|b| out(op_type::READ, b.name.as_bytes(), Some(b.value.clone()))))
            .collect()
    }
}

/// What [`apply`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Answer without storing anything.
    Reply(Reply),
    /// Store the record, then answer `reply` with the new generation and `void_time` filled in.
    Put(PutRecord, Reply),
    /// Delete the record (a tombstone), then answer `reply`.
    Delete(Reply),
}

/// Evaluates a request's filter expression against a stored record: `Ok(false)` filters it out,
/// `Err(code)` answers that result code.
pub type Filter<'a> = &'a dyn Fn(&Record) -> Result<bool, u8>;

/// The record as the command sees it: `None` when absent, deleted or expired.
pub struct Existing<'a> {
    /// The stored record, when its bins were read (shared with the record cache).
    pub record: Option<&'a Arc<Record>>,
    /// Generation from the index when the bins were not read (deletes, exists).
    pub generation: u16,
    pub void_time: u32,
}

/// The namespace settings a command is applied under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Seconds since 2010.
    pub now_s: u32,
    /// TTL of a write that asks for the default (TTL 0), seconds; 0 = never expire
    /// (`default-ttl`).
    pub default_ttl_s: u32,
    /// Whether a write may give its record a TTL: false while `nsup-period` is 0 and
    /// `allow-ttl-without-nsup` is false, when such writes answer 22 (`is_ttl_disallowed`).
    pub ttl_allowed: bool,
}

impl Namespace {
    /// At `now_s`, with no default TTL and TTLs allowed.
    pub fn at(now_s: u32) -> Namespace {
        Namespace {
            now_s,
            default_ttl_s: 0,
            ttl_allowed: true,
        }
    }
}

/// Applies `cmd` to the current state of its record. `filter` evaluates the request's filter
/// expression against an existing record (false → 27); `now_s` is seconds since 2010.
pub fn apply(cmd: &Command, cur: Existing<'_>, filter: Option<Filter<'_>>, now_s: u32) -> Action {
    apply_in(cmd, cur, filter, Namespace::at(now_s))
}

/// [`apply`] under the namespace's settings `ns`.
pub fn apply_in(cmd: &Command, cur: Existing<'_>, filter: Option<Filter<'_>>, ns: Namespace) -> Action {
    match apply_inner(cmd, cur, filter, ns) {
        Ok(a) => a,
        Err(code) => Action::Reply(Reply::code(code)),
    }
}

fn apply_inner(cmd: &Command, cur: Existing<'_>, filter: Option<Filter<'_>>, ns: Namespace) -> Result<Action, u8> {
    if cmd.ops.len() > MAX_N_OPS {
        return Err(rc::PARAMETER);
    }
    let exists = cur.generation != 0;
    if let (Some(f), Some(rec)) = (filter, cur.record) {
        if !f(rec)? {
            return Err(rc::FILTERED_OUT);
        }
    }
    let gen = cur.generation as u32;
    if cmd.info2 & info2::GENERATION != 0 && gen != cmd.generation {
        return Err(rc::GENERATION);
    }
    if cmd.info2 & info2::GENERATION_GT != 0 && cmd.generation <= gen {
        return Err(rc::GENERATION);
    }
    if cmd.is_delete() {
        if !exists {
            return Err(rc::KEY_NOT_FOUND);
        }
        return Ok(Action::Delete(Reply::code(rc::OK)));
    }
    if !cmd.is_write() {
        return read(cmd, cur, ns.now_s);
    }
    write(cmd, cur, ns)
}

fn read(cmd: &Command, cur: Existing<'_>, now_s: u32) -> Result<Action, u8> {
    if cur.generation == 0 {
        return Err(rc::KEY_NOT_FOUND);
    }
    // A read's `record_ttl` is its read-touch percentage: 0 (the namespace default), 1..=100
    // or 0xFFFFFFFF (never); anything else is refused when the record has a TTL
    // (`as_read_touch_check`). The owner does the touch.
    if cur.void_time != 0 && cmd.record_ttl > 100 && cmd.record_ttl != TTL_NEVER {
        return Err(rc::PARAMETER);
    }
    let mut reply = Reply {
        result_code: rc::OK,
        generation: cur.generation as u32,
        void_time: cur.void_time,
        ops: Vec::new(),
        record: None,
    };
    if cmd.info1 & info1::GET_NO_BIN_DATA != 0 {
        return Ok(Action::Reply(reply));
    }
    let rec = cur.record.ok_or(rc::PARAMETER)?;
    let respond_all = cmd.info2 & info2::RESPOND_ALL_OPS != 0;
    let get_all = cmd.info1 & info1::GET_ALL != 0;
    if get_all {
        reply.record = Some(Arc::clone(rec));
        return Ok(Action::Reply(reply));
    }
    // Neither every bin nor any op: the server's read_local answers 4 ("bin op(s) expected");
    // `select(key, [])` sends this.
    if cmd.ops.is_empty() {
        return Err(rc::PARAMETER);
    }
    for op in &cmd.ops {
        match op.op_type {
            // A READ op without a name reads every bin only with GET_ALL (`op_is_read_all`,
            // answered above); without it, it names a bin that cannot exist (the Rust client's
            // `get_header`).
            op_type::READ => match rec.bins.iter().find(|b| b.name.as_bytes() == op.name.as_slice()) {
                Some(b) => reply.ops.push(out(op_type::READ, &op.name, Some(b.value.clone()))),
                None if respond_all => reply.ops.push(out(op_type::READ, &op.name, None)),
                None => {}
            },
            t if cdt::handles(t) && cdt::is_read(t) => {
                let bin = rec.bins.iter().find(|b| b.name.as_bytes() == op.name.as_slice());
                let o = cdt::apply(t, op.particle_type, &op.value, bin.map(|b| &b.value))?;
                push_cdt_answer(&mut reply.ops, op, o.answer, false, respond_all);
            }
            op_type::EXP_READ => {
                let view = exp_view(cmd, Some(rec), &rec.bins);
                let v = exp::exp_read(&op.value, &view, u64::from(now_s) * 1000)?;
                reply.ops.push(out(op_type::EXP_READ, &op.name, v));
            }
            t if OPS_UNSUPPORTED.contains(&t) => return Err(rc::UNSUPPORTED_FEATURE),
            _ => return Err(rc::PARAMETER),
        }
    }
    Ok(Action::Reply(reply))
}

/// The record an EXP op sees (CDT spec §9.1): the stored metadata (none yet for a record being
/// created) and the bins as the command has left them so far.
fn exp_view<'a>(cmd: &'a Command, old: Option<&'a Record>, bins: &'a [Bin]) -> exp::OpRecordView<'a> {
    exp::OpRecordView {
        digest: old.map_or(&cmd.digest.0, |r| &r.meta.digest.0),
        lut_cl_ms: old.map_or(0, |r| r.meta.lut_ms),
        void_time_cl_s: old.map_or(0, |r| r.meta.void_time),
        size_bytes: old.map_or(0, |r| crate::record::padded(crate::record::encoded_len(r)) as u64),
        set_name: old.map_or(&cmd.set_name, |r| &r.set_name),
        key_stored: old.is_some_and(|r| r.key.is_some()),
        bins,
    }
}

fn out(op_type: u8, name: &[u8], value: Option<Value>) -> OutOp {
    OutOp {
        op_type,
        name: name.to_vec(),
        value,
    }
}

/// Adds the reply op of a CDT/bit/HLL op as CDT spec §1.4 says: an empty result is sent as a
/// particle-0 op only with RESPOND_ALL_OPS, or for a read op in a writing command (a nil
/// element counts as empty).
fn push_cdt_answer(ops: &mut Vec<OutOp>, op: &CmdOp, answer: cdt::Answer, write_cmd: bool, respond_all: bool) {
    let read_op = cdt::is_read(op.op_type);
    let value = match answer {
        cdt::Answer::Value(v) => Some(Some(v)),
        cdt::Answer::Nil | cdt::Answer::NoResult if respond_all || (write_cmd && read_op) => Some(None),
        cdt::Answer::NoBin if respond_all => Some(None),
        _ => None,
    };
    if let Some(v) = value {
        ops.push(out(op.op_type, &op.name, v));
    }
}

fn write(cmd: &Command, cur: Existing<'_>, ns: Namespace) -> Result<Action, u8> {
    let exists = cur.generation != 0;
    let replace = cmd.info3 & (info3::CREATE_OR_REPLACE | info3::REPLACE_ONLY) != 0;
    if cmd.info2 & info2::CREATE_ONLY != 0 && exists {
        return Err(rc::KEY_EXISTS);
    }
    if cmd.info3 & (info3::UPDATE_ONLY | info3::REPLACE_ONLY) != 0 && !exists {
        return Err(rc::KEY_NOT_FOUND);
    }
    let has_touch = cmd.ops.iter().any(|o| o.op_type == op_type::TOUCH);
    if has_touch && !exists {
        return Err(rc::KEY_NOT_FOUND);
    }
    if replace {
        let bad = cmd.ops.iter().any(|o| {
            matches!(
                o.op_type,
                op_type::TOUCH | op_type::INCR | op_type::APPEND | op_type::PREPEND | op_type::DELETE
            ) || (o.op_type == op_type::WRITE && o.particle_type == ParticleType::Null as u8)
                || (cdt::handles(o.op_type) && !cdt::is_read(o.op_type))
        });
        if bad {
            return Err(rc::PARAMETER);
        }
    }
    if let (Some(k), Some(Some(stored))) = (&cmd.key, cur.record.map(|r| r.key.as_ref())) {
        if k != stored {
            return Err(rc::KEY_MISMATCH);
        }
    }
    // The TTL (spec §6.3) is checked before any bin op, as `write_master`: a bad one answers
    // 4, one the namespace does not allow (no nsup) 22.
    let ttl = match cmd.record_ttl {
        TTL_DONT_UPDATE if exists => None,
        0 | TTL_DONT_UPDATE => Some(ns.default_ttl_s),
        TTL_NEVER => Some(0),
        t if t <= MAX_TTL_S => Some(t),
        _ => return Err(rc::PARAMETER),
    };
    if ttl.is_some_and(|t| t != 0) && !ns.ttl_allowed {
        return Err(rc::FAIL_FORBIDDEN);
    }
    let void_time = match ttl {
        None => cur.void_time,
        Some(0) => 0,
        Some(t) => ns.now_s.saturating_add(t),
    };
    let old = cur.record.map(|r| &**r);
    let mut bins: Vec<Bin> = if replace {
        Vec::new()
    } else {
        old.map(|r| r.bins.clone()).unwrap_or_default()
    };
    let respond_all = cmd.info2 & info2::RESPOND_ALL_OPS != 0;
    let mut reply_ops = Vec::new();
    for op in &cmd.ops {
        let is_write_op = op.op_type != op_type::READ;
        let named = !matches!(op.op_type, op_type::TOUCH | op_type::DELETE | op_type::READ);
        if named && (op.name.is_empty() || op.name.len() > BIN_NAME_MAX_BYTES) {
            return Err(if op.name.is_empty() {
                rc::PARAMETER
            } else {
                rc::BIN_NAME_TOO_LONG
            });
        }
        match op.op_type {
            op_type::READ if op.name.is_empty() && cmd.info1 & info1::GET_ALL != 0 => reply_ops.extend(
                bins.iter()
                    .map(|b| out(op_type::READ, b.name.as_bytes(), Some(b.value.clone()))),
            ),
            op_type::READ => match bins.iter().find(|b| b.name.as_bytes() == op.name.as_slice()) {
                Some(b) => reply_ops.push(out(op_type::READ, &op.name, Some(b.value.clone()))),
                None if respond_all => reply_ops.push(out(op_type::READ, &op.name, None)),
                None => {}
            },
            op_type::WRITE => {
                let name = bin_name(&op.name)?;
                if op.particle_type == ParticleType::Null as u8 {
                    bins.retain(|b| b.name != name);
                } else {
                    let value = Value::decode_wire(op.particle_type, &op.value).map_err(|_| rc::PARAMETER)?;
                    set_bin(&mut bins, name, cdt::normalize_write(value)?);
                }
            }
            op_type::INCR | op_type::APPEND | op_type::PREPEND => {
                let name = bin_name(&op.name)?;
                let operand = Value::decode_wire(op.particle_type, &op.value).map_err(|_| rc::PARAMETER)?;
                let new = modify(
                    op.op_type,
                    bins.iter().find(|b| b.name == name).map(|b| &b.value),
                    operand,
                )?;
                set_bin(&mut bins, name, new);
            }
            op_type::TOUCH => {}
            op_type::DELETE => bins.clear(),
            t if cdt::handles(t) => {
                if cdt::is_read(t) && cmd.info1 & info1::READ == 0 {
                    return Err(rc::PARAMETER);
                }
                let name = bin_name(&op.name)?;
                let cur = bins.iter().find(|b| b.name == name).map(|b| &b.value);
                let o = cdt::apply(t, op.particle_type, &op.value, cur)?;
                if let Some(v) = o.new_value {
                    set_bin(&mut bins, name, v);
                }
                push_cdt_answer(&mut reply_ops, op, o.answer, true, respond_all);
                continue;
            }
            op_type::EXP_READ => {
                let view = exp_view(cmd, old, &bins);
                let v = exp::exp_read(&op.value, &view, u64::from(ns.now_s) * 1000)?;
                reply_ops.push(out(op_type::EXP_READ, &op.name, v));
                continue;
            }
            op_type::EXP_MODIFY => {
                let name = bin_name(&op.name)?;
                let exists = bins.iter().any(|b| b.name == name);
                let view = exp_view(cmd, old, &bins);
                match exp::exp_modify(&op.value, &view, u64::from(ns.now_s) * 1000, exists)? {
                    exp::ExpModify::Keep => {}
                    exp::ExpModify::Delete => bins.retain(|b| b.name != name),
                    exp::ExpModify::Set(v) => set_bin(&mut bins, name, cdt::normalize_write(v)?),
                }
            }
            t if OPS_UNSUPPORTED.contains(&t) => return Err(rc::UNSUPPORTED_FEATURE),
            _ => return Err(rc::PARAMETER),
        }
        if is_write_op && respond_all && op.op_type != op_type::TOUCH {
            reply_ops.push(out(op.op_type, &op.name, None));
        }
    }
    let reply = Reply {
        result_code: rc::OK,
        generation: 0,
        void_time,
        ops: reply_ops,
        record: None,
    };
    if bins.is_empty() {
        // A write that leaves no bin deletes the record; on a record that did not exist the
        // server answers 2 (`write_master_apply`: "didn't exist").
        return if exists {
            Ok(Action::Delete(Reply { void_time: 0, ..reply }))
        } else {
            Err(rc::KEY_NOT_FOUND)
        };
    }
    let set_name = if cmd.set_name.is_empty() {
        old.map(|r| r.set_name.clone()).unwrap_or_default()
    } else {
        cmd.set_name.clone()
    };
    let key = cmd.key.clone().or_else(|| old.and_then(|r| r.key.clone()));
    Ok(Action::Put(
        PutRecord {
            digest: cmd.digest,
            set_name,
            key,
            bins,
            void_time,
        },
        reply,
    ))
}

/// An `incr`, `append` or `prepend` of `operand` to a bin holding `old` (`None`: no such bin),
/// as the server's `as_bin_particle_modify_from_client`: on a missing bin every op creates the
/// bin with the operand, whatever its type; on an existing bin `incr` adds an integer to an
/// integer or a float to a float, `append`/`prepend` join a string to a string or a blob to a
/// blob of the same type, and any other pair answers 12 (incompatible type).
fn modify(op: u8, old: Option<&Value>, operand: Value) -> Result<Value, u8> {
    let Some(old) = old else { return Ok(operand) };
    let append = op == op_type::APPEND;
    let join = |a: &[u8], b: &[u8]| if append { [a, b].concat() } else { [b, a].concat() };
    match (op, old, &operand) {
        (op_type::INCR, Value::Int(a), Value::Int(d)) => Ok(Value::Int(a.wrapping_add(*d))),
        (op_type::INCR, Value::Float(a), Value::Float(d)) => Ok(Value::Float(a + d)),
        (op_type::APPEND | op_type::PREPEND, Value::Str(a), Value::Str(b)) => Ok(Value::Str(join(a, b))),
        (op_type::APPEND | op_type::PREPEND, Value::Blob(t, a), Value::Blob(u, b)) if t == u => {
            Ok(Value::Blob(*t, join(a, b)))
        }
        _ => Err(rc::INCOMPATIBLE_TYPE),
    }
}

fn bin_name(name: &[u8]) -> Result<BinName, u8> {
    BinName::new(name).ok_or(rc::BIN_NAME_TOO_LONG)
}

fn set_bin(bins: &mut Vec<Bin>, name: BinName, value: Value) {
    match bins.iter_mut().find(|b| b.name == name) {
        Some(b) => b.value = value,
        None => bins.push(Bin { name, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordMeta;

    fn cmd(info1: u8, info2: u8, info3: u8, ops: Vec<CmdOp>) -> Command {
        Command {
            digest: Digest([7; 20]),
            set_name: b"demo".to_vec(),
            key: None,
            info1,
            info2,
            info3,
            generation: 0,
            record_ttl: 0,
            ops,
            filter_exp: Vec::new(),
        }
    }
    fn wop(name: &str, v: Value) -> CmdOp {
        let mut value = Vec::new();
        v.encode_wire(&mut value);
        CmdOp {
            op_type: op_type::WRITE,
            particle_type: v.particle_type() as u8,
            name: name.into(),
            value,
        }
    }
    fn op(t: u8, name: &str, v: Option<Value>) -> CmdOp {
        let mut value = Vec::new();
        let pt = v.as_ref().map_or(0, |v| {
            v.encode_wire(&mut value);
            v.particle_type() as u8
        });
        CmdOp {
            op_type: t,
            particle_type: pt,
            name: name.into(),
            value,
        }
    }
    fn rec(bins: Vec<(&str, Value)>) -> Arc<Record> {
        Arc::new(Record {
            meta: RecordMeta {
                digest: Digest([7; 20]),
                generation: 4,
                void_time: 0,
                lut_ms: 1,
                origin_seq: 0,
                tombstone: false,
            },
            set_name: b"demo".to_vec(),
            key: None,
            bins: bins
                .into_iter()
                .map(|(n, v)| Bin {
                    name: BinName::new(n.as_bytes()).unwrap(),
                    value: v,
                })
                .collect(),
        })
    }
    fn with(r: &Arc<Record>) -> Existing<'_> {
        Existing {
            record: Some(r),
            generation: r.meta.generation,
            void_time: r.meta.void_time,
        }
    }
    const NONE: Existing<'static> = Existing {
        record: None,
        generation: 0,
        void_time: 0,
    };

    fn put_bins(a: Action) -> Vec<Bin> {
        match a {
            Action::Put(p, _) => p.bins,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upsert_merges_and_replace_drops_old_bins() {
        let r = rec(vec![("a", Value::Int(1)), ("b", Value::Int(2))]);
        let merged = put_bins(apply(
            &cmd(0, info2::WRITE, 0, vec![wop("b", Value::Int(9))]),
            with(&r),
            None,
            100,
        ));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].value, Value::Int(9));
        let replaced = put_bins(apply(
            &cmd(0, info2::WRITE, info3::CREATE_OR_REPLACE, vec![wop("b", Value::Int(9))]),
            with(&r),
            None,
            100,
        ));
        assert_eq!(replaced.len(), 1);
    }

    #[test]
    fn exists_policies_and_generation_checks() {
        let r = rec(vec![("a", Value::Int(1))]);
        let w = vec![wop("a", Value::Int(2))];
        let code = |a: Action| match a {
            Action::Reply(r) => r.result_code,
            _ => rc::OK,
        };
        assert_eq!(
            code(apply(
                &cmd(0, info2::WRITE | info2::CREATE_ONLY, 0, w.clone()),
                with(&r),
                None,
                0
            )),
            rc::KEY_EXISTS
        );
        assert_eq!(
            code(apply(
                &cmd(0, info2::WRITE, info3::UPDATE_ONLY, w.clone()),
                NONE,
                None,
                0
            )),
            rc::KEY_NOT_FOUND
        );
        assert_eq!(
            code(apply(
                &cmd(0, info2::WRITE, info3::REPLACE_ONLY, w.clone()),
                NONE,
                None,
                0
            )),
            rc::KEY_NOT_FOUND
        );
        let mut c = cmd(0, info2::WRITE | info2::GENERATION, 0, w.clone());
        c.generation = 3;
        assert_eq!(code(apply(&c, with(&r), None, 0)), rc::GENERATION);
        c.generation = 4;
        assert_eq!(code(apply(&c, with(&r), None, 0)), rc::OK);
        let mut c = cmd(0, info2::WRITE | info2::GENERATION_GT, 0, w);
        c.generation = 4;
        assert_eq!(code(apply(&c, with(&r), None, 0)), rc::GENERATION);
        c.generation = 5;
        assert_eq!(code(apply(&c, with(&r), None, 0)), rc::OK);
        assert_eq!(
            code(apply(&cmd(0, info2::WRITE | info2::DELETE, 0, vec![]), NONE, None, 0)),
            rc::KEY_NOT_FOUND
        );
        assert!(matches!(
            apply(&cmd(0, info2::WRITE | info2::DELETE, 0, vec![]), with(&r), None, 0),
            Action::Delete(_)
        ));
    }

    #[test]
    fn reads_select_get_all_and_exists() {
        let r = rec(vec![("a", Value::Int(1)), ("s", Value::Str(b"x".to_vec()))]);
        let reply = |a: Action| match a {
            Action::Reply(r) => r,
            other => panic!("{other:?}"),
        };
        let all = reply(apply(
            &cmd(info1::READ | info1::GET_ALL, 0, 0, vec![]),
            with(&r),
            None,
            0,
        ));
        assert_eq!((all.generation, all.n_ops()), (4, 2));
        assert!(all.record.as_ref().is_some_and(|a| Arc::ptr_eq(a, &r)), "bins answered from the stored record");
        let sel = reply(apply(
            &cmd(
                info1::READ,
                0,
                0,
                vec![op(op_type::READ, "s", None), op(op_type::READ, "zz", None)],
            ),
            with(&r),
            None,
            0,
        ));
        assert_eq!(sel.ops, vec![out(op_type::READ, b"s", Some(Value::Str(b"x".to_vec())))]);
        let ex = reply(apply(
            &cmd(info1::READ | info1::GET_NO_BIN_DATA, 0, 0, vec![]),
            Existing {
                record: None,
                generation: 4,
                void_time: 9,
            },
            None,
            0,
        ));
        assert_eq!(
            (ex.result_code, ex.generation, ex.void_time, ex.ops.len()),
            (rc::OK, 4, 9, 0)
        );
        assert_eq!(
            reply(apply(&cmd(info1::READ | info1::GET_ALL, 0, 0, vec![]), NONE, None, 0)).result_code,
            rc::KEY_NOT_FOUND
        );
        // An expression read op without its expression is malformed (op types 7 and 8 are
        // served by proto::exp since the expression work).
        assert_eq!(
            reply(apply(
                &cmd(info1::READ, 0, 0, vec![op(op_type::EXP_READ, "a", None)]),
                with(&r),
                None,
                0
            ))
            .result_code,
            rc::PARAMETER
        );
    }

    #[test]
    fn operate_incr_append_prepend_touch_delete_and_respond_all() {
        let r = rec(vec![
            ("n", Value::Int(1)),
            ("f", Value::Float(1.5)),
            ("s", Value::Str(b"b".to_vec())),
        ]);
        let ops = vec![
            op(op_type::INCR, "n", Some(Value::Int(4))),
            op(op_type::INCR, "f", Some(Value::Float(1.0))),
            op(op_type::APPEND, "s", Some(Value::Str(b"c".to_vec()))),
            op(op_type::PREPEND, "s", Some(Value::Str(b"a".to_vec()))),
            op(op_type::READ, "n", None),
        ];
        match apply(&cmd(info1::READ, info2::WRITE, 0, ops.clone()), with(&r), None, 0) {
            Action::Put(p, reply) => {
                assert_eq!(p.bins[0].value, Value::Int(5));
                assert_eq!(p.bins[1].value, Value::Float(2.5));
                assert_eq!(p.bins[2].value, Value::Str(b"abc".to_vec()));
                assert_eq!(
                    reply.ops,
                    vec![out(op_type::READ, b"n", Some(Value::Int(5)))],
                    "reads see earlier writes; writes reply nothing"
                );
            }
            other => panic!("{other:?}"),
        }
        match apply(
            &cmd(info1::READ, info2::WRITE | info2::RESPOND_ALL_OPS, 0, ops),
            with(&r),
            None,
            0,
        ) {
            Action::Put(_, reply) => assert_eq!(reply.ops.len(), 5),
            other => panic!("{other:?}"),
        }
        let bad = apply(
            &cmd(0, info2::WRITE, 0, vec![op(op_type::INCR, "s", Some(Value::Int(1)))]),
            with(&r),
            None,
            0,
        );
        assert_eq!(bad, Action::Reply(Reply::code(rc::INCOMPATIBLE_TYPE)));
        let touch = apply(
            &cmd(0, info2::WRITE, 0, vec![op(op_type::TOUCH, "", None)]),
            NONE,
            None,
            0,
        );
        assert_eq!(touch, Action::Reply(Reply::code(rc::KEY_NOT_FOUND)));
        assert!(matches!(
            apply(
                &cmd(0, info2::WRITE, 0, vec![op(op_type::DELETE, "", None)]),
                with(&r),
                None,
                0
            ),
            Action::Delete(_)
        ));
        let nil = CmdOp {
            op_type: op_type::WRITE,
            particle_type: 0,
            name: b"n".to_vec(),
            value: vec![],
        };
        assert_eq!(
            put_bins(apply(&cmd(0, info2::WRITE, 0, vec![nil.clone()]), with(&r), None, 0)).len(),
            2
        );
        assert_eq!(
            apply(
                &cmd(0, info2::WRITE, info3::CREATE_OR_REPLACE, vec![nil]),
                with(&r),
                None,
                0
            ),
            Action::Reply(Reply::code(rc::PARAMETER))
        );
    }

    #[test]
    fn ttl_special_values_and_limits() {
        let w = vec![wop("a", Value::Int(1))];
        let vt = |ttl: u32, cur: Existing<'_>| {
            let mut c = cmd(0, info2::WRITE, 0, w.clone());
            c.record_ttl = ttl;
            match apply(&c, cur, None, 1000) {
                Action::Put(p, _) => Ok(p.void_time),
                Action::Reply(r) => Err(r.result_code),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(vt(0, NONE), Ok(0));
        assert_eq!(vt(TTL_NEVER, NONE), Ok(0));
        assert_eq!(vt(60, NONE), Ok(1060));
        let r = Arc::new(Record {
            meta: RecordMeta {
                void_time: 5000,
                ..rec(vec![]).meta
            },
            ..Record::clone(&rec(vec![("a", Value::Int(0))]))
        });
        assert_eq!(vt(TTL_DONT_UPDATE, with(&r)), Ok(5000));
        assert_eq!(vt(MAX_TTL_S + 1, NONE), Err(rc::PARAMETER));
    }

    #[test]
    fn filters_and_key_mismatch_and_bad_names() {
        let mut r = rec(vec![("a", Value::Int(1))]);
        let no: &dyn Fn(&Record) -> Result<bool, u8> = &|_| Ok(false);
        assert_eq!(
            apply(&cmd(info1::READ | info1::GET_ALL, 0, 0, vec![]), with(&r), Some(no), 0),
            Action::Reply(Reply::code(rc::FILTERED_OUT))
        );
        Arc::make_mut(&mut r).key = Some(StoredKey {
            ptype: 3,
            bytes: b"k1".to_vec(),
        });
        let mut c = cmd(0, info2::WRITE, 0, vec![wop("a", Value::Int(2))]);
        c.key = Some(StoredKey {
            ptype: 3,
            bytes: b"k2".to_vec(),
        });
        assert_eq!(
            apply(&c, with(&r), None, 0),
            Action::Reply(Reply::code(rc::KEY_MISMATCH))
        );
        let long = CmdOp {
            op_type: op_type::WRITE,
            particle_type: 1,
            name: vec![b'x'; 16],
            value: vec![0; 8],
        };
        assert_eq!(
            apply(&cmd(0, info2::WRITE, 0, vec![long]), NONE, None, 0),
            Action::Reply(Reply::code(rc::BIN_NAME_TOO_LONG))
        );
    }
}
