//! Bitwise operations on blob bins (CDT spec §7). Bit 0 is the most significant bit of byte 0.

use super::msgpack::{Mp, Reader};
use super::{Answer, Outcome};
use crate::particle::{ParticleType, Value};
use crate::proto::result_code as rc;

/// Largest blob and offsets, bytes (§7.1).
pub const MAX_BLOB_BYTES: i64 = 128 * 1024 * 1024;

/// Write flags (§7.2).
const CREATE_ONLY: u64 = 0x01;
const UPDATE_ONLY: u64 = 0x02;
const NO_FAIL: u64 = 0x04;
const PARTIAL: u64 = 0x08;
/// Resize flags.
const FROM_FRONT: u64 = 0x01;
const GROW_ONLY: u64 = 0x02;
const SHRINK_ONLY: u64 = 0x04;
/// Integer flags.
const SIGNED: u64 = 0x01;
const SATURATE: u64 = 0x02;
const WRAP: u64 = 0x04;

fn get_bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (0x80 >> (i % 8)) != 0
}

fn set_bit(b: &mut [u8], i: usize, v: bool) {
    if v {
        b[i / 8] |= 0x80 >> (i % 8);
    } else {
        b[i / 8] &= !(0x80 >> (i % 8));
    }
}

fn int(v: &Mp) -> Result<i64, u8> {
    v.as_int().ok_or(rc::PARAMETER)
}

fn uint_opt(v: Option<&Mp>) -> Result<u64, u8> {
    v.map_or(Ok(0), |v| v.as_u64().ok_or(rc::PARAMETER))
}

/// A blob argument: msgpack str/bin whose first byte (the type) is skipped; non-empty.
fn bytes_arg(v: &Mp) -> Result<&[u8], u8> {
    match v {
        Mp::Str(s) | Mp::Bin(s) if s.len() > 1 => Ok(&s[1..]),
        _ => Err(rc::PARAMETER),
    }
}

/// A signed bit offset resolved against `nbits`.
fn bit_offset(v: &Mp, nbits: usize, missing: bool) -> Result<usize, u8> {
    let o = int(v)?;
    if o.unsigned_abs() > (MAX_BLOB_BYTES * 8) as u64 {
        return Err(rc::PARAMETER);
    }
    if o < 0 {
        if missing {
            return Err(rc::PARAMETER);
        }
        let r = nbits as i64 + o;
        if r < 0 {
            return Err(rc::PARAMETER);
        }
        return Ok(r as usize);
    }
    Ok(o as usize)
}

fn bit_size(v: &Mp, max: i64) -> Result<usize, u8> {
    let s = int(v)?;
    if s <= 0 || s > max {
        return Err(rc::PARAMETER);
    }
    Ok(s as usize)
}

/// Reads `n ≤ 64` bits at `off` as an unsigned integer.
fn read_uint(b: &[u8], off: usize, n: usize) -> u64 {
    (0..n).fold(0u64, |a, j| (a << 1) | u64::from(get_bit(b, off + j)))
}

fn write_uint(b: &mut [u8], off: usize, n: usize, v: u64) {
    for j in 0..n {
        set_bit(b, off + j, (v >> (n - 1 - j)) & 1 != 0);
    }
}

fn sign_extend(v: u64, n: usize) -> i64 {
    if n == 64 {
        v as i64
    } else {
        let shift = 64 - n as u32;
        ((v << shift) as i64) >> shift
    }
}

/// Applies one bit op (`modify` = op type 13) to the blob bin.
pub fn apply(modify: bool, payload: &[u8], bin: Option<&Value>) -> Result<Outcome, u8> {
    let mut r = Reader::new(payload);
    let n = r.array_header().map_err(|_| rc::PARAMETER)?;
    if n == 0 {
        return Err(rc::PARAMETER);
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(r.read().map_err(|_| rc::PARAMETER)?);
    }
    let code = items.remove(0).as_u64().ok_or(rc::PARAMETER)?;
    let a = &items;
    let (req, opt) = match code {
        0 => (1, 2),
        1 | 2 => (2, 1),
        3..=6 | 8 | 9 | 12 => (3, 1),
        7 => (2, 1),
        10 | 11 => (3, 2),
        50 | 51 => (2, 0),
        52 | 53 => (3, 0),
        54 => (2, 1),
        _ => return Err(rc::PARAMETER),
    };
    if (code >= 50) == modify {
        return Err(rc::PARAMETER);
    }
    if a.len() < req || a.len() > req + opt {
        return Err(rc::PARAMETER);
    }
    let cur: Option<&[u8]> = match bin {
        None => None,
        Some(Value::Blob(ParticleType::Blob, b)) => Some(b),
        Some(_) => return Err(rc::INCOMPATIBLE_TYPE),
    };
    let none = Outcome {
        answer: Answer::NoResult,
        new_value: None,
    };
    if !modify {
        let Some(b) = cur else {
            return Ok(Outcome {
                answer: Answer::NoBin,
                new_value: None,
            });
        };
        return read(code, a, b).map(|v| Outcome {
            answer: Answer::Value(v),
            new_value: None,
        });
    }
    // Write flags: position and allowed set per op.
    let (flags_at, allowed) = match code {
        0 => (1, CREATE_ONLY | UPDATE_ONLY | NO_FAIL),
        1 => (2, CREATE_ONLY | UPDATE_ONLY | NO_FAIL),
        2 => (2, UPDATE_ONLY | NO_FAIL | PARTIAL),
        3..=6 | 8 | 9 => (3, UPDATE_ONLY | NO_FAIL | PARTIAL),
        7 => (2, UPDATE_ONLY | NO_FAIL | PARTIAL),
        _ => (3, UPDATE_ONLY | NO_FAIL),
    };
    let flags = uint_opt(a.get(flags_at))?;
    if flags & !allowed != 0 || flags & (CREATE_ONLY | UPDATE_ONLY) == CREATE_ONLY | UPDATE_ONLY {
        return Err(rc::PARAMETER);
    }
    let no_fail = flags & NO_FAIL != 0;
    let fail = |code: u8| if no_fail { Ok(none.clone()) } else { Err(code) };
    match cur {
        Some(_) if flags & CREATE_ONLY != 0 => return fail(rc::BIN_EXISTS),
        None if flags & UPDATE_ONLY != 0 || !matches!(code, 0 | 1) => {
            // Check the arguments first: parameter errors are never suppressed.
            validate_args(code, a)?;
            return fail(rc::BIN_NOT_FOUND);
        }
        _ => {}
    }
    let missing = cur.is_none();
    let mut b: Vec<u8> = cur.map(<[u8]>::to_vec).unwrap_or_default();
    let nbits = b.len() * 8;
    let done = |b: Vec<u8>| {
        Ok(Outcome {
            answer: Answer::NoResult,
            new_value: Some(Value::Blob(ParticleType::Blob, b)),
        })
    };
    match code {
        0 => {
            let size = int(&a[0])?;
            if !(0..=MAX_BLOB_BYTES).contains(&size) {
                return Err(rc::PARAMETER);
            }
            let rf = uint_opt(a.get(2))?;
            if rf & !(FROM_FRONT | GROW_ONLY | SHRINK_ONLY) != 0 || rf & (GROW_ONLY | SHRINK_ONLY) == GROW_ONLY | SHRINK_ONLY {
                return Err(rc::PARAMETER);
            }
            let size = size as usize;
            if (size > b.len() && rf & SHRINK_ONLY != 0) || (size < b.len() && rf & GROW_ONLY != 0) {
                return if no_fail { Ok(none) } else { Err(rc::PARAMETER) };
            }
            if rf & FROM_FRONT != 0 {
                if size >= b.len() {
                    let mut v = vec![0; size - b.len()];
                    v.extend_from_slice(&b);
                    b = v;
                } else {
                    b.drain(..b.len() - size);
                }
            } else {
                b.resize(size, 0);
            }
            done(b)
        }
        1 => {
            let off = int(&a[0])?;
            if !(0..=MAX_BLOB_BYTES).contains(&off) {
                return Err(rc::PARAMETER);
            }
            let v = bytes_arg(&a[1])?;
            let off = off as usize;
            if off > b.len() {
                b.resize(off, 0);
            }
            b.splice(off..off, v.iter().copied());
            if b.len() as i64 > MAX_BLOB_BYTES {
                return Err(rc::PARAMETER);
            }
            done(b)
        }
        2 => {
            let off = int(&a[0])?;
            let size = int(&a[1])?;
            if off < 0 || size <= 0 || size > MAX_BLOB_BYTES {
                return Err(rc::PARAMETER);
            }
            let (off, mut size) = (off as usize, size as usize);
            if off >= b.len() {
                return if no_fail { Ok(none) } else { Err(rc::PARAMETER) };
            }
            if off + size > b.len() {
                if flags & PARTIAL == 0 {
                    return if no_fail { Ok(none) } else { Err(rc::PARAMETER) };
                }
                size = b.len() - off;
            }
            b.drain(off..off + size);
            done(b)
        }
        3..=9 => {
            let off = bit_offset(&a[0], nbits, missing)?;
            let mut size = bit_size(&a[1], MAX_BLOB_BYTES * 8)?;
            let value = match code {
                3..=6 => {
                    let v = bytes_arg(&a[2])?;
                    if v.len() * 8 < size {
                        return Err(rc::PARAMETER);
                    }
                    Some(v)
                }
                _ => None,
            };
            let shift = match code {
                8 | 9 => {
                    let s = int(&a[2])?;
                    if !(0..=MAX_BLOB_BYTES * 8).contains(&s) {
                        return Err(rc::PARAMETER);
                    }
                    s as usize
                }
                _ => 0,
            };
            if off >= nbits {
                return fail(rc::OP_NOT_APPLICABLE);
            }
            if off + size > nbits {
                if flags & PARTIAL == 0 {
                    return fail(rc::OP_NOT_APPLICABLE);
                }
                size = nbits - off;
            }
            let old: Vec<bool> = (0..size).map(|j| get_bit(&b, off + j)).collect();
            for j in 0..size {
                let vb = value.is_some_and(|v| get_bit(v, j));
                let nb = match code {
                    3 => vb,
                    4 => old[j] | vb,
                    5 => old[j] ^ vb,
                    6 => old[j] & vb,
                    7 => !old[j],
                    8 => j + shift < size && old[j + shift],
                    _ => j >= shift && old[j - shift],
                };
                set_bit(&mut b, off + j, nb);
            }
            done(b)
        }
        _ => {
            // 10 ADD, 11 SUBTRACT, 12 SET_INT
            let off = bit_offset(&a[0], nbits, missing)?;
            let size = bit_size(&a[1], 64)?;
            let value = int(&a[2])?;
            let iflags = if code == 12 { 0 } else { uint_opt(a.get(4))? };
            if iflags & !(SIGNED | SATURATE | WRAP) != 0 || iflags & (SATURATE | WRAP) == SATURATE | WRAP {
                return Err(rc::PARAMETER);
            }
            if off >= nbits || off + size > nbits {
                return fail(rc::OP_NOT_APPLICABLE);
            }
            let mask = if size == 64 { u64::MAX } else { (1u64 << size) - 1 };
            let old = read_uint(&b, off, size);
            let v = value as u64 & mask;
            let new = if code == 12 {
                v
            } else if iflags & SIGNED == 0 {
                let (res, over) = if code == 10 {
                    let r = old.wrapping_add(v) & mask;
                    (r, r < old)
                } else {
                    let r = old.wrapping_sub(v) & mask;
                    (r, r > old)
                };
                match (over, iflags) {
                    (false, _) => res,
                    (true, f) if f & SATURATE != 0 => {
                        if code == 10 {
                            mask
                        } else {
                            0
                        }
                    }
                    (true, f) if f & WRAP != 0 => res,
                    _ => return fail(rc::OP_NOT_APPLICABLE),
                }
            } else {
                let o = i128::from(sign_extend(old, size));
                let d = i128::from(sign_extend(v, size));
                let r = if code == 10 { o + d } else { o - d };
                let max = (1i128 << (size - 1)) - 1;
                let min = -(1i128 << (size - 1));
                if (min..=max).contains(&r) || iflags & WRAP != 0 {
                    (r as u64) & mask
                } else if iflags & SATURATE != 0 {
                    (r.clamp(min, max) as u64) & mask
                } else {
                    return fail(rc::OP_NOT_APPLICABLE);
                }
            };
            write_uint(&mut b, off, size, new);
            done(b)
        }
    }
}

/// Argument checks of a modify op on a missing bin (so that 4 wins over 17).
fn validate_args(code: u64, a: &[Mp]) -> Result<(), u8> {
    match code {
        3..=12 => {
            if int(&a[0])? < 0 {
                return Err(rc::PARAMETER);
            }
            bit_size(&a[1], if code >= 10 { 64 } else { MAX_BLOB_BYTES * 8 })?;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn read(code: u64, a: &[Mp], b: &[u8]) -> Result<Value, u8> {
    let nbits = b.len() * 8;
    let off = bit_offset(&a[0], nbits, false)?;
    let size = bit_size(&a[1], if code == 54 { 64 } else { MAX_BLOB_BYTES * 8 })?;
    let iflags = if code == 54 { uint_opt(a.get(2))? } else { 0 };
    if iflags & !SIGNED != 0 {
        return Err(rc::PARAMETER);
    }
    let want = match code {
        52 | 53 => match a[2] {
            Mp::Bool(v) => Some(v),
            _ => return Err(rc::PARAMETER),
        },
        _ => None,
    };
    if off >= nbits || off + size > nbits {
        return Err(rc::OP_NOT_APPLICABLE);
    }
    Ok(match code {
        50 => {
            let mut out = vec![0u8; size.div_ceil(8)];
            for j in 0..size {
                set_bit(&mut out, j, get_bit(b, off + j));
            }
            Value::Blob(ParticleType::Blob, out)
        }
        51 => Value::Int((0..size).filter(|&j| get_bit(b, off + j)).count() as i64),
        52 => Value::Int((0..size).find(|&j| Some(get_bit(b, off + j)) == want).map_or(-1, |j| j as i64)),
        53 => Value::Int((0..size).rev().find(|&j| Some(get_bit(b, off + j)) == want).map_or(-1, |j| j as i64)),
        _ => {
            let v = read_uint(b, off, size);
            Value::Int(if iflags & SIGNED != 0 { sign_extend(v, size) } else { v as i64 })
        }
    })
}
