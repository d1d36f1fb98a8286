//! HyperLogLog operations (CDT spec §8) on Aerospike's HLL bin format (particle type 18):
//! `[flags = 0][n_index_bits][n_minhash_bits][cache: u64 LE][registers]`, `2^ib` registers of
//! `6 + mb` bits packed MSB-first; register = `(hll_value << mb) | minhash`.
//! Cardinality: Ertl 2017 (arXiv:1702.01284), similarity with minhash: Yu & Weber
//! (arXiv:1710.08436), as §8.4 describes the server's computation.

use super::msgpack::{normalize, Mp, Reader};
use super::{Answer, Outcome};
use crate::particle::Value;
use crate::proto::result_code as rc;

const HDR_BYTES: usize = 11;
const CREATE_ONLY: u64 = 0x01;
const UPDATE_ONLY: u64 = 0x02;
const NO_FAIL: u64 = 0x04;
const ALLOW_FOLD: u64 = 0x08;

/// A decoded sketch.
#[derive(Clone, Debug, PartialEq)]
pub struct Hll {
    pub ib: u32,
    pub mb: u32,
    pub cache: u64,
    pub regs: Vec<u64>,
}

fn valid_bits(ib: i64, mb: i64) -> bool {
    (4..=16).contains(&ib) && (mb == 0 || (4..=51).contains(&mb)) && ib + mb <= 64
}

fn reg_bytes(ib: u32, mb: u32) -> usize {
    ((6 + mb as usize) << ib).div_ceil(8)
}

/// A blob that is not a valid HLL particle (§8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadHll;

/// Checks a stored HLL particle: flags 0, valid bit counts, exact length (§8.1).
///
/// # Errors
/// [`BadHll`] when any of those does not hold.
pub fn check(b: &[u8]) -> Result<(), BadHll> {
    if b.len() < HDR_BYTES || b[0] != 0 || !valid_bits(i64::from(b[1]), i64::from(b[2])) {
        return Err(BadHll);
    }
    if b.len() != HDR_BYTES + reg_bytes(u32::from(b[1]), u32::from(b[2])) {
        return Err(BadHll);
    }
    Ok(())
}

impl Hll {
    pub fn new(ib: u32, mb: u32) -> Hll {
        Hll {
            ib,
            mb,
            cache: 0,
            regs: vec![0; 1 << ib],
        }
    }

    pub fn decode(b: &[u8]) -> Result<Hll, BadHll> {
        check(b)?;
        let (ib, mb) = (u32::from(b[1]), u32::from(b[2]));
        let cache = u64::from_le_bytes(b[3..11].try_into().expect("8 bytes"));
        let w = 6 + mb as usize;
        let r = &b[HDR_BYTES..];
        let regs = (0..1usize << ib)
            .map(|i| (0..w).fold(0u64, |a, j| {
                let bit = i * w + j;
                (a << 1) | u64::from(r[bit / 8] >> (7 - bit % 8) & 1)
            }))
            .collect();
        Ok(Hll { ib, mb, cache, regs })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0, self.ib as u8, self.mb as u8];
        out.extend_from_slice(&self.cache.to_le_bytes());
        let w = 6 + self.mb as usize;
        let mut r = vec![0u8; reg_bytes(self.ib, self.mb)];
        for (i, &v) in self.regs.iter().enumerate() {
            for j in 0..w {
                if (v >> (w - 1 - j)) & 1 != 0 {
                    let bit = i * w + j;
                    r[bit / 8] |= 0x80 >> (bit % 8);
                }
            }
        }
        out.extend_from_slice(&r);
        out
    }

    fn reg_for(&self, elem: &[u8]) -> (usize, u64) {
        let (h1, h2) = murmur3_x64_128(elem);
        let index = (h1 & ((1u64 << self.ib) - 1)) as usize;
        let minhash = if self.mb == 0 { 0 } else { (h1 >> self.ib) & ((1u64 << self.mb) - 1) };
        let hv = (u64::from(h2.trailing_zeros()) + 1) & 0x3f;
        (index, (hv << self.mb) | minhash)
    }

    /// Adds one element's msgpack bytes; true if a register changed.
    pub fn add(&mut self, elem: &[u8]) -> bool {
        let (i, new) = self.reg_for(elem);
        if new > self.regs[i] {
            self.regs[i] = new;
            self.cache = 0;
            true
        } else {
            false
        }
    }

    fn hll_value(&self, i: usize) -> u64 {
        self.regs[i] >> self.mb
    }

    /// Merges `o` (with `o.ib >= self.ib`) into this template (§8.4).
    fn union_in(&mut self, o: &Hll) {
        let mask = (1usize << self.ib) - 1;
        for i in 0..o.regs.len() {
            let t = i & mask;
            if self.mb > 0 {
                self.regs[t] = self.regs[t].max(o.regs[i]);
            } else {
                self.regs[t] = self.regs[t].max(o.hll_value(i));
            }
        }
    }

    /// The cardinality estimate (§8.4, Ertl's improved estimator with q = 64).
    pub fn estimate(&self) -> u64 {
        let m = self.regs.len() as f64;
        let mut c = [0u64; 65];
        for i in 0..self.regs.len() {
            c[self.hll_value(i).min(64) as usize] += 1;
        }
        let mut z = m * tau(c[64] as f64 / m);
        for k in (1..=64).rev() {
            z = 0.5 * (z + c[k] as f64);
        }
        z += m * sigma(c[0] as f64 / m);
        let alpha = match self.ib {
            4 => 0.673,
            5 => 0.697,
            6 => 0.709,
            _ => 0.7213 / (1.0 + 1.079 / m),
        };
        (alpha * m * m / z).round() as u64
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let zp = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if zp == z {
            return z / 3.0;
        }
    }
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let zp = z;
        z += x * y;
        y += y;
        if zp == z {
            return z;
        }
    }
}

/// MurmurHash3 x64 128 (Appleby's public-domain algorithm), seed 0: `(h1, h2)`.
pub fn murmur3_x64_128(data: &[u8]) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let fmix = |mut k: u64| {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    };
    let (mut h1, mut h2) = (0u64, 0u64);
    let blocks = data.len() / 16;
    for i in 0..blocks {
        let k1 = u64::from_le_bytes(data[i * 16..i * 16 + 8].try_into().expect("8"));
        let k2 = u64::from_le_bytes(data[i * 16 + 8..i * 16 + 16].try_into().expect("8"));
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 = h1.rotate_left(27).wrapping_add(h2).wrapping_mul(5).wrapping_add(0x52dc_e729);
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 = h2.rotate_left(31).wrapping_add(h1).wrapping_mul(5).wrapping_add(0x3849_5ab5);
    }
    let tail = &data[blocks * 16..];
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 ^= u64::from(b) << (i * 8);
        } else {
            k2 ^= u64::from(b) << ((i - 8) * 8);
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    h1 ^= data.len() as u64;
    h2 ^= data.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn int_or(v: Option<&Mp>, default: i64) -> Result<i64, u8> {
    v.map_or(Ok(default), |v| v.as_int().ok_or(rc::PARAMETER))
}

/// The element list of ADD / MAY_CONTAIN: each element's normalised msgpack bytes.
fn elements(v: &Mp) -> Result<Vec<Vec<u8>>, u8> {
    let Mp::List(l) = v else {
        return Err(rc::PARAMETER);
    };
    if l.items.is_empty() {
        return Err(rc::PARAMETER);
    }
    l.items
        .iter()
        .map(|e| {
            if matches!(e, Mp::List(_) | Mp::Map(_)) {
                return Err(rc::PARAMETER);
            }
            let mut e = e.clone();
            normalize(&mut e).map_err(|_| rc::PARAMETER)?;
            Ok(e.to_bytes())
        })
        .collect()
}

/// `hll_or_list_of_hlls`: one HLL value or a list of them (type byte skipped).
fn hll_args(v: &Mp) -> Result<Vec<Hll>, u8> {
    let one = |v: &Mp| match v {
        Mp::Str(s) | Mp::Bin(s) if !s.is_empty() => Hll::decode(&s[1..]).map_err(|_| rc::PARAMETER),
        _ => Err(rc::PARAMETER),
    };
    match v {
        Mp::List(l) if !l.items.is_empty() => l.items.iter().map(one).collect(),
        Mp::List(_) => Err(rc::PARAMETER),
        v => Ok(vec![one(v)?]),
    }
}

/// The template for multi-sketch reads: (min ib, common mb or 0).
fn template(sk: &[&Hll]) -> Hll {
    let ib = sk.iter().map(|h| h.ib).min().expect("non-empty");
    let mb0 = sk[0].mb;
    let mb = if sk.iter().all(|h| h.mb == mb0) { mb0 } else { 0 };
    Hll::new(ib, mb)
}

fn union_of(sk: &[&Hll]) -> Hll {
    let mut t = template(sk);
    for h in sk {
        t.union_in(h);
    }
    t
}

fn folded(h: &Hll, t: &Hll) -> Hll {
    let mut f = Hll::new(t.ib, t.mb);
    f.union_in(h);
    f
}

/// (intersection count, similarity) of the sketches (§8.4).
fn intersect(sk: &[&Hll]) -> Result<(u64, f64), u8> {
    let t = template(sk);
    let u = union_of(sk);
    let union_count = u.estimate() as f64;
    if t.mb == 0 {
        if sk.len() > 3 {
            return Err(rc::PARAMETER);
        }
        let est: Vec<f64> = sk.iter().map(|h| folded(h, &t).estimate() as f64).collect();
        let inter = if sk.len() == 2 {
            (est[0] + est[1] - union_count).max(0.0)
        } else {
            let pair = |a: usize, b: usize| union_of(&[sk[a], sk[b]]).estimate() as f64;
            let ab = est[0] + est[1] - pair(0, 1);
            let bc = est[1] + est[2] - pair(1, 2);
            let ac = est[0] + est[2] - pair(0, 2);
            (union_count - (est[0] + est[1] + est[2]) + (ab + bc + ac)).max(0.0)
        };
        return Ok((inter as u64, inter / union_count));
    }
    // HyperMinHash. "Has data" scans only the first 2^ib bytes of the register area (quirk).
    let has_data = |h: &Hll| {
        let b = h.encode();
        b[HDR_BYTES..HDR_BYTES + (1usize << h.ib).min(b.len() - HDR_BYTES)].iter().any(|&x| x != 0)
    };
    let f: Vec<Hll> = sk.iter().map(|h| folded(h, &t)).collect();
    if f.iter().any(|h| !has_data(h)) {
        let sim = if f.iter().any(has_data) { 0.0 } else { f64::NAN };
        return Ok((0, sim));
    }
    let m = t.regs.len();
    let n_union = (0..m).filter(|&i| f.iter().any(|h| h.regs[i] != 0)).count() as f64;
    let n_inter = (0..m).filter(|&i| f[0].regs[i] != 0 && f.iter().all(|h| h.regs[i] == f[0].regs[i])).count() as f64;
    let mut ec = 0.0;
    if f.len() == 2 {
        let (a, b) = (f[0].estimate() as f64, f[1].estimate() as f64);
        let mf = m as f64;
        let mut s = 0.0;
        for i in 1..=64i32 {
            let b1 = if i == 64 { 0.0 } else { 2f64.powi(-i) / mf };
            let b2 = 2f64.powi(-i + 1) / mf;
            let px = (1.0 - b1).powf(a) - (1.0 - b2).powf(a);
            let py = (1.0 - b1).powf(b) - (1.0 - b2).powf(b);
            s += px * py;
        }
        ec = mf / 2f64.powi(t.mb as i32) * s;
    }
    let sim = ((n_inter - ec) / n_union).max(0.0);
    Ok(((union_count * sim).round() as u64, sim))
}

/// Applies one HLL op (`modify` = op type 16).
pub fn apply(modify: bool, payload: &[u8], bin: Option<&Value>) -> Result<Outcome, u8> {
    let mut r = Reader::new(payload);
    let n = r.array_header().map_err(|_| rc::PARAMETER)?;
    if n == 0 {
        return Err(rc::PARAMETER);
    }
    let mut a = Vec::with_capacity(n);
    for _ in 0..n {
        a.push(r.read().map_err(|_| rc::PARAMETER)?);
    }
    let code = a.remove(0).as_u64().ok_or(rc::PARAMETER)?;
    let (req, opt) = match code {
        0 => (0, 3),
        1 => (1, 3),
        2 => (1, 1),
        3 | 50 | 55 => (0, 0),
        4 => (1, 0),
        51..=54 | 56 => (1, 0),
        _ => return Err(rc::PARAMETER),
    };
    if (code >= 50) == modify || a.len() < req || a.len() > req + opt {
        return Err(rc::PARAMETER);
    }
    let cur = match bin {
        None => None,
        Some(Value::Hll(b)) => Some(Hll::decode(b).map_err(|_| rc::SERVER_ERROR)?),
        Some(_) => return Err(rc::INCOMPATIBLE_TYPE),
    };
    let value = |v: Value| Outcome {
        answer: Answer::Value(v),
        new_value: None,
    };
    if !modify {
        let Some(h) = cur else {
            return Ok(Outcome {
                answer: Answer::NoBin,
                new_value: None,
            });
        };
        return Ok(match code {
            50 => value(Value::Int(if h.cache != 0 { h.cache } else { h.estimate() } as i64)),
            55 => value(Value::List(
                Mp::List(super::msgpack::List {
                    flags: 0,
                    items: vec![Mp::Int(i64::from(h.ib)), Mp::Int(i64::from(h.mb))],
                })
                .to_bytes(),
            )),
            56 => {
                let els = elements(&a[0])?;
                let all = els.iter().all(|e| {
                    let (i, new) = h.reg_for(e);
                    new <= h.regs[i]
                });
                value(Value::Int(i64::from(all)))
            }
            _ => {
                let args = hll_args(&a[0])?;
                let mut sk: Vec<&Hll> = args.iter().collect();
                sk.push(&h);
                match code {
                    51 => value(Value::Hll(union_of(&sk).encode())),
                    52 => value(Value::Int(union_of(&sk).estimate() as i64)),
                    53 => value(Value::Int(intersect(&sk)?.0 as i64)),
                    _ => value(Value::Float(intersect(&sk)?.1)),
                }
            }
        });
    }
    let (flags_at, allowed) = match code {
        0 => (2, CREATE_ONLY | UPDATE_ONLY | NO_FAIL),
        1 => (3, CREATE_ONLY | NO_FAIL),
        2 => (1, CREATE_ONLY | UPDATE_ONLY | NO_FAIL | ALLOW_FOLD),
        _ => (usize::MAX, 0),
    };
    let flags = a.get(flags_at).map_or(Ok(0), |f| f.as_u64().ok_or(rc::PARAMETER))?;
    if flags & !allowed != 0 || flags & (CREATE_ONLY | UPDATE_ONLY) == CREATE_ONLY | UPDATE_ONLY {
        return Err(rc::PARAMETER);
    }
    let noop = Outcome {
        answer: Answer::NoResult,
        new_value: None,
    };
    let fail = |c: u8| if flags & NO_FAIL != 0 { Ok(noop.clone()) } else { Err(c) };
    let store = |h: &Hll, answer: Answer| Outcome {
        answer,
        new_value: Some(Value::Hll(h.encode())),
    };
    // Argument checks come before the bin-state checks (4 before 6/17).
    let bits = |ib_at: usize| -> Result<(i64, i64), u8> {
        let ib = int_or(a.get(ib_at), -1)?;
        let mb = int_or(a.get(ib_at + 1), -1)?;
        if (ib != -1 && !(4..=16).contains(&ib)) || (mb != -1 && !(mb == 0 || (4..=51).contains(&mb))) {
            return Err(rc::PARAMETER);
        }
        Ok((ib, mb))
    };
    match code {
        0 | 1 => {
            let (ib, mb) = bits(if code == 0 { 0 } else { 1 })?;
            let els = if code == 1 { Some(elements(&a[0])?) } else { None };
            if cur.is_some() && flags & CREATE_ONLY != 0 {
                return fail(rc::BIN_EXISTS);
            }
            if cur.is_none() && flags & UPDATE_ONLY != 0 {
                return fail(rc::BIN_NOT_FOUND);
            }
            let mut h = match (&cur, code) {
                (Some(h), 1) => h.clone(),
                _ => {
                    let ib = if ib == -1 { cur.as_ref().map(|h| i64::from(h.ib)).ok_or(rc::OP_NOT_APPLICABLE)? } else { ib };
                    let mb = if mb == -1 { cur.as_ref().map_or(0, |h| i64::from(h.mb)) } else { mb };
                    if !valid_bits(ib, mb) {
                        return Err(rc::PARAMETER);
                    }
                    Hll::new(ib as u32, mb as u32)
                }
            };
            match els {
                None => Ok(store(&h, Answer::NoResult)),
                Some(els) => {
                    let changed = els.iter().filter(|e| h.add(e)).count();
                    Ok(store(&h, Answer::Value(Value::Int(changed as i64))))
                }
            }
        }
        2 => {
            let args = hll_args(&a[0])?;
            if cur.is_some() && flags & CREATE_ONLY != 0 {
                return fail(rc::BIN_EXISTS);
            }
            if cur.is_none() && flags & UPDATE_ONLY != 0 {
                return fail(rc::BIN_NOT_FOUND);
            }
            let refs: Vec<&Hll> = args.iter().collect();
            let t = template(&refs);
            let mut out = match &cur {
                None => t,
                Some(b) if flags & ALLOW_FOLD == 0 => {
                    if b.ib > t.ib || (b.mb != 0 && b.mb != t.mb) {
                        return Err(rc::OP_NOT_APPLICABLE);
                    }
                    Hll::new(b.ib, b.mb)
                }
                Some(b) => Hll::new(b.ib.min(t.ib), if b.mb == t.mb { b.mb } else { 0 }),
            };
            for h in args.iter().chain(cur.as_ref()) {
                out.union_in(h);
            }
            Ok(store(&out, Answer::NoResult))
        }
        3 => {
            let mut h = cur.ok_or(rc::BIN_NOT_FOUND)?;
            h.cache = h.estimate();
            let c = h.cache as i64;
            Ok(store(&h, Answer::Value(Value::Int(c))))
        }
        _ => {
            let ib = a[0].as_int().ok_or(rc::PARAMETER)?;
            if !(4..=16).contains(&ib) {
                return Err(rc::PARAMETER);
            }
            let h = cur.ok_or(rc::BIN_NOT_FOUND)?;
            if h.mb != 0 || i64::from(h.ib) < ib {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            if i64::from(h.ib) == ib {
                return Ok(store(&h, Answer::NoResult));
            }
            let mut f = Hll::new(ib as u32, 0);
            f.union_in(&h);
            Ok(store(&f, Answer::NoResult))
        }
    }
}
