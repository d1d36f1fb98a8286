//! Map operations (CDT spec §6). Maps are kept sorted by key (§2.3), so "index" is the position.

use std::cmp::Ordering;

use super::list::{family_argc, get_remove_by, rel_range, Family};
use super::msgpack::{self, cmp, Map, Mp};
use super::{
    argc, build_result, complement, count_arg, delta_arg, int_arg, rt, split_rt, storage_arg, Coll, Op, RangeInfo,
};
use crate::proto::result_code as rc;

/// Map write flags (§6.3).
const CREATE_ONLY: u64 = 0x01;
const UPDATE_ONLY: u64 = 0x02;
const NO_FAIL: u64 = 0x04;
const DO_PARTIAL: u64 = 0x08;

/// `Ok(position)` of `key`, or `Err(insertion position)`.
pub(crate) fn find_key(m: &Map, key: &Mp) -> Result<usize, usize> {
    m.pairs.binary_search_by(|(k, _)| cmp(k, key))
}

/// Pair indexes sorted by (value, index).
pub(crate) fn by_value_order(m: &Map) -> Vec<usize> {
    let mut ord: Vec<usize> = (0..m.pairs.len()).collect();
    ord.sort_by(|&a, &b| cmp(&m.pairs[a].1, &m.pairs[b].1).then(a.cmp(&b)));
    ord
}

/// An empty map with the order flags of a SET_TYPE / `attr` argument (CDT spec §6.2): the low
/// two bits kept as they are (1 K-ordered, 3 KV-ordered, and 2, V-ordered, which CE 8.1 stores
/// as `c7 00 02 c0` and treats as KV-ordered: `is_k_ordered` is "flags ≠ 0"); flags with bits
/// outside 0x13 count as 0 (`cdt_context_use_static_map_if_notinuse`).
fn new_map(attr: Option<&Mp>) -> Map {
    let a = attr.and_then(Mp::as_u64).unwrap_or(0);
    Map {
        flags: if a & !0x13 == 0 { (a & 0x03) as u8 } else { 0 },
        pairs: Vec::new(),
    }
}

fn key_arg(v: &Mp) -> Result<Mp, u8> {
    if !msgpack::is_map_key(v) {
        return Err(rc::PARAMETER);
    }
    storage_arg(v)
}

fn size(m: &Map) -> Mp {
    Mp::Int(m.pairs.len() as i64)
}

/// Puts pairs with write flags; returns the new size.
fn put_items(m: &mut Map, items: Vec<(Mp, Mp)>, wflags: u64) -> Result<Mp, u8> {
    let mut staged = Vec::with_capacity(items.len());
    for (k, v) in items {
        let found = find_key(m, &k);
        let refused = match found {
            Ok(_) if wflags & CREATE_ONLY != 0 => Some(rc::ELEMENT_EXISTS),
            Err(_) if wflags & UPDATE_ONLY != 0 => Some(rc::ELEMENT_NOT_FOUND),
            _ => None,
        };
        match refused {
            None => staged.push((k, v)),
            Some(_) if wflags & NO_FAIL != 0 && wflags & DO_PARTIAL != 0 => {}
            Some(_) if wflags & NO_FAIL != 0 => return Ok(size(m)),
            Some(c) => return Err(c),
        }
    }
    for (k, v) in staged {
        match find_key(m, &k) {
            Ok(p) => m.pairs[p].1 = v,
            Err(at) => m.pairs.insert(at, (k, v)),
        }
    }
    Ok(size(m))
}

/// Maps a get/remove code to its selection (§6.1); bool = remove.
enum MapSel {
    Values(Family),
    Key,
    KeyList,
    KeyInterval,
    KeyRelIndex,
}

fn map_family(code: u64) -> Option<(MapSel, bool)> {
    let (get, remove) = match code {
        76 => (97, true),
        77 => (98, true),
        78 => (99, true),
        79 => (100, true),
        81 => (107, true),
        82 => (102, true),
        83 => (108, true),
        84 => (103, true),
        85 => (104, true),
        86 => (105, true),
        87 => (106, true),
        88 => (109, true),
        89 => (110, true),
        c => (c, false),
    };
    Some((
        match get {
            97 => MapSel::Key,
            98 => MapSel::Values(Family::Index),
            99 => MapSel::Values(Family::Value),
            100 => MapSel::Values(Family::Rank),
            102 => MapSel::Values(Family::AllByValue),
            103 => MapSel::KeyInterval,
            104 => MapSel::Values(Family::IndexRange),
            105 => MapSel::Values(Family::ValueInterval),
            106 => MapSel::Values(Family::RankRange),
            107 => MapSel::KeyList,
            108 => MapSel::Values(Family::ValueList),
            109 => MapSel::KeyRelIndex,
            110 => MapSel::Values(Family::RelRank),
            _ => return None,
        },
        remove,
    ))
}

fn sel_argc(s: &MapSel) -> (usize, usize) {
    match s {
        MapSel::Values(f) => family_argc(f),
        MapSel::Key | MapSel::KeyList => (1, 0),
        MapSel::KeyInterval => (1, 1),
        MapSel::KeyRelIndex => (2, 1),
    }
}

/// Key-family selections: (selection in key order, range info, single).
fn select_keys(m: &Map, s: &MapSel, args: &[Mp]) -> Result<(Vec<usize>, RangeInfo, bool), u8> {
    let n = m.pairs.len();
    let mut info = RangeInfo {
        by_position: true,
        ..RangeInfo::default()
    };
    let less = |x: &Mp| m.pairs.partition_point(|(k, _)| cmp(k, x) == Ordering::Less);
    Ok(match s {
        MapSel::Key => match find_key(m, &args[0]) {
            Ok(p) => {
                info.index = Some((p as i64, 1));
                (vec![p], info, true)
            }
            Err(_) => {
                info.index = Some((-1, 0));
                (vec![], info, true)
            }
        },
        MapSel::KeyList => {
            let Mp::List(l) = &args[0] else {
                return Err(rc::PARAMETER);
            };
            let sel = (0..n)
                .filter(|&i| l.items.iter().any(|k| cmp(&m.pairs[i].0, k).is_eq()))
                .collect();
            (sel, info, false)
        }
        MapSel::KeyInterval => {
            let (b, e) = (&args[0], args.get(1));
            let start = less(b);
            let sel: Vec<usize> = (start..n)
                .take_while(|&i| e.is_none_or(|e| cmp(&m.pairs[i].0, e) == Ordering::Less))
                .collect();
            info.index = Some((start as i64, sel.len() as i64));
            (sel, info, false)
        }
        MapSel::KeyRelIndex => {
            let (st, k) = rel_range(less(&args[0]), int_arg(&args[1])?, count_arg(args.get(2))?, n);
            info.index = Some((st as i64, k as i64));
            ((st..st + k).collect(), info, false)
        }
        MapSel::Values(_) => unreachable!("value families go through get_remove_by"),
    })
}

/// One map op on the target element (`None`: missing).
pub(crate) fn op(op: &Op, target: &mut Option<Mp>) -> Result<Option<Mp>, u8> {
    let code = op.code;
    let a = &op.args;
    match code {
        64 => argc(op, 1, 0)?,
        65 => argc(op, 2, 1)?,
        66 => argc(op, 1, 1)?,
        67 => argc(op, 2, 2)?,
        68 => argc(op, 1, 2)?,
        69 => argc(op, 2, 0)?,
        70 => argc(op, 1, 0)?,
        73 | 74 => argc(op, 1, 2)?,
        _ => {}
    }
    if target.is_none() {
        let attr = match code {
            64 => {
                let f = a[0].as_u64().ok_or(rc::PARAMETER)?;
                if f & !0x13 != 0 {
                    return Err(rc::OP_NOT_APPLICABLE);
                }
                Some(&a[0])
            }
            65 | 67 => a.get(2),
            66 | 68 | 73 | 74 => a.get(1),
            69 | 70 => None,
            _ => {
                if let Some((s, _)) = map_family(code) {
                    let (req, opt) = sel_argc(&s);
                    argc(op, req + 1, opt)?;
                }
                return Ok(None);
            }
        };
        *target = Some(Mp::Map(new_map(attr)));
    }
    let Some(Mp::Map(m)) = target.as_mut() else {
        return Err(rc::INCOMPATIBLE_TYPE);
    };
    Ok(match code {
        64 => {
            let f = a[0].as_u64().ok_or(rc::PARAMETER)?;
            if f & !0x13 != 0 {
                return Err(rc::OP_NOT_APPLICABLE);
            }
            m.flags = new_map(Some(&a[0])).flags;
            None
        }
        65 | 67 | 69 => {
            let k = key_arg(&a[0])?;
            let v = storage_arg(&a[1])?;
            let wflags = match code {
                65 => CREATE_ONLY,
                69 => UPDATE_ONLY,
                _ => a.get(3).map_or(Ok(0), |f| f.as_u64().ok_or(rc::PARAMETER))?,
            };
            Some(put_items(m, vec![(k, v)], wflags)?)
        }
        66 | 68 | 70 => {
            let Mp::Map(items) = storage_arg(&a[0])? else {
                return Err(rc::PARAMETER);
            };
            let wflags = match code {
                66 => CREATE_ONLY,
                70 => UPDATE_ONLY,
                _ => a.get(2).map_or(Ok(0), |f| f.as_u64().ok_or(rc::PARAMETER))?,
            };
            Some(put_items(m, items.pairs, wflags)?)
        }
        73 | 74 => {
            let k = key_arg(&a[0])?;
            let mut delta = delta_arg(a.get(1))?;
            if code == 74 {
                delta = match delta {
                    Mp::Int(i) => Mp::Int(i.wrapping_neg()),
                    Mp::F64(f) => Mp::F64(-f),
                    d => d,
                };
            }
            let new = match find_key(m, &k) {
                Ok(p) => {
                    let v = super::add_numbers(&m.pairs[p].1, &delta)?;
                    m.pairs[p].1 = v.clone();
                    v
                }
                Err(at) => {
                    m.pairs.insert(at, (k, delta.clone()));
                    delta
                }
            };
            Some(new)
        }
        75 => {
            m.pairs.clear();
            None
        }
        96 => Some(size(m)),
        _ => {
            let (s, remove) = map_family(code).ok_or(rc::PARAMETER)?;
            let (result, sel) = match &s {
                MapSel::Values(fam) => {
                    let vals: Vec<&Mp> = m.pairs.iter().map(|(_, v)| v).collect();
                    get_remove_by(&Coll::M(m), &vals, false, fam, op)?
                }
                _ => {
                    let (req, opt) = sel_argc(&s);
                    argc(op, req + 1, opt)?;
                    let (rtype, inverted) = split_rt(&a[0])?;
                    let (mut sel, info, single) = select_keys(m, &s, &a[1..])?;
                    let found = !sel.is_empty();
                    let mut info = info;
                    info.inverted = inverted;
                    if matches!(s, MapSel::KeyList) && matches!(rtype, rt::RANK | rt::REVRANK) {
                        // CE 8.1.2 refuses ranks for a key list (tests/cdt_diff.py --random).
                        return Err(rc::OP_NOT_APPLICABLE);
                    }
                    if inverted {
                        if single || (rt::INDEX_RANGE..=rt::REVRANK_RANGE).contains(&rtype) {
                            return Err(rc::OP_NOT_APPLICABLE);
                        }
                        sel = complement(m.pairs.len(), &sel);
                    }
                    if matches!(rtype, rt::RANK_RANGE | rt::REVRANK_RANGE) {
                        return Err(rc::OP_NOT_APPLICABLE);
                    }
                    let result = match build_result(&Coll::M(m), rtype, &sel, single, info)? {
                        // As list.rs: a key list's EXISTS|INVERTED is "the complement is not
                        // empty"; the other key selections answer "nothing was selected".
                        Some(Mp::Bool(_)) if inverted && !matches!(s, MapSel::KeyList) => Some(Mp::Bool(!found)),
                        r => r,
                    };
                    (result, sel)
                }
            };
            if remove {
                let mut keep = vec![true; m.pairs.len()];
                for &i in &sel {
                    keep[i] = false;
                }
                let mut it = keep.into_iter();
                m.pairs.retain(|_| it.next().unwrap_or(true));
            }
            result
        }
    })
}
