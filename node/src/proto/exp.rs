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
//! | 9 | in_list | value, list | bool |
//! | 20–29 | ADD SUB MUL DIV POW LOG MOD ABS FLOOR CEIL | ints or floats, not mixed | int / float |
//! | 30, 31 | to_int, to_float | float / int | int / float |
//! | 32–41 | INT_AND OR XOR NOT LSHIFT RSHIFT ARSHIFT COUNT LSCAN RSCAN | ints | int |
//! | 50, 51 | MIN, MAX | ≥ 1 number, one type | that type |
//! | 80 | key | result type | the stored user key |
//! | 101, 102 | map_keys, map_values | map | list |
//! | 123 | cond | (bool, value)…, default | the branches' type |
//! | 124, 125 | var, let (`def` pairs, then the body) | name / pairs, body | the body's type |
//! | 126 | quote | a list literal | list |
//! | 127 | call: a list/map, bit or HLL op, read or modify-local, with its ctx (CDT spec §9.4) | result type, system, op, target | as asked |
//!
//! Bin reads (81) take every result type but geojson; list and map literals are quoted (126).
//! The codes the server defines that Bolide does not implement are [`ExpError::Unsupported`]
//! (16): 7 regex, 8 geo, 100 result_remove and 122 var_builtin (the loop variables; both
//! belong to SELECT paths, CDT spec §9.6), a SELECT (0xFE) inside a call, geojson bin reads and
//! geojson or msgpack-ext literals. Codes the server does not define are
//! [`ExpError::InvalidOp`] (4). The string expressions of newer clients (`Upper`, `StrLen`, ...)
//! are answered 4, as CE 8.1.2.0 answers them (checked with the Python client 19.3.0).
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

use std::borrow::Cow;

use super::result_code::{self as rc, PARAMETER, UNSUPPORTED_FEATURE};
use crate::cdt::{self, msgpack};
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
const OP_IN_LIST: u64 = 9;
const OP_ADD: u64 = 20;
const OP_SUB: u64 = 21;
const OP_MUL: u64 = 22;
const OP_DIV: u64 = 23;
const OP_POW: u64 = 24;
const OP_LOG: u64 = 25;
const OP_MOD: u64 = 26;
const OP_ABS: u64 = 27;
const OP_FLOOR: u64 = 28;
const OP_CEIL: u64 = 29;
const OP_TO_INT: u64 = 30;
const OP_TO_FLOAT: u64 = 31;
const OP_INT_AND: u64 = 32;
const OP_INT_OR: u64 = 33;
const OP_INT_XOR: u64 = 34;
const OP_INT_NOT: u64 = 35;
const OP_INT_LSHIFT: u64 = 36;
const OP_INT_RSHIFT: u64 = 37;
const OP_INT_ARSHIFT: u64 = 38;
const OP_INT_COUNT: u64 = 39;
const OP_INT_LSCAN: u64 = 40;
const OP_INT_RSCAN: u64 = 41;
const OP_MIN: u64 = 50;
const OP_MAX: u64 = 51;
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
const OP_KEY: u64 = 80;
const OP_MAP_KEYS: u64 = 101;
const OP_MAP_VALUES: u64 = 102;
const OP_COND: u64 = 123;
const OP_VAR: u64 = 124;
const OP_LET: u64 = 125;
const OP_QUOTE: u64 = 126;
const OP_CALL: u64 = 127;

/// Whether the server defines `op` (it would accept it) though Bolide does not implement it.
fn is_known_unsupported(op: u64) -> bool {
    matches!(op, 7 | 8 | 100 | 122)
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
    /// The stored user key as a value (op 80 KEY); `None` when none is stored or it is not at
    /// hand (then KEY is UNKNOWN). Defaults to `None`.
    fn user_key(&self) -> Option<&Value> {
        None
    }
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
    List,
    Map,
    Blob,
    Float,
    Hll,
}

/// The static type of a result-type code (BIN, KEY, CALL): 8 GEOJSON is not supported.
fn ty_of_code(code: i64, op: u64) -> Result<Ty, ExpError> {
    Ok(match code {
        TYPE_NIL => Ty::Nil,
        TYPE_BOOL => Ty::Bool,
        TYPE_INT => Ty::Int,
        TYPE_STR => Ty::Str,
        TYPE_LIST => Ty::List,
        TYPE_MAP => Ty::Map,
        TYPE_BLOB => Ty::Blob,
        TYPE_FLOAT => Ty::Float,
        TYPE_HLL => Ty::Hll,
        TYPE_GEOJSON => return Err(ExpError::Unsupported(op)),
        _ => return Err(ExpError::BadArgument { op }),
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Unknown,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string literal (the payload, type byte dropped).
    Str(Vec<u8>),
    /// A blob literal (the payload, type byte dropped).
    Blob(Vec<u8>),
    /// A list literal (QUOTE) or map literal: its msgpack bytes.
    List(Vec<u8>),
    Map(Vec<u8>),
    /// An HLL literal (the payload, type byte dropped).
    Hll(Vec<u8>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Exclusive(Vec<Node>),
    DigestModulo(i32),
    Meta(Meta),
    Bin(Vec<u8>, Ty),
    BinType(Vec<u8>),
    /// 9 IN_LIST: value, list.
    InList(Box<Node>, Box<Node>),
    /// Left folds over ≥ 1 argument: 20–23, 32–34, 50, 51.
    Fold(u64, Vec<Node>),
    /// One argument: 27–31, 35, 39.
    Unary(u64, Box<Node>),
    /// Two arguments: 24–26, 36–38, 40, 41.
    Binary(u64, Box<Node>, Box<Node>),
    /// 123 COND: condition, value, ..., default.
    Cond(Vec<Node>),
    /// 125 LET: the definitions (pushed on the variable stack in order), the body.
    Let(Vec<Node>, Box<Node>),
    /// 124 VAR: a slot of the variable stack.
    Var(usize),
    /// 101 MAP_KEYS / 102 MAP_VALUES.
    MapKeys(Box<Node>),
    MapValues(Box<Node>),
    /// 80 KEY of this type.
    Key(Ty),
    /// 127 CALL.
    Call(Box<Call>),
}

/// A CDT/bit/HLL call (CDT spec §9.4).
#[derive(Clone, Debug, PartialEq)]
struct Call {
    rtype: Ty,
    /// The op type it runs as: 3/4 CDT, 12/13 bits, 15/16 HLL.
    op_type: u8,
    /// `(raw 0xFF element, raw ctx array)` of the ctx form.
    ctx: Option<(Vec<u8>, Vec<u8>)>,
    /// The raw op-code element.
    code: Vec<u8>,
    params: Vec<Param>,
    target: Node,
}

/// A call parameter: literal msgpack, or a sub-expression (an array).
#[derive(Clone, Debug, PartialEq)]
enum Param {
    Raw(Vec<u8>),
    Exp(Node),
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
    let (expr, ty) = compile_any(bytes)?;
    if ty != Ty::Bool {
        return Err(ExpError::NotBoolean);
    }
    Ok(expr)
}

/// Parses and type-checks an expression of any result type (EXP_READ / EXP_MODIFY, CDT spec
/// §9.1).
fn compile_any(bytes: &[u8]) -> Result<(Expr, Ty), ExpError> {
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
        vars: Vec::new(),
    };
    let (root, ty) = b.node(&mut Reader::new(bytes))?;
    Ok((
        Expr {
            root,
            reads_bins: b.reads_bins,
            mentions_tombstone: b.mentions_tombstone,
        },
        ty,
    ))
}

struct Builder {
    reads_bins: bool,
    mentions_tombstone: bool,
    /// Variables in scope (LET), innermost last: name and type; the index is the slot.
    vars: Vec<(Vec<u8>, Ty)>,
}

/// The raw bytes of the next element (pass 1 has checked it).
fn raw<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], ExpError> {
    let start = r.pos;
    let mut budget = MAX_ELEMENTS;
    r.skip(1, &mut budget)?;
    Ok(&r.buf[start..r.pos])
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

    /// One argument of type `want`.
    fn typed_arg(&mut self, r: &mut Reader<'_>, op: u64, want: Ty) -> Result<Node, ExpError> {
        match self.node(r)? {
            (n, t) if t == want => Ok(n),
            _ => Err(ExpError::BadArgument { op }),
        }
    }

    /// One bool-typed argument.
    fn bool_arg(&mut self, r: &mut Reader<'_>, op: u64) -> Result<Node, ExpError> {
        self.typed_arg(r, op, Ty::Bool)
    }

    /// `argc` (≥ `min`) arguments of one type among `allowed`; returns them and the type.
    fn same_type_args(
        &mut self,
        r: &mut Reader<'_>,
        op: u64,
        argc: usize,
        min: usize,
        allowed: &[Ty],
    ) -> Result<(Vec<Node>, Ty), ExpError> {
        if argc < min {
            return Err(ExpError::Arity { op, found: argc });
        }
        let mut args = Vec::with_capacity(argc);
        let mut ty = None;
        for _ in 0..argc {
            let (n, t) = self.node(r)?;
            if !allowed.contains(&t) || ty.is_some_and(|x| x != t) {
                return Err(ExpError::BadArgument { op });
            }
            ty = Some(t);
            args.push(n);
        }
        Ok((args, ty.unwrap_or(Ty::Int)))
    }

    fn var_name(r: &mut Reader<'_>, op: u64) -> Result<Vec<u8>, ExpError> {
        let name = r.bytes()?;
        match name.first() {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => Ok(name.to_vec()),
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
        const NUM: &[Ty] = &[Ty::Int, Ty::Float];
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
                if lt != rt || lt == Ty::Hll {
                    return Err(ExpError::BadArgument { op });
                }
                Ok((Node::Cmp(cmp, Box::new(left), Box::new(right)), Ty::Bool))
            }
            OP_IN_LIST => {
                arity(2)?;
                let (v, _) = self.node(r)?;
                let list = self.typed_arg(r, op, Ty::List)?;
                Ok((Node::InList(Box::new(v), Box::new(list)), Ty::Bool))
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
            OP_ADD..=OP_DIV | OP_MIN | OP_MAX => {
                let (args, ty) = self.same_type_args(r, op, argc, 1, NUM)?;
                Ok((Node::Fold(op, args), ty))
            }
            OP_INT_AND..=OP_INT_XOR => {
                let (args, ty) = self.same_type_args(r, op, argc, 1, &[Ty::Int])?;
                Ok((Node::Fold(op, args), ty))
            }
            OP_POW | OP_LOG => {
                arity(2)?;
                let a = self.typed_arg(r, op, Ty::Float)?;
                let b = self.typed_arg(r, op, Ty::Float)?;
                Ok((Node::Binary(op, Box::new(a), Box::new(b)), Ty::Float))
            }
            OP_MOD | OP_INT_LSHIFT..=OP_INT_ARSHIFT => {
                arity(2)?;
                let a = self.typed_arg(r, op, Ty::Int)?;
                let b = self.typed_arg(r, op, Ty::Int)?;
                Ok((Node::Binary(op, Box::new(a), Box::new(b)), Ty::Int))
            }
            OP_INT_LSCAN | OP_INT_RSCAN => {
                arity(2)?;
                let a = self.typed_arg(r, op, Ty::Int)?;
                let b = self.bool_arg(r, op)?;
                Ok((Node::Binary(op, Box::new(a), Box::new(b)), Ty::Int))
            }
            OP_ABS => {
                arity(1)?;
                let (args, ty) = self.same_type_args(r, op, 1, 1, NUM)?;
                Ok((
                    Node::Unary(op, Box::new(args.into_iter().next().unwrap_or(Node::Unknown))),
                    ty,
                ))
            }
            OP_FLOOR | OP_CEIL | OP_TO_INT => {
                arity(1)?;
                let a = self.typed_arg(r, op, Ty::Float)?;
                let ty = if op == OP_TO_INT { Ty::Int } else { Ty::Float };
                Ok((Node::Unary(op, Box::new(a)), ty))
            }
            OP_TO_FLOAT | OP_INT_NOT | OP_INT_COUNT => {
                arity(1)?;
                let a = self.typed_arg(r, op, Ty::Int)?;
                let ty = if op == OP_TO_FLOAT { Ty::Float } else { Ty::Int };
                Ok((Node::Unary(op, Box::new(a)), ty))
            }
            OP_COND => {
                if argc < 3 || argc.is_multiple_of(2) {
                    return Err(ExpError::Arity { op, found: argc });
                }
                let mut args = Vec::with_capacity(argc);
                let mut ty = None;
                for i in 0..argc {
                    if i % 2 == 0 && i + 1 < argc {
                        args.push(self.bool_arg(r, op)?);
                    } else {
                        let (n, t) = self.node(r)?;
                        // Unknown (code 0) fits any type, as the server's "unknown" result.
                        if t != Ty::Nil && !matches!(n, Node::Unknown) {
                            if ty.is_some_and(|x| x != t) {
                                return Err(ExpError::BadArgument { op });
                            }
                            ty = Some(t);
                        }
                        args.push(n);
                    }
                }
                Ok((Node::Cond(args), ty.unwrap_or(Ty::Nil)))
            }
            OP_LET => {
                if argc < 3 || argc.is_multiple_of(2) {
                    return Err(ExpError::Arity { op, found: argc });
                }
                let base = self.vars.len();
                let mut defs = Vec::with_capacity(argc / 2);
                for _ in 0..argc / 2 {
                    let name = Self::var_name(r, op)?;
                    let (n, t) = self.node(r)?;
                    defs.push(n);
                    self.vars.push((name, t));
                }
                let body = self.node(r);
                self.vars.truncate(base);
                let (body, ty) = body?;
                Ok((Node::Let(defs, Box::new(body)), ty))
            }
            OP_VAR => {
                arity(1)?;
                let name = Self::var_name(r, op)?;
                let slot = self
                    .vars
                    .iter()
                    .rposition(|(n, _)| *n == name)
                    .ok_or(ExpError::BadArgument { op })?;
                Ok((Node::Var(slot), self.vars[slot].1))
            }
            OP_QUOTE => {
                arity(1)?;
                let start = r.pos;
                if r.array_len()?.is_none() {
                    return Err(ExpError::BadArgument { op });
                }
                r.pos = start;
                let list = raw(r)?.to_vec();
                check_storable(&list, op)?;
                Ok((Node::List(list), Ty::List))
            }
            OP_MAP_KEYS | OP_MAP_VALUES => {
                arity(1)?;
                let m = Box::new(self.typed_arg(r, op, Ty::Map)?);
                Ok((
                    if op == OP_MAP_KEYS {
                        Node::MapKeys(m)
                    } else {
                        Node::MapValues(m)
                    },
                    Ty::List,
                ))
            }
            OP_KEY => {
                arity(1)?;
                let ty = ty_of_code(r.int()?, op)?;
                if !matches!(ty, Ty::Int | Ty::Str | Ty::Blob) {
                    return Err(ExpError::BadArgument { op });
                }
                Ok((Node::Key(ty), ty))
            }
            OP_CALL => {
                arity(4)?;
                self.call(r, op)
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
                let ty = ty_of_code(r.int()?, op)?;
                let name = bin_name(r, op)?;
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

    /// `[127, result_type, system, op_payload, target]` (CDT spec §9.4).
    fn call(&mut self, r: &mut Reader<'_>, op: u64) -> Result<(Node, Ty), ExpError> {
        let rtype = ty_of_code(r.int()?, op)?;
        let system = r.int()?;
        let modify = system & 0x40 != 0;
        let (op_type, fits): (u8, &[Ty]) = match system & !0x40 {
            0 => (if modify { 4 } else { 3 }, &[Ty::List, Ty::Map, Ty::Nil]),
            1 => (if modify { 13 } else { 12 }, &[Ty::Blob, Ty::Nil]),
            2 => (if modify { 16 } else { 15 }, &[Ty::Hll, Ty::Nil]),
            _ => return Err(ExpError::BadArgument { op }),
        };
        let n = r.array_len()?.ok_or(ExpError::BadArgument { op })?;
        if n == 0 {
            return Err(ExpError::BadArgument { op });
        }
        let start = r.pos;
        let code_v = r.int()?;
        let mut code = r.buf[start..r.pos].to_vec();
        let mut argc = n - 1;
        let mut ctx = None;
        if code_v == 0xfe {
            // SELECT / path expressions (§9.6).
            return Err(ExpError::Unsupported(op));
        }
        if code_v == 0xff && (op_type == 3 || op_type == 4) {
            if n != 3 {
                return Err(ExpError::BadArgument { op });
            }
            let ctx_raw = raw(r)?.to_vec();
            let m = r.array_len()?.ok_or(ExpError::BadArgument { op })?;
            if m == 0 {
                return Err(ExpError::BadArgument { op });
            }
            ctx = Some((code, ctx_raw));
            let start = r.pos;
            r.int()?;
            code = r.buf[start..r.pos].to_vec();
            argc = m - 1;
        }
        let mut params = Vec::with_capacity(argc);
        for _ in 0..argc {
            let start = r.pos;
            if r.array_len()?.is_some() {
                r.pos = start;
                params.push(Param::Exp(self.node(r)?.0));
            } else {
                params.push(Param::Raw(raw(r)?.to_vec()));
            }
        }
        let (target, tt) = self.node(r)?;
        if !fits.contains(&tt) {
            return Err(ExpError::BadArgument { op });
        }
        Ok((
            Node::Call(Box::new(Call {
                rtype,
                op_type,
                ctx,
                code,
                params,
                target,
            })),
            rtype,
        ))
    }
}

/// A list or map literal must be a value the server could store (no WILDCARD/INF, valid keys).
fn check_storable(bytes: &[u8], op: u64) -> Result<(), ExpError> {
    let mut v = msgpack::parse_exact(bytes).map_err(|_| ExpError::Malformed("bad literal"))?;
    let _ = op;
    msgpack::normalize(&mut v).map_err(|_| ExpError::Malformed("literal list or map that cannot be stored"))
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
                Some((&3, rest)) => (Node::Str(rest.to_vec()), Ty::Str),
                Some((&4, rest)) => (Node::Blob(rest.to_vec()), Ty::Blob),
                Some((&18, rest)) => (Node::Hll(rest.to_vec()), Ty::Hll),
                Some((&23, _)) => return Err(ExpError::UnsupportedValue("geojson")),
                Some(_) => return Err(ExpError::Malformed("blob literal of an unknown type")),
                None => return Err(ExpError::Malformed("empty string literal")),
            }
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let m = raw(r)?.to_vec();
            check_storable(&m, 0)?;
            (Node::Map(m), Ty::Map)
        }
        0xc7..=0xc9 | 0xd4..=0xd8 => return Err(ExpError::UnsupportedValue("msgpack ext")),
        _ => return Err(ExpError::Malformed("unexpected msgpack value")),
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// A runtime value. Strings, blobs and HLLs hold their payload (no type byte); lists and maps
/// their msgpack bytes.
#[derive(Clone, Debug)]
enum Val<'a> {
    Unknown,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, [u8]>),
    Blob(Cow<'a, [u8]>),
    List(Cow<'a, [u8]>),
    Map(Cow<'a, [u8]>),
    Hll(Cow<'a, [u8]>),
}

impl<'a> Val<'a> {
    fn trilean(&self) -> Trilean {
        match self {
            Val::Bool(b) => (*b).into(),
            _ => Trilean::Unknown,
        }
    }

    fn ty(&self) -> Option<Ty> {
        Some(match self {
            Val::Unknown => return None,
            Val::Nil => Ty::Nil,
            Val::Bool(_) => Ty::Bool,
            Val::Int(_) => Ty::Int,
            Val::Float(_) => Ty::Float,
            Val::Str(_) => Ty::Str,
            Val::Blob(_) => Ty::Blob,
            Val::List(_) => Ty::List,
            Val::Map(_) => Ty::Map,
            Val::Hll(_) => Ty::Hll,
        })
    }

    /// A stored value as an expression value (`Unknown` for kinds expressions do not read:
    /// geojson, blobs of other particle types).
    fn of_value(v: &'a Value) -> Val<'a> {
        match v {
            Value::Nil => Val::Nil,
            Value::Int(i) => Val::Int(*i),
            Value::Float(f) => Val::Float(*f),
            Value::Str(s) => Val::Str(Cow::Borrowed(s)),
            Value::Bool(b) => Val::Bool(*b),
            // Only particle type 4: the server's `bin_is_type` wants AS_PARTICLE_TYPE_BLOB.
            Value::Blob(ParticleType::Blob, b) => Val::Blob(Cow::Borrowed(b)),
            Value::Hll(b) => Val::Hll(Cow::Borrowed(b)),
            Value::List(b) => Val::List(Cow::Borrowed(b)),
            Value::Map(b) => Val::Map(Cow::Borrowed(b)),
            Value::Blob(..) | Value::GeoJson(_) => Val::Unknown,
        }
    }

    fn into_owned(self) -> Val<'static> {
        match self {
            Val::Unknown => Val::Unknown,
            Val::Nil => Val::Nil,
            Val::Bool(b) => Val::Bool(b),
            Val::Int(i) => Val::Int(i),
            Val::Float(f) => Val::Float(f),
            Val::Str(b) => Val::Str(Cow::Owned(b.into_owned())),
            Val::Blob(b) => Val::Blob(Cow::Owned(b.into_owned())),
            Val::List(b) => Val::List(Cow::Owned(b.into_owned())),
            Val::Map(b) => Val::Map(Cow::Owned(b.into_owned())),
            Val::Hll(b) => Val::Hll(Cow::Owned(b.into_owned())),
        }
    }

    /// As a bin value (CDT spec §9.5); `None` for nil and unknown.
    fn to_value(&self) -> Option<Value> {
        Some(match self {
            Val::Unknown | Val::Nil => return None,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::Int(*i),
            Val::Float(f) => Value::Float(*f),
            Val::Str(b) => Value::Str(b.to_vec()),
            Val::Blob(b) => Value::Blob(ParticleType::Blob, b.to_vec()),
            Val::List(b) => Value::List(b.to_vec()),
            Val::Map(b) => Value::Map(b.to_vec()),
            Val::Hll(b) => Value::Hll(b.to_vec()),
        })
    }

    /// As one msgpack element (a call parameter, an IN_LIST probe): strings, blobs and HLLs with
    /// their particle-type byte first.
    fn encode(&self, out: &mut Vec<u8>) {
        let typed = |t: u8, b: &[u8], out: &mut Vec<u8>| {
            let mut v = Vec::with_capacity(b.len() + 1);
            v.push(t);
            v.extend_from_slice(b);
            msgpack::Mp::Str(v).encode(out);
        };
        match self {
            Val::Unknown | Val::Nil => out.push(0xc0),
            Val::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Val::Int(i) => msgpack::encode_int(*i, out),
            Val::Float(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Val::Str(b) => typed(3, b, out),
            Val::Blob(b) => typed(4, b, out),
            Val::Hll(b) => typed(18, b, out),
            Val::List(b) | Val::Map(b) => out.extend_from_slice(b),
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
    Ev { rec, now_cl_ms }.node(&expr.root, &mut Vec::new()).trilean()
}

/// What an expression evaluated to (EXP_READ / EXP_MODIFY).
#[derive(Clone, Debug, PartialEq)]
pub enum ExpValue {
    /// UNKNOWN: a missing bin or one of another type, integer division by 0, a failing call...
    Unknown,
    /// Nil.
    Nil,
    /// A value, as a bin value (CDT spec §9.5).
    Value(Value),
}

/// Evaluates an expression of any type.
fn eval_value(expr: &Expr, rec: &dyn RecordView, now_cl_ms: u64) -> ExpValue {
    match (Ev { rec, now_cl_ms }).node(&expr.root, &mut Vec::new()) {
        Val::Unknown => ExpValue::Unknown,
        Val::Nil => ExpValue::Nil,
        v => v.to_value().map_or(ExpValue::Nil, ExpValue::Value),
    }
}

/// The particle type id of a stored value (0 for [`Value::Nil`], which is never stored).
fn particle_id(v: &Value) -> u8 {
    match v {
        // Read the carried type directly: `particle_type` asserts it is a blob type.
        Value::Blob(t, _) => t.id(),
        v => v.particle_type().id(),
    }
}

/// Whether a parsed value holds a non-empty unordered map (such values compare as UNKNOWN,
/// `exp.c` `cmp_msgpack`).
fn has_unordered_map(v: &msgpack::Mp) -> bool {
    match v {
        msgpack::Mp::Map(m) => {
            (m.flags & 0x03 == 0 && !m.pairs.is_empty())
                || m.pairs
                    .iter()
                    .any(|(k, v)| has_unordered_map(k) || has_unordered_map(v))
        }
        msgpack::Mp::List(l) => l.items.iter().any(has_unordered_map),
        _ => false,
    }
}

struct Ev<'r> {
    rec: &'r dyn RecordView,
    now_cl_ms: u64,
}

fn int_fold(op: u64, args: &[i64]) -> Option<i64> {
    let (first, rest) = args.split_first()?;
    if rest.is_empty() {
        return match op {
            OP_SUB => Some(first.wrapping_neg()),
            OP_DIV => (*first != 0).then(|| 1i64.wrapping_div(*first)),
            _ => Some(*first),
        };
    }
    let mut acc = *first;
    for &x in rest {
        acc = match op {
            OP_ADD => acc.wrapping_add(x),
            OP_SUB => acc.wrapping_sub(x),
            OP_MUL => acc.wrapping_mul(x),
            OP_DIV if x == 0 => return None,
            OP_DIV => acc.wrapping_div(x),
            OP_INT_AND => acc & x,
            OP_INT_OR => acc | x,
            OP_INT_XOR => acc ^ x,
            OP_MIN => acc.min(x),
            _ => acc.max(x),
        };
    }
    Some(acc)
}

fn float_fold(op: u64, args: &[f64]) -> Option<f64> {
    let (first, rest) = args.split_first()?;
    if rest.is_empty() {
        return Some(match op {
            OP_SUB => -first,
            OP_DIV => 1.0 / first,
            _ => *first,
        });
    }
    let mut acc = *first;
    for &x in rest {
        acc = match op {
            OP_ADD => acc + x,
            OP_SUB => acc - x,
            OP_MUL => acc * x,
            OP_DIV => acc / x,
            OP_MIN => acc.min(x),
            _ => acc.max(x),
        };
    }
    Some(acc)
}

impl<'r> Ev<'r> {
    fn node<'a>(&self, n: &'a Node, env: &mut Vec<Val<'a>>) -> Val<'a>
    where
        'r: 'a,
    {
        let rec = self.rec;
        match n {
            Node::Unknown => Val::Unknown,
            Node::Nil => Val::Nil,
            Node::Bool(b) => Val::Bool(*b),
            Node::Int(i) => Val::Int(*i),
            Node::Float(f) => Val::Float(*f),
            Node::Str(b) => Val::Str(Cow::Borrowed(b)),
            Node::Blob(b) => Val::Blob(Cow::Borrowed(b)),
            Node::List(b) => Val::List(Cow::Borrowed(b)),
            Node::Map(b) => Val::Map(Cow::Borrowed(b)),
            Node::Hll(b) => Val::Hll(Cow::Borrowed(b)),
            Node::Cmp(op, l, r) => {
                let l = self.node(l, env);
                if let Val::Unknown = l {
                    return Val::Unknown;
                }
                let r = self.node(r, env);
                let ord = match (&l, &r) {
                    (Val::Nil, Val::Nil) => Some(Ordering::Equal),
                    (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
                    (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
                    (Val::Float(a), Val::Float(b)) => a.partial_cmp(b),
                    (Val::Str(a), Val::Str(b)) | (Val::Blob(a), Val::Blob(b)) => Some(a.cmp(b)),
                    (Val::List(a), Val::List(b)) | (Val::Map(a), Val::Map(b)) => {
                        let (Ok(a), Ok(b)) = (msgpack::parse_exact(a), msgpack::parse_exact(b)) else {
                            return Val::Unknown;
                        };
                        if has_unordered_map(&a) || has_unordered_map(&b) {
                            return Val::Unknown;
                        }
                        Some(msgpack::cmp(&a, &b))
                    }
                    // An unknown right side (or, impossible after type checks, a mismatch).
                    _ => return Val::Unknown,
                };
                Val::Bool(op.holds(ord))
            }
            Node::InList(v, l) => {
                let v = self.node(v, env);
                let l = self.node(l, env);
                let (Some(_), Val::List(l)) = (v.ty(), &l) else {
                    return Val::Unknown;
                };
                let mut probe = Vec::new();
                v.encode(&mut probe);
                let (Ok(p), Ok(msgpack::Mp::List(list))) = (msgpack::parse_exact(&probe), msgpack::parse_exact(l))
                else {
                    return Val::Unknown;
                };
                Val::Bool(list.items.iter().any(|e| msgpack::cmp(e, &p) == Ordering::Equal))
            }
            Node::And(args) => {
                let mut unknown = false;
                for a in args {
                    match self.node(a, env).trilean() {
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
                    match self.node(a, env).trilean() {
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
            Node::Not(a) => match self.node(a, env).trilean() {
                Trilean::True => Val::Bool(false),
                Trilean::False => Val::Bool(true),
                Trilean::Unknown => Val::Unknown,
            },
            Node::Exclusive(args) => {
                let mut seen_true = false;
                for a in args {
                    match self.node(a, env).trilean() {
                        Trilean::Unknown => return Val::Unknown,
                        Trilean::True if seen_true => return Val::Bool(false),
                        Trilean::True => seen_true = true,
                        Trilean::False => {}
                    }
                }
                Val::Bool(seen_true)
            }
            Node::Fold(op, args) => {
                let vals: Vec<Val<'a>> = args.iter().map(|a| self.node(a, env)).collect();
                if let Some(ints) = vals
                    .iter()
                    .map(|v| if let Val::Int(i) = v { Some(*i) } else { None })
                    .collect::<Option<Vec<_>>>()
                {
                    return int_fold(*op, &ints).map_or(Val::Unknown, Val::Int);
                }
                if let Some(fs) = vals
                    .iter()
                    .map(|v| if let Val::Float(f) = v { Some(*f) } else { None })
                    .collect::<Option<Vec<_>>>()
                {
                    return float_fold(*op, &fs).map_or(Val::Unknown, Val::Float);
                }
                Val::Unknown
            }
            Node::Unary(op, a) => match (*op, self.node(a, env)) {
                (OP_ABS, Val::Int(i)) => Val::Int(i.wrapping_abs()),
                (OP_ABS, Val::Float(f)) => Val::Float(f.abs()),
                (OP_FLOOR, Val::Float(f)) => Val::Float(f.floor()),
                (OP_CEIL, Val::Float(f)) => Val::Float(f.ceil()),
                (OP_TO_INT, Val::Float(f)) => Val::Int(f as i64),
                (OP_TO_FLOAT, Val::Int(i)) => Val::Float(i as f64),
                (OP_INT_NOT, Val::Int(i)) => Val::Int(!i),
                (OP_INT_COUNT, Val::Int(i)) => Val::Int(i64::from(i.count_ones())),
                _ => Val::Unknown,
            },
            Node::Binary(op, a, b) => match (*op, self.node(a, env), self.node(b, env)) {
                (OP_POW, Val::Float(a), Val::Float(b)) => Val::Float(a.powf(b)),
                (OP_LOG, Val::Float(a), Val::Float(b)) => Val::Float(a.ln() / b.ln()),
                (OP_MOD, Val::Int(_), Val::Int(0)) => Val::Unknown,
                (OP_MOD, Val::Int(a), Val::Int(b)) => Val::Int(a.wrapping_rem(b)),
                (OP_INT_LSHIFT, Val::Int(a), Val::Int(s)) => Val::Int(a.wrapping_shl(s as u32)),
                (OP_INT_RSHIFT, Val::Int(a), Val::Int(s)) => Val::Int(((a as u64).wrapping_shr(s as u32)) as i64),
                (OP_INT_ARSHIFT, Val::Int(a), Val::Int(s)) => Val::Int(a.wrapping_shr(s as u32)),
                (OP_INT_LSCAN, Val::Int(a), Val::Bool(bit)) => {
                    let x = if bit { a as u64 } else { !(a as u64) };
                    Val::Int(if x == 0 { -1 } else { i64::from(x.leading_zeros()) })
                }
                (OP_INT_RSCAN, Val::Int(a), Val::Bool(bit)) => {
                    let x = if bit { a as u64 } else { !(a as u64) };
                    Val::Int(if x == 0 { -1 } else { 63 - i64::from(x.trailing_zeros()) })
                }
                _ => Val::Unknown,
            },
            Node::Cond(args) => {
                let mut i = 0;
                while i + 1 < args.len() {
                    match self.node(&args[i], env).trilean() {
                        Trilean::True => return self.node(&args[i + 1], env),
                        Trilean::Unknown => return Val::Unknown,
                        Trilean::False => i += 2,
                    }
                }
                self.node(&args[args.len() - 1], env)
            }
            Node::Let(defs, body) => {
                let base = env.len();
                for d in defs {
                    let v = self.node(d, env);
                    env.push(v);
                }
                let v = self.node(body, env);
                env.truncate(base);
                v
            }
            Node::Var(slot) => env.get(*slot).cloned().unwrap_or(Val::Unknown),
            Node::MapKeys(m) | Node::MapValues(m) => {
                let Val::Map(b) = self.node(m, env) else {
                    return Val::Unknown;
                };
                let Ok(msgpack::Mp::Map(m)) = msgpack::parse_exact(&b) else {
                    return Val::Unknown;
                };
                let keys = matches!(n, Node::MapKeys(_));
                let items = m.pairs.into_iter().map(|(k, v)| if keys { k } else { v }).collect();
                Val::List(Cow::Owned(
                    msgpack::Mp::List(msgpack::List { flags: 0, items }).to_bytes(),
                ))
            }
            Node::Key(ty) => match (ty, rec.user_key()) {
                (Ty::Int, Some(v @ Value::Int(_)))
                | (Ty::Str, Some(v @ Value::Str(_)))
                | (Ty::Blob, Some(v @ Value::Blob(ParticleType::Blob, _))) => Val::of_value(v).into_owned(),
                _ => Val::Unknown,
            },
            Node::Call(c) => self.call(c, env),
            Node::DigestModulo(m) => {
                let d = rec.digest();
                let v = u32::from_le_bytes([d[16], d[17], d[18], d[19]]);
                Val::Int(i64::from(v) % i64::from(*m))
            }
            Node::Meta(m) => eval_meta(*m, rec, self.now_cl_ms),
            Node::Bin(name, ty) => {
                if !rec.bins_loaded() {
                    return Val::Unknown;
                }
                match rec.bin(name).map(Val::of_value) {
                    // Missing, another type, or nil (a live bin is never nil).
                    Some(v) if v.ty() == Some(*ty) && *ty != Ty::Nil => v,
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

    /// A CDT/bit/HLL call (CDT spec §9.4): builds the op payload from the evaluated params and
    /// runs [`cdt::apply`] on the target; any failure is UNKNOWN.
    fn call<'a>(&self, c: &'a Call, env: &mut Vec<Val<'a>>) -> Val<'a>
    where
        'r: 'a,
    {
        let mut body = Vec::new();
        msgpack::encode_array_header(1 + c.params.len(), &mut body);
        body.extend_from_slice(&c.code);
        for p in &c.params {
            match p {
                Param::Raw(b) => body.extend_from_slice(b),
                Param::Exp(n) => {
                    let v = self.node(n, env);
                    if v.ty().is_none() {
                        return Val::Unknown;
                    }
                    v.encode(&mut body);
                }
            }
        }
        let payload = match &c.ctx {
            Some((ff, ctx)) => {
                let mut p = Vec::with_capacity(body.len() + ctx.len() + 4);
                msgpack::encode_array_header(3, &mut p);
                p.extend_from_slice(ff);
                p.extend_from_slice(ctx);
                p.extend_from_slice(&body);
                p
            }
            None => body,
        };
        // The target as a bin value: a BIN read is borrowed from the record.
        let owned;
        let target: Option<&Value> = match &c.target {
            Node::Bin(name, ty) => {
                if !self.rec.bins_loaded() {
                    return Val::Unknown;
                }
                match self.rec.bin(name) {
                    Some(v) if Val::of_value(v).ty() == Some(*ty) => Some(v),
                    _ => return Val::Unknown,
                }
            }
            t => match self.node(t, env) {
                Val::Unknown => return Val::Unknown,
                v => {
                    owned = v.to_value();
                    owned.as_ref()
                }
            },
        };
        let Ok(o) = cdt::apply(c.op_type, ParticleType::Blob as u8, &payload, target) else {
            return Val::Unknown;
        };
        let v = if cdt::is_read(c.op_type) {
            match o.answer {
                cdt::Answer::Value(v) => Val::of_value(&v).into_owned(),
                _ => Val::Nil,
            }
        } else {
            match (o.new_value, target) {
                (Some(v), _) => Val::of_value(&v).into_owned(),
                (None, Some(t)) => Val::of_value(t).into_owned(),
                (None, None) => Val::Nil,
            }
        };
        if v.ty() == Some(c.rtype) {
            v
        } else {
            Val::Unknown
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
        Meta::SetName => rec.set_name().map_or(Val::Unknown, |s| Val::Str(Cow::Borrowed(s))),
        Meta::KeyExists => rec.key_stored().map_or(Val::Unknown, Val::Bool),
        Meta::IsTombstone => Val::Bool(rec.is_tombstone()),
    }
}

// ---------------------------------------------------------------------------------------------
// EXP_READ / EXP_MODIFY ops (CDT spec §9.7, server `expop.c`).

/// EXP flags (§9.7).
const EXP_CREATE_ONLY: u64 = 0x01;
const EXP_UPDATE_ONLY: u64 = 0x02;
const EXP_ALLOW_DELETE: u64 = 0x04;
const EXP_POLICY_NO_FAIL: u64 = 0x08;
const EXP_EVAL_NO_FAIL: u64 = 0x10;

/// Splits an EXP op value `[expression]` / `[expression, flags]` and compiles the expression;
/// flags outside `valid` answer 4.
fn exp_op_parse(op_value: &[u8], valid: u64) -> Result<(Expr, u64), u8> {
    let mut r = Reader::new(op_value);
    let n = r.array_len().map_err(|_| rc::PARAMETER)?.ok_or(rc::PARAMETER)?;
    if !(1..=2).contains(&n) {
        return Err(rc::PARAMETER);
    }
    let exp = raw(&mut r).map_err(|_| rc::PARAMETER)?;
    // msgpack_get_uint64: a flags element that is not an integer leaves the flags 0.
    let flags = if n == 2 { r.int().map_or(0, |f| f as u64) } else { 0 };
    if flags & !valid != 0 {
        return Err(rc::PARAMETER);
    }
    let (expr, _) = compile_any(exp).map_err(|e| e.result_code())?;
    Ok((expr, flags))
}

/// An EXP_READ op (type 7): the value to send back (`None`: nil, sent as particle 0).
///
/// # Errors
/// 4 for a bad op value, flags other than EVAL_NO_FAIL or an expression that does not build
/// (16 for an unsupported op); 26 when it evaluates to UNKNOWN without EVAL_NO_FAIL.
pub fn exp_read(op_value: &[u8], rec: &dyn RecordView, now_cl_ms: u64) -> Result<Option<Value>, u8> {
    let (expr, flags) = exp_op_parse(op_value, EXP_EVAL_NO_FAIL)?;
    match eval_value(&expr, rec, now_cl_ms) {
        ExpValue::Unknown if flags & EXP_EVAL_NO_FAIL != 0 => Ok(None),
        ExpValue::Unknown => Err(rc::OP_NOT_APPLICABLE),
        ExpValue::Nil => Ok(None),
        ExpValue::Value(v) => Ok(Some(v)),
    }
}

/// What an EXP_MODIFY op does to its bin.
#[derive(Clone, Debug, PartialEq)]
pub enum ExpModify {
    /// Leave the bin as it is.
    Keep,
    /// Delete the bin.
    Delete,
    /// Store this value (lists and maps not yet normalised).
    Set(Value),
}

/// An EXP_MODIFY op (type 8) on a bin that exists or not (`as_exp_modify_tr`).
///
/// # Errors
/// 4 for a bad op value or flags; 6 CREATE_ONLY on an existing bin, 17 UPDATE_ONLY on a missing
/// one (no-ops with POLICY_NO_FAIL); 26 for UNKNOWN without EVAL_NO_FAIL, and for a nil result
/// on an existing bin without ALLOW_DELETE when the flags are 0 (with any flag set the server
/// keeps the bin and answers 0, §9.7).
pub fn exp_modify(op_value: &[u8], rec: &dyn RecordView, now_cl_ms: u64, bin_exists: bool) -> Result<ExpModify, u8> {
    let valid = EXP_CREATE_ONLY | EXP_UPDATE_ONLY | EXP_ALLOW_DELETE | EXP_POLICY_NO_FAIL | EXP_EVAL_NO_FAIL;
    let (expr, flags) = exp_op_parse(op_value, valid)?;
    let no_fail = flags & EXP_POLICY_NO_FAIL != 0;
    if bin_exists && flags & EXP_CREATE_ONLY != 0 {
        return if no_fail {
            Ok(ExpModify::Keep)
        } else {
            Err(rc::BIN_EXISTS)
        };
    }
    if !bin_exists && flags & EXP_UPDATE_ONLY != 0 {
        return if no_fail {
            Ok(ExpModify::Keep)
        } else {
            Err(rc::BIN_NOT_FOUND)
        };
    }
    match eval_value(&expr, rec, now_cl_ms) {
        ExpValue::Unknown if flags & EXP_EVAL_NO_FAIL != 0 => Ok(ExpModify::Keep),
        ExpValue::Unknown => Err(rc::OP_NOT_APPLICABLE),
        ExpValue::Nil if !bin_exists => Ok(ExpModify::Keep),
        ExpValue::Nil if flags & EXP_ALLOW_DELETE != 0 => Ok(ExpModify::Delete),
        ExpValue::Nil if flags != 0 => Ok(ExpModify::Keep),
        ExpValue::Nil => Err(rc::OP_NOT_APPLICABLE),
        ExpValue::Value(v) => Ok(ExpModify::Set(v)),
    }
}

/// A record seen by an EXP op inside a command: its metadata and the bins as the command has
/// changed them so far.
pub struct OpRecordView<'a> {
    /// The record's digest.
    pub digest: &'a [u8; 20],
    /// Last-update time, ms since 2010 (0 for a record being created).
    pub lut_cl_ms: u64,
    /// Void time, s since 2010; 0 = never expires.
    pub void_time_cl_s: u32,
    /// Stored size in bytes (0 for a record being created).
    pub size_bytes: u64,
    /// The set name, empty for none.
    pub set_name: &'a [u8],
    /// Whether the user key is stored.
    pub key_stored: bool,
    /// The bins.
    pub bins: &'a [crate::particle::Bin],
}

impl RecordView for OpRecordView<'_> {
    fn digest(&self) -> &[u8; 20] {
        self.digest
    }
    fn last_update_cl_ms(&self) -> u64 {
        self.lut_cl_ms
    }
    fn void_time_cl_s(&self) -> u32 {
        self.void_time_cl_s
    }
    fn record_size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn set_name(&self) -> Option<&[u8]> {
        Some(self.set_name)
    }
    fn key_stored(&self) -> Option<bool> {
        Some(self.key_stored)
    }
    fn bin(&self, name: &[u8]) -> Option<&Value> {
        self.bins.iter().find(|b| b.name.as_bytes() == name).map(|b| &b.value)
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

    /// EXP_READ probes: CDT spec A.5 (observed on CE 8.1.2.0) plus calls (§9.4), through
    /// [`exp_read`] on a record `i = 7, f = 3.5, s = "Hello", l = [1,2,3], m = {a:1, b:2},
    /// n = [[1,2],[3]], b = 0f00f081, h = an empty HLL`, set "cdt", no stored key.
    #[test]
    fn exp_read_probes() {
        use crate::particle::{Bin, BinName};
        #[derive(Debug)]
        enum W {
            I(i64),
            F(f64),
            T(bool),
            S(&'static str),
            M(&'static str),
            L(&'static str),
            Bl(&'static [u8]),
            N,
            E(u8),
        }
        use W::*;
        let unhex = |h: &str| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        let hll = crate::cdt::apply(16, 4, &[0x92, 0x00, 0x04], None)
            .unwrap()
            .new_value
            .unwrap();
        let bin = |n: &str, v: Value| Bin {
            name: BinName::new(n.as_bytes()).unwrap(),
            value: v,
        };
        let bins = vec![
            bin("i", Value::Int(7)),
            bin("f", Value::Float(3.5)),
            bin("s", Value::Str(b"Hello".to_vec())),
            bin("l", Value::List(vec![0x93, 1, 2, 3])),
            bin("m", Value::Map(unhex("82a2036101a2036202"))),
            bin("n", Value::List(unhex("9292010291 03".replace(' ', "").as_str()))),
            bin("b", Value::Blob(ParticleType::Blob, vec![0x0f, 0x00, 0xf0, 0x81])),
            bin("h", hll),
        ];
        let digest = [0u8; 20];
        let view = OpRecordView {
            digest: &digest,
            lut_cl_ms: LUT_MS,
            void_time_cl_s: 0,
            size_bytes: 96,
            set_name: b"cdt",
            key_stored: false,
            bins: &bins,
        };
        let rows: &[(&str, &str, W)] = &[
            ("add ints", "929414935102a169030500", I(15)),
            ("sub", "929315935102a1690a00", I(-3)),
            ("sub one arg", "9292150500", I(-5)),
            ("mul", "92941602030400", I(24)),
            ("div int", "929317935102a1690200", I(3)),
            ("div neg", "929317f90200", I(-3)),
            ("div reciprocal", "929217935102a16900", I(0)),
            ("div zero", "929317070000", E(26)),
            ("div float", "929317cb401c000000000000cb400000000000000000", F(3.5)),
            ("wrap", "929314d37fffffffffffffff0100", I(i64::MIN)),
            ("mod", "92931af90300", I(-1)),
            ("mod zero", "92931a070000", E(26)),
            ("pow", "929318cb4000000000000000cb402400000000000000", F(1024.0)),
            ("log", "929319cb4020000000000000cb400000000000000000", F(3.0)),
            ("abs", "92921bfb00", I(5)),
            ("floor", "92921ccbc00400000000000000", F(-3.0)),
            ("ceil", "92921dcb4000cccccccccccd00", F(3.0)),
            ("to_int", "92921ecbc00599999999999a00", I(-2)),
            ("to_float", "92921f0300", F(3.0)),
            ("int_and", "9293200c0a00", I(8)),
            ("int_or", "9293210c0a00", I(14)),
            ("int_xor", "9293220c0a00", I(6)),
            ("int_not", "9292230000", I(-1)),
            ("lshift", "929324010400", I(16)),
            ("rshift", "929325f00200", I(4611686018427387900)),
            ("arshift", "929326f00200", I(-4)),
            ("count", "929227ccff00", I(8)),
            ("lscan", "92932801c300", I(63)),
            ("rscan", "92932901c300", I(63)),
            ("min", "92943203010200", I(1)),
            ("max", "929333cb400c000000000000cb3ff800000000000000", F(3.5)),
            ("eq str", "929301935103a173a60348656c6c6f00", T(true)),
            ("lt str", "929305a20361a2036200", T(true)),
            ("ne list", "929302935104a16c927e92010200", T(true)),
            ("eq list", "929301935104a16c927e9301020300", T(true)),
            ("in_list", "92930902935104a16c00", T(true)),
            ("in_list no", "92930905935104a16c00", T(false)),
            ("and", "929310c3c200", T(false)),
            ("or", "929311c3c200", T(true)),
            ("not", "929212c200", T(true)),
            ("xor", "929313c3c300", T(false)),
            ("cond", "92967b93010102a2036193010101a20362a2036300", S("b")),
            ("cond default", "92947b93010102a20361a2036300", S("c")),
            ("let/var", "92947da178059314927ca1780100", I(6)),
            ("let two", "92967da17805a1799316927ca178029315927ca179927ca17800", I(5)),
            ("set_name", "92914600", S("cdt")),
            ("key_exists", "92914700", T(false)),
            ("ttl", "92914500", I(-1)),
            ("void_time", "92914400", I(-1)),
            ("bin_type s", "929252a17300", I(3)),
            ("bin_type missing", "929252a27a7a00", I(0)),
            ("bin wrong type", "92935102a17300", E(26)),
            ("bin missing", "92935102a27a7a00", E(26)),
            ("key not stored", "9292500200", E(26)),
            ("mixed int float", "92931401cb400000000000000000", E(4)),
            ("list unquoted", "9292010200", E(4)),
            ("map literal", "9281a203610100", M("81a2036101")),
            ("nil literal", "92c000", N),
            ("str literal", "92a2037800", S("x")),
            ("blob literal", "92a2040100", Bl(&[1])),
            ("map keys", "929265935105a16d00", L("92a20361a20362")),
            ("map values", "929266935105a16d00", L("920102")),
            ("list size call", "92957f02009110935104a16c00", I(3)),
            ("map get by key call", "92957f0200936107a20361935105a16d00", I(1)),
            ("map get missing key", "92957f0200936107a3037a7a935105a16d00", E(26)),
            ("list append local", "92957f0440920109935104a16c00", L("9401020309")),
            (
                "list get by value list",
                "92957f0400931707927e920103935104a16c00",
                L("920103"),
            ),
            (
                "list get by index expr param",
                "92957f02009313079315935102a16906935104a16c00",
                I(2),
            ),
            ("call on literal", "92957f02009110927e92050600", I(2)),
            ("nested call", "92957f02009110957f0440920109935104a16c00", I(4)),
            ("ctx call", "92957f020093ccff9210009110935104a16e00", I(2)),
            ("bit count", "92957f020193330008935106a16200", I(4)),
            ("wrong rtype", "92957f03009110935104a16c00", E(26)),
            ("map size on list bin", "92957f02009160935105a16c00", E(26)),
            ("filter compare call", "929303957f02009110935104a16c0200", T(true)),
            ("hll count", "92957f02029132935109a16800", I(0)),
        ];
        let mut bad = Vec::new();
        for (name, hex, want) in rows {
            let got = exp_read(&unhex(hex), &view, NOW_MS);
            let ok = match (want, &got) {
                (I(i), Ok(Some(Value::Int(g)))) => i == g,
                (F(f), Ok(Some(Value::Float(g)))) => f == g,
                (T(b), Ok(Some(Value::Bool(g)))) => b == g,
                (S(s), Ok(Some(Value::Str(g)))) => s.as_bytes() == g.as_slice(),
                (M(h), Ok(Some(Value::Map(g)))) => unhex(h) == *g,
                (L(h), Ok(Some(Value::List(g)))) => unhex(h) == *g,
                (Bl(b), Ok(Some(Value::Blob(ParticleType::Blob, g)))) => *b == g.as_slice(),
                (N, Ok(None)) => true,
                (E(c), Err(g)) => c == g,
                _ => false,
            };
            if !ok {
                bad.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        // Flags other than EVAL_NO_FAIL are refused (A: e21); EVAL_NO_FAIL turns UNKNOWN into nil.
        assert_eq!(exp_read(&unhex("92935102a27a7a01"), &view, NOW_MS), Err(4));
        assert_eq!(exp_read(&unhex("92935102a27a7a10"), &view, NOW_MS), Ok(None));
        assert_eq!(exp_read(&unhex("93c00000"), &view, NOW_MS), Err(4));
    }

    #[test]
    fn exp_modify_flags() {
        let digest = [0u8; 20];
        let view = OpRecordView {
            digest: &digest,
            lut_cl_ms: 0,
            void_time_cl_s: 0,
            size_bytes: 0,
            set_name: b"",
            key_stored: false,
            bins: &[],
        };
        let m = |h: &[u8], exists: bool| exp_modify(h, &view, 0, exists);
        // [7, flags]: CREATE_ONLY on an existing bin 6, with POLICY_NO_FAIL kept.
        assert_eq!(m(&[0x92, 7, 1], true), Err(6));
        assert_eq!(m(&[0x92, 7, 9], true), Ok(ExpModify::Keep));
        assert_eq!(m(&[0x92, 7, 1], false), Ok(ExpModify::Set(Value::Int(7))));
        // UPDATE_ONLY on a missing bin 17, with POLICY_NO_FAIL kept.
        assert_eq!(m(&[0x92, 7, 2], false), Err(17));
        assert_eq!(m(&[0x92, 7, 10], false), Ok(ExpModify::Keep));
        // nil: ALLOW_DELETE deletes; flags 0 on an existing bin 26; any other flag keeps.
        assert_eq!(m(&[0x92, 0xc0, 4], true), Ok(ExpModify::Delete));
        assert_eq!(m(&[0x92, 0xc0, 0], true), Err(26));
        assert_eq!(m(&[0x92, 0xc0, 0x10], true), Ok(ExpModify::Keep));
        assert_eq!(m(&[0x91, 0xc0], false), Ok(ExpModify::Keep));
        // Unknown bits: 4.
        assert_eq!(m(&[0x92, 7, 0x20], false), Err(4));
    }

    #[test]
    fn unsupported_and_invalid() {
        // as_exp_cmp_regex(0, "^a", as_exp_bin_str("s")): [7, 0, "^a", bin]: 16.
        let regex = cat(&[&[0x94, 0x07, 0x00, 0xa2, b'^', b'a'], BIN_STR_S]);
        let err = compile(&regex).unwrap_err();
        assert_eq!(err, ExpError::Unsupported(7));
        assert_eq!(err.result_code(), 16);
        // add(a, 1) > 3 builds; a list bin compared with nil does not (types differ: 4).
        assert!(compile(&cat(&[&[0x93, 0x03, 0x93, 0x14], BIN_INT_A, &[0x01, 0x03]])).is_ok());
        assert_eq!(
            compile(&[0x93, 0x01, 0x93, 0x51, 0x04, 0xa1, b'l', 0xc0]),
            Err(ExpError::BadArgument { op: 1 })
        );
        // Geojson literal (str typed 23): 16; a geojson bin read: 16; SELECT in a call: 16.
        assert_eq!(
            compile(&[0x93, 0x01, 0xc0, 0xa2, 23, b'{']),
            Err(ExpError::UnsupportedValue("geojson"))
        );
        assert_eq!(
            compile(&[0x93, 0x01, 0x93, 0x51, 0x08, 0xa1, b'g', 0xc0]),
            Err(ExpError::Unsupported(81))
        );
        // Two empty map literals compare.
        assert!(compile(&[0x93, 0x01, 0x80, 0x80]).is_ok());
        // VAR_BUILTIN outside SELECT: 16.
        assert_eq!(compile(&[0x93, 0x7a, 0x02, 0x00]), Err(ExpError::Unsupported(122)));
        // Op codes the server does not define: 4.
        for op in [15u8, 42, 75, 83, 99] {
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
