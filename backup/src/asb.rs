//! The asbackup text format "Version 3.1" (wire spec §9): a writer and a streaming reader.
//!
//! The format is a strict byte format: `[SP]` is one 0x20 byte, `[LF]` one 0x0A byte. Names
//! (namespace, set, bin) are escaped (a backslash before every space, LF and backslash);
//! length-prefixed data (strings, raw bytes) is written raw and may contain any byte.
//!
//! A record is a block of `+ ` header lines in a fixed order followed by `+ b <n>` and exactly
//! `n` bin lines (`- `). The reader reports errors with the file name and the 1-based line
//! number (counting every LF in the file, also those inside raw data) where the bad token is.

use std::fmt;
use std::io::{self, BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The version line this writer produces.
pub const VERSION_LINE: &[u8] = b"Version 3.1\n";
/// The legacy version line the reader also accepts.
pub const VERSION_LINE_3_0: &[u8] = b"Version 3.0\n";

/// Longest escaped token (namespace, set, bin, index name) the reader accepts: far above every
/// server limit (§10.4), low enough that a corrupt file cannot make the reader buffer without end.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Largest length-prefixed value the reader accepts (the server's proto limit is 128 MiB).
pub const MAX_VALUE_BYTES: u64 = 128 << 20;
/// Most bins in one record (`RECORD_MAX_BINS`, §10.4).
pub const MAX_BINS: u64 = 32_767;

/// The user key of a record, when it was stored (`+ k`).
#[derive(Debug, Clone, PartialEq)]
pub enum UserKey {
    Int(i64),
    /// Only the C client can write these; kept for completeness.
    Float(f64),
    String(String),
    Blob(Vec<u8>),
}

/// A bin value, typed as the `- ` line's type letter says.
#[derive(Debug, Clone, PartialEq)]
pub enum BinValue {
    /// `N`
    Nil,
    /// `Z`
    Bool(bool),
    /// `I`
    Int(i64),
    /// `D`
    Float(f64),
    /// `S` (or `X`, base64, on read)
    String(String),
    /// `G`
    GeoJson(String),
    /// Raw bytes with their particle type: `B` 4 blob, `J` 7, `C` 8, `P` 9, `R` 10, `H` 11,
    /// `E` 12 (language blobs), `Y` 18 HLL, `M` 19 map msgpack, `L` 20 list msgpack.
    Bytes { particle_type: u8, bytes: Vec<u8> },
}

/// Particle types (wire spec §3.5) of the raw-bytes bins.
pub mod particle {
    pub const BLOB: u8 = 4;
    pub const HLL: u8 = 18;
    pub const MAP: u8 = 19;
    pub const LIST: u8 = 20;
}

/// Type letter ↔ particle type of the raw-bytes bins.
const BYTES_TYPES: [(u8, u8); 10] = [
    (b'B', 4),
    (b'J', 7),
    (b'C', 8),
    (b'P', 9),
    (b'R', 10),
    (b'H', 11),
    (b'E', 12),
    (b'Y', 18),
    (b'M', 19),
    (b'L', 20),
];

fn letter_of_particle(particle_type: u8) -> Option<u8> {
    BYTES_TYPES.iter().find(|(_, p)| *p == particle_type).map(|(l, _)| *l)
}

fn particle_of_letter(letter: u8) -> Option<u8> {
    BYTES_TYPES.iter().find(|(l, _)| *l == letter).map(|(_, p)| *p)
}

/// Whether a particle type can be written as a raw-bytes bin line.
pub fn is_bytes_particle(particle_type: u8) -> bool {
    letter_of_particle(particle_type).is_some()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    pub name: String,
    pub value: BinValue,
}

/// One record as a backup file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Option<UserKey>,
    pub namespace: String,
    pub digest: [u8; 20],
    /// `None` for set-less records (no `+ s` line).
    pub set: Option<String>,
    pub generation: u16,
    /// Void time in seconds since 2010-01-01 UTC; 0 = never expires.
    pub expiration: u32,
    pub bins: Vec<Bin>,
}

/// What a backup file holds besides records.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Record(Record),
    /// `* i ...`: a secondary-index definition, kept as its raw line (without the LF).
    Index(Vec<u8>),
    /// `* u L <name> <len> <content>`.
    Udf {
        name: String,
        content: Vec<u8>,
    },
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Appends `escape(x)`: a backslash before every space, LF and backslash.
pub fn escape_into(out: &mut Vec<u8>, x: &[u8]) {
    for &b in x {
        if b == b' ' || b == b'\n' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// `%.17g` as C's printf writes it (what asbackup writes for doubles), with `nan`, `inf`, `-inf`.
pub fn format_g17(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    const P: i32 = 17;
    // Scientific with P significant digits gives the decimal exponent after rounding.
    let sci = format!("{:.*e}", (P - 1) as usize, v);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if !(-4..P).contains(&exp) {
        let mantissa = strip_fraction_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let fixed = format!("{:.*}", (P - 1 - exp) as usize, v);
        strip_fraction_zeros(&fixed).to_string()
    }
}

fn strip_fraction_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// How raw-bytes bins (blobs, HLL, lists, maps) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BytesForm {
    /// `- B <name> <b64-len> <base64>` (asbackup's default).
    #[default]
    Base64,
    /// `- B! <name> <len> <raw>` (asbackup `--compact`).
    Compact,
}

/// Appends the header and meta section: the version line, `# namespace`, and `# first-file`
/// when `first_file`.
pub fn encode_header(out: &mut Vec<u8>, namespace: &str, first_file: bool) {
    out.extend_from_slice(VERSION_LINE);
    out.extend_from_slice(b"# namespace ");
    escape_into(out, namespace.as_bytes());
    out.push(b'\n');
    if first_file {
        out.extend_from_slice(b"# first-file\n");
    }
}

fn push_num(out: &mut Vec<u8>, n: impl fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
}

fn push_len_raw(out: &mut Vec<u8>, bytes: &[u8]) {
    push_num(out, bytes.len());
    out.push(b' ');
    out.extend_from_slice(bytes);
}

fn push_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let encoded = B64.encode(bytes);
    push_num(out, encoded.len());
    out.push(b' ');
    out.extend_from_slice(encoded.as_bytes());
}

/// Appends one record block.
pub fn encode_record(out: &mut Vec<u8>, rec: &Record, form: BytesForm) {
    if let Some(key) = &rec.key {
        out.extend_from_slice(b"+ k ");
        match key {
            UserKey::Int(i) => {
                out.extend_from_slice(b"I ");
                push_num(out, i);
            }
            UserKey::Float(f) => {
                out.extend_from_slice(b"D ");
                out.extend_from_slice(format_g17(*f).as_bytes());
            }
            UserKey::String(s) => {
                out.extend_from_slice(b"S ");
                push_len_raw(out, s.as_bytes());
            }
            UserKey::Blob(b) => match form {
                BytesForm::Base64 => {
                    out.extend_from_slice(b"B ");
                    push_b64(out, b);
                }
                BytesForm::Compact => {
                    out.extend_from_slice(b"B! ");
                    push_len_raw(out, b);
                }
            },
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"+ n ");
    escape_into(out, rec.namespace.as_bytes());
    out.extend_from_slice(b"\n+ d ");
    out.extend_from_slice(B64.encode(rec.digest).as_bytes());
    out.push(b'\n');
    if let Some(set) = &rec.set {
        out.extend_from_slice(b"+ s ");
        escape_into(out, set.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"+ g ");
    push_num(out, rec.generation);
    out.extend_from_slice(b"\n+ t ");
    push_num(out, rec.expiration);
    out.extend_from_slice(b"\n+ b ");
    push_num(out, rec.bins.len());
    out.push(b'\n');
    for bin in &rec.bins {
        encode_bin(out, bin, form);
    }
}

fn encode_bin(out: &mut Vec<u8>, bin: &Bin, form: BytesForm) {
    out.extend_from_slice(b"- ");
    let letter = match &bin.value {
        BinValue::Nil => b'N',
        BinValue::Bool(_) => b'Z',
        BinValue::Int(_) => b'I',
        BinValue::Float(_) => b'D',
        BinValue::String(_) => b'S',
        BinValue::GeoJson(_) => b'G',
        BinValue::Bytes { particle_type, .. } => letter_of_particle(*particle_type)
            .unwrap_or_else(|| panic!("particle type {particle_type} has no .asb bin letter")),
    };
    out.push(letter);
    let compact = matches!(bin.value, BinValue::Bytes { .. }) && form == BytesForm::Compact;
    if compact {
        out.push(b'!');
    }
    out.push(b' ');
    escape_into(out, bin.name.as_bytes());
    match &bin.value {
        BinValue::Nil => {}
        BinValue::Bool(b) => out.extend_from_slice(if *b { b" T" } else { b" F" }),
        BinValue::Int(i) => {
            out.push(b' ');
            push_num(out, i);
        }
        BinValue::Float(f) => {
            out.push(b' ');
            out.extend_from_slice(format_g17(*f).as_bytes());
        }
        BinValue::String(s) | BinValue::GeoJson(s) => {
            out.push(b' ');
            push_len_raw(out, s.as_bytes());
        }
        BinValue::Bytes { bytes, .. } => {
            out.push(b' ');
            if compact {
                push_len_raw(out, bytes);
            } else {
                push_b64(out, bytes);
            }
        }
    }
    out.push(b'\n');
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A backup file that cannot be read: which file, which line, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct AsbError {
    pub file: String,
    /// 1-based line of the offending token.
    pub line: u64,
    pub kind: AsbErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum AsbErrorKind {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("unsupported version line {0:?} (expected \"Version 3.1\" or \"Version 3.0\")")]
    Version(String),
    #[error("unexpected end of file (truncated backup?) while reading {0}")]
    Truncated(&'static str),
    #[error("{0}")]
    Bad(String),
}

/// A streaming reader of one backup file.
pub struct AsbReader<R> {
    input: R,
    file: String,
    line: u64,
    header_done: bool,
    /// The `# namespace` meta value, once read.
    namespace: Option<String>,
    first_file: bool,
    records: u64,
}

type Res<T> = Result<T, AsbError>;

impl<R: BufRead> AsbReader<R> {
    /// `file` names the input in errors.
    pub fn new(input: R, file: impl Into<String>) -> Self {
        AsbReader {
            input,
            file: file.into(),
            line: 1,
            header_done: false,
            namespace: None,
            first_file: false,
            records: 0,
        }
    }

    /// The `# namespace` meta value (known after the first `next_entry`).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn is_first_file(&self) -> bool {
        self.first_file
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    fn err(&self, kind: AsbErrorKind) -> AsbError {
        AsbError {
            file: self.file.clone(),
            line: self.line,
            kind,
        }
    }

    fn bad(&self, msg: impl Into<String>) -> AsbError {
        self.err(AsbErrorKind::Bad(msg.into()))
    }

    fn peek(&mut self) -> Res<Option<u8>> {
        loop {
            match self.input.fill_buf() {
                Ok(buf) => return Ok(buf.first().copied()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err(AsbErrorKind::Io(e))),
            }
        }
    }

    fn byte(&mut self, what: &'static str) -> Res<u8> {
        match self.peek()? {
            Some(b) => {
                self.input.consume(1);
                if b == b'\n' {
                    self.line += 1;
                }
                Ok(b)
            }
            None => Err(self.err(AsbErrorKind::Truncated(what))),
        }
    }

    fn expect(&mut self, want: u8, what: &'static str) -> Res<()> {
        let line = self.line;
        let got = self.byte(what)?;
        if got != want {
            return Err(AsbError {
                file: self.file.clone(),
                line,
                kind: AsbErrorKind::Bad(format!(
                    "expected {:?} in {what}, found {:?}",
                    want as char, got as char
                )),
            });
        }
        Ok(())
    }

    /// Reads an escaped token up to an unescaped space or LF (not consumed).
    fn token(&mut self, what: &'static str) -> Res<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let b = match self.peek()? {
                Some(b) => b,
                None => return Err(self.err(AsbErrorKind::Truncated(what))),
            };
            if b == b' ' || b == b'\n' {
                return Ok(out);
            }
            self.byte(what)?;
            let b = if b == b'\\' { self.byte(what)? } else { b };
            if b == 0 {
                return Err(self.bad(format!("NUL byte in {what}")));
            }
            out.push(b);
            if out.len() > MAX_TOKEN_BYTES {
                return Err(self.bad(format!("{what} longer than {MAX_TOKEN_BYTES} bytes")));
            }
        }
    }

    fn name(&mut self, what: &'static str) -> Res<String> {
        let line = self.line;
        let raw = self.token(what)?;
        if raw.is_empty() {
            return Err(self.bad(format!("empty {what}")));
        }
        String::from_utf8(raw).map_err(|_| AsbError {
            file: self.file.clone(),
            line,
            kind: AsbErrorKind::Bad(format!("{what} is not UTF-8")),
        })
    }

    /// Reads an unescaped word (a number, base64) up to a space or LF (not consumed).
    fn word(&mut self, what: &'static str) -> Res<String> {
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                None => return Err(self.err(AsbErrorKind::Truncated(what))),
                Some(b' ' | b'\n') => break,
                Some(_) => {
                    let b = self.byte(what)?;
                    out.push(b);
                    if out.len() > MAX_VALUE_BYTES as usize * 2 {
                        return Err(self.bad(format!("{what} too long")));
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(self.bad(format!("missing {what}")));
        }
        String::from_utf8(out).map_err(|_| self.bad(format!("{what} is not ASCII")))
    }

    fn number<T: std::str::FromStr>(&mut self, what: &'static str) -> Res<T> {
        let w = self.word(what)?;
        w.parse().map_err(|_| self.bad(format!("bad {what} {w:?}")))
    }

    fn raw(&mut self, len: u64, what: &'static str) -> Res<Vec<u8>> {
        if len > MAX_VALUE_BYTES {
            return Err(self.bad(format!("{what} length {len} over the {MAX_VALUE_BYTES}-byte limit")));
        }
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let want = (len - out.len() as u64) as usize;
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err(AsbErrorKind::Io(e))),
            };
            if buf.is_empty() {
                return Err(self.err(AsbErrorKind::Truncated(what)));
            }
            let n = want.min(buf.len());
            self.line += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            out.extend_from_slice(&buf[..n]);
            self.input.consume(n);
        }
        Ok(out)
    }

    /// `<len> <raw>`
    fn len_raw(&mut self, what: &'static str) -> Res<Vec<u8>> {
        let len: u64 = self.number(what)?;
        self.expect(b' ', what)?;
        self.raw(len, what)
    }

    /// `<b64-len> <base64>`
    fn len_b64(&mut self, what: &'static str) -> Res<Vec<u8>> {
        let line = self.line;
        let text = self.len_raw(what)?;
        B64.decode(&text).map_err(|e| AsbError {
            file: self.file.clone(),
            line,
            kind: AsbErrorKind::Bad(format!("bad base64 in {what}: {e}")),
        })
    }

    fn utf8(&self, bytes: Vec<u8>, line: u64, what: &str) -> Res<String> {
        String::from_utf8(bytes).map_err(|_| AsbError {
            file: self.file.clone(),
            line,
            kind: AsbErrorKind::Bad(format!("{what} is not UTF-8")),
        })
    }

    fn double(&mut self, what: &'static str) -> Res<f64> {
        let w = self.word(what)?;
        // strtod accepts these spellings; Rust's parser accepts inf/+inf/-inf/nan/infinity.
        w.parse::<f64>().map_err(|_| self.bad(format!("bad {what} {w:?}")))
    }

    fn end_line(&mut self, what: &'static str) -> Res<()> {
        self.expect(b'\n', what)
    }

    fn header(&mut self) -> Res<()> {
        let mut first = Vec::with_capacity(VERSION_LINE.len());
        while first.len() < VERSION_LINE.len() {
            match self.peek()? {
                None => break,
                Some(_) => {
                    let b = self.byte("version line")?;
                    first.push(b);
                    if b == b'\n' {
                        break;
                    }
                }
            }
        }
        if first != VERSION_LINE && first != VERSION_LINE_3_0 {
            // Report it on line 1.
            self.line = 1;
            if first.is_empty() {
                return Err(self.err(AsbErrorKind::Truncated("version line (empty file)")));
            }
            return Err(self.err(AsbErrorKind::Version(
                String::from_utf8_lossy(&first).trim_end().to_string(),
            )));
        }
        Ok(())
    }

    /// The next record, index or UDF; `None` at a clean end of file.
    pub fn next_entry(&mut self) -> Res<Option<Entry>> {
        if !self.header_done {
            self.header()?;
            self.header_done = true;
        }
        loop {
            match self.peek()? {
                None => return Ok(None),
                Some(b'#') => self.meta()?,
                Some(b'*') => return self.global().map(Some),
                Some(b'+') => {
                    let rec = self.record()?;
                    self.records += 1;
                    return Ok(Some(Entry::Record(rec)));
                }
                Some(b) => {
                    return Err(self.bad(format!(
                        "line starts with {:?}; expected '+ ' (record), '* ' (global) or '# ' (meta)",
                        b as char
                    )))
                }
            }
        }
    }

    /// The next record, skipping index and UDF entries.
    pub fn next_record(&mut self) -> Res<Option<Record>> {
        loop {
            match self.next_entry()? {
                None => return Ok(None),
                Some(Entry::Record(r)) => return Ok(Some(r)),
                Some(_) => continue,
            }
        }
    }

    fn meta(&mut self) -> Res<()> {
        self.expect(b'#', "meta line")?;
        self.expect(b' ', "meta line")?;
        let keyword = self.word("meta keyword")?;
        match keyword.as_str() {
            "namespace" => {
                self.expect(b' ', "namespace meta line")?;
                let ns = self.name("namespace")?;
                self.namespace = Some(ns);
            }
            "first-file" => self.first_file = true,
            other => return Err(self.bad(format!("unknown meta keyword {other:?}"))),
        }
        self.end_line("meta line")
    }

    fn global(&mut self) -> Res<Entry> {
        self.expect(b'*', "global line")?;
        self.expect(b' ', "global line")?;
        let kind = self.byte("global line")?;
        match kind {
            b'i' => {
                // Kept raw: restore of indexes is not implemented, but the line must be valid
                // enough to find its end (escaped tokens never contain an unescaped LF).
                let mut line = b"* i".to_vec();
                loop {
                    let b = self.byte("index line")?;
                    if b == b'\n' {
                        return Ok(Entry::Index(line));
                    }
                    line.push(b);
                    if b == b'\\' {
                        line.push(self.byte("index line")?);
                    }
                    if line.len() > MAX_TOKEN_BYTES * 8 {
                        return Err(self.bad("index line too long"));
                    }
                }
            }
            b'u' => {
                self.expect(b' ', "UDF line")?;
                self.expect(b'L', "UDF line (only Lua UDFs exist)")?;
                self.expect(b' ', "UDF line")?;
                let name = self.name("UDF file name")?;
                self.expect(b' ', "UDF line")?;
                let content = self.len_raw("UDF content")?;
                self.end_line("UDF line")?;
                Ok(Entry::Udf { name, content })
            }
            other => Err(self.bad(format!("unknown global line type {:?}", other as char))),
        }
    }

    /// `+ <letter> ` and returns the letter.
    fn record_line_start(&mut self) -> Res<u8> {
        self.expect(b'+', "record header line")?;
        self.expect(b' ', "record header line")?;
        let letter = self.byte("record header line")?;
        Ok(letter)
    }

    fn record(&mut self) -> Res<Record> {
        let mut letter = self.record_line_start()?;
        let mut key = None;
        if letter == b'k' {
            self.expect(b' ', "key line")?;
            key = Some(self.user_key()?);
            self.end_line("key line")?;
            letter = self.record_line_start()?;
        }
        self.want_letter(letter, b'n', "namespace")?;
        let namespace = self.name("namespace")?;
        self.end_line("namespace line")?;

        letter = self.record_line_start()?;
        self.want_letter(letter, b'd', "digest")?;
        let line = self.line;
        let d = self.word("digest")?;
        let digest = B64
            .decode(d.as_bytes())
            .ok()
            .and_then(|v| <[u8; 20]>::try_from(v).ok())
            .ok_or_else(|| AsbError {
                file: self.file.clone(),
                line,
                kind: AsbErrorKind::Bad(format!("bad digest {d:?} (want base64 of 20 bytes)")),
            })?;
        self.end_line("digest line")?;

        letter = self.record_line_start()?;
        let mut set = None;
        if letter == b's' {
            self.expect(b' ', "set line")?;
            set = Some(self.name("set")?);
            self.end_line("set line")?;
            letter = self.record_line_start()?;
        }
        self.want_letter(letter, b'g', "generation")?;
        let generation: u16 = self.number("generation")?;
        self.end_line("generation line")?;

        letter = self.record_line_start()?;
        self.want_letter(letter, b't', "expiration")?;
        let expiration: u32 = self.number("expiration")?;
        self.end_line("expiration line")?;

        letter = self.record_line_start()?;
        self.want_letter(letter, b'b', "bin count")?;
        let n_bins: u64 = self.number("bin count")?;
        if n_bins > MAX_BINS {
            return Err(self.bad(format!("bin count {n_bins} over {MAX_BINS}")));
        }
        self.end_line("bin count line")?;

        let mut bins = Vec::with_capacity(n_bins as usize);
        for _ in 0..n_bins {
            bins.push(self.bin()?);
        }
        Ok(Record {
            key,
            namespace,
            digest,
            set,
            generation,
            expiration,
            bins,
        })
    }

    fn want_letter(&mut self, got: u8, want: u8, what: &'static str) -> Res<()> {
        if got != want {
            return Err(self.bad(format!(
                "expected '+ {}' ({what}) line, found '+ {}'",
                want as char, got as char
            )));
        }
        self.expect(b' ', "record header line")
    }

    fn user_key(&mut self) -> Res<UserKey> {
        let line = self.line;
        let kind = self.word("key type")?;
        self.expect(b' ', "key line")?;
        Ok(match kind.as_str() {
            "I" => UserKey::Int(self.number("integer key")?),
            "D" => UserKey::Float(self.double("double key")?),
            "S" => {
                let raw = self.len_raw("string key")?;
                UserKey::String(self.utf8(raw, line, "string key")?)
            }
            "X" => {
                let raw = self.len_b64("string key")?;
                UserKey::String(self.utf8(raw, line, "string key")?)
            }
            "B" => UserKey::Blob(self.len_b64("blob key")?),
            "B!" => UserKey::Blob(self.len_raw("blob key")?),
            other => return Err(self.bad(format!("unknown key type {other:?}"))),
        })
    }

    fn bin(&mut self) -> Res<Bin> {
        let line = self.line;
        if self.peek()? != Some(b'-') {
            if self.peek()?.is_none() {
                return Err(self.err(AsbErrorKind::Truncated("bin line")));
            }
            return Err(self.bad("expected a '- ' bin line (fewer bins than '+ b' said)"));
        }
        self.expect(b'-', "bin line")?;
        self.expect(b' ', "bin line")?;
        let letter = self.byte("bin type")?;
        let compact = if self.peek()? == Some(b'!') {
            self.byte("bin type")?;
            true
        } else {
            false
        };
        self.expect(b' ', "bin line")?;
        let name = self.name("bin name")?;
        if compact && particle_of_letter(letter).is_none() {
            return Err(self.bad(format!("bin type {:?} has no compact form", letter as char)));
        }
        let value = match letter {
            b'N' => BinValue::Nil,
            b'Z' => {
                self.expect(b' ', "bool bin")?;
                match self.byte("bool bin")? {
                    b'T' => BinValue::Bool(true),
                    b'F' => BinValue::Bool(false),
                    b => return Err(self.bad(format!("bad bool value {:?}", b as char))),
                }
            }
            b'I' => {
                self.expect(b' ', "integer bin")?;
                BinValue::Int(self.number("integer bin value")?)
            }
            b'D' => {
                self.expect(b' ', "double bin")?;
                BinValue::Float(self.double("double bin value")?)
            }
            b'S' => {
                self.expect(b' ', "string bin")?;
                let raw = self.len_raw("string bin value")?;
                BinValue::String(self.utf8(raw, line, "string bin value")?)
            }
            b'X' => {
                self.expect(b' ', "string bin")?;
                let raw = self.len_b64("base64 string bin value")?;
                BinValue::String(self.utf8(raw, line, "string bin value")?)
            }
            b'G' => {
                self.expect(b' ', "geojson bin")?;
                let raw = self.len_raw("geojson bin value")?;
                BinValue::GeoJson(self.utf8(raw, line, "geojson bin value")?)
            }
            b'U' => return Err(self.bad("LDT bins ('- U') are not supported")),
            other => match particle_of_letter(other) {
                Some(particle_type) => {
                    self.expect(b' ', "bytes bin")?;
                    let bytes = if compact {
                        self.len_raw("bytes bin value")?
                    } else {
                        self.len_b64("bytes bin value")?
                    };
                    BinValue::Bytes { particle_type, bytes }
                }
                None => return Err(self.bad(format!("unknown bin type {:?}", other as char))),
            },
        };
        self.end_line("bin line")?;
        Ok(Bin { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8]) -> Result<Vec<Entry>, AsbError> {
        let mut r = AsbReader::new(bytes, "test.asb");
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    fn file_of(recs: &[Record], form: BytesForm) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out, "test", true);
        for r in recs {
            encode_record(&mut out, r, form);
        }
        out
    }

    fn every_type_record() -> Record {
        let bytes = |p: u8, b: &[u8]| BinValue::Bytes {
            particle_type: p,
            bytes: b.to_vec(),
        };
        Record {
            key: Some(UserKey::String("user key\nwith LF".into())),
            namespace: "test".into(),
            digest: [7; 20],
            set: Some("my set\\x".into()),
            generation: 65535,
            expiration: 123_456_789,
            bins: vec![
                Bin {
                    name: "nil".into(),
                    value: BinValue::Nil,
                },
                Bin {
                    name: "t".into(),
                    value: BinValue::Bool(true),
                },
                Bin {
                    name: "f".into(),
                    value: BinValue::Bool(false),
                },
                Bin {
                    name: "i".into(),
                    value: BinValue::Int(i64::MIN),
                },
                Bin {
                    name: "d".into(),
                    value: BinValue::Float(0.1),
                },
                Bin {
                    name: "nan".into(),
                    value: BinValue::Float(f64::NAN),
                },
                Bin {
                    name: "inf".into(),
                    value: BinValue::Float(f64::NEG_INFINITY),
                },
                Bin {
                    name: "s p a c e".into(),
                    value: BinValue::String("a b\n\\c\0".into()),
                },
                Bin {
                    name: "empty".into(),
                    value: BinValue::String(String::new()),
                },
                Bin {
                    name: "nl\nname".into(),
                    value: BinValue::GeoJson(r#"{"type":"Point","coordinates":[1,2]}"#.into()),
                },
                Bin {
                    name: "b\\".into(),
                    value: bytes(4, b"\0\n\xff raw"),
                },
                Bin {
                    name: "j".into(),
                    value: bytes(7, b"java"),
                },
                Bin {
                    name: "c".into(),
                    value: bytes(8, b""),
                },
                Bin {
                    name: "p".into(),
                    value: bytes(9, b"py"),
                },
                Bin {
                    name: "r".into(),
                    value: bytes(10, b"rb"),
                },
                Bin {
                    name: "h".into(),
                    value: bytes(11, b"php"),
                },
                Bin {
                    name: "e".into(),
                    value: bytes(12, b"erl"),
                },
                Bin {
                    name: "hll".into(),
                    value: bytes(18, &[0, 1, 2, 3]),
                },
                Bin {
                    name: "map".into(),
                    value: bytes(19, &[0x81, 0xa2, 3, b'k', 1]),
                },
                Bin {
                    name: "list".into(),
                    value: bytes(20, &[0x92, 1, 0xa2, 3, b'x']),
                },
            ],
        }
    }

    /// NaN != NaN: compare floats by bits.
    fn same(a: &Record, b: &Record) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn round_trip_every_bin_type_both_forms() {
        let mut recs = vec![every_type_record()];
        for (i, key) in [
            None,
            Some(UserKey::Int(-5)),
            Some(UserKey::Float(-1.5e-300)),
            Some(UserKey::Blob(vec![0, b'\n', 255])),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = every_type_record();
            r.key = key;
            r.set = if i % 2 == 0 { None } else { Some("s".into()) };
            r.expiration = 0;
            r.bins.truncate(i);
            recs.push(r);
        }
        for form in [BytesForm::Base64, BytesForm::Compact] {
            let file = file_of(&recs, form);
            let entries = read_all(&file).unwrap();
            assert_eq!(entries.len(), recs.len());
            for (e, r) in entries.iter().zip(&recs) {
                let Entry::Record(got) = e else {
                    panic!("not a record: {e:?}")
                };
                assert!(same(got, r), "{form:?}\n got {got:?}\nwant {r:?}");
            }
        }
    }

    #[test]
    fn exact_bytes_of_a_record() {
        let rec = Record {
            key: Some(UserKey::Int(1)),
            namespace: "test".into(),
            digest: [0; 20],
            set: Some("a b".into()),
            generation: 2,
            expiration: 0,
            bins: vec![
                Bin {
                    name: "x y".into(),
                    value: BinValue::String("v w".into()),
                },
                Bin {
                    name: "b".into(),
                    value: BinValue::Bytes {
                        particle_type: 4,
                        bytes: b"ab".to_vec(),
                    },
                },
                Bin {
                    name: "d".into(),
                    value: BinValue::Float(1.5),
                },
            ],
        };
        let mut out = Vec::new();
        encode_record(&mut out, &rec, BytesForm::Base64);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+ k I 1\n+ n test\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ s a\\ b\n+ g 2\n+ t 0\n+ b 3\n\
             - S x\\ y 3 v w\n- B b 4 YWI=\n- D d 1.5\n"
        );
    }

    #[test]
    fn g17_matches_printf() {
        // Values checked against C printf("%.17g").
        let cases: [(f64, &str); 12] = [
            (0.1, "0.10000000000000001"),
            (1.5, "1.5"),
            (100.0, "100"),
            (1e17, "1e+17"),
            (1.0e16, "10000000000000000"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1.0000000000000001e-05"),
            (-2.5, "-2.5"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "4.9406564584124654e-324"),
        ];
        for (v, want) in cases {
            assert_eq!(format_g17(v), want, "{v:e}");
            assert_eq!(want.parse::<f64>().unwrap().to_bits(), v.to_bits());
        }
        assert_eq!(format_g17(f64::INFINITY), "inf");
        assert_eq!(format_g17(-0.0), "-0");
    }

    #[test]
    fn spec_example_parses() {
        let file = b"Version 3.1\n# namespace test\n# first-file\n\
* i test test-set int-index N 1 int-bin N\n\
* i test test-set string-index N 1 string-bin S\n\
* u L test.lua 27 -- just an empty Lua file\n\n\n\
+ n test\n+ d q+LsiGs1gD9duJDbzQSXytajtCY=\n+ s test-set\n+ g 1\n+ t 0\n+ b 2\n\
- I int-bin 12345\n- S string-bin 5 abcde\n";
        let mut r = AsbReader::new(&file[..], "example.asb");
        let mut entries = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            entries.push(e);
        }
        assert_eq!(r.namespace(), Some("test"));
        assert!(r.is_first_file());
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[0],
            Entry::Index(b"* i test test-set int-index N 1 int-bin N".to_vec())
        );
        assert_eq!(
            entries[2],
            Entry::Udf {
                name: "test.lua".into(),
                content: b"-- just an empty Lua file\n\n".to_vec()
            }
        );
        let Entry::Record(rec) = &entries[3] else { panic!() };
        assert_eq!(rec.namespace, "test");
        assert_eq!(rec.set.as_deref(), Some("test-set"));
        assert_eq!(rec.generation, 1);
        assert_eq!(rec.expiration, 0);
        assert_eq!(B64.encode(rec.digest), "q+LsiGs1gD9duJDbzQSXytajtCY=");
        assert_eq!(
            rec.bins,
            vec![
                Bin {
                    name: "int-bin".into(),
                    value: BinValue::Int(12345)
                },
                Bin {
                    name: "string-bin".into(),
                    value: BinValue::String("abcde".into())
                },
            ]
        );
    }

    #[test]
    fn no_meta_lines_and_version_3_0_are_accepted() {
        let file = b"Version 3.0\n+ n ns\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 0\n+ t 5\n+ b 1\n- X s 4 YWI=\n";
        let e = read_all(file).unwrap();
        let Entry::Record(r) = &e[0] else { panic!() };
        assert_eq!(r.bins[0].value, BinValue::String("ab".into()));
        assert_eq!(r.set, None);
    }

    fn err_of(file: &[u8]) -> AsbError {
        read_all(file).expect_err("must fail")
    }

    const GOOD: &[u8] = b"Version 3.1\n# namespace test\n\
+ n test\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 2\n- S s 3 a\nb\n- I i 7\n\
+ n test\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 1\n- I i 8\n";

    #[test]
    fn good_file_parses() {
        assert_eq!(read_all(GOOD).unwrap().len(), 2);
    }

    #[test]
    fn wrong_version_is_line_1() {
        let e = err_of(b"Version 4.0\n");
        assert_eq!(e.line, 1);
        assert!(matches!(e.kind, AsbErrorKind::Version(_)), "{e}");
        assert!(e.to_string().starts_with("test.asb:1: unsupported version"), "{e}");
        let e = err_of(b"Version 3.1");
        assert_eq!(e.line, 1);
        let e = err_of(b"");
        assert!(matches!(e.kind, AsbErrorKind::Truncated(_)), "{e}");
    }

    #[test]
    fn truncation_anywhere_is_an_error_with_the_line() {
        // Every strict prefix that does not end on a record boundary must fail; the line is the
        // line of the cut (1 + LFs before it).
        let second_record = GOOD.windows(9).rposition(|w| w == b"\n+ n test").unwrap() + 1;
        let header_end = b"Version 3.1\n# namespace test\n".len();
        for cut in 1..GOOD.len() {
            let prefix = &GOOD[..cut];
            let clean = cut == VERSION_LINE.len() || cut == header_end || cut == second_record || cut == GOOD.len();
            let res = read_all(prefix);
            if clean {
                assert!(res.is_ok(), "cut {cut}: {:?}", res.err());
                continue;
            }
            let e = res.expect_err(&format!("cut at {cut} must fail"));
            let want_line = 1 + prefix.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(e.line, want_line, "cut {cut}: {e}");
        }
    }

    #[test]
    fn corrupt_lines_name_their_line() {
        let cases: [(&[u8], u64, &str); 9] = [
            (b"Version 3.1\n# nope x\n", 2, "unknown meta keyword"),
            (b"Version 3.1\nhello\n", 2, "line starts with 'h'"),
            (b"Version 3.1\n+ n t\n+ d AAAA\n", 3, "bad digest"),
            (b"Version 3.1\n+ n t\n+ g 1\n", 3, "expected '+ d'"),
            (
                b"Version 3.1\n+ n t\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 70000\n",
                4,
                "bad generation",
            ),
            (
                b"Version 3.1\n+ n t\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 1\n- Q x 1\n",
                7,
                "unknown bin type",
            ),
            (
                b"Version 3.1\n+ n t\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 2\n- I x 1\n+ n t\n",
                8,
                "fewer bins",
            ),
            (
                b"Version 3.1\n+ n t\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 1\n- I x 1z\n",
                7,
                "bad integer",
            ),
            (
                b"Version 3.1\n+ n t\n+ d AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n+ g 1\n+ t 0\n+ b 1\n- S x 3 a\nbc\n",
                8,
                "expected '\\n'",
            ),
        ];
        for (file, line, msg) in cases {
            let e = err_of(file);
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(msg), "{e} should contain {msg:?}");
            assert!(e.to_string().starts_with(&format!("test.asb:{line}: ")), "{e}");
        }
    }

    fn arb_name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z \\\\\n\\-_.]{1,15}").unwrap()
    }

    fn arb_value() -> impl Strategy<Value = BinValue> {
        prop_oneof![
            Just(BinValue::Nil),
            any::<bool>().prop_map(BinValue::Bool),
            any::<i64>().prop_map(BinValue::Int),
            any::<f64>().prop_map(BinValue::Float),
            any::<String>().prop_map(BinValue::String),
            any::<String>().prop_map(BinValue::GeoJson),
            (
                prop::sample::select(BYTES_TYPES.map(|(_, p)| p).to_vec()),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(particle_type, bytes)| BinValue::Bytes { particle_type, bytes }),
        ]
    }

    fn arb_key() -> impl Strategy<Value = Option<UserKey>> {
        prop_oneof![
            Just(None),
            any::<i64>().prop_map(|i| Some(UserKey::Int(i))),
            any::<f64>().prop_map(|f| Some(UserKey::Float(f))),
            any::<String>().prop_map(|s| Some(UserKey::String(s))),
            prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| Some(UserKey::Blob(b))),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            arb_key(),
            arb_name(),
            any::<[u8; 20]>(),
            prop::option::of(arb_name()),
            any::<u16>(),
            any::<u32>(),
            prop::collection::vec((arb_name(), arb_value()), 0..8),
        )
            .prop_map(|(key, namespace, digest, set, generation, expiration, bins)| Record {
                key,
                namespace,
                digest,
                set,
                generation,
                expiration,
                bins: bins.into_iter().map(|(name, value)| Bin { name, value }).collect(),
            })
    }

    proptest! {
        #[test]
        fn proptest_round_trip(recs in prop::collection::vec(arb_record(), 0..6), compact in any::<bool>()) {
            let form = if compact { BytesForm::Compact } else { BytesForm::Base64 };
            let file = file_of(&recs, form);
            let entries = read_all(&file).unwrap();
            prop_assert_eq!(entries.len(), recs.len());
            for (e, r) in entries.iter().zip(&recs) {
                let Entry::Record(got) = e else { panic!() };
                prop_assert!(same(got, r), "got {:?}\nwant {:?}", got, r);
            }
        }

        /// Whatever bytes follow a valid header, the reader returns entries or an error naming a
        /// line inside the file; it never panics.
        #[test]
        fn proptest_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut file = b"Version 3.1\n".to_vec();
            file.extend_from_slice(&tail);
            if let Err(e) = read_all(&file) {
                let lines = 1 + file.iter().filter(|&&b| b == b'\n').count() as u64;
                prop_assert!(e.line >= 1 && e.line <= lines, "{}", e);
            }
        }
    }
}
