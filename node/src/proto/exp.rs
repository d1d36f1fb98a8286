//! Filter expressions: AS_MSG field 43 (FILTER_EXP, wire spec §3.3).
//!
//! A client sends a filter as one packed msgpack value. [`compile`] checks it and turns it into
//! an [`Expr`] tree; [`eval`] runs the tree against a record seen through [`RecordView`]. When
//! the filter is not true the command is answered 27 FILTERED_OUT (§5); when it does not
//! compile the command is answered [`ExpError::result_code`] (4 PARAMETER, or 16
//! UNSUPPORTED_FEATURE for a valid Aerospike expression Bolide does not implement).
//!
//! # Sources
//!
//! The encoding is not in our spec. It was learnt (facts only, no code taken) from:
//!
//! * aerospike/aerospike-server `as/src/base/exp.c` @ 032489e4d99a69e077b46d9c9d0f76f425f9d29d:
//!   the op-code table (`exp_op_code`), the result types (`result_type`), argument counts and
//!   type checks (`build_*`), the evaluation of every op here (`eval_*`, `cmp_*`) and the
//!   filter rules (`check_filter_exp`: the top must be boolean; `match_internal`: unknown with
//!   the record read is false).
//! * aerospike/aerospike-server `cf/src/msgpack_in.c` and `cf/include/msgpack_in.h` @
//!   05b91c64f5fa7836a36e52e3797da34dc0325649: how a value's kind is decided
//!   (`msgpack_peek_type`, `bytes_internal_to_type`: a str/bin whose first payload byte is 3 is a
//!   string, 23 geojson, anything else bytes; an empty one is bytes), `msgpack_get_int64` is
//!   `msgpack_get_uint64` reinterpreted, `msgpack_get_bin` takes the str and bin families.
//! * aerospike/aerospike-client-c `src/include/aerospike/as_exp.h` @
//!   0265c8887835017e15ea3466ece7e021eb5b0191 (op codes, `as_exp_type`, and the macros: an op
//!   is a msgpack array `[op, args...]`, metadata takes no arguments (`[66]`), a bin read is
//!   `[81, type, name]`, `bin_exists(n)` is `ne(bin_type(n), 0)`, `digest_modulo(m)` is
//!   `[64, m]`) and `src/main/aerospike/as_exp.c` @ 175377efdb690653046219b0ce4beab9da606398
//!   (string literals are packed as a str whose first byte is the particle type 3, bin names as
//!   a raw str without it; integers with `as_pack_int64`). Code 74 RECORD_SIZE was checked in a
//!   newer `as_exp.h` (`_AS_EXP_CODE_RECORD_SIZE = 74`).
//! * aerospike/aerospike-client-rust `aerospike-core/src/expressions/mod.rs` @
//!   2602b657aadf970ae4e995181cfb68bc9d66f3ec: the same op numbers and types, and the same
//!   packing (bin names through `pack_raw_string`).
//! * aerospike/aerospike-common `src/include/citrusleaf/cf_clock.h` (the version that has
//!   `cf_utc_ns_from_clepoch_ms`): times in expressions are nanoseconds since the Unix epoch, and
//!   `cf_server_void_time_to_ttl` (0 → -1, else `void_time - now`, at least 1).
//!
//! # Wire form
//!
//! An expression is one msgpack value. An array `[op, args...]` is an operation: `op` is an
//! unsigned integer, the args follow. Anything else is a literal: nil, true/false, an integer,
//! a float (0xca or 0xcb), or a str/bin whose first byte is the particle type (3 string,
//! 4 blob). Examples (as the C client packs them):
//!
//! ```text
//! eq(set_name(), "demo")        93 01 91 46 a5 03 64 65 6d 6f
//! ge(bin_int("a"), 5)           93 04 93 51 02 a1 61 05
//! digest_modulo(3) == 1         93 01 92 40 03 01
//! bin_exists("a")               93 02 92 52 a1 61 00
//! ```
//!
//! Op codes implemented (server `exp_op_code`):
//!
//! | Code | Op | Args | Result |
//! |---|---|---|---|
//! | 0 | unknown | – | unknown |
//! | 1–6 | EQ NE GT GE LT LE | 2 values of the same type | bool |
//! | 16, 17 | AND, OR | ≥ 2 bools | bool |
//! | 18 | NOT | 1 bool | bool |
//! | 19 | EXCLUSIVE (exactly one true) | ≥ 2 bools | bool |
//! | 64 | digest_modulo | integer literal ≠ 0 | int |
//! | 65 | device_size (deprecated) | – | int: the stored size (Bolide is device-backed) |
//! | 66 | last_update | – | int: ns since 1970-01-01 |
//! | 67 | since_update | – | int: ms since the last update |
//! | 68 | void_time | – | int: ns since 1970-01-01, -1 = never expires |
//! | 69 | ttl | – | int: seconds left, -1 = never expires |
//! | 70 | set_name | – | string, empty when in no set |
//! | 71 | key_exists | – | bool: the user key is stored |
//! | 72 | is_tombstone | – | bool |
//! | 73 | memory_size (deprecated) | – | int: 0 (Bolide has no in-memory storage) |
//! | 74 | record_size | – | int: the stored size |
//! | 81 | bin | result type (0 nil, 1 bool, 2 int, 3 str, 6 blob, 7 float), raw name | that type |
//! | 82 | bin_type | raw name | int: particle type, 0 when missing |
//!
//! The other codes the server defines (7 regex, 8 geo, 20–41 arithmetic and bit ops, 50–51
//! min/max, 80 key, 123–127 cond/var/let/quote/call), bin reads of type list (4), map (5),
//! geojson (8) or hll (9), and map, geojson, hll or ext literals are [`ExpError::Unsupported`] /
//! [`ExpError::UnsupportedValue`] (16). Codes the server does not define are
//! [`ExpError::InvalidOp`] (4).
//!
//! # Semantics (as the server's `exp.c`)
//!
//! Evaluation is three-valued ([`Trilean`]). A bin that is missing, or whose type is not the
//! one asked for, is *unknown*; so is a comparison with an unknown side. AND is false if any
//! argument is false, else unknown if any is unknown; OR is true if any is true, else unknown
//! if any is unknown; NOT and EXCLUSIVE of unknown are unknown. A filter passes only when it is
//! *true*: unknown counts as false, so `not(eq(bin_int("a"), 1))` does **not** pass a record
//! without bin `a`. Comparisons: integers as `i64`, floats as IEEE `f64` (NaN is unequal to
//! everything, NE is true), strings and blobs byte-wise then by length, bools false < true,
//! nil equals nil. The two sides must have the same type at compile time (int vs float is a
//! compile error, 4, as in the server).
//!
//! `digest_modulo(m)` is the little-endian `u32` in digest bytes 16..20 (the server reads it
//! natively on little-endian hosts) modulo `m` truncated to `i32`, as `i64` remainder.
//!
//! # Bounds
//!
//! Parsing never panics and never allocates from an unchecked length: the whole value is first
//! walked for well-formedness with at most [`MAX_DEPTH`] levels and [`MAX_ELEMENTS`] msgpack
//! elements, and must use every byte of the field.

use std::cmp::Ordering;

use super::result_code::{PARAMETER, UNSUPPORTED_FEATURE};
use crate::clock::CITRUSLEAF_EPOCH_UNIX_S;
use crate::particle::{ParticleType, Value};

/// Deepest msgpack nesting accepted (the top value is level 1). Aerospike has no such limit; 64
/// is far beyond what clients build.
pub const MAX_DEPTH: usize = 64;
/// Most msgpack elements (every value, container or not) in one expression.
pub const MAX_ELEMENTS: usize = 65_536;
/// Longest bin name in a bin read, bytes (server `as_bin_name_check`: under 16, no NUL).
pub const MAX_BIN_NAME_BYTES: usize = 15;

// Op codes (server `as/src/base/exp.c` `exp_op_code`; client-c `as_exp_ops`).
const OP_UNKNOWN: u64 = 0;
const OP_EQ: u64 = 1;
const OP_NE: u64 = 2;
const OP_GT: u64 = 3;
const OP_GE: u64 = 4;
const OP_LT: u64 = 5;
const OP_LE: u64 = 6;
const OP_AND: u64 = 16;
const OP_OR: u64 = 17;
const OP_NOT: u64 = 18;
const OP_EXCLUSIVE: u64 = 19;
const OP_DIGEST_MODULO: u64 = 64;
const OP_DEVICE_SIZE: u64 = 65;
const OP_LAST_UPDATE: u64 = 66;
const OP_SINCE_UPDATE: u64 = 67;
const OP_VOID_TIME: u64 = 68;
const OP_TTL: u64 = 69;
const OP_SET_NAME: u64 = 70;
const OP_KEY_EXISTS: u64 = 71;
const OP_IS_TOMBSTONE: u64 = 72;
const OP_MEMORY_SIZE: u64 = 73;
const OP_RECORD_SIZE: u64 = 74;
const OP_BIN: u64 = 81;
const OP_BIN_TYPE: u64 = 82;

/// Whether the server defines `op` (it would accept it) though Bolide does not implement it.
fn is_known_unsupported(op: u64) -> bool {
    matches!(op, 7 | 8 | 20..=41 | 50 | 51 | 80 | 123..=127)
}

// Result types in a bin read (server `result_type`, client `as_exp_type`).
const TYPE_NIL: i64 = 0;
const TYPE_BOOL: i64 = 1;
const TYPE_INT: i64 = 2;
const TYPE_STR: i64 = 3;
const TYPE_LIST: i64 = 4;
const TYPE_MAP: i64 = 5;
const TYPE_BLOB: i64 = 6;
const TYPE_FLOAT: i64 = 7;
const TYPE_GEOJSON: i64 = 8;
const TYPE_HLL: i64 = 9;

/// An expression that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpError {
    /// Not well-formed msgpack, bytes left over, or an argument of the wrong msgpack kind.
    #[error("malformed filter expression: {0}")]
    Malformed(&'static str),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("filter expression nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More than [`MAX_ELEMENTS`] msgpack elements.
    #[error("filter expression has more than {MAX_ELEMENTS} elements")]
    TooLarge,
    /// An op code the server does not define.
    #[error("invalid expression op code {0}")]
    InvalidOp(u64),
    /// An op with the wrong number of arguments.
    #[error("expression op {op}: {found} arguments")]
    Arity {
        /// The op code.
        op: u64,
        /// Arguments found (the op code not counted).
        found: usize,
    },
    /// Argument types that do not fit the op (e.g. an int compared with a string), a bad bin
    /// name, a bad bin result type or a zero digest modulus.
    #[error("expression op {op}: bad argument")]
    BadArgument {
        /// The op code.
        op: u64,
    },
    /// The whole expression does not return a boolean.
    #[error("filter expression does not return a boolean")]
    NotBoolean,
    /// An op the server defines but Bolide does not implement (for a bin read of list, map,
    /// geojson or hll type: 81).
    #[error("expression op {0} is not supported")]
    Unsupported(u64),
    /// A literal kind Bolide does not implement (map, geojson, hll, msgpack ext).
    #[error("expression literal of kind {0} is not supported")]
    UnsupportedValue(&'static str),
}

impl ExpError {
    /// The result code to answer (§5): 16 UNSUPPORTED_FEATURE for [`ExpError::Unsupported`] and
    /// [`ExpError::UnsupportedValue`], else 4 PARAMETER (what the server answers for an
    /// expression it cannot build).
    pub fn result_code(&self) -> u8 {
        match self {
            ExpError::Unsupported(_) | ExpError::UnsupportedValue(_) => UNSUPPORTED_FEATURE,
            _ => PARAMETER,
        }
    }
}

/// A three-valued result, as the server's `as_exp_trilean`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trilean {
    /// False.
    False,
    /// True.
    True,
    /// Unknown: a missing bin, a bin of another type, or data not available in this pass.
    Unknown,
}

impl From<bool> for Trilean {
    fn from(b: bool) -> Trilean {
        if b {
            Trilean::True
        } else {
            Trilean::False
        }
    }
}

/// A stored record as a filter sees it. The server implements it over the index entry and, when
/// read, the record.
///
/// Times are in Bolide's units (Citrusleaf epoch, 2010-01-01 UTC, see [`crate::clock`]); the
/// evaluator converts them to the units on the wire. Generation has no expression op and is not
/// asked for.
pub trait RecordView {
    /// The record's RIPEMD-160 digest (§4).
    fn digest(&self) -> &[u8; 20];
    /// Last-update time, ms since 2010-01-01 UTC (the index entry's `lut_ms`).
    fn last_update_cl_ms(&self) -> u64;
    /// Void time, s since 2010-01-01 UTC; 0 = never expires.
    fn void_time_cl_s(&self) -> u32;
    /// Bytes the record takes in storage (the index entry's `size_bytes`, padded to 16 as the
    /// server's `as_record_stored_size`).
    fn record_size_bytes(&self) -> u64;
    /// Whether the record is a tombstone. Defaults to false.
    fn is_tombstone(&self) -> bool {
        false
    }
    /// The set name, empty for none; `None` when not known without reading the record (an
    /// index-only pass), which evaluates as unknown.
    fn set_name(&self) -> Option<&[u8]>;
    /// Whether the user key is stored with the record; `None` when not known without reading
    /// the record.
    fn key_stored(&self) -> Option<bool>;
    /// Whether bins can be read. False in an index-only pass: bin reads are then unknown.
    /// Defaults to true.
    fn bins_loaded(&self) -> bool {
        true
    }
    /// The bin named `name`, `None` when the record has no such bin.
    fn bin(&self, name: &[u8]) -> Option<&Value>;
}

/// A compiled filter expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    root: Node,
    reads_bins: bool,
    mentions_tombstone: bool,
}

impl Expr {
    /// Whether the expression reads bins (ops 81, 82). When false it can be decided from
    /// metadata alone, without reading the record from the device.
    pub fn reads_bins(&self) -> bool {
        self.reads_bins
    }

    /// Whether the expression references `is_tombstone` (op 72) anywhere. A scan whose filter
    /// does also visits tombstones (a Bolide extension, `docs/ARCHITECTURE.md`, "Scans").
    pub fn mentions_tombstone(&self) -> bool {
        self.mentions_tombstone
    }
}

/// Comparison ops 1..=6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    /// Whether the comparison holds for `ord` (`None`: unordered, a NaN).
    fn holds(self, ord: Option<Ordering>) -> bool {
        use Ordering::{Equal, Greater, Less};
        match self {
            CmpOp::Eq => ord == Some(Equal),
            CmpOp::Ne => ord != Some(Equal),
            CmpOp::Gt => ord == Some(Greater),
            CmpOp::Ge => matches!(ord, Some(Greater | Equal)),
            CmpOp::Lt => ord == Some(Less),
            CmpOp::Le => matches!(ord, Some(Less | Equal)),
        }
    }
}

/// Metadata ops with no arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meta {
    DeviceSize,
    LastUpdate,
    SinceUpdate,
    VoidTime,
    Ttl,
    SetName,
    KeyExists,
    IsTombstone,
    MemorySize,
    RecordSize,
}

/// Static result types (the server's `result_type`, as far as Bolide goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Nil,
    Bool,
    Int,
    Str,
    Blob,
    Float,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Unknown,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string or blob literal (the payload, type byte dropped).
    Bytes(Vec<u8>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Exclusive(Vec<Node>),
    DigestModulo(i32),
    Meta(Meta),
    Bin(Vec<u8>, Ty),
    BinType(Vec<u8>),
}

// ---------------------------------------------------------------------------------------------
// Msgpack reading.

/// A bounded msgpack cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const TRUNCATED: ExpError = ExpError::Malformed("truncated");

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn peek(&self) -> Result<u8, ExpError> {
        self.buf.get(self.pos).copied().ok_or(TRUNCATED)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ExpError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(TRUNCATED)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A big-endian unsigned integer of `n` (1..=8) bytes.
    fn be(&mut self, n: usize) -> Result<u64, ExpError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// The element count when at an array header (consumed), else `None` (nothing consumed).
    fn array_len(&mut self) -> Result<Option<usize>, ExpError> {
        let b = self.peek()?;
        let n = match b {
            0x90..=0x9f => {
                self.pos += 1;
                usize::from(b & 0x0f)
            }
            0xdc => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdd => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// An integer in any msgpack form, as the server's `msgpack_get_int64` (unsigned 64-bit
    /// values above `i64::MAX` wrap).
    fn int(&mut self) -> Result<i64, ExpError> {
        let b = self.peek()?;
        let v = match b {
            0x00..=0x7f => {
                self.pos += 1;
                i64::from(b)
            }
            0xe0..=0xff => {
                self.pos += 1;
                i64::from(b as i8)
            }
            0xcc..=0xcf => {
                self.pos += 1;
                self.be(1 << (b - 0xcc))? as i64
            }
            0xd0 => {
                self.pos += 1;
                i64::from(self.be(1)? as u8 as i8)
            }
            0xd1 => {
                self.pos += 1;
                i64::from(self.be(2)? as u16 as i16)
            }
            0xd2 => {
                self.pos += 1;
                i64::from(self.be(4)? as u32 as i32)
            }
            0xd3 => {
                self.pos += 1;
                self.be(8)? as i64
            }
            _ => return Err(ExpError::Malformed("expected an integer")),
        };
        Ok(v)
    }

    /// A float32 or float64.
    fn float(&mut self) -> Result<f64, ExpError> {
        match self.peek()? {
            0xca => {
                self.pos += 1;
                Ok(f64::from(f32::from_bits(self.be(4)? as u32)))
            }
            0xcb => {
                self.pos += 1;
                Ok(f64::from_bits(self.be(8)?))
            }
            _ => Err(ExpError::Malformed("expected a float")),
        }
    }

    /// The payload of a str (0xa0..=0xbf, 0xd9..=0xdb) or bin (0xc4..=0xc6), as the server's
    /// `msgpack_get_bin`.
    fn bytes(&mut self) -> Result<&'a [u8], ExpError> {
        let b = self.peek()?;
        let len = match b {
            0xa0..=0xbf => {
                self.pos += 1;
                usize::from(b & 0x1f)
            }
            0xc4 | 0xd9 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xc5 | 0xda => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xc6 | 0xdb => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return Err(ExpError::Malformed("expected a string")),
        };
        self.take(len)
    }

    /// Walks one element for well-formedness. `depth` is its level (top = 1); `budget` is the
    /// number of elements still allowed.
    fn skip(&mut self, depth: usize, budget: &mut usize) -> Result<(), ExpError> {
        if depth > MAX_DEPTH {
            return Err(ExpError::TooDeep);
        }
        *budget = budget.checked_sub(1).ok_or(ExpError::TooLarge)?;
        let b = self.peek()?;
        let children = match b {
            0x90..=0x9f | 0xdc | 0xdd => self.array_len()?.unwrap_or(0),
            0x80..=0x8f => {
                self.pos += 1;
                2 * usize::from(b & 0x0f)
            }
            0xde => {
                self.pos += 1;
                2 * self.be(2)? as usize
            }
            0xdf => {
                self.pos += 1;
                2 * self.be(4)? as usize
            }
            0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb => {
                self.bytes()?;
                0
            }
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xcf | 0xd0..=0xd3 => {
                self.int()?;
                0
            }
            0xca | 0xcb => {
                self.float()?;
                0
            }
            0xc0 | 0xc2 | 0xc3 => {
                self.pos += 1;
                0
            }
            0xd4..=0xd8 => {
                // fixext 1, 2, 4, 8, 16: type byte + data.
                self.pos += 1;
                self.take(1 + (1 << (b - 0xd4)))?;
                0
            }
            0xc7..=0xc9 => {
                // ext 8, 16, 32: length, type byte, data.
                self.pos += 1;
                let len = self.be(1 << (b - 0xc7))? as usize;
                self.take(1)?;
                self.take(len)?;
                0
            }
            0xc1 => return Err(ExpError::Malformed("reserved msgpack byte 0xc1")),
        };
        for _ in 0..children {
            self.skip(depth + 1, budget)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation.

/// Parses and type-checks a packed filter expression (the data of field 43).
///
/// # Errors
/// [`ExpError`]; answer [`ExpError::result_code`].
pub fn compile(bytes: &[u8]) -> Result<Expr, ExpError> {
    // Pass 1: the whole field is exactly one well-formed, bounded msgpack value, so that a
    // malformed tail is reported as such whatever the ops before it (the server sizes the whole
    // expression before building it).
    let mut r = Reader::new(bytes);
    let mut budget = MAX_ELEMENTS;
    r.skip(1, &mut budget)?;
    if r.pos != bytes.len() {
        return Err(ExpError::Malformed("bytes after the expression"));
    }
    // Pass 2: build and type-check. Pass 1 bounds every count and the recursion depth.
    let mut b = Builder {
        reads_bins: false,
        mentions_tombstone: false,
    };
    let (root, ty) = b.node(&mut Reader::new(bytes))?;
    if ty != Ty::Bool {
        return Err(ExpError::NotBoolean);
    }
    Ok(Expr {
        root,
        reads_bins: b.reads_bins,
        mentions_tombstone: b.mentions_tombstone,
    })
}

struct Builder {
    reads_bins: bool,
    mentions_tombstone: bool,
}

impl Builder {
    fn node(&mut self, r: &mut Reader<'_>) -> Result<(Node, Ty), ExpError> {
        match r.array_len()? {
            Some(0) => Err(ExpError::Malformed("empty expression array")),
            Some(n) => {
                // msgpack_get_uint64: a negative op code becomes huge, hence invalid.
                let op = r.int()? as u64;
                self.op(r, op, n - 1)
            }
            None => literal(r),
        }
    }

    /// One bool-typed argument.
    fn bool_arg(&mut self, r: &mut Reader<'_>, op: u64) -> Result<Node, ExpError> {
        match self.node(r)? {
            (n, Ty::Bool) => Ok(n),
            _ => Err(ExpError::BadArgument { op }),
        }
    }

    fn op(&mut self, r: &mut Reader<'_>, op: u64, argc: usize) -> Result<(Node, Ty), ExpError> {
        let arity = |want: usize| {
            if argc == want {
                Ok(())
            } else {
                Err(ExpError::Arity { op, found: argc })
            }
        };
        let meta = |m: Meta, ty: Ty| arity(0).map(|()| (Node::Meta(m), ty));
        match op {
            OP_UNKNOWN => arity(0).map(|()| (Node::Unknown, Ty::Bool)),
            OP_EQ..=OP_LE => {
                arity(2)?;
                let cmp = match op {
                    OP_EQ => CmpOp::Eq,
                    OP_NE => CmpOp::Ne,
                    OP_GT => CmpOp::Gt,
                    OP_GE => CmpOp::Ge,
                    OP_LT => CmpOp::Lt,
                    _ => CmpOp::Le,
                };
                let (left, lt) = self.node(r)?;
                let (right, rt) = self.node(r)?;
                if lt != rt {
                    return Err(ExpError::BadArgument { op });
                }
                Ok((Node::Cmp(cmp, Box::new(left), Box::new(right)), Ty::Bool))
            }
            OP_AND | OP_OR | OP_EXCLUSIVE => {
                if argc < 2 {
                    return Err(ExpError::Arity { op, found: argc });
                }
                let mut args = Vec::with_capacity(argc);
                for _ in 0..argc {
                    args.push(self.bool_arg(r, op)?);
                }
                let node = match op {
                    OP_AND => Node::And(args),
                    OP_OR => Node::Or(args),
                    _ => Node::Exclusive(args),
                };
                Ok((node, Ty::Bool))
            }
            OP_NOT => {
                arity(1)?;
                Ok((Node::Not(Box::new(self.bool_arg(r, op)?)), Ty::Bool))
            }
            OP_DIGEST_MODULO => {
                arity(1)?;
                // The server truncates the int64 to int32 and rejects 0.
                let m = r.int()? as i32;
                if m == 0 {
                    return Err(ExpError::BadArgument { op });
                }
                Ok((Node::DigestModulo(m), Ty::Int))
            }
            OP_DEVICE_SIZE => meta(Meta::DeviceSize, Ty::Int),
            OP_LAST_UPDATE => meta(Meta::LastUpdate, Ty::Int),
            OP_SINCE_UPDATE => meta(Meta::SinceUpdate, Ty::Int),
            OP_VOID_TIME => meta(Meta::VoidTime, Ty::Int),
            OP_TTL => meta(Meta::Ttl, Ty::Int),
            OP_SET_NAME => meta(Meta::SetName, Ty::Str),
            OP_KEY_EXISTS => meta(Meta::KeyExists, Ty::Bool),
            OP_IS_TOMBSTONE => {
                self.mentions_tombstone = true;
                meta(Meta::IsTombstone, Ty::Bool)
            }
            OP_MEMORY_SIZE => meta(Meta::MemorySize, Ty::Int),
            OP_RECORD_SIZE => meta(Meta::RecordSize, Ty::Int),
            OP_BIN => {
                arity(2)?;
                let rtype = r.int()?;
                let name = bin_name(r, op)?;
                let ty = match rtype {
                    TYPE_NIL => Ty::Nil,
                    TYPE_BOOL => Ty::Bool,
                    TYPE_INT => Ty::Int,
                    TYPE_STR => Ty::Str,
                    TYPE_BLOB => Ty::Blob,
                    TYPE_FLOAT => Ty::Float,
                    TYPE_LIST | TYPE_MAP | TYPE_GEOJSON | TYPE_HLL => return Err(ExpError::Unsupported(op)),
                    _ => return Err(ExpError::BadArgument { op }),
                };
                self.reads_bins = true;
                Ok((Node::Bin(name, ty), ty))
            }
            OP_BIN_TYPE => {
                arity(1)?;
                let name = bin_name(r, op)?;
                self.reads_bins = true;
                Ok((Node::BinType(name), Ty::Int))
            }
            _ if is_known_unsupported(op) => Err(ExpError::Unsupported(op)),
            _ => Err(ExpError::InvalidOp(op)),
        }
    }
}

/// A bin name argument: a raw msgpack str (no type byte), at most 15 bytes, no NUL.
fn bin_name(r: &mut Reader<'_>, op: u64) -> Result<Vec<u8>, ExpError> {
    let name = r.bytes()?;
    if name.len() > MAX_BIN_NAME_BYTES || name.contains(&0) {
        return Err(ExpError::BadArgument { op });
    }
    Ok(name.to_vec())
}

/// A literal (anything but an array).
fn literal(r: &mut Reader<'_>) -> Result<(Node, Ty), ExpError> {
    let b = r.peek()?;
    Ok(match b {
        0xc0 => {
            r.pos += 1;
            (Node::Nil, Ty::Nil)
        }
        0xc2 | 0xc3 => {
            r.pos += 1;
            (Node::Bool(b == 0xc3), Ty::Bool)
        }
        0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xcf | 0xd0..=0xd3 => (Node::Int(r.int()?), Ty::Int),
        0xca | 0xcb => (Node::Float(r.float()?), Ty::Float),
        0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb => {
            let s = r.bytes()?;
            match s.split_first() {
                Some((&3, rest)) => (Node::Bytes(rest.to_vec()), Ty::Str),
                Some((&4, rest)) => (Node::Bytes(rest.to_vec()), Ty::Blob),
                Some((&23, _)) => return Err(ExpError::UnsupportedValue("geojson")),
                Some((&18, _)) => return Err(ExpError::UnsupportedValue("hll")),
                Some(_) => return Err(ExpError::Malformed("blob literal of an unknown type")),
                None => return Err(ExpError::Malformed("empty string literal")),
            }
        }
        0x80..=0x8f | 0xde | 0xdf => return Err(ExpError::UnsupportedValue("map")),
        0xc7..=0xc9 | 0xd4..=0xd8 => return Err(ExpError::UnsupportedValue("msgpack ext")),
        _ => return Err(ExpError::Malformed("unexpected msgpack value")),
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// A runtime value.
#[derive(Clone, Copy, Debug)]
enum Val<'a> {
    Unknown,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string or a blob (the static types keep them apart).
    Bytes(&'a [u8]),
}

impl Val<'_> {
    fn trilean(self) -> Trilean {
        match self {
            Val::Bool(b) => b.into(),
            _ => Trilean::Unknown,
        }
    }
}

/// Evaluates a filter: whether the record passes (the expression is *true*; unknown counts as
/// false, as the server's `as_exp_matches_record`). `now_cl_ms` is the wall clock in ms since
/// 2010-01-01 UTC ([`crate::clock::Clock::now_cl_ms`]), used by since_update and ttl.
///
/// Infallible: [`compile`] has checked every argument and type.
pub fn eval(expr: &Expr, rec: &dyn RecordView, now_cl_ms: u64) -> bool {
    eval_trilean(expr, rec, now_cl_ms) == Trilean::True
}

/// Evaluates a filter to three values. In an index-only pass (a [`RecordView`] that answers
/// `bins_loaded() == false` or `None` metadata) [`Trilean::Unknown`] means "read the record and
/// evaluate again", as the server's `as_exp_matches_metadata`; with the record read it means
/// false.
pub fn eval_trilean(expr: &Expr, rec: &dyn RecordView, now_cl_ms: u64) -> Trilean {
    eval_node(&expr.root, rec, now_cl_ms).trilean()
}

/// The particle type id of a stored value (0 for [`Value::Nil`], which is never stored).
fn particle_id(v: &Value) -> u8 {
    match v {
        // Read the carried type directly: `particle_type` asserts it is a blob type.
        Value::Blob(t, _) => t.id(),
        v => v.particle_type().id(),
    }
}

fn eval_node<'a>(n: &'a Node, rec: &'a dyn RecordView, now_cl_ms: u64) -> Val<'a> {
    match n {
        Node::Unknown => Val::Unknown,
        Node::Nil => Val::Nil,
        Node::Bool(b) => Val::Bool(*b),
        Node::Int(i) => Val::Int(*i),
        Node::Float(f) => Val::Float(*f),
        Node::Bytes(b) => Val::Bytes(b),
        Node::Cmp(op, l, r) => {
            let l = eval_node(l, rec, now_cl_ms);
            if let Val::Unknown = l {
                return Val::Unknown;
            }
            let r = eval_node(r, rec, now_cl_ms);
            let ord = match (l, r) {
                (Val::Nil, Val::Nil) => Some(Ordering::Equal),
                (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(&b)),
                (Val::Int(a), Val::Int(b)) => Some(a.cmp(&b)),
                (Val::Float(a), Val::Float(b)) => a.partial_cmp(&b),
                (Val::Bytes(a), Val::Bytes(b)) => Some(a.cmp(b)),
                // An unknown right side (or, impossible after type checks, a mismatch).
                _ => return Val::Unknown,
            };
            Val::Bool(op.holds(ord))
        }
        Node::And(args) => {
            let mut unknown = false;
            for a in args {
                match eval_node(a, rec, now_cl_ms).trilean() {
                    Trilean::False => return Val::Bool(false),
                    Trilean::Unknown => unknown = true,
                    Trilean::True => {}
                }
            }
            if unknown {
                Val::Unknown
            } else {
                Val::Bool(true)
            }
        }
        Node::Or(args) => {
            let mut unknown = false;
            for a in args {
                match eval_node(a, rec, now_cl_ms).trilean() {
                    Trilean::True => return Val::Bool(true),
                    Trilean::Unknown => unknown = true,
                    Trilean::False => {}
                }
            }
            if unknown {
                Val::Unknown
            } else {
                Val::Bool(false)
            }
        }
        Node::Not(a) => match eval_node(a, rec, now_cl_ms).trilean() {
            Trilean::True => Val::Bool(false),
            Trilean::False => Val::Bool(true),
            Trilean::Unknown => Val::Unknown,
        },
        Node::Exclusive(args) => {
            let mut seen_true = false;
            for a in args {
                match eval_node(a, rec, now_cl_ms).trilean() {
                    Trilean::Unknown => return Val::Unknown,
                    Trilean::True if seen_true => return Val::Bool(false),
                    Trilean::True => seen_true = true,
                    Trilean::False => {}
                }
            }
            Val::Bool(seen_true)
        }
        Node::DigestModulo(m) => {
            let d = rec.digest();
            let v = u32::from_le_bytes([d[16], d[17], d[18], d[19]]);
            Val::Int(i64::from(v) % i64::from(*m))
        }
        Node::Meta(m) => eval_meta(*m, rec, now_cl_ms),
        Node::Bin(name, ty) => {
            if !rec.bins_loaded() {
                return Val::Unknown;
            }
            match (ty, rec.bin(name)) {
                (Ty::Int, Some(Value::Int(i))) => Val::Int(*i),
                (Ty::Float, Some(Value::Float(f))) => Val::Float(*f),
                (Ty::Str, Some(Value::Str(s))) => Val::Bytes(s),
                // Only particle type 4: the server's `bin_is_type` wants AS_PARTICLE_TYPE_BLOB.
                (Ty::Blob, Some(Value::Blob(ParticleType::Blob, b))) => Val::Bytes(b),
                (Ty::Bool, Some(Value::Bool(b))) => Val::Bool(*b),
                // Missing, another type, or nil (a live bin is never nil).
                _ => Val::Unknown,
            }
        }
        Node::BinType(name) => {
            if !rec.bins_loaded() {
                return Val::Unknown;
            }
            Val::Int(rec.bin(name).map_or(0, |v| i64::from(particle_id(v))))
        }
    }
}

/// Unix epoch offset of the Citrusleaf epoch, ms and ns.
const CL_EPOCH_UNIX_MS: u64 = CITRUSLEAF_EPOCH_UNIX_S * 1000;

fn eval_meta<'a>(m: Meta, rec: &'a dyn RecordView, now_cl_ms: u64) -> Val<'a> {
    match m {
        // Bolide stores every record on a device (server: 0 for memory-only namespaces).
        Meta::DeviceSize | Meta::RecordSize => Val::Int(rec.record_size_bytes() as i64),
        // Server: the stored size only for storage-engine memory, else 0.
        Meta::MemorySize => Val::Int(0),
        // cf_utc_ns_from_clepoch_ms, in u64 arithmetic as the server.
        Meta::LastUpdate => Val::Int(
            CL_EPOCH_UNIX_MS
                .wrapping_add(rec.last_update_cl_ms())
                .wrapping_mul(1_000_000) as i64,
        ),
        Meta::SinceUpdate => Val::Int(now_cl_ms.saturating_sub(rec.last_update_cl_ms()) as i64),
        Meta::VoidTime => match rec.void_time_cl_s() {
            0 => Val::Int(-1),
            vt => Val::Int(
                CITRUSLEAF_EPOCH_UNIX_S
                    .wrapping_add(u64::from(vt))
                    .wrapping_mul(1_000_000_000) as i64,
            ),
        },
        // cf_server_void_time_to_ttl, then (int64)(int32) as the server.
        Meta::Ttl => match rec.void_time_cl_s() {
            0 => Val::Int(-1),
            vt => {
                let now_s = (now_cl_ms / 1000) as u32;
                let ttl = if vt > now_s { vt - now_s } else { 1 };
                Val::Int(i64::from(ttl as i32))
            }
        },
        Meta::SetName => rec.set_name().map_or(Val::Unknown, Val::Bytes),
        Meta::KeyExists => rec.key_stored().map_or(Val::Unknown, Val::Bool),
        Meta::IsTombstone => Val::Bool(rec.is_tombstone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record for tests. Digest bytes 16..20 are 4, 0, 0, 0 (little-endian 4).
    struct Rec {
        digest: [u8; 20],
        set: Option<Vec<u8>>,
        lut_ms: u64,
        void_s: u32,
        size: u64,
        key: Option<bool>,
        tomb: bool,
        loaded: bool,
        bins: Vec<(Vec<u8>, Value)>,
    }

    impl Rec {
        fn new() -> Rec {
            let mut digest = [0xaa; 20];
            digest[16..20].copy_from_slice(&[4, 0, 0, 0]);
            Rec {
                digest,
                set: Some(b"demo".to_vec()),
                lut_ms: LUT_MS,
                void_s: 0,
                size: 128,
                key: Some(false),
                tomb: false,
                loaded: true,
                bins: vec![
                    (b"a".to_vec(), Value::Int(7)),
                    (b"s".to_vec(), Value::Str(b"x".to_vec())),
                    (b"f".to_vec(), Value::Float(2.5)),
                    (b"b".to_vec(), Value::Bool(true)),
                    (b"blob".to_vec(), Value::Blob(ParticleType::Blob, vec![1, 2])),
                    (b"jblob".to_vec(), Value::Blob(ParticleType::JavaBlob, vec![1, 2])),
                    (b"l".to_vec(), Value::List(vec![0x91, 0x01])),
                ],
            }
        }
        fn with_bin(mut self, name: &str, v: Value) -> Rec {
            self.bins.retain(|(n, _)| n != name.as_bytes());
            self.bins.push((name.as_bytes().to_vec(), v));
            self
        }
    }

    impl RecordView for Rec {
        fn digest(&self) -> &[u8; 20] {
            &self.digest
        }
        fn last_update_cl_ms(&self) -> u64 {
            self.lut_ms
        }
        fn void_time_cl_s(&self) -> u32 {
            self.void_s
        }
        fn record_size_bytes(&self) -> u64 {
            self.size
        }
        fn is_tombstone(&self) -> bool {
            self.tomb
        }
        fn set_name(&self) -> Option<&[u8]> {
            self.set.as_deref()
        }
        fn key_stored(&self) -> Option<bool> {
            self.key
        }
        fn bins_loaded(&self) -> bool {
            self.loaded
        }
        fn bin(&self, name: &[u8]) -> Option<&Value> {
            self.bins.iter().find(|(n, _)| n == name).map(|(_, v)| v)
        }
    }

    /// A LUT of 500 000 000 000 ms after 2010 (2025-11-05 ...).
    const LUT_MS: u64 = 500_000_000_000;
    /// The same instant as the wire's last_update: ns since 1970.
    const LUT_UNIX_NS: u64 = (1_262_304_000_000 + LUT_MS) * 1_000_000;
    /// "Now" for the tests: one minute after the LUT.
    const NOW_MS: u64 = LUT_MS + 60_000;

    fn run(bytes: &[u8], rec: &Rec) -> bool {
        eval(&compile(bytes).expect("compiles"), rec, NOW_MS)
    }

    fn tri(bytes: &[u8], rec: &Rec) -> Trilean {
        eval_trilean(&compile(bytes).expect("compiles"), rec, NOW_MS)
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    // Building blocks, byte for byte as the C client's as_exp.h macros pack them
    // (`as_pack_list_header`, `as_pack_int64` smallest form, strings typed with 0x03, bin names
    // raw).

    /// `as_exp_bin_int("a")`: [81, 2, "a"] = 93 51 02 a1 61.
    const BIN_INT_A: &[u8] = &[0x93, 0x51, 0x02, 0xa1, b'a'];
    /// `as_exp_bin_str("s")`: [81, 3, "s"] = 93 51 03 a1 73.
    const BIN_STR_S: &[u8] = &[0x93, 0x51, 0x03, 0xa1, b's'];
    /// `as_exp_bin_float("f")`: [81, 7, "f"].
    const BIN_FLOAT_F: &[u8] = &[0x93, 0x51, 0x07, 0xa1, b'f'];
    /// `as_exp_str("x")`: a str of 2 bytes, type 3 then 'x'.
    const STR_X: &[u8] = &[0xa2, 0x03, b'x'];

    fn f64_lit(v: f64) -> Vec<u8> {
        cat(&[&[0xcb], &v.to_bits().to_be_bytes()])
    }

    #[test]
    fn last_update_is_unix_ns() {
        // as_exp_cmp_gt(as_exp_last_update(), as_exp_uint(X)): 93 03 [91 42] cf <8 bytes BE>.
        let rec = Rec::new();
        let gt = |x: u64| cat(&[&[0x93, 0x03, 0x91, 0x42, 0xcf], &x.to_be_bytes()]);
        assert!(run(&gt(LUT_UNIX_NS - 1), &rec));
        assert!(!run(&gt(LUT_UNIX_NS), &rec));
        // eq with the exact value.
        let eq = cat(&[&[0x93, 0x01, 0x91, 0x42, 0xcf], &LUT_UNIX_NS.to_be_bytes()]);
        assert!(run(&eq, &rec));
    }

    #[test]
    fn since_update_is_ms() {
        // as_exp_cmp_lt(as_exp_since_update(), as_exp_int(60001)): 93 05 [91 43] ce 00 00 ea 61.
        let rec = Rec::new();
        assert!(run(&[0x93, 0x05, 0x91, 0x43, 0xce, 0x00, 0x00, 0xea, 0x61], &rec));
        // == 60000: cd ea 60.
        assert!(run(&[0x93, 0x01, 0x91, 0x43, 0xcd, 0xea, 0x60], &rec));
        // A LUT in the future (clock skew) gives 0, not a negative number.
        let mut future = Rec::new();
        future.lut_ms = NOW_MS + 5;
        assert!(run(&[0x93, 0x01, 0x91, 0x43, 0x00], &future));
    }

    #[test]
    fn void_time_and_ttl() {
        let mut rec = Rec::new();
        // Never expires: void_time == -1 (93 01 [91 44] ff) and ttl == -1 (93 01 [91 45] ff).
        assert!(run(&[0x93, 0x01, 0x91, 0x44, 0xff], &rec));
        assert!(run(&[0x93, 0x01, 0x91, 0x45, 0xff], &rec));
        // Expires one hour after now.
        let now_s = (NOW_MS / 1000) as u32;
        rec.void_s = now_s + 3600;
        let vt_ns = (1_262_304_000 + u64::from(rec.void_s)) * 1_000_000_000;
        assert!(run(
            &cat(&[&[0x93, 0x01, 0x91, 0x44, 0xcf], &vt_ns.to_be_bytes()]),
            &rec
        ));
        // ttl == 3600: cd 0e 10.
        assert!(run(&[0x93, 0x01, 0x91, 0x45, 0xcd, 0x0e, 0x10], &rec));
        // ttl < 3600 is false.
        assert!(!run(&[0x93, 0x05, 0x91, 0x45, 0xcd, 0x0e, 0x10], &rec));
        // Already past its void time but not yet reaped: the server floors the ttl at 1.
        rec.void_s = now_s - 10;
        assert!(run(&[0x93, 0x01, 0x91, 0x45, 0x01], &rec));
    }

    #[test]
    fn set_name() {
        // as_exp_cmp_eq(as_exp_set_name(), as_exp_str("demo")).
        let eq_demo = [0x93, 0x01, 0x91, 0x46, 0xa5, 0x03, b'd', b'e', b'm', b'o'];
        let mut rec = Rec::new();
        assert!(run(&eq_demo, &rec));
        rec.set = Some(b"other".to_vec());
        assert!(!run(&eq_demo, &rec));
        // No set: the empty string. as_exp_str("") is a1 03.
        rec.set = Some(Vec::new());
        assert!(run(&[0x93, 0x01, 0x91, 0x46, 0xa1, 0x03], &rec));
        // Not known in an index-only pass.
        rec.set = None;
        assert_eq!(tri(&eq_demo, &rec), Trilean::Unknown);
    }

    #[test]
    fn digest_modulo() {
        // as_exp_cmp_eq(as_exp_digest_modulo(3), as_exp_int(1)): 93 01 [92 40 03] 01.
        let rec = Rec::new(); // bytes 16..20 = 4 (LE) → 4 % 3 = 1
        assert!(run(&[0x93, 0x01, 0x92, 0x40, 0x03, 0x01], &rec));
        assert!(!run(&[0x93, 0x01, 0x92, 0x40, 0x03, 0x02], &rec));
        // Little-endian: bytes 00 01 00 00 are 256, 256 % 7 = 4.
        let mut r2 = Rec::new();
        r2.digest[16..20].copy_from_slice(&[0, 1, 0, 0]);
        assert!(run(&[0x93, 0x01, 0x92, 0x40, 0x07, 0x04], &r2));
        // A negative modulus: the remainder keeps the (non-negative) dividend's sign.
        assert!(run(&[0x93, 0x01, 0x92, 0x40, 0xfd, 0x01], &rec));
        // Modulus 0 does not compile.
        assert_eq!(
            compile(&[0x93, 0x01, 0x92, 0x40, 0x00, 0x01]),
            Err(ExpError::BadArgument { op: 64 })
        );
        // Nor does a modulus that truncates to 0 as i32 (2^32).
        let big = cat(&[&[0x93, 0x01, 0x92, 0x40, 0xcf], &(1u64 << 32).to_be_bytes(), &[0x01]]);
        assert_eq!(compile(&big), Err(ExpError::BadArgument { op: 64 }));
    }

    #[test]
    fn and_of_bins() {
        // as_exp_and(as_exp_cmp_ge(as_exp_bin_int("a"), as_exp_int(5)),
        //            as_exp_cmp_eq(as_exp_bin_str("s"), as_exp_str("x"))):
        // 93 10 [93 04 [93 51 02 a1 61] 05] [93 01 [93 51 03 a1 73] a2 03 78].
        let e = cat(&[
            &[0x93, 0x10, 0x93, 0x04],
            BIN_INT_A,
            &[0x05],
            &[0x93, 0x01],
            BIN_STR_S,
            STR_X,
        ]);
        assert_eq!(
            e,
            [
                0x93, 0x10, 0x93, 0x04, 0x93, 0x51, 0x02, 0xa1, 0x61, 0x05, 0x93, 0x01, 0x93, 0x51, 0x03, 0xa1, 0x73,
                0xa2, 0x03, 0x78
            ]
        );
        let ex = compile(&e).unwrap();
        assert!(ex.reads_bins());
        assert!(eval(&ex, &Rec::new(), NOW_MS));
        assert!(!eval(&ex, &Rec::new().with_bin("a", Value::Int(4)), NOW_MS));
        assert!(!eval(&ex, &Rec::new().with_bin("s", Value::Str(b"y".to_vec())), NOW_MS));
        // Three arguments: 94 10 ...
        let e3 = cat(&[&[0x94, 0x10], &e[2..], &[0xc3]]);
        assert!(run(&e3, &Rec::new()));
    }

    #[test]
    fn not_or_exclusive_and_unknown() {
        let rec = Rec::new(); // a = 7
        let a_eq = |v: u8| cat(&[&[0x93, 0x01], BIN_INT_A, &[v]]);
        let missing_eq = cat(&[&[0x93, 0x01], &[0x93, 0x51, 0x02, 0xa1, b'z'], &[0x01]]);
        // as_exp_not(...): 92 12 <expr>.
        assert!(run(&cat(&[&[0x92, 0x12], &a_eq(1)]), &rec));
        assert!(!run(&cat(&[&[0x92, 0x12], &a_eq(7)]), &rec));
        // A missing bin is unknown; not(unknown) is unknown, which filters out.
        assert!(!run(&missing_eq, &rec));
        assert_eq!(tri(&cat(&[&[0x92, 0x12], &missing_eq]), &rec), Trilean::Unknown);
        assert!(!run(&cat(&[&[0x92, 0x12], &missing_eq]), &rec));
        // as_exp_or(a == 1, a == 7): 93 11 ...
        assert!(run(&cat(&[&[0x93, 0x11], &a_eq(1), &a_eq(7)]), &rec));
        assert!(!run(&cat(&[&[0x93, 0x11], &a_eq(1), &a_eq(2)]), &rec));
        // or(unknown, true) is true; or(unknown, false) unknown; and(unknown, false) false.
        assert_eq!(tri(&cat(&[&[0x93, 0x11], &missing_eq, &a_eq(7)]), &rec), Trilean::True);
        assert_eq!(
            tri(&cat(&[&[0x93, 0x11], &missing_eq, &a_eq(1)]), &rec),
            Trilean::Unknown
        );
        assert_eq!(tri(&cat(&[&[0x93, 0x10], &missing_eq, &a_eq(1)]), &rec), Trilean::False);
        assert_eq!(
            tri(&cat(&[&[0x93, 0x10], &missing_eq, &a_eq(7)]), &rec),
            Trilean::Unknown
        );
        // exclusive (19): exactly one true.
        assert!(run(&cat(&[&[0x93, 0x13], &a_eq(7), &a_eq(1)]), &rec));
        assert!(!run(&cat(&[&[0x93, 0x13], &a_eq(7), &a_eq(7)]), &rec));
        assert!(!run(&cat(&[&[0x93, 0x13], &a_eq(1), &a_eq(2)]), &rec));
        assert_eq!(
            tri(&cat(&[&[0x93, 0x13], &a_eq(7), &missing_eq]), &rec),
            Trilean::Unknown
        );
        // Op 0 (as_exp_unknown()) is unknown; bool literals work at the top.
        assert_eq!(tri(&[0x91, 0x00], &rec), Trilean::Unknown);
        assert!(run(&[0xc3], &rec));
        assert!(!run(&[0xc2], &rec));
    }

    #[test]
    fn comparisons_of_each_type() {
        let rec = Rec::new(); // a = 7, f = 2.5, s = "x"
        for (op, want) in [(1, false), (2, true), (3, true), (4, true), (5, false), (6, false)] {
            // int: a <op> 5
            assert_eq!(run(&cat(&[&[0x93, op], BIN_INT_A, &[0x05]]), &rec), want, "int op {op}");
            // float: f <op> 1.5
            assert_eq!(
                run(&cat(&[&[0x93, op], BIN_FLOAT_F, &f64_lit(1.5)]), &rec),
                want,
                "float op {op}"
            );
            // string: s <op> "w"
            assert_eq!(
                run(&cat(&[&[0x93, op], BIN_STR_S, &[0xa2, 0x03, b'w']]), &rec),
                want,
                "str op {op}"
            );
            // literal on the left: 9 <op> a
            assert_eq!(run(&cat(&[&[0x93, op, 0x09], BIN_INT_A]), &rec), want, "lit op {op}");
        }
        // Negative integers in every width: a > -1 (ff), > -200 (d1 ff 38), > i64::MIN (d3 80 00..).
        assert!(run(&cat(&[&[0x93, 0x03], BIN_INT_A, &[0xff]]), &rec));
        assert!(run(&cat(&[&[0x93, 0x03], BIN_INT_A, &[0xd1, 0xff, 0x38]]), &rec));
        assert!(run(
            &cat(&[&[0x93, 0x03], BIN_INT_A, &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]]),
            &rec
        ));
        // float32 literal (ca): f == 2.5.
        assert!(run(
            &cat(&[&[0x93, 0x01], BIN_FLOAT_F, &[0xca], &2.5f32.to_bits().to_be_bytes()]),
            &rec
        ));
        // Strings compare byte-wise, then by length.
        let s = |v: &[u8]| Rec::new().with_bin("s", Value::Str(v.to_vec()));
        let lt_b = cat(&[&[0x93, 0x05], BIN_STR_S, &[0xa2, 0x03, b'b']]);
        assert!(run(&lt_b, &s(b"ab")));
        assert!(run(&lt_b, &s(b"")));
        assert!(!run(&lt_b, &s(b"b")));
        assert!(!run(&lt_b, &s(b"ba")));
        // NaN: only NE holds.
        let nan = Rec::new().with_bin("f", Value::Float(f64::NAN));
        for (op, want) in [(1, false), (2, true), (3, false), (4, false), (5, false), (6, false)] {
            assert_eq!(
                run(&cat(&[&[0x93, op], BIN_FLOAT_F, &f64_lit(f64::NAN)]), &nan),
                want,
                "nan op {op}"
            );
        }
        // Bool bin: [81, 1, "b"] == true.
        assert!(run(&[0x93, 0x01, 0x93, 0x51, 0x01, 0xa1, b'b', 0xc3], &rec));
        // nil == nil (the server's cmp_nil).
        assert!(run(&[0x93, 0x01, 0xc0, 0xc0], &rec));
        assert!(!run(&[0x93, 0x02, 0xc0, 0xc0], &rec));
    }

    #[test]
    fn blobs() {
        let rec = Rec::new();
        // as_exp_cmp_eq(as_exp_bin_blob("blob"), as_exp_bytes({1,2}, 2)): the literal is a str
        // of 3 bytes, type 4 then the data.
        let eq = |name: &[u8]| {
            cat(&[
                &[0x93, 0x01, 0x93, 0x51, 0x06, 0xa0 | name.len() as u8],
                name,
                &[0xa3, 4, 1, 2],
            ])
        };
        assert!(run(&eq(b"blob"), &rec));
        // A Java blob (particle 7) is not a TYPE_BLOB bin for the server: unknown.
        assert_eq!(tri(&eq(b"jblob"), &rec), Trilean::Unknown);
        // The msgpack bin family (c4) is accepted like str.
        assert!(run(
            &[0x93, 0x01, 0x93, 0x51, 0x06, 0xa4, b'b', b'l', b'o', b'b', 0xc4, 3, 4, 1, 2],
            &rec
        ));
        // Blob vs string does not compile.
        assert_eq!(
            compile(&[0x93, 0x01, 0x93, 0x51, 0x06, 0xa1, b'b', 0xa2, 3, b'x']),
            Err(ExpError::BadArgument { op: 1 })
        );
    }

    #[test]
    fn bin_exists_and_bin_type() {
        let rec = Rec::new();
        // as_exp_bin_exists("a") = as_exp_cmp_ne(as_exp_bin_type("a"), as_exp_int(0)):
        // 93 02 [92 52 a1 61] 00.
        assert!(run(&[0x93, 0x02, 0x92, 0x52, 0xa1, b'a', 0x00], &rec));
        assert!(!run(&[0x93, 0x02, 0x92, 0x52, 0xa1, b'z', 0x00], &rec));
        // bin_type == particle type: s is 3, jblob 7, l 20.
        assert!(run(&[0x93, 0x01, 0x92, 0x52, 0xa1, b's', 0x03], &rec));
        assert!(run(
            &[0x93, 0x01, 0x92, 0x52, 0xa5, b'j', b'b', b'l', b'o', b'b', 0x07],
            &rec
        ));
        assert!(run(&[0x93, 0x01, 0x92, 0x52, 0xa1, b'l', 0x14], &rec));
        // Index-only pass: unknown.
        let mut idx = Rec::new();
        idx.loaded = false;
        assert_eq!(tri(&[0x93, 0x02, 0x92, 0x52, 0xa1, b'a', 0x00], &idx), Trilean::Unknown);
    }

    #[test]
    fn type_mismatches() {
        let rec = Rec::new().with_bin("a", Value::Str(b"7".to_vec()));
        // A string bin read as int: unknown, filtered out, and not() of it too.
        let a_eq_7 = cat(&[&[0x93, 0x01], BIN_INT_A, &[0x07]]);
        assert!(!run(&a_eq_7, &rec));
        assert!(!run(&cat(&[&[0x92, 0x12], &a_eq_7]), &rec));
        // Int bin vs float literal, int vs string: compile errors (4).
        for e in [
            cat(&[&[0x93, 0x01], BIN_INT_A, &f64_lit(7.0)]),
            cat(&[&[0x93, 0x01], BIN_INT_A, STR_X]),
        ] {
            let err = compile(&e).unwrap_err();
            assert_eq!(err, ExpError::BadArgument { op: 1 });
            assert_eq!(err.result_code(), 4);
        }
        // and() of an int: 4.
        assert_eq!(
            compile(&[0x93, 0x10, 0xc3, 0x01]),
            Err(ExpError::BadArgument { op: 16 })
        );
        // A filter that is not boolean: 4.
        assert_eq!(compile(&[0x91, 0x42]), Err(ExpError::NotBoolean));
        assert_eq!(compile(STR_X), Err(ExpError::NotBoolean));
    }

    #[test]
    fn metadata_ops() {
        let mut rec = Rec::new();
        // key_exists (91 47), is_tombstone (91 48).
        assert!(!run(&[0x91, 0x47], &rec));
        rec.key = Some(true);
        assert!(run(&[0x91, 0x47], &rec));
        rec.key = None;
        assert_eq!(tri(&[0x91, 0x47], &rec), Trilean::Unknown);
        assert!(!run(&[0x91, 0x48], &rec));
        rec.tomb = true;
        assert!(run(&[0x91, 0x48], &rec));
        // record_size (74), device_size (65) == 128; memory_size (73) == 0.
        assert!(run(&[0x93, 0x01, 0x91, 0x4a, 0xcc, 0x80], &rec));
        assert!(run(&[0x93, 0x01, 0x91, 0x41, 0xcc, 0x80], &rec));
        assert!(run(&[0x93, 0x01, 0x91, 0x49, 0x00], &rec));
        let e = compile(&[0x93, 0x01, 0x91, 0x4a, 0xcc, 0x80]).unwrap();
        assert!(!e.reads_bins());
        assert!(!e.mentions_tombstone());
        // is_tombstone alone, and nested: and(is_tombstone(), not(key_exists())).
        assert!(compile(&[0x91, 0x48]).unwrap().mentions_tombstone());
        let nested = compile(&[0x93, 0x10, 0x91, 0x48, 0x92, 0x12, 0x91, 0x47]).unwrap();
        assert!(nested.mentions_tombstone());
        assert!(!compile(&[0x92, 0x12, 0x91, 0x47]).unwrap().mentions_tombstone());
    }

    #[test]
    fn index_only_pass() {
        // and(set_name == "demo", a >= 5): decided false from metadata when the set differs,
        // unknown (read the record) when it matches.
        let e = cat(&[
            &[0x93, 0x10, 0x93, 0x01, 0x91, 0x46, 0xa5, 0x03, b'd', b'e', b'm', b'o'],
            &[0x93, 0x04],
            BIN_INT_A,
            &[0x05],
        ]);
        let mut idx = Rec::new();
        idx.loaded = false;
        assert_eq!(tri(&e, &idx), Trilean::Unknown);
        idx.set = Some(b"nope".to_vec());
        assert_eq!(tri(&e, &idx), Trilean::False);
        assert_eq!(tri(&e, &Rec::new()), Trilean::True);
    }

    #[test]
    fn unsupported_and_invalid() {
        // as_exp_cmp_regex(0, "^a", as_exp_bin_str("s")): [7, 0, "^a", bin]: 16.
        let regex = cat(&[&[0x94, 0x07, 0x00, 0xa2, b'^', b'a'], BIN_STR_S]);
        let err = compile(&regex).unwrap_err();
        assert_eq!(err, ExpError::Unsupported(7));
        assert_eq!(err.result_code(), 16);
        // add(a, 1) > 3: [3, [20, bin, 1], 3].
        assert_eq!(
            compile(&cat(&[&[0x93, 0x03, 0x93, 0x14], BIN_INT_A, &[0x01, 0x03]])),
            Err(ExpError::Unsupported(20))
        );
        // A list bin: [81, 4, "l"].
        assert_eq!(
            compile(&[0x93, 0x01, 0x93, 0x51, 0x04, 0xa1, b'l', 0xc0]),
            Err(ExpError::Unsupported(81))
        );
        // Geojson literal (str typed 23), map literal: 16.
        assert_eq!(
            compile(&[0x93, 0x01, 0xc0, 0xa2, 23, b'{']),
            Err(ExpError::UnsupportedValue("geojson"))
        );
        assert_eq!(
            compile(&[0x93, 0x01, 0x80, 0x80]),
            Err(ExpError::UnsupportedValue("map"))
        );
        // Op codes the server does not define: 4.
        for op in [9u8, 15, 42, 75, 83, 122] {
            let err = compile(&[0x91, op]).unwrap_err();
            assert_eq!(err, ExpError::InvalidOp(u64::from(op)));
            assert_eq!(err.result_code(), 4);
        }
        assert_eq!(compile(&[0x91, 0xcc, 0x80]), Err(ExpError::InvalidOp(128)));
        assert_eq!(compile(&[0x91, 0xff]), Err(ExpError::InvalidOp(u64::MAX)));
        // Bad result type 10 in a bin read; bin name of 16 bytes; NUL in a name.
        assert_eq!(
            compile(&[0x93, 0x01, 0x93, 0x51, 0x0a, 0xa1, b'a', 0xc0]),
            Err(ExpError::BadArgument { op: 81 })
        );
        let long = cat(&[&[0x93, 0x01, 0x93, 0x51, 0x02, 0xb0], &[b'n'; 16], &[0x00]]);
        assert_eq!(compile(&long), Err(ExpError::BadArgument { op: 81 }));
        assert_eq!(
            compile(&[0x92, 0x52, 0xa2, b'a', 0]),
            Err(ExpError::BadArgument { op: 82 })
        );
        // Typed blob of an unknown kind (7) as a literal: 4.
        assert_eq!(compile(&[0x93, 0x01, 0xc0, 0xa2, 7, 1]).unwrap_err().result_code(), 4);
    }

    #[test]
    fn malformed() {
        let rec_free = |b: &[u8]| compile(b).unwrap_err();
        assert_eq!(rec_free(&[]), TRUNCATED);
        assert_eq!(rec_free(&[0x90]), ExpError::Malformed("empty expression array"));
        // Wrong arity: last_update with an argument, eq with one, not with two.
        assert_eq!(rec_free(&[0x92, 0x42, 0x01]), ExpError::Arity { op: 66, found: 1 });
        assert_eq!(rec_free(&[0x92, 0x01, 0xc3]), ExpError::Arity { op: 1, found: 1 });
        assert_eq!(
            rec_free(&[0x93, 0x12, 0xc3, 0xc3]),
            ExpError::Arity { op: 18, found: 2 }
        );
        assert_eq!(rec_free(&[0x92, 0x10, 0xc3]), ExpError::Arity { op: 16, found: 1 });
        // Bytes after the expression; a truncated one; an op code that is not an integer.
        assert_eq!(
            rec_free(&[0x91, 0x47, 0x00]),
            ExpError::Malformed("bytes after the expression")
        );
        assert_eq!(rec_free(&[0x93, 0x01, 0x91]), TRUNCATED);
        assert_eq!(
            rec_free(&[0x91, 0xa1, 0x03]),
            ExpError::Malformed("expected an integer")
        );
        // An empty string literal; reserved 0xc1.
        assert_eq!(
            rec_free(&[0x93, 0x01, 0xa0, 0xa0]),
            ExpError::Malformed("empty string literal")
        );
        assert_eq!(
            rec_free(&[0x93, 0x01, 0xc1, 0xc1]),
            ExpError::Malformed("reserved msgpack byte 0xc1")
        );
        // A huge declared count does not allocate: it fails on the missing elements.
        assert_eq!(rec_free(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x10]), TRUNCATED);
        // A malformed tail wins over an unsupported op before it (4, not 16).
        assert_eq!(rec_free(&[0x93, 0x01, 0x92, 0x14, 0x01, 0xc1]).result_code(), 4);
    }

    #[test]
    fn bounds() {
        // 64 levels compile: not(not(...(true))) with 63 nots around a bool.
        let nest = |n: usize| cat(&[&[0x92, 0x12].repeat(n), &[0xc3]]);
        assert!(compile(&nest(MAX_DEPTH - 1)).is_ok());
        assert_eq!(compile(&nest(MAX_DEPTH)), Err(ExpError::TooDeep));
        assert_eq!(compile(&nest(100_000)), Err(ExpError::TooDeep));
        // Too many elements: and() of 70 000 trues (dd header).
        let n: u32 = 70_000;
        let wide = cat(&[&[0xdd], &(n + 1).to_be_bytes(), &[0x10], &vec![0xc3; n as usize]]);
        assert_eq!(compile(&wide), Err(ExpError::TooLarge));
        // A wide one under the limit is fine.
        let n: u16 = 1000;
        let ok = cat(&[&[0xdc], &(n + 1).to_be_bytes(), &[0x10], &vec![0xc3; n as usize]]);
        assert!(run(&ok, &Rec::new()));
    }

    /// Valid expressions to mutate in the fuzz test.
    fn seeds() -> Vec<Vec<u8>> {
        vec![
            cat(&[
                &[0x93, 0x10, 0x93, 0x04],
                BIN_INT_A,
                &[0x05],
                &[0x93, 0x01],
                BIN_STR_S,
                STR_X,
            ]),
            vec![0x93, 0x01, 0x92, 0x40, 0x03, 0x01],
            vec![0x93, 0x01, 0x91, 0x46, 0xa5, 0x03, b'd', b'e', b'm', b'o'],
            cat(&[&[0x92, 0x12, 0x93, 0x03], BIN_FLOAT_F, &f64_lit(1.0)]),
            vec![0x93, 0x02, 0x92, 0x52, 0xa1, b'a', 0x00],
            cat(&[&[
                0x93, 0x11, 0x93, 0x05, 0x91, 0x45, 0xcd, 0x0e, 0x10, 0x93, 0x13, 0x91, 0x47, 0x91, 0x48,
            ]]),
        ]
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(e) = compile(&bytes) {
                let _ = eval_trilean(&e, &Rec::new(), NOW_MS);
            }
        }

        #[test]
        fn mutations_never_panic(
            seed in 0usize..6,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut bytes = seeds()[seed].clone();
            for (at, byte, kind) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            if let Ok(e) = compile(&bytes) {
                let mut idx = Rec::new();
                idx.loaded = false;
                let _ = eval_trilean(&e, &Rec::new(), NOW_MS);
                let _ = eval_trilean(&e, &idx, NOW_MS);
            }
        }

        #[test]
        fn int_compare_matches_i64(a in any::<i64>(), b in any::<i64>(), op in 1u8..=6) {
            // a <op> b with both as literals in the smallest form the C client would use.
            let e = cat(&[&[0x93, op], &pack_int(a), &pack_int(b)]);
            let want = match op { 1 => a == b, 2 => a != b, 3 => a > b, 4 => a >= b, 5 => a < b, _ => a <= b };
            prop_assert_eq!(run(&e, &Rec::new()), want);
        }
    }

    /// `as_pack_int64`-style smallest encoding (test helper).
    fn pack_int(v: i64) -> Vec<u8> {
        match v {
            -32..=0x7f => vec![v as u8],
            0x80..=0xff => vec![0xcc, v as u8],
            0x100..=0xffff => cat(&[&[0xcd], &(v as u16).to_be_bytes()]),
            0x1_0000..=0xffff_ffff => cat(&[&[0xce], &(v as u32).to_be_bytes()]),
            0x1_0000_0000.. => cat(&[&[0xcf], &(v as u64).to_be_bytes()]),
            -128..=-33 => vec![0xd0, v as u8],
            -32_768..=-129 => cat(&[&[0xd1], &(v as i16).to_be_bytes()]),
            -2_147_483_648..=-32_769 => cat(&[&[0xd2], &(v as i32).to_be_bytes()]),
            _ => cat(&[&[0xd3], &v.to_be_bytes()]),
        }
    }
}
