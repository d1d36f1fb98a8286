//! The msgpack value model of CDT values (CDT spec §2, §3): parse, normalise, encode and compare
//! the way Aerospike CE 8.1 does.
//!
//! * [`parse`] reads one msgpack element leniently (any header form, WILDCARD/INF allowed).
//! * [`normalize`] checks and rewrites a value that is about to be stored (§2.3): no
//!   WILDCARD/INF, map keys of the allowed types, no duplicate keys, ordered containers really
//!   sorted, unordered maps sorted by key.
//! * [`Mp::encode`] writes the shortest forms (§2.3), ordered lists as `9N c7 00 01 ...`,
//!   ordered maps with their `c7 00 0F c0` meta pair first.
//! * [`cmp`] is the total order of §3 (type rank, then within the type), with WILDCARD ending a
//!   comparison as equal and INF above everything (§3.3).

use std::cmp::Ordering;

/// Deepest nesting accepted when parsing, levels (a limit on recursion, CDT spec §9.6 uses 64
/// for SELECT; stored values may nest deeper in Aerospike, but 256 is far past practical use).
pub const MAX_DEPTH: usize = 256;

/// List flag: the list is kept sorted (CDT spec §2.1).
pub const LIST_ORDERED: u8 = 0x01;
/// Map flag: keys sorted (always true for Bolide's storage, flagged on the wire only when set).
pub const MAP_K_ORDERED: u8 = 0x01;
/// Map flags: key-value ordered.
pub const MAP_KV_ORDERED: u8 = 0x03;
/// Map flag: value ordered. Alone (SET_TYPE 2) CE 8.1 keeps it as the stored flag byte and
/// orders the map as KV (CDT spec §2.2, §6.2).
pub const MAP_V_ORDERED: u8 = 0x02;
/// Result-map flag: "preserve order" (return type KEY_VALUE, CDT spec §4.1).
pub const MAP_PRESERVE_ORDER: u8 = 0x08;

/// Ext type of WILDCARD and INF (`d4 ff 00` / `d4 ff 01`, CDT spec §3.3).
const EXT_CMP: u8 = 0xFF;

/// One msgpack value.
#[derive(Clone, Debug)]
pub enum Mp {
    Nil,
    Bool(bool),
    /// Any integer that fits i64.
    Int(i64),
    /// An unsigned integer above i64::MAX (`cf` form); sorts after every `Int`.
    UInt(u64),
    /// `ca`: kept as float32 (CDT spec §2.3).
    F32(f32),
    /// `cb`.
    F64(f64),
    /// str family payload, the Aerospike type byte included (3 string, 4 blob, 23 geojson...).
    Str(Vec<u8>),
    /// bin family payload kept as such because no shorter str header fits (§2.3).
    Bin(Vec<u8>),
    List(List),
    Map(Map),
    /// Ext: (type, data). WILDCARD is `Ext(0xff, [0])`, INF `Ext(0xff, [1])`.
    Ext(u8, Vec<u8>),
}

/// A list: its flags (0 or [`LIST_ORDERED`]) and elements.
#[derive(Clone, Debug, Default)]
pub struct List {
    pub flags: u8,
    pub items: Vec<Mp>,
}

/// A map: its flags (0, [`MAP_K_ORDERED`], [`MAP_KV_ORDERED`], or for results
/// [`MAP_PRESERVE_ORDER`]) and pairs (key-sorted when stored).
#[derive(Clone, Debug, Default)]
pub struct Map {
    pub flags: u8,
    pub pairs: Vec<(Mp, Mp)>,
}

impl List {
    pub fn ordered(&self) -> bool {
        self.flags & LIST_ORDERED != 0
    }
}

/// Bytes that are not one well-formed msgpack element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

impl Mp {
    pub fn wildcard() -> Mp {
        Mp::Ext(EXT_CMP, vec![0])
    }
    pub fn inf() -> Mp {
        Mp::Ext(EXT_CMP, vec![1])
    }
    /// A string value (type byte 3 added).
    pub fn string(s: &[u8]) -> Mp {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.push(3);
        v.extend_from_slice(s);
        Mp::Str(v)
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Mp::Int(i) => Some(*i),
            Mp::UInt(u) => Some(*u as i64),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().map(|i| i as u64)
    }
    pub fn is_wild_or_inf(&self) -> bool {
        matches!(self, Mp::Ext(EXT_CMP, d) if d.len() == 1 && d[0] <= 1)
    }
    fn is_wildcard(&self) -> bool {
        matches!(self, Mp::Ext(EXT_CMP, d) if d.len() == 1 && d[0] == 0)
    }
    fn is_inf(&self) -> bool {
        matches!(self, Mp::Ext(EXT_CMP, d) if d.len() == 1 && d[0] == 1)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Writes the value in the shortest forms (CDT spec §2.3).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Mp::Nil => out.push(0xc0),
            Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Mp::Int(i) => encode_int(*i, out),
            Mp::UInt(u) => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Mp::F32(f) => {
                out.push(0xca);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Mp::F64(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Mp::Str(s) => {
                encode_str_header(s.len(), out);
                out.extend_from_slice(s);
            }
            Mp::Bin(s) => {
                let n = s.len();
                if n < 256 {
                    out.extend_from_slice(&[0xc4, n as u8]);
                } else if n < 65536 {
                    out.push(0xc5);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(0xc6);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
                out.extend_from_slice(s);
            }
            Mp::List(l) => {
                let hdr = usize::from(l.flags != 0);
                encode_array_header(l.items.len() + hdr, out);
                if l.flags != 0 {
                    out.extend_from_slice(&[0xc7, 0, l.flags]);
                }
                for it in &l.items {
                    it.encode(out);
                }
            }
            Mp::Map(m) => {
                let hdr = usize::from(m.flags != 0);
                encode_map_header(m.pairs.len() + hdr, out);
                if m.flags != 0 {
                    out.extend_from_slice(&[0xc7, 0, m.flags, 0xc0]);
                }
                for (k, v) in &m.pairs {
                    k.encode(out);
                    v.encode(out);
                }
            }
            Mp::Ext(t, d) => {
                let n = d.len();
                match n {
                    1 => out.push(0xd4),
                    2 => out.push(0xd5),
                    4 => out.push(0xd6),
                    8 => out.push(0xd7),
                    16 => out.push(0xd8),
                    _ if n < 256 => out.extend_from_slice(&[0xc7, n as u8]),
                    _ if n < 65536 => {
                        out.push(0xc8);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    _ => {
                        out.push(0xc9);
                        out.extend_from_slice(&(n as u32).to_be_bytes());
                    }
                }
                out.push(*t);
                out.extend_from_slice(d);
            }
        }
    }
}

pub fn encode_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 {
        let u = i as u64;
        if u < 128 {
            out.push(u as u8);
        } else if u < 256 {
            out.extend_from_slice(&[0xcc, u as u8]);
        } else if u < 65536 {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u < (1 << 32) {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if i >= -32 {
        out.push(i as u8);
    } else if i >= -128 {
        out.extend_from_slice(&[0xd0, i as u8]);
    } else if i >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= -(1 << 31) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn str_header_len(n: usize) -> usize {
    if n < 32 {
        1
    } else if n < 256 {
        2
    } else if n < 65536 {
        3
    } else {
        5
    }
}

fn encode_str_header(n: usize, out: &mut Vec<u8>) {
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub fn encode_array_header(n: usize, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n < 65536 {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub fn encode_map_header(n: usize, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A cursor over msgpack bytes.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn be(&mut self, n: usize) -> Result<u64, Malformed> {
        Ok(self.take(n)?.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Reads an array header, returning the element count.
    pub fn array_header(&mut self) -> Result<usize, Malformed> {
        let b = self.u8()?;
        let n = match b {
            0x90..=0x9f => usize::from(b & 0x0f),
            0xdc => self.be(2)? as usize,
            0xdd => self.be(4)? as usize,
            _ => return Err(Malformed),
        };
        if n > self.remaining() {
            return Err(Malformed);
        }
        Ok(n)
    }
    /// Reads one element.
    pub fn read(&mut self) -> Result<Mp, Malformed> {
        self.read_depth(0)
    }
    fn read_depth(&mut self, depth: usize) -> Result<Mp, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        let b = self.u8()?;
        Ok(match b {
            0x00..=0x7f => Mp::Int(i64::from(b)),
            0xe0..=0xff => Mp::Int(i64::from(b as i8)),
            0xc0 => Mp::Nil,
            0xc2 => Mp::Bool(false),
            0xc3 => Mp::Bool(true),
            0xcc => Mp::Int(self.be(1)? as i64),
            0xcd => Mp::Int(self.be(2)? as i64),
            0xce => Mp::Int(self.be(4)? as i64),
            0xcf => {
                let u = self.be(8)?;
                if u > i64::MAX as u64 {
                    Mp::UInt(u)
                } else {
                    Mp::Int(u as i64)
                }
            }
            0xd0 => Mp::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Mp::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Mp::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Mp::Int(self.be(8)? as i64),
            0xca => Mp::F32(f32::from_bits(self.be(4)? as u32)),
            0xcb => Mp::F64(f64::from_bits(self.be(8)?)),
            0xa0..=0xbf => Mp::Str(self.take(usize::from(b & 0x1f))?.to_vec()),
            0xd9 => {
                let n = self.be(1)? as usize;
                Mp::Str(self.take(n)?.to_vec())
            }
            0xda => {
                let n = self.be(2)? as usize;
                Mp::Str(self.take(n)?.to_vec())
            }
            0xdb => {
                let n = self.be(4)? as usize;
                Mp::Str(self.take(n)?.to_vec())
            }
            0xc4..=0xc6 => {
                let hl = [1usize, 2, 4][usize::from(b - 0xc4)];
                let n = self.be(hl)? as usize;
                let data = self.take(n)?.to_vec();
                // A bin-family value becomes a str when a shorter str header fits (§2.3).
                if str_header_len(n) < 1 + hl {
                    Mp::Str(data)
                } else {
                    Mp::Bin(data)
                }
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                self.pos -= 1;
                let n = self.array_header()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.read_depth(depth + 1)?);
                }
                let mut flags = 0;
                if let Some(Mp::Ext(t, _)) = items.first() {
                    if !items[0].is_wild_or_inf() {
                        flags = *t & LIST_ORDERED;
                        items.remove(0);
                    }
                }
                Mp::List(List { flags, items })
            }
            0x80..=0x8f | 0xde | 0xdf => {
                let n = match b {
                    0xde => self.be(2)? as usize,
                    0xdf => self.be(4)? as usize,
                    _ => usize::from(b & 0x0f),
                };
                if n > self.remaining() {
                    return Err(Malformed);
                }
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.read_depth(depth + 1)?;
                    let v = self.read_depth(depth + 1)?;
                    pairs.push((k, v));
                }
                let mut flags = 0;
                if let Some((Mp::Ext(t, _), _)) = pairs.first() {
                    if !pairs[0].0.is_wild_or_inf() {
                        // Order bits 0x01 K / 0x02 V / 0x03 KV are kept as sent (the
                        // server's rewrite masks with KV_ORDERED | PERSIST_INDEX, §2.3);
                        // 0x08 alone is a result map's "preserve order".
                        flags = match *t & 0x0b {
                            f if f & 0x03 != 0 => f & 0x03,
                            f => f,
                        };
                        pairs.remove(0);
                    }
                }
                Mp::Map(Map { flags, pairs })
            }
            0xd4..=0xd8 => {
                let n = 1usize << (b - 0xd4);
                let t = self.u8()?;
                Mp::Ext(t, self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.be(1usize << (b - 0xc7))? as usize;
                let t = self.u8()?;
                Mp::Ext(t, self.take(n)?.to_vec())
            }
            0xc1 => return Err(Malformed),
        })
    }
}

/// Parses exactly one element occupying all of `buf`.
pub fn parse_exact(buf: &[u8]) -> Result<Mp, Malformed> {
    let mut r = Reader::new(buf);
    let v = r.read()?;
    if r.remaining() != 0 {
        return Err(Malformed);
    }
    Ok(v)
}

/// Whether `k` may be a map key (`map_is_key`, CDT spec §2.2): an integer, a string, or a blob of
/// subtype 4.
pub fn is_map_key(k: &Mp) -> bool {
    match k {
        Mp::Int(_) | Mp::UInt(_) => true,
        Mp::Str(s) | Mp::Bin(s) => matches!(s.first(), Some(3 | 4)),
        _ => false,
    }
}

/// Checks and rewrites a value about to be stored (CDT spec §2.3). `Err` = refused.
pub fn normalize(v: &mut Mp) -> Result<(), Malformed> {
    match v {
        Mp::Ext(..) if v.is_wild_or_inf() => Err(Malformed),
        Mp::List(l) => {
            for it in &mut l.items {
                normalize(it)?;
            }
            if l.ordered() && l.items.windows(2).any(|w| cmp(&w[0], &w[1]) == Ordering::Greater) {
                return Err(Malformed);
            }
            Ok(())
        }
        Mp::Map(m) => {
            if m.flags & MAP_PRESERVE_ORDER != 0 {
                m.flags = 0;
            }
            for (k, val) in &mut m.pairs {
                if !is_map_key(k) {
                    return Err(Malformed);
                }
                normalize(val)?;
            }
            if m.flags == 0 {
                m.pairs.sort_by(|a, b| cmp(&a.0, &b.0));
            }
            if m.pairs.windows(2).any(|w| cmp(&w[0].0, &w[1].0) != Ordering::Less) {
                return Err(Malformed);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Type rank of §3.1.
fn type_rank(v: &Mp) -> u8 {
    match v {
        Mp::Nil => 1,
        Mp::Bool(false) => 2,
        Mp::Bool(true) => 3,
        Mp::Int(i) if *i < 0 => 4,
        Mp::Int(_) | Mp::UInt(_) => 5,
        Mp::Str(s) | Mp::Bin(s) => match s.first() {
            Some(3) if !s.is_empty() => 6,
            Some(23) => 11,
            _ => 9,
        },
        Mp::List(_) => 7,
        Mp::Map(_) => 8,
        Mp::F32(_) | Mp::F64(_) => 10,
        Mp::Ext(..) if v.is_wildcard() => 13,
        Mp::Ext(..) if v.is_inf() => 14,
        Mp::Ext(..) => 12,
    }
}

/// Internal result: `Wild` = a WILDCARD was reached, the whole comparison is equal.
#[derive(PartialEq, Eq, Clone, Copy)]
enum C {
    O(Ordering),
    Wild,
}

/// The total order of CDT spec §3.
pub fn cmp(a: &Mp, b: &Mp) -> Ordering {
    match cmp_w(a, b) {
        C::O(o) => o,
        C::Wild => Ordering::Equal,
    }
}

fn f(v: &Mp) -> f64 {
    match v {
        Mp::F32(x) => f64::from(*x),
        Mp::F64(x) => *x,
        _ => 0.0,
    }
}

fn cmp_w(a: &Mp, b: &Mp) -> C {
    if a.is_wildcard() || b.is_wildcard() {
        return C::Wild;
    }
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return C::O(ra.cmp(&rb));
    }
    C::O(match (a, b) {
        (Mp::Int(x), Mp::Int(y)) => x.cmp(y),
        (Mp::Int(_), Mp::UInt(_)) => Ordering::Less,
        (Mp::UInt(_), Mp::Int(_)) => Ordering::Greater,
        (Mp::UInt(x), Mp::UInt(y)) => x.cmp(y),
        (Mp::Str(x) | Mp::Bin(x), Mp::Str(y) | Mp::Bin(y)) => x.cmp(y),
        (Mp::F32(_) | Mp::F64(_), _) => {
            let (x, y) = (f(a), f(b));
            if x < y {
                Ordering::Less
            } else if x > y {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        (Mp::List(x), Mp::List(y)) => {
            for (p, q) in x.items.iter().zip(&y.items) {
                match cmp_w(p, q) {
                    C::O(Ordering::Equal) => {}
                    other => return other,
                }
            }
            x.items.len().cmp(&y.items.len())
        }
        (Mp::Map(x), Mp::Map(y)) => {
            match x.pairs.len().cmp(&y.pairs.len()) {
                Ordering::Equal => {}
                o => return C::O(o),
            }
            for ((k1, v1), (k2, v2)) in x.pairs.iter().zip(&y.pairs) {
                for (p, q) in [(k1, k2), (v1, v2)] {
                    match cmp_w(p, q) {
                        C::O(Ordering::Equal) => {}
                        other => return other,
                    }
                }
            }
            Ordering::Equal
        }
        (Mp::Ext(t1, d1), Mp::Ext(t2, d2)) => (t1, d1).cmp(&(t2, d2)),
        _ => Ordering::Equal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    fn norm(s: &str) -> Result<String, Malformed> {
        let mut v = parse_exact(&h(s))?;
        normalize(&mut v)?;
        Ok(hex(&v.to_bytes()))
    }

    #[test]
    fn shortest_forms_and_bin_family_quirk() {
        // A: l74: d3 ..01 -> 01, cd 0005 -> 05, c4 02 04 aa -> a2 04 aa
        assert_eq!(norm("93d30000000000000001cd0005c40204aa").unwrap(), "930105a204aa");
        // c4 of 40 bytes stays c4 (str8 is no shorter)
        let long = format!("c428{}", "04".repeat(40));
        assert_eq!(norm(&long).unwrap(), long);
        // float32 kept (A: l75)
        assert_eq!(norm("91ca3fc00000").unwrap(), "91ca3fc00000");
        // negative ints, big unsigned
        assert_eq!(norm("93d0ffd1ff80cfffffffffffffffff").unwrap(), "93ffd080cfffffffffffffffff");
    }

    #[test]
    fn maps_sorted_and_refused() {
        // unordered map stored key-sorted (A: w01)
        assert_eq!(norm("83a2036303a2036101a2036202").unwrap(), "83a2036101a2036202a2036303");
        assert!(norm("82a2037801a2037802").is_err(), "duplicate keys (A: w02)");
        assert!(norm("83c70001c0a2036201a2036102").is_err(), "K-ordered unsorted (A: w03)");
        assert!(norm("9201d4ff00").is_err(), "wildcard (A: w04)");
        assert!(norm("81cb3ff000000000000001").is_err(), "double key (A: m25)");
        assert!(norm("9301").is_err(), "truncated (A: l80)");
        assert!(norm("93c70001030102").is_err(), "ordered list unsorted (A: l68)");
        assert_eq!(norm("83c70001c0a2036101a2036202").unwrap(), "83c70001c0a2036101a2036202");
    }

    #[test]
    fn type_order_of_spec_3_1() {
        // A: l54 sorted order: nil, false, true, -1, 5, "a", [1], {"k":1}, b"x", 1.5
        let sorted = ["c0", "c2", "c3", "ff", "05", "a20361", "9101", "81a2036b01", "a20478", "cb3ff8000000000000"];
        let vals: Vec<Mp> = sorted.iter().map(|s| parse_exact(&h(s)).unwrap()).collect();
        for w in vals.windows(2) {
            assert_eq!(cmp(&w[0], &w[1]), Ordering::Less, "{w:?}");
        }
        assert_ne!(cmp(&Mp::Int(1), &Mp::F64(1.0)), Ordering::Equal);
        assert_eq!(cmp(&Mp::F64(f64::NAN), &Mp::F64(1.0)), Ordering::Equal);
        assert_eq!(cmp(&Mp::Int(i64::MAX), &Mp::UInt(u64::MAX)), Ordering::Less);
    }

    #[test]
    fn wildcard_and_inf() {
        let pat = parse_exact(&h("92a20361d4ff00")).unwrap();
        let yes = parse_exact(&h("93a203610304")).unwrap();
        let no = parse_exact(&h("91a20361")).unwrap();
        assert_eq!(cmp(&pat, &yes), Ordering::Equal);
        assert_ne!(cmp(&pat, &no), Ordering::Equal);
        assert_eq!(cmp(&Mp::inf(), &Mp::F64(f64::MAX)), Ordering::Greater);
    }
}
