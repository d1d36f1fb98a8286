//! What the load generator sends: the operation mix (asbench's `-w/--workload`, plus YCSB
//! presets), the key distribution, and the record layout (asbench's `-o/--object-spec`).
//!
//! Sources: asbench's usage text (`aerospike-benchmark`, `src/main/benchmark_init.c`) for the
//! spelling of `I`, `RU,<read%>` and the object spec; the YCSB core workloads
//! (`workloads/workloada` … `workloadf`) for the presets.

use std::fmt;
use std::str::FromStr;

use aerospike::{Bin, Value};
use rand::Rng;

/// One kind of operation the generator issues and times separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `get` of all bins of one record.
    Read,
    /// `put` of all bins of an existing record.
    Update,
    /// `put` of a new record (keys after the loaded ones; in the load phase, every key).
    Insert,
    /// `get` then `put` of the same record, timed as one operation (YCSB F).
    ReadModifyWrite,
    /// YCSB E's short scan, sent as `get`s of consecutive keys one after another (the single-record
    /// protocol has no key-range scan), timed as one operation.
    Scan,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
        OpKind::Scan,
    ];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "rmw",
            OpKind::Scan => "scan",
        }
    }

    /// Index into per-kind arrays (`ALL[k.index()] == k`).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Share of each operation kind, in percent; the shares sum to 100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpMix {
    /// Percent per kind, indexed by [`OpKind::index`].
    pub pct: [f64; 5],
}

impl OpMix {
    /// A mix from percentages; fails unless each is in 0..=100 and they sum to 100 (±0.001).
    pub fn new(read: f64, update: f64, insert: f64, rmw: f64, scan: f64) -> Result<OpMix, String> {
        let pct = [read, update, insert, rmw, scan];
        if pct.iter().any(|p| !(0.0..=100.0).contains(p)) {
            return Err(format!("each percentage must be within 0..=100, got {pct:?}"));
        }
        let sum: f64 = pct.iter().sum();
        if (sum - 100.0).abs() > 1e-3 {
            return Err(format!("percentages must sum to 100, got {sum}"));
        }
        Ok(OpMix { pct })
    }

    /// The kind for a uniform draw `u` in `[0, 100)`.
    pub fn pick(&self, u: f64) -> OpKind {
        let mut acc = 0.0;
        for k in OpKind::ALL {
            acc += self.pct[k.index()];
            if u < acc {
                return k;
            }
        }
        // Rounding at the top end: the last kind with a non-zero share.
        *OpKind::ALL
            .iter()
            .rev()
            .find(|k| self.pct[k.index()] > 0.0)
            .expect("a mix has a non-zero share")
    }

    /// True when the run phase inserts new keys.
    pub fn inserts(&self) -> bool {
        self.pct[OpKind::Insert.index()] > 0.0
    }
}

impl fmt::Display for OpMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = OpKind::ALL
            .iter()
            .filter(|k| self.pct[k.index()] > 0.0)
            .map(|k| format!("{} {}%", k.name(), self.pct[k.index()]))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// How keys are drawn from the key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDist {
    /// Every existing key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian: a few keys are hot, spread over the key space by a hash.
    Zipfian,
    /// YCSB's "latest": zipfian over recency, the most recently inserted key the hottest.
    Latest,
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyDist, String> {
        match s.to_ascii_lowercase().as_str() {
            "uniform" => Ok(KeyDist::Uniform),
            "zipfian" | "zipf" => Ok(KeyDist::Zipfian),
            "latest" => Ok(KeyDist::Latest),
            _ => Err(format!(
                "unknown key distribution {s:?} (expected uniform, zipfian or latest)"
            )),
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipfian => "zipfian",
            KeyDist::Latest => "latest",
        })
    }
}

/// A parsed `-w/--workload` value.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// asbench `I[,<pct>]`: insert `pct` % of the keys in order (a load phase alone), then stop.
    Insert {
        /// Percent of `--keys` to insert, 0 < pct <= 100.
        pct: f64,
    },
    /// A timed run phase with this mix.
    Mix {
        /// The name shown in reports (`RU,50`, `YCSB-A`, …).
        name: String,
        /// The operation mix.
        mix: OpMix,
        /// The preset's key distribution (YCSB), used when `--key-dist` is not given.
        default_key_dist: KeyDist,
    },
}

/// Parses a workload: asbench's `I[,<pct>]` and `RU,<read%>`; `RUIM,<read%>,<update%>,<insert%>[,<rmw%>]`
/// (read / update / insert / read-modify-write; the last share may be left out and is then the
/// rest up to 100); or `YCSB-A` … `YCSB-F` (case-insensitive).
pub fn parse_workload(s: &str) -> Result<Workload, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |i: usize| -> Result<f64, String> {
        let p = parts
            .get(i)
            .ok_or_else(|| format!("workload {s:?}: missing percentage #{i}"))?;
        p.parse::<f64>()
            .map_err(|_| format!("workload {s:?}: {p:?} is not a percentage"))
    };
    let kind = parts[0].to_ascii_uppercase();
    let mix = |mix: Result<OpMix, String>, dist| -> Result<Workload, String> {
        Ok(Workload::Mix {
            name: s.to_string(),
            mix: mix.map_err(|e| format!("workload {s:?}: {e}"))?,
            default_key_dist: dist,
        })
    };
    let arity = |n: std::ops::RangeInclusive<usize>| -> Result<(), String> {
        if n.contains(&(parts.len() - 1)) {
            Ok(())
        } else {
            Err(format!(
                "workload {s:?}: {kind} takes {}..={} percentages, got {}",
                n.start(),
                n.end(),
                parts.len() - 1
            ))
        }
    };
    match kind.as_str() {
        "I" => {
            arity(0..=1)?;
            let pct = if parts.len() == 2 { num(1)? } else { 100.0 };
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(format!("workload {s:?}: insert percentage must be in (0, 100]"));
            }
            Ok(Workload::Insert { pct })
        }
        "RU" => {
            arity(1..=1)?;
            let r = num(1)?;
            mix(OpMix::new(r, 100.0 - r, 0.0, 0.0, 0.0), KeyDist::Uniform)
        }
        "RUIM" => {
            arity(3..=4)?;
            let (r, u, i) = (num(1)?, num(2)?, num(3)?);
            let m = if parts.len() == 5 { num(4)? } else { 100.0 - r - u - i };
            mix(OpMix::new(r, u, i, m, 0.0), KeyDist::Uniform)
        }
        "YCSB-A" => mix(OpMix::new(50.0, 50.0, 0.0, 0.0, 0.0), KeyDist::Zipfian),
        "YCSB-B" => mix(OpMix::new(95.0, 5.0, 0.0, 0.0, 0.0), KeyDist::Zipfian),
        "YCSB-C" => mix(OpMix::new(100.0, 0.0, 0.0, 0.0, 0.0), KeyDist::Zipfian),
        "YCSB-D" => mix(OpMix::new(95.0, 0.0, 5.0, 0.0, 0.0), KeyDist::Latest),
        "YCSB-E" => mix(OpMix::new(0.0, 0.0, 5.0, 0.0, 95.0), KeyDist::Zipfian),
        "YCSB-F" => mix(OpMix::new(50.0, 0.0, 0.0, 50.0, 0.0), KeyDist::Zipfian),
        "RR" | "RUF" | "RUD" | "DB" => Err(format!(
            "workload {s:?}: asbench's {kind} (replace / UDF / delete-bin workloads) is not supported; \
             use I, RU, RUIM or YCSB-A..F"
        )),
        _ => Err(format!(
            "workload {s:?}: unknown (expected I[,pct], RU,<read%>, RUIM,<read%>,<update%>,<insert%>[,<rmw%>] or YCSB-A..F)"
        )),
    }
}

/// One bin of the record layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinSpec {
    /// asbench `I<n>`: an integer of `n` significant bytes (1..=8; `I` alone is `I4`).
    Int {
        /// Significant bytes of the value, 1..=8.
        bytes: u8,
    },
    /// asbench `B<n>` (bytes); `B<min>-<max>` draws each record's size uniformly (our extension).
    Bytes {
        /// Smallest blob, bytes.
        min_bytes: usize,
        /// Largest blob, bytes.
        max_bytes: usize,
    },
    /// asbench `S<n>` (string of `n` lowercase letters); `S<min>-<max>` ranged as for bytes.
    Str {
        /// Shortest string, bytes.
        min_bytes: usize,
        /// Longest string, bytes.
        max_bytes: usize,
    },
    /// asbench `D`: a double.
    Double,
    /// asbench `b`: a boolean.
    Bool,
}

/// A parsed `-o/--object-spec`: one [`BinSpec`] per bin, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSpec {
    /// The bins of every record written.
    pub bins: Vec<BinSpec>,
}

/// Largest blob or string bin accepted, bytes (a Bolide record is at most about 1 MiB).
pub const MAX_BIN_BYTES: usize = 1 << 20;
/// Most bins accepted in one record.
pub const MAX_BINS: usize = 1000;

impl ObjectSpec {
    /// Parses asbench's scalar subset: comma-separated `I[1-8]`, `B<n>`, `S<n>`, `D`, `b`, each
    /// optionally prefixed by `<count>*` (that many bins of the kind), and the ranged sizes
    /// `B<min>-<max>`, `S<min>-<max>`. Lists, maps and constants are not supported.
    pub fn parse(s: &str) -> Result<ObjectSpec, String> {
        let mut bins = Vec::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!("object spec {s:?}: empty bin"));
            }
            let (count, spec) = match item.split_once('*') {
                Some((n, rest)) => (
                    n.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("object spec {s:?}: bad bin count {n:?}"))?,
                    rest.trim(),
                ),
                None => (1, item),
            };
            let bin = parse_bin(spec).map_err(|e| format!("object spec {s:?}: {e}"))?;
            if count == 0 || bins.len() + count > MAX_BINS {
                return Err(format!("object spec {s:?}: bin count must be 1..={MAX_BINS} in all"));
            }
            bins.extend(std::iter::repeat_n(bin, count));
        }
        Ok(ObjectSpec { bins })
    }

    /// Smallest and largest sum of the bins' value sizes, bytes (integers 8, doubles 8,
    /// booleans 1; bin names and record overhead not counted).
    pub fn value_bytes_range(&self) -> (usize, usize) {
        self.bins.iter().fold((0, 0), |(lo, hi), b| {
            let (a, z) = match *b {
                BinSpec::Int { .. } | BinSpec::Double => (8, 8),
                BinSpec::Bool => (1, 1),
                BinSpec::Bytes { min_bytes, max_bytes } | BinSpec::Str { min_bytes, max_bytes } => {
                    (min_bytes, max_bytes)
                }
            };
            (lo + a, hi + z)
        })
    }

    /// The bins of one record. With `random` false the values are fixed (asbench's default
    /// "static fixed bin values"; only ranged sizes vary); with `random` they are drawn anew.
    pub fn make_bins(&self, names: &[String], fixed: &FixedValues, random: bool, rng: &mut impl Rng) -> Vec<Bin> {
        self.bins
            .iter()
            .zip(names)
            .zip(&fixed.values)
            .map(|((spec, name), fixed)| {
                let value = match *spec {
                    BinSpec::Bytes { min_bytes, max_bytes } | BinSpec::Str { min_bytes, max_bytes } => {
                        let len = rng.gen_range(min_bytes..=max_bytes);
                        let mut buf = fixed[..len].to_vec();
                        if random {
                            if matches!(spec, BinSpec::Str { .. }) {
                                buf.iter_mut().for_each(|b| *b = rng.gen_range(b'a'..=b'z'));
                            } else {
                                rng.fill(&mut buf[..]);
                            }
                        }
                        if matches!(spec, BinSpec::Str { .. }) {
                            Value::String(String::from_utf8(buf).expect("ascii letters"))
                        } else {
                            Value::Blob(buf)
                        }
                    }
                    BinSpec::Int { bytes } => {
                        let v = if random {
                            rng.gen::<u64>()
                        } else {
                            0x0123_4567_89ab_cdef
                        };
                        let v = if bytes >= 8 { v } else { v & ((1u64 << (8 * bytes)) - 1) };
                        Value::Int(v as i64)
                    }
                    BinSpec::Double => Value::Float(if random { rng.gen::<f64>() } else { 1.5 }.into()),
                    BinSpec::Bool => Value::Bool(if random { rng.gen() } else { true }),
                };
                Bin::new(name.clone(), value)
            })
            .collect()
    }
}

/// Bin names as asbench gives them: `base`, `base_2`, `base_3`, ….
pub fn bin_names(base: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            if i == 0 {
                base.to_string()
            } else {
                format!("{base}_{}", i + 1)
            }
        })
        .collect()
}

/// Per-bin byte buffers of the largest size, made once, sliced for each record.
#[derive(Clone, Debug)]
pub struct FixedValues {
    values: Vec<Vec<u8>>,
}

impl FixedValues {
    /// Random letters (valid for strings and blobs alike) of each bin's largest size.
    pub fn new(spec: &ObjectSpec, rng: &mut impl Rng) -> FixedValues {
        let values = spec
            .bins
            .iter()
            .map(|b| match *b {
                BinSpec::Bytes { max_bytes, .. } | BinSpec::Str { max_bytes, .. } => {
                    (0..max_bytes).map(|_| rng.gen_range(b'a'..=b'z')).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        FixedValues { values }
    }
}

fn parse_bin(spec: &str) -> Result<BinSpec, String> {
    let (head, rest) = spec.split_at(spec.chars().next().map_or(0, char::len_utf8));
    let size_range = |rest: &str| -> Result<(usize, usize), String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("bin {spec:?}: {t:?} is not a size in bytes"))
        };
        let (lo, hi) = match rest.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let n = parse(rest)?;
                (n, n)
            }
        };
        if lo == 0 || lo > hi || hi > MAX_BIN_BYTES {
            return Err(format!(
                "bin {spec:?}: sizes must satisfy 1 <= min <= max <= {MAX_BIN_BYTES}"
            ));
        }
        Ok((lo, hi))
    };
    match head {
        "I" => {
            let bytes = if rest.is_empty() {
                4
            } else {
                rest.parse::<u8>()
                    .map_err(|_| format!("bin {spec:?}: bad integer size"))?
            };
            if !(1..=8).contains(&bytes) {
                return Err(format!("bin {spec:?}: integer size must be 1..=8 bytes"));
            }
            Ok(BinSpec::Int { bytes })
        }
        "B" => size_range(rest).map(|(min_bytes, max_bytes)| BinSpec::Bytes { min_bytes, max_bytes }),
        "S" => size_range(rest).map(|(min_bytes, max_bytes)| BinSpec::Str { min_bytes, max_bytes }),
        "D" if rest.is_empty() => Ok(BinSpec::Double),
        "b" if rest.is_empty() => Ok(BinSpec::Bool),
        "[" | "{" => Err(format!("bin {spec:?}: list and map bins are not supported")),
        _ => Err(format!("bin {spec:?}: expected I<1-8>, B<bytes>, S<len>, D or b")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn asbench_workloads_parse() {
        assert_eq!(parse_workload("I").unwrap(), Workload::Insert { pct: 100.0 });
        assert_eq!(parse_workload("I,60").unwrap(), Workload::Insert { pct: 60.0 });
        let Workload::Mix {
            mix, default_key_dist, ..
        } = parse_workload("RU,80").unwrap()
        else {
            panic!("RU is a mix")
        };
        assert_eq!(mix.pct, [80.0, 20.0, 0.0, 0.0, 0.0]);
        assert_eq!(default_key_dist, KeyDist::Uniform);
        let Workload::Mix { mix, .. } = parse_workload("ruim,50,20,10").unwrap() else {
            panic!("RUIM is a mix")
        };
        assert_eq!(mix.pct, [50.0, 20.0, 10.0, 20.0, 0.0]);
    }

    #[test]
    fn ycsb_presets_have_their_mix_and_distribution() {
        let get = |s| match parse_workload(s).unwrap() {
            Workload::Mix {
                mix, default_key_dist, ..
            } => (mix.pct, default_key_dist),
            w => panic!("{s}: {w:?}"),
        };
        assert_eq!(get("YCSB-A"), ([50.0, 50.0, 0.0, 0.0, 0.0], KeyDist::Zipfian));
        assert_eq!(get("ycsb-b"), ([95.0, 5.0, 0.0, 0.0, 0.0], KeyDist::Zipfian));
        assert_eq!(get("YCSB-C"), ([100.0, 0.0, 0.0, 0.0, 0.0], KeyDist::Zipfian));
        assert_eq!(get("YCSB-D"), ([95.0, 0.0, 5.0, 0.0, 0.0], KeyDist::Latest));
        assert_eq!(get("YCSB-E"), ([0.0, 0.0, 5.0, 0.0, 95.0], KeyDist::Zipfian));
        assert_eq!(get("YCSB-F"), ([50.0, 0.0, 0.0, 50.0, 0.0], KeyDist::Zipfian));
    }

    #[test]
    fn bad_workloads_say_why() {
        for (s, needle) in [
            ("RU", "takes 1..=1"),
            ("RU,150", "within 0..=100"),
            ("RU,x", "not a percentage"),
            ("RUIM,50,40,20", "within 0..=100"),
            ("RUIM,50,40,5,1", "sum to 100"),
            ("RUF,20,40", "not supported"),
            ("I,0", "(0, 100]"),
            ("YCSB-G", "unknown"),
        ] {
            let e = parse_workload(s).expect_err(s);
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn mix_pick_follows_shares() {
        let m = OpMix::new(50.0, 30.0, 0.0, 20.0, 0.0).unwrap();
        assert_eq!(m.pick(0.0), OpKind::Read);
        assert_eq!(m.pick(49.99), OpKind::Read);
        assert_eq!(m.pick(50.0), OpKind::Update);
        assert_eq!(m.pick(79.99), OpKind::Update);
        assert_eq!(m.pick(80.0), OpKind::ReadModifyWrite);
        assert_eq!(m.pick(100.0), OpKind::ReadModifyWrite);
    }

    #[test]
    fn object_specs_parse() {
        assert_eq!(
            ObjectSpec::parse("B1024").unwrap().bins,
            vec![BinSpec::Bytes {
                min_bytes: 1024,
                max_bytes: 1024
            }]
        );
        let s = ObjectSpec::parse("I, 2*S12, B100-200, D, b, I8").unwrap();
        assert_eq!(s.bins.len(), 7);
        assert_eq!(s.bins[0], BinSpec::Int { bytes: 4 });
        assert_eq!(
            s.bins[2],
            BinSpec::Str {
                min_bytes: 12,
                max_bytes: 12
            }
        );
        assert_eq!(
            s.bins[3],
            BinSpec::Bytes {
                min_bytes: 100,
                max_bytes: 200
            }
        );
        assert_eq!(
            s.value_bytes_range(),
            (8 + 24 + 100 + 8 + 1 + 8, 8 + 24 + 200 + 8 + 1 + 8)
        );
        for bad in ["", "B0", "B200-100", "I9", "X", "[3*I2]", "0*B1", "B2000000", "Dx"] {
            assert!(ObjectSpec::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn bins_have_the_spec_sizes_and_asbench_names() {
        let spec = ObjectSpec::parse("B1024,S10-20,I1").unwrap();
        let names = bin_names("testbin", spec.bins.len());
        assert_eq!(names, ["testbin", "testbin_2", "testbin_3"]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let fixed = FixedValues::new(&spec, &mut rng);
        for random in [false, true] {
            for _ in 0..50 {
                let bins = spec.make_bins(&names, &fixed, random, &mut rng);
                assert_eq!(bins.len(), 3);
                assert!(matches!(&bins[0].value, Value::Blob(b) if b.len() == 1024));
                assert!(matches!(&bins[1].value, Value::String(s) if (10..=20).contains(&s.len())));
                assert!(matches!(bins[2].value, Value::Int(v) if (0..256).contains(&v)));
            }
        }
    }
}
