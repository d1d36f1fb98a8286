//! Collection data types: list and map operations with contexts (CDT spec §1–§6), bitwise
//! operations on blobs (§7) and HyperLogLog operations (§8), byte-compatible with Aerospike CE
//! 8.1 as seen by the official clients.
//!
//! The entry point is [`apply`]: one op of type CDT_READ/CDT_MODIFY (3/4), BIT_READ/BIT_MODIFY
//! (12/13) or HLL_READ/HLL_MODIFY (15/16) applied to the current value of its bin. It answers
//! an [`Answer`] (what the reply op carries) and, for a modify, the bin's new value, or a result
//! code (CDT spec §10). The command layer (`server::exec`) applies the ops of one command to a
//! private copy of the record, so a failing op leaves the record unchanged (§1.5).
//!
//! Values are parsed into [`msgpack::Mp`], changed, and re-encoded in the server's canonical
//! form (§2.3: shortest headers, unordered maps kept key-sorted, ordered containers with their
//! ext header).

pub mod bits;
pub mod hll;
mod list;
mod map;
pub mod msgpack;

use crate::particle::{ParticleType, Value};
use crate::proto::result_code as rc;
use msgpack::{Map, Mp, Reader};

/// Op types this module handles (wire spec §3.4, CDT spec §1.1).
pub mod op_type {
    pub const CDT_READ: u8 = 3;
    pub const CDT_MODIFY: u8 = 4;
    pub const BIT_READ: u8 = 12;
    pub const BIT_MODIFY: u8 = 13;
    pub const HLL_READ: u8 = 15;
    pub const HLL_MODIFY: u8 = 16;
}

/// Whether [`apply`] handles ops of this type.
pub fn handles(op_type: u8) -> bool {
    matches!(op_type, 3 | 4 | 12 | 13 | 15 | 16)
}

/// Whether an op type of [`handles`] is a read (needs info1 READ in a writing command).
pub fn is_read(op_type: u8) -> bool {
    matches!(op_type, 3 | 12 | 15)
}

/// What one op answers (CDT spec §1.4 decides from it whether a reply op is sent).
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A read of a bin that does not exist.
    NoBin,
    /// The op has no result (a modify without one, return type NONE, an empty single result).
    NoResult,
    /// The result is a nil element (sent as particle type 0).
    Nil,
    /// A result value.
    Value(Value),
}

/// The outcome of one op: the answer, and for a modify the bin's new value (`None`: unchanged).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub answer: Answer,
    pub new_value: Option<Value>,
}

/// Applies one op to `bin` (the bin's current value, `None` when missing).
///
/// `particle_type` is the op's particle type (checked only by bit ops, §1.1). Errors are result
/// codes (CDT spec §10): 4 PARAMETER, 12 INCOMPATIBLE_TYPE, 23/24/26, 6/17 for bits and HLL.
pub fn apply(op_type: u8, particle_type: u8, payload: &[u8], bin: Option<&Value>) -> Result<Outcome, u8> {
    match op_type {
        op_type::CDT_READ | op_type::CDT_MODIFY => cdt(op_type == op_type::CDT_MODIFY, payload, bin),
        op_type::BIT_READ | op_type::BIT_MODIFY => {
            if particle_type != ParticleType::Blob as u8 {
                return Err(rc::INCOMPATIBLE_TYPE);
            }
            bits::apply(op_type == op_type::BIT_MODIFY, payload, bin)
        }
        op_type::HLL_READ | op_type::HLL_MODIFY => hll::apply(op_type == op_type::HLL_MODIFY, payload, bin),
        _ => Err(rc::PARAMETER),
    }
}

/// Checks and normalises a list or map particle of a plain WRITE (§2.3): `Err(1)` (SERVER_ERROR, as
/// the server answers) when it is not a valid CDT value.
pub fn normalize_write(v: Value) -> Result<Value, u8> {
    match &v {
        Value::List(b) | Value::Map(b) => {
            let mut mp = msgpack::parse_exact(b).map_err(|_| rc::SERVER_ERROR)?;
            let ok = matches!((&v, &mp), (Value::List(_), Mp::List(_)) | (Value::Map(_), Mp::Map(_)));
            if !ok {
                return Err(rc::SERVER_ERROR);
            }
            msgpack::normalize(&mut mp).map_err(|_| rc::SERVER_ERROR)?;
            Ok(mp_to_bin(mp))
        }
        Value::Hll(b) => {
            hll::check(b).map_err(|_| rc::PARAMETER)?;
            Ok(v)
        }
        _ => Ok(v),
    }
}

/// A list or map as a bin value.
fn mp_to_bin(mp: Mp) -> Value {
    let bytes = mp.to_bytes();
    match mp {
        Mp::Map(_) => Value::Map(bytes),
        _ => Value::List(bytes),
    }
}

/// An element as a reply particle (§1.4): nil is `None`.
pub fn mp_to_value(mp: Mp) -> Option<Value> {
    Some(match mp {
        Mp::Nil => return None,
        Mp::Bool(b) => Value::Bool(b),
        Mp::Int(i) => Value::Int(i),
        Mp::UInt(u) => Value::Int(u as i64),
        Mp::F32(f) => Value::Float(f64::from(f)),
        Mp::F64(f) => Value::Float(f),
        Mp::Str(mut s) | Mp::Bin(mut s) => {
            if s.is_empty() {
                return Some(Value::Blob(ParticleType::Blob, s));
            }
            let t = s.remove(0);
            match ParticleType::from_u8(t) {
                Some(ParticleType::String) => Value::Str(s),
                Some(ParticleType::GeoJson) => Value::GeoJson(s),
                Some(p) if p.is_blob() => Value::Blob(p, s),
                _ => {
                    s.insert(0, t);
                    Value::Blob(ParticleType::Blob, s)
                }
            }
        }
        m @ (Mp::List(_) | Mp::Map(_)) => mp_to_bin(m),
        e @ Mp::Ext(..) => Value::Blob(ParticleType::Blob, e.to_bytes()),
    })
}

fn answer_of(mp: Option<Mp>) -> Answer {
    match mp {
        None => Answer::NoResult,
        Some(Mp::Nil) => Answer::Nil,
        Some(m) => Answer::Value(mp_to_value(m).expect("non-nil")),
    }
}

/// Context item type bits (§1.3).
mod ctx {
    pub const BASE: u64 = 0x0f;
    pub const INDEX: u64 = 0;
    pub const RANK: u64 = 1;
    pub const KEY: u64 = 2;
    pub const VALUE: u64 = 3;
    pub const KIND: u64 = 0x30;
    pub const LIST: u64 = 0x10;
    pub const MAP: u64 = 0x20;
    pub const CREATE: u64 = 0x1c0;
    pub const ORDER: u64 = 0xc0;
}

/// A parsed op: code and arguments.
pub(crate) struct Op {
    pub code: u64,
    pub args: Vec<Mp>,
}

/// Parses `[code, args...]` (or the ctx form) into the ctx pairs and the op.
fn parse_payload(payload: &[u8]) -> Result<(Vec<(u64, Mp)>, Op), u8> {
    let mut r = Reader::new(payload);
    let n = r.array_header().map_err(|_| rc::PARAMETER)?;
    if n == 0 {
        return Err(rc::PARAMETER);
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(r.read().map_err(|_| rc::PARAMETER)?);
    }
    let code = match items[0] {
        Mp::Int(c) if c >= 0 => c as u64,
        _ => return Err(rc::PARAMETER),
    };
    if code != 0xff {
        items.remove(0);
        return Ok((Vec::new(), Op { code, args: items }));
    }
    if n != 3 {
        return Err(rc::PARAMETER);
    }
    let inner = items.pop().expect("3 items");
    let ctx_list = items.pop().expect("3 items");
    let (Mp::List(c), Mp::List(mut op)) = (ctx_list, inner) else {
        return Err(rc::PARAMETER);
    };
    if c.items.is_empty() || c.items.len() % 2 != 0 || op.items.is_empty() {
        return Err(rc::PARAMETER);
    }
    let mut pairs = Vec::with_capacity(c.items.len() / 2);
    let mut it = c.items.into_iter();
    while let (Some(t), Some(v)) = (it.next(), it.next()) {
        let t = t.as_int().filter(|t| *t >= 0).ok_or(rc::PARAMETER)? as u64;
        pairs.push((t, v));
    }
    let code = match op.items.remove(0) {
        Mp::Int(c) if (0..0xfe).contains(&c) => c as u64,
        _ => return Err(rc::PARAMETER),
    };
    Ok((pairs, Op { code, args: op.items }))
}

/// Whether a list/map op code is a read (§5.1, §6.1); `None` for an unknown code.
fn code_is_read(code: u64) -> Option<bool> {
    match code {
        0..=13 | 32..=40 | 64..=70 | 73..=79 | 81..=89 => Some(false),
        16..=27 | 96..=100 | 102..=110 => Some(true),
        _ => None,
    }
}

fn cdt(modify: bool, payload: &[u8], bin: Option<&Value>) -> Result<Outcome, u8> {
    let (ctx, op) = parse_payload(payload)?;
    let is_read = code_is_read(op.code).ok_or(rc::PARAMETER)?;
    if is_read == modify {
        return Err(rc::PARAMETER);
    }
    let is_list_op = op.code < 64;
    let mut root = match bin {
        None => None,
        Some(Value::List(b) | Value::Map(b)) => Some(msgpack::parse_exact(b).map_err(|_| rc::SERVER_ERROR)?),
        Some(_) if !ctx.is_empty() => return Err(rc::PARAMETER),
        Some(_) => return Err(rc::INCOMPATIBLE_TYPE),
    };
    if root.is_none() && (!modify || ctx.is_empty() && op.code == 13) {
        // Reads of a missing bin answer nothing; SORT on a missing bin is 12 (§5.3).
        return if modify { Err(rc::INCOMPATIBLE_TYPE) } else { Ok(Outcome { answer: Answer::NoBin, new_value: None }) };
    }
    if root.is_none() && !ctx.is_empty() && ctx[0].0 & ctx::CREATE == 0 {
        return Err(rc::OP_NOT_APPLICABLE);
    }
    let mut run = |target: &mut Option<Mp>| -> Result<Option<Mp>, u8> {
        if is_list_op {
            list::op(&op, target)
        } else {
            map::op(&op, target)
        }
    };
    let result = dig(&mut root, &ctx, modify, &mut run)?;
    let new_value = if modify { root.map(mp_to_bin) } else { None };
    Ok(Outcome {
        answer: answer_of(result),
        new_value,
    })
}

type OpFn<'a> = dyn FnMut(&mut Option<Mp>) -> Result<Option<Mp>, u8> + 'a;

/// A new empty container for a ctx item with create bits (§1.3).
fn created_container(t: u64) -> Result<Mp, u8> {
    let order = t & ctx::ORDER;
    match t & ctx::KIND {
        ctx::LIST => Ok(Mp::List(msgpack::List {
            flags: u8::from(order == 0xc0),
            items: Vec::new(),
        })),
        ctx::MAP => Ok(Mp::Map(Map {
            flags: match order {
                0x80 => msgpack::MAP_K_ORDERED,
                0xc0 => msgpack::MAP_KV_ORDERED,
                _ => 0,
            },
            pairs: Vec::new(),
        })),
        _ => Err(rc::OP_NOT_APPLICABLE),
    }
}

/// Walks the context (§1.3) from `cur` and runs `f` on the element reached.
fn dig(cur: &mut Option<Mp>, ctx: &[(u64, Mp)], modify: bool, f: &mut OpFn<'_>) -> Result<Option<Mp>, u8> {
    let Some(((t, v), rest)) = ctx.split_first() else {
        return f(cur);
    };
    let (t, create) = (*t, modify && *t & ctx::CREATE != 0);
    if cur.is_none() {
        if !create {
            return Err(rc::OP_NOT_APPLICABLE);
        }
        *cur = Some(created_container(t)?);
    }
    let container = cur.as_mut().expect("set above");
    let base = t & ctx::BASE;
    let kind = t & ctx::KIND;
    let result = match container {
        Mp::List(l) => {
            if kind == ctx::MAP {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            let n = l.items.len();
            let pos = match base {
                ctx::INDEX => {
                    let i = v.as_int().ok_or(rc::PARAMETER)?;
                    match list::single_index(i, n) {
                        Some(p) => Ok(p),
                        None if create && (i >= 0 || (n == 0 && i == -1)) => Err(if i < 0 { 0 } else { i as usize }),
                        None => return Err(rc::OP_NOT_APPLICABLE),
                    }
                }
                ctx::RANK => {
                    let r = v.as_int().ok_or(rc::PARAMETER)?;
                    let p = list::single_index(r, n).ok_or(rc::OP_NOT_APPLICABLE)?;
                    Ok(if l.ordered() { p } else { list::by_rank_order(&l.items)[p] })
                }
                ctx::VALUE => Ok(l
                    .items
                    .iter()
                    .position(|e| msgpack::cmp(e, v).is_eq())
                    .ok_or(rc::OP_NOT_APPLICABLE)?),
                _ => return Err(rc::OP_NOT_APPLICABLE),
            };
            match pos {
                Ok(p) => {
                    let mut child = Some(std::mem::replace(&mut l.items[p], Mp::Nil));
                    let r = dig(&mut child, rest, modify, f);
                    l.items[p] = child.expect("existing element stays");
                    r?
                }
                Err(at) => {
                    let pad = t & ctx::ORDER == 0x80;
                    if at > n && !pad && !l.ordered() {
                        return Err(rc::OP_NOT_APPLICABLE);
                    }
                    let mut child = None;
                    let r = dig(&mut child, rest, modify, f)?;
                    if let Some(c) = child {
                        if !l.ordered() {
                            l.items.resize(at.max(n), Mp::Nil);
                        }
                        l.items.push(c);
                    }
                    r
                }
            }
        }
        Mp::Map(m) => {
            if kind == ctx::LIST {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            let n = m.pairs.len();
            let pos = match base {
                ctx::INDEX => {
                    let i = v.as_int().ok_or(rc::PARAMETER)?;
                    Ok(list::single_index(i, n).ok_or(rc::OP_NOT_APPLICABLE)?)
                }
                ctx::RANK => {
                    let r = v.as_int().ok_or(rc::PARAMETER)?;
                    let p = list::single_index(r, n).ok_or(rc::OP_NOT_APPLICABLE)?;
                    Ok(map::by_value_order(m)[p])
                }
                ctx::KEY => {
                    let mut key = v.clone();
                    if !msgpack::is_map_key(&key) || msgpack::normalize(&mut key).is_err() {
                        return Err(if create { rc::OP_NOT_APPLICABLE } else { rc::PARAMETER });
                    }
                    match map::find_key(m, &key) {
                        Ok(p) => Ok(p),
                        Err(at) if create => Err((at, key)),
                        Err(_) => return Err(rc::OP_NOT_APPLICABLE),
                    }
                }
                ctx::VALUE => Ok(m
                    .pairs
                    .iter()
                    .position(|(_, e)| msgpack::cmp(e, v).is_eq())
                    .ok_or(rc::OP_NOT_APPLICABLE)?),
                _ => return Err(rc::OP_NOT_APPLICABLE),
            };
            match pos {
                Ok(p) => {
                    let mut child = Some(std::mem::replace(&mut m.pairs[p].1, Mp::Nil));
                    let r = dig(&mut child, rest, modify, f);
                    m.pairs[p].1 = child.expect("existing element stays");
                    r?
                }
                Err((at, key)) => {
                    let mut child = None;
                    let r = dig(&mut child, rest, modify, f)?;
                    if let Some(c) = child {
                        m.pairs.insert(at, (key, c));
                    }
                    r
                }
            }
        }
        _ => return Err(rc::OP_NOT_APPLICABLE),
    };
    if let Mp::List(l) = container {
        if l.ordered() && modify {
            l.items.sort_by(msgpack::cmp);
        }
    }
    Ok(result)
}

/// Return types (§4.1).
pub(crate) mod rt {
    pub const NONE: u64 = 0;
    pub const INDEX: u64 = 1;
    pub const REVINDEX: u64 = 2;
    pub const RANK: u64 = 3;
    pub const REVRANK: u64 = 4;
    pub const COUNT: u64 = 5;
    pub const KEY: u64 = 6;
    pub const VALUE: u64 = 7;
    pub const KEY_VALUE: u64 = 8;
    pub const INDEX_RANGE: u64 = 9;
    pub const REVINDEX_RANGE: u64 = 10;
    pub const RANK_RANGE: u64 = 11;
    pub const REVRANK_RANGE: u64 = 12;
    pub const EXISTS: u64 = 13;
    pub const UNORDERED_MAP: u64 = 16;
    pub const ORDERED_MAP: u64 = 17;
    pub const INVERTED: u64 = 0x10000;
}

/// What a selection tells the *_RANGE return types: `(start, count)` in index or rank terms.
#[derive(Clone, Copy, Default)]
pub(crate) struct RangeInfo {
    pub index: Option<(i64, i64)>,
    pub rank: Option<(i64, i64)>,
}

/// A collection seen by the result builder: list elements, or map pairs in key order.
pub(crate) enum Coll<'a> {
    L(&'a msgpack::List),
    M(&'a Map),
}

impl Coll<'_> {
    fn len(&self) -> usize {
        match self {
            Coll::L(l) => l.items.len(),
            Coll::M(m) => m.pairs.len(),
        }
    }
    fn value(&self, i: usize) -> &Mp {
        match self {
            Coll::L(l) => &l.items[i],
            Coll::M(m) => &m.pairs[i].1,
        }
    }
    /// Rank (by value) of element `i`: elements less than it, plus equal ones before it.
    fn rank(&self, i: usize) -> i64 {
        if let Coll::L(l) = self {
            if l.ordered() {
                return i as i64;
            }
        }
        let v = self.value(i);
        (0..self.len())
            .filter(|&j| {
                let o = msgpack::cmp(self.value(j), v);
                o.is_lt() || (o.is_eq() && j < i)
            })
            .count() as i64
    }
}

/// Builds the result of a get/remove-by op (§4.1, §4.3) for the selected elements `sel` (in
/// output order). `single`: a single-result op.
pub(crate) fn build_result(c: &Coll<'_>, rtype: u64, sel: &[usize], single: bool, info: RangeInfo) -> Result<Option<Mp>, u8> {
    let n = c.len() as i64;
    let is_map = matches!(c, Coll::M(_));
    let ints = |v: Vec<i64>| -> Mp {
        if single {
            Mp::Int(v.first().copied().unwrap_or(-1))
        } else {
            Mp::List(msgpack::List {
                flags: 0,
                items: v.into_iter().map(Mp::Int).collect(),
            })
        }
    };
    let list = |v: Vec<Mp>| Mp::List(msgpack::List { flags: 0, items: v });
    let pairs = |sel: &[usize]| -> Vec<(Mp, Mp)> {
        match c {
            Coll::M(m) => sel.iter().map(|&i| m.pairs[i].clone()).collect(),
            Coll::L(_) => Vec::new(),
        }
    };
    let range = |r: Option<(i64, i64)>, rev: bool| -> Result<Mp, u8> {
        let (s, k) = r.ok_or(rc::OP_NOT_APPLICABLE)?;
        let s = if rev && s >= 0 { n - s - k } else { s };
        Ok(list(vec![Mp::Int(s), Mp::Int(k)]))
    };
    Ok(Some(match rtype {
        rt::NONE => return Ok(None),
        rt::INDEX => ints(sel.iter().map(|&i| i as i64).collect()),
        rt::REVINDEX => ints(sel.iter().map(|&i| n - 1 - i as i64).collect()),
        rt::RANK => ints(sel.iter().map(|&i| c.rank(i)).collect()),
        rt::REVRANK => ints(sel.iter().map(|&i| n - 1 - c.rank(i)).collect()),
        rt::COUNT => Mp::Int(sel.len() as i64),
        rt::EXISTS => Mp::Bool(!sel.is_empty()),
        rt::VALUE | rt::KEY => {
            if rtype == rt::KEY && !is_map {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            let get = |i: usize| match (c, rtype) {
                (Coll::M(m), rt::KEY) => m.pairs[i].0.clone(),
                _ => c.value(i).clone(),
            };
            if single {
                match sel.first() {
                    Some(&i) => get(i),
                    None => return Ok(None),
                }
            } else {
                list(sel.iter().map(|&i| get(i)).collect())
            }
        }
        rt::KEY_VALUE | rt::UNORDERED_MAP | rt::ORDERED_MAP => {
            if !is_map {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            let mut p = pairs(sel);
            let flags = match rtype {
                rt::KEY_VALUE => msgpack::MAP_PRESERVE_ORDER,
                rt::ORDERED_MAP => {
                    p.sort_by(|a, b| msgpack::cmp(&a.0, &b.0));
                    msgpack::MAP_K_ORDERED
                }
                _ => 0,
            };
            Mp::Map(Map { flags, pairs: p })
        }
        rt::INDEX_RANGE | rt::REVINDEX_RANGE => range(info.index, rtype == rt::REVINDEX_RANGE)?,
        rt::RANK_RANGE | rt::REVRANK_RANGE => range(info.rank, rtype == rt::REVRANK_RANGE)?,
        _ => return Err(rc::OP_NOT_APPLICABLE),
    }))
}

/// Splits a return-type argument into (base type, inverted).
pub(crate) fn split_rt(v: &Mp) -> Result<(u64, bool), u8> {
    let r = v.as_u64().ok_or(rc::PARAMETER)?;
    Ok((r & 0xffff, r & rt::INVERTED != 0))
}

/// The complement of `sel` in index order.
pub(crate) fn complement(n: usize, sel: &[usize]) -> Vec<usize> {
    let mut keep = vec![true; n];
    for &i in sel {
        keep[i] = false;
    }
    (0..n).filter(|&i| keep[i]).collect()
}

/// Checks the argument count: `req` required, `opt` optional.
pub(crate) fn argc(op: &Op, req: usize, opt: usize) -> Result<(), u8> {
    if op.args.len() < req || op.args.len() > req + opt {
        return Err(rc::PARAMETER);
    }
    Ok(())
}

/// An INDEX-kind argument (any integer, read as i64).
pub(crate) fn int_arg(v: &Mp) -> Result<i64, u8> {
    v.as_int().ok_or(rc::PARAMETER)
}

/// A COUNT-kind argument, optional (`None` = to the end; a negative int is a huge count).
pub(crate) fn count_arg(v: Option<&Mp>) -> Result<u64, u8> {
    match v {
        None => Ok(u64::MAX),
        Some(v) => v.as_u64().ok_or(rc::PARAMETER),
    }
}

/// A STORAGE-kind argument: normalised, no WILDCARD/INF.
pub(crate) fn storage_arg(v: &Mp) -> Result<Mp, u8> {
    let mut v = v.clone();
    msgpack::normalize(&mut v).map_err(|_| rc::PARAMETER)?;
    Ok(v)
}

/// A numeric delta (int, double; nil or absent = 1), for increments.
pub(crate) fn delta_arg(v: Option<&Mp>) -> Result<Mp, u8> {
    match v {
        None | Some(Mp::Nil) => Ok(Mp::Int(1)),
        Some(Mp::Int(i)) => Ok(Mp::Int(*i)),
        Some(Mp::UInt(u)) => Ok(Mp::Int(*u as i64)),
        Some(Mp::F32(f)) => Ok(Mp::F64(f64::from(*f))),
        Some(Mp::F64(f)) => Ok(Mp::F64(*f)),
        _ => Err(rc::PARAMETER),
    }
}

/// `old + delta` with the rules of §5.3: an int stays an int (a double delta is truncated).
pub(crate) fn add_numbers(old: &Mp, delta: &Mp) -> Result<Mp, u8> {
    let d_int = match delta {
        Mp::Int(i) => *i,
        Mp::F64(f) => *f as i64,
        _ => return Err(rc::PARAMETER),
    };
    let d_f = match delta {
        Mp::Int(i) => *i as f64,
        Mp::F64(f) => *f,
        _ => return Err(rc::PARAMETER),
    };
    Ok(match old {
        Mp::Int(i) => Mp::Int(i.wrapping_add(d_int)),
        Mp::UInt(u) => Mp::Int((*u as i64).wrapping_add(d_int)),
        Mp::F64(f) => Mp::F64(f + d_f),
        Mp::F32(f) => Mp::F64(f64::from(*f) + d_f),
        _ => return Err(rc::PARAMETER),
    })
}

#[cfg(test)]
mod tests;
