//! Compressed and encrypted backup files (`--compress zstd`, `--encrypt aes256`): Bolide's own
//! chunked framing around the .asb text. **Not byte-compatible with asbackup's** compressed or
//! encrypted files; a plain backup (neither flag) stays a plain .asb file that asrestore reads.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! header   magic "BOLIDEBK" (8) | version u8 = 1 | flags u8 (0x01 zstd, 0x02 aes-256-gcm) | 0 u16
//!          if encrypted: salt [16] (random per file) | key check [32]
//! chunk*   payload_len u32 | chunk flags u8 (0x01 final) | if encrypted: nonce [12] (random)
//!          | payload [payload_len]
//! ```
//!
//! A chunk holds at most [`CHUNK_PLAIN_BYTES`] of .asb text. Its payload is that text, zstd
//! compressed (one zstd frame with its content checksum) when the file is compressed, then
//! AES-256-GCM encrypted (ciphertext and 16-byte tag) when it is encrypted, with the associated
//! data `chunk index u64 | chunk flags u8`, so chunks cannot be reordered, dropped or have their
//! final flag changed without the tag failing. Exactly the last chunk carries the final flag
//! (possibly with an empty payload text): a file cut at a chunk boundary is reported as
//! truncated, never read as a shorter backup.
//!
//! # Keys
//!
//! The key file's bytes, whatever they are (e.g. 32 random bytes, or a PEM file), are hashed
//! with SHA-256 into the master key. Each file has its own key,
//! `HMAC-SHA-256(master, "bolide-backup file key v1" | salt)`, and its header carries the key
//! check `HMAC-SHA-256(file key, "bolide-backup key check v1")`, so a wrong key is detected when
//! the file is opened, before any record is read (restore checks every file of a chain before
//! it writes anything). Random 96-bit nonces under a per-file key: a resumed backup that appends
//! chunks after a cut never reuses a nonce.
//!
//! # Resume
//!
//! [`FileWriter::flush`] ends the current chunk, so the length recorded in a resume state is
//! always a chunk boundary; [`seal_truncated`] appends the final chunk to a file cut back there.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest as _, Sha256};

/// The first 8 bytes of a framed file.
pub const MAGIC: &[u8; 8] = b"BOLIDEBK";
/// The framing version this code writes and reads.
pub const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 0x01;
const FLAG_AES256_GCM: u8 = 0x02;
const CHUNK_FINAL: u8 = 0x01;
/// Most .asb text in one chunk, bytes.
pub const CHUNK_PLAIN_BYTES: usize = 1 << 20;
/// Largest payload a reader accepts: a chunk's text, zstd's worst-case growth, the GCM tag.
pub const MAX_PAYLOAD_BYTES: usize = CHUNK_PLAIN_BYTES + (CHUNK_PLAIN_BYTES >> 7) + 4096;
const SALT_BYTES: usize = 16;
const CHECK_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const CHUNK_HEADER_BYTES: usize = 5;
/// zstd level of `--compress zstd`.
pub const ZSTD_LEVEL: i32 = 3;

type HmacSha256 = Hmac<Sha256>;

/// The master key of `--encryption-key-file`: SHA-256 of the file's bytes.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads a key file.
    ///
    /// # Errors
    /// The file cannot be read, or is empty.
    pub fn load(path: &Path) -> Result<MasterKey, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("read key file {}: {e}", path.display()))?;
        if bytes.is_empty() {
            return Err(format!("key file {} is empty", path.display()));
        }
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// The master key of these key-file bytes.
    pub fn from_bytes(bytes: &[u8]) -> MasterKey {
        MasterKey(Sha256::digest(bytes).into())
    }

    fn file_key(&self, salt: &[u8; SALT_BYTES]) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"bolide-backup file key v1");
        mac.update(salt);
        mac.finalize().into_bytes().into()
    }
}

fn key_check_mac(file_key: &[u8; 32]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(file_key).expect("HMAC takes any key length");
    mac.update(b"bolide-backup key check v1");
    mac
}

/// How backup files are written: plain .asb, or framed with zstd and/or AES-256-GCM.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    pub zstd: bool,
    pub key: Option<MasterKey>,
}

impl Codec {
    /// Plain .asb (asbackup-compatible).
    pub fn is_plain(&self) -> bool {
        !self.zstd && self.key.is_none()
    }

    /// From `--compress` / `--encrypt` / `--encryption-key-file` (asbackup's spellings;
    /// `none` allowed).
    ///
    /// # Errors
    /// An unknown method, `--encrypt` without a key file or the reverse, an unreadable key file.
    pub fn from_flags(compress: Option<&str>, encrypt: Option<&str>, key_file: Option<&Path>) -> Result<Codec, String> {
        let zstd = match compress.map(str::to_ascii_lowercase).as_deref() {
            None | Some("none") => false,
            Some("zstd") => true,
            Some(other) => return Err(format!("--compress {other:?}: only zstd is supported")),
        };
        let encrypt = match encrypt.map(str::to_ascii_lowercase).as_deref() {
            None | Some("none") => false,
            Some("aes256") => true,
            Some(other) => return Err(format!("--encrypt {other:?}: only aes256 is supported")),
        };
        let key = match (encrypt, key_file) {
            (true, Some(path)) => Some(MasterKey::load(path)?),
            (true, None) => return Err("--encrypt aes256 needs --encryption-key-file".into()),
            (false, Some(_)) => return Err("--encryption-key-file needs --encrypt aes256".into()),
            (false, None) => None,
        };
        Ok(Codec { zstd, key })
    }
}

struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    fn seal(&self, index: u64, flags: u8, plain: &[u8]) -> ([u8; NONCE_BYTES], Vec<u8>) {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = chunk_aad(index, flags);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
            .expect("AES-GCM encryption of a bounded chunk cannot fail");
        (nonce, ct)
    }
}

fn chunk_aad(index: u64, flags: u8) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..8].copy_from_slice(&index.to_le_bytes());
    aad[8] = flags;
    aad
}

/// Writes one backup file: plain, or framed (see the module doc). `bytes_out` is the file's
/// length once flushed.
pub enum FileWriter<W: Write> {
    Plain { inner: W, bytes_out: u64 },
    Framed(Box<FrameWriter<W>>),
}

/// The framed variant of [`FileWriter`].
pub struct FrameWriter<W: Write> {
    inner: W,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    sealer: Option<Sealer>,
    buf: Vec<u8>,
    index: u64,
    bytes_out: u64,
}

impl<W: Write> FileWriter<W> {
    /// Starts a file on `inner` (writes the header of a framed one).
    ///
    /// # Errors
    /// Writing the header fails.
    pub fn new(mut inner: W, codec: &Codec) -> io::Result<FileWriter<W>> {
        if codec.is_plain() {
            return Ok(FileWriter::Plain { inner, bytes_out: 0 });
        }
        let mut header = Vec::with_capacity(12 + SALT_BYTES + CHECK_BYTES);
        header.extend_from_slice(MAGIC);
        let flags = if codec.zstd { FLAG_ZSTD } else { 0 } | if codec.key.is_some() { FLAG_AES256_GCM } else { 0 };
        header.extend_from_slice(&[VERSION, flags, 0, 0]);
        let sealer = match &codec.key {
            Some(master) => {
                let mut salt = [0u8; SALT_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                let file_key = master.file_key(&salt);
                header.extend_from_slice(&salt);
                header.extend_from_slice(&key_check_mac(&file_key).finalize().into_bytes());
                Some(Sealer {
                    cipher: Aes256Gcm::new_from_slice(&file_key).expect("32-byte key"),
                })
            }
            None => None,
        };
        let zstd = if codec.zstd {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            c.include_checksum(true)?;
            Some(c)
        } else {
            None
        };
        inner.write_all(&header)?;
        Ok(FileWriter::Framed(Box::new(FrameWriter {
            inner,
            zstd,
            sealer,
            buf: Vec::with_capacity(CHUNK_PLAIN_BYTES),
            index: 0,
            bytes_out: header.len() as u64,
        })))
    }

    /// Bytes handed to the inner writer so far (after [`flush`](Write::flush): the file length).
    pub fn bytes_out(&self) -> u64 {
        match self {
            FileWriter::Plain { bytes_out, .. } => *bytes_out,
            FileWriter::Framed(f) => f.bytes_out,
        }
    }

    /// Ends the file (a framed one with its final chunk), flushes it, returns the inner writer.
    ///
    /// # Errors
    /// A write fails.
    pub fn finish(self) -> io::Result<W> {
        match self {
            FileWriter::Plain { mut inner, .. } => {
                inner.flush()?;
                Ok(inner)
            }
            FileWriter::Framed(f) => {
                let mut f = *f;
                f.emit_all(false)?;
                f.emit(true)?;
                f.inner.flush()?;
                Ok(f.inner)
            }
        }
    }
}

impl<W: Write> FrameWriter<W> {
    /// Writes the buffered text as chunks; with `final_chunk`, one chunk (the buffer must hold at
    /// most one chunk of text) with the final flag.
    fn emit(&mut self, final_chunk: bool) -> io::Result<()> {
        debug_assert!(self.buf.len() <= CHUNK_PLAIN_BYTES);
        let flags = if final_chunk { CHUNK_FINAL } else { 0 };
        let compressed;
        let text: &[u8] = match &mut self.zstd {
            Some(c) => {
                compressed = c.compress(&self.buf)?;
                &compressed
            }
            None => &self.buf,
        };
        let (nonce, payload) = match &self.sealer {
            Some(s) => {
                let (n, ct) = s.seal(self.index, flags, text);
                (Some(n), ct)
            }
            None => (None, text.to_vec()),
        };
        assert!(payload.len() <= MAX_PAYLOAD_BYTES, "chunk payload over its bound");
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4] = flags;
        self.inner.write_all(&head)?;
        if let Some(n) = nonce {
            self.inner.write_all(&n)?;
        }
        self.inner.write_all(&payload)?;
        self.bytes_out += (CHUNK_HEADER_BYTES + nonce.map_or(0, |n| n.len()) + payload.len()) as u64;
        self.index += 1;
        self.buf.clear();
        Ok(())
    }

    /// Emits every full chunk; with `all`, also a partial one (not final).
    fn emit_all(&mut self, all: bool) -> io::Result<()> {
        while self.buf.len() > CHUNK_PLAIN_BYTES {
            let rest = self.buf.split_off(CHUNK_PLAIN_BYTES);
            self.emit(false)?;
            self.buf = rest;
        }
        if self.buf.len() == CHUNK_PLAIN_BYTES || (all && !self.buf.is_empty()) {
            self.emit(false)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for FileWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            FileWriter::Plain { inner, bytes_out } => {
                let n = inner.write(data)?;
                *bytes_out += n as u64;
                Ok(n)
            }
            FileWriter::Framed(f) => {
                f.buf.extend_from_slice(data);
                if f.buf.len() >= CHUNK_PLAIN_BYTES {
                    f.emit_all(false)?;
                }
                Ok(data.len())
            }
        }
    }

    /// Ends the current chunk (a framed file) and flushes the inner writer: afterwards
    /// [`bytes_out`](FileWriter::bytes_out) is a chunk boundary.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            FileWriter::Plain { inner, .. } => inner.flush(),
            FileWriter::Framed(f) => {
                f.emit_all(true)?;
                f.inner.flush()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What a framed file's header says.
struct Header {
    zstd: bool,
    cipher: Option<Aes256Gcm>,
    len: u64,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {msg}"))
}

/// Reads the rest of a framed header (after the magic) and checks the key.
fn read_header(input: &mut impl Read, name: &str, key: Option<&MasterKey>) -> io::Result<Header> {
    let mut fixed = [0u8; 4];
    read_full(input, &mut fixed).map_err(|e| truncated_or(e, name, "its header"))?;
    let [version, flags, r0, r1] = fixed;
    if version != VERSION {
        return Err(bad(
            name,
            format!("framing version {version}, this tool reads {VERSION}"),
        ));
    }
    if flags & !(FLAG_ZSTD | FLAG_AES256_GCM) != 0 || r0 != 0 || r1 != 0 {
        return Err(bad(
            name,
            format!("unknown header flags {flags:#04x} (corrupt header?)"),
        ));
    }
    let mut len = (MAGIC.len() + 4) as u64;
    let cipher = if flags & FLAG_AES256_GCM != 0 {
        let mut salt = [0u8; SALT_BYTES];
        let mut check = [0u8; CHECK_BYTES];
        read_full(input, &mut salt).map_err(|e| truncated_or(e, name, "its header"))?;
        read_full(input, &mut check).map_err(|e| truncated_or(e, name, "its header"))?;
        len += (SALT_BYTES + CHECK_BYTES) as u64;
        let Some(master) = key else {
            return Err(bad(name, "is encrypted (aes256): give --encryption-key-file"));
        };
        let file_key = master.file_key(&salt);
        if key_check_mac(&file_key).verify_slice(&check).is_err() {
            return Err(bad(
                name,
                "wrong encryption key (the key check in the file header does not match)",
            ));
        }
        Some(Aes256Gcm::new_from_slice(&file_key).expect("32-byte key"))
    } else {
        None
    };
    Ok(Header {
        zstd: flags & FLAG_ZSTD != 0,
        cipher,
        len,
    })
}

/// `read_exact` that tells a clean EOF before the first byte (`Ok(false)`) from a short read.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    if read_some(input, buf)? {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn truncated_or(e: io::Error, name: &str, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        bad(name, format!("truncated in {what}"))
    } else {
        e
    }
}

/// Reads a framed file's .asb text, chunk by chunk, verifying each (see the module doc).
pub struct FrameReader<R> {
    input: R,
    name: String,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    cipher: Option<Aes256Gcm>,
    index: u64,
    offset: u64,
    text: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> FrameReader<R> {
    fn next_chunk(&mut self) -> io::Result<()> {
        let at = self.offset;
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        let more = read_some(&mut self.input, &mut head)
            .map_err(|e| truncated_or(e, &self.name, &format!("chunk {} (byte {at})", self.index)))?;
        if !more {
            return Err(bad(
                &self.name,
                format!(
                    "truncated: ends after chunk {} (byte {at}) without its final chunk",
                    self.index.saturating_sub(1)
                ),
            ));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let flags = head[4];
        if len > MAX_PAYLOAD_BYTES || flags & !CHUNK_FINAL != 0 {
            return Err(bad(
                &self.name,
                format!(
                    "chunk {} (byte {at}): bad chunk header (length {len}, flags {flags:#04x}): corrupt",
                    self.index
                ),
            ));
        }
        let mut nonce = [0u8; NONCE_BYTES];
        if self.cipher.is_some() {
            read_full(&mut self.input, &mut nonce)
                .map_err(|e| truncated_or(e, &self.name, &format!("chunk {} (byte {at})", self.index)))?;
        }
        let mut payload = vec![0u8; len];
        read_full(&mut self.input, &mut payload)
            .map_err(|e| truncated_or(e, &self.name, &format!("chunk {} (byte {at})", self.index)))?;
        self.offset += (CHUNK_HEADER_BYTES + if self.cipher.is_some() { NONCE_BYTES } else { 0 } + len) as u64;
        let text = match &self.cipher {
            Some(c) => c
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &payload,
                        aad: &chunk_aad(self.index, flags),
                    },
                )
                .map_err(|_| {
                    bad(
                        &self.name,
                        format!(
                            "chunk {} (byte {at}) fails authentication: the file is corrupt",
                            self.index
                        ),
                    )
                })?,
            None => payload,
        };
        self.text = match &mut self.zstd {
            Some(d) => d.decompress(&text, CHUNK_PLAIN_BYTES).map_err(|e| {
                bad(
                    &self.name,
                    format!("chunk {} (byte {at}): corrupt compressed data: {e}", self.index),
                )
            })?,
            None => text,
        };
        self.pos = 0;
        self.index += 1;
        if flags & CHUNK_FINAL != 0 {
            self.done = true;
            let mut extra = [0u8; 1];
            if read_some(&mut self.input, &mut extra)? {
                return Err(bad(
                    &self.name,
                    format!("data after the final chunk (byte {}): corrupt", self.offset),
                ));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.text.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.text.len() - self.pos);
        out[..n].copy_from_slice(&self.text[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Opens a backup input for the .asb reader: a framed file (by its magic) is checked (header,
/// key) and decoded; anything else is read as plain .asb text. `name` is used in errors.
///
/// # Errors
/// Reading fails, the framed header is bad or truncated, the file is encrypted and no key was
/// given, or the key is wrong.
pub fn open_reader<'a>(
    mut input: Box<dyn Read + Send + 'a>,
    name: &str,
    key: Option<&MasterKey>,
) -> io::Result<Box<dyn BufRead + Send + 'a>> {
    let mut prefix = [0u8; 8];
    let mut got = 0;
    while got < prefix.len() {
        match input.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got == prefix.len() && &prefix == MAGIC {
        let header = read_header(&mut input, name, key)?;
        let zstd = if header.zstd {
            Some(zstd::bulk::Decompressor::new()?)
        } else {
            None
        };
        return Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            FrameReader {
                input,
                name: name.to_string(),
                zstd,
                cipher: header.cipher,
                index: 0,
                offset: header.len,
                text: Vec::new(),
                pos: 0,
                done: false,
            },
        )));
    }
    let prefix = prefix[..got].to_vec();
    Ok(Box::new(BufReader::with_capacity(
        1 << 20,
        io::Cursor::new(prefix).chain(input),
    )))
}

/// Checks a backup file's header without reading its records: a framed file's header and key
/// check (so that restore can refuse a wrong key before it writes anything). Returns whether
/// the file is framed.
///
/// # Errors
/// As [`open_reader`], naming the file.
pub fn check_file(path: &Path, key: Option<&MasterKey>) -> Result<bool, String> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| format!("open {name}: {e}"))?;
    check_reader(f, &name, key)
}

/// [`check_file`] over any reader (an object-store file); reads only the header.
///
/// # Errors
/// As [`open_reader`], naming the file `name`.
pub fn check_reader(mut f: impl Read, name: &str, key: Option<&MasterKey>) -> Result<bool, String> {
    let mut prefix = [0u8; 8];
    match read_some(&mut f, &mut prefix) {
        Ok(true) if &prefix == MAGIC => {
            read_header(&mut f, name, key).map_err(|e| e.to_string())?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(format!("read {name}: {e}")),
    }
}

/// Makes a framed file that a resume cut back to a chunk boundary whole again: walks its chunks
/// (checking the header and key) and appends an empty final chunk. A plain file is left as it is.
///
/// # Errors
/// The file cannot be read or written, its header or key is wrong, or a chunk header is bad or
/// cut.
pub fn seal_truncated(path: &Path, key: Option<&MasterKey>) -> Result<(), String> {
    let name = path.display().to_string();
    if !check_file(path, key)? {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {name}: {e}"))?;
    let file_len = f.metadata().map_err(|e| format!("stat {name}: {e}"))?.len();
    let mut r = BufReader::new(&mut f);
    let mut magic = [0u8; 8];
    read_full(&mut r, &mut magic).map_err(|e| format!("read {name}: {e}"))?;
    let header = read_header(&mut r, &name, key).map_err(|e| e.to_string())?;
    let mut at = header.len;
    let mut index = 0u64;
    while at < file_len {
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        read_full(&mut r, &mut head).map_err(|e| format!("{name}: chunk {index} (byte {at}): {e}"))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        if len as usize > MAX_PAYLOAD_BYTES || head[4] != 0 {
            return Err(format!(
                "{name}: chunk {index} (byte {at}): bad or final chunk header before the cut"
            ));
        }
        let skip = len + if header.cipher.is_some() { NONCE_BYTES as u64 } else { 0 };
        r.seek_relative(skip as i64).map_err(|e| format!("read {name}: {e}"))?;
        at += CHUNK_HEADER_BYTES as u64 + skip;
        index += 1;
    }
    if at != file_len {
        return Err(format!("{name}: the cut at byte {file_len} is inside a chunk"));
    }
    drop(r);
    f.seek(SeekFrom::End(0)).map_err(|e| format!("seek {name}: {e}"))?;
    let mut w = FrameWriter {
        inner: &mut f,
        zstd: if header.zstd {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?;
            c.include_checksum(true).map_err(|e| format!("zstd: {e}"))?;
            Some(c)
        } else {
            None
        },
        sealer: header.cipher.map(|cipher| Sealer { cipher }),
        buf: Vec::new(),
        index,
        bytes_out: at,
    };
    w.emit(true).map_err(|e| format!("write {name}: {e}"))?;
    f.sync_all().map_err(|e| format!("sync {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(zstd: bool, key: Option<&[u8]>) -> Codec {
        Codec {
            zstd,
            key: key.map(MasterKey::from_bytes),
        }
    }

    /// Writes `text` in pieces of `piece` bytes with a flush every `flush_every` pieces.
    fn write(codec: &Codec, text: &[u8], piece: usize, flush_every: usize) -> Vec<u8> {
        let mut w = FileWriter::new(Vec::new(), codec).unwrap();
        for (i, p) in text.chunks(piece).enumerate() {
            w.write_all(p).unwrap();
            if flush_every > 0 && i % flush_every == 0 {
                w.flush().unwrap();
                assert_eq!(
                    w.bytes_out(),
                    match &w {
                        FileWriter::Framed(f) => f.inner.len() as u64,
                        FileWriter::Plain { inner, .. } => inner.len() as u64,
                    }
                );
            }
        }
        w.finish().unwrap()
    }

    fn read(bytes: &[u8], key: Option<&[u8]>) -> io::Result<Vec<u8>> {
        let k = key.map(MasterKey::from_bytes);
        let mut r = open_reader(Box::new(bytes), "f.asb", k.as_ref())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"Version 3.1\n+ n test\n- I a 12345\n"[i % 33])
            .collect()
    }

    #[test]
    fn round_trips_every_codec_and_chunking() {
        let t = text(3 * CHUNK_PLAIN_BYTES + 12_345);
        for c in [
            codec(false, None),
            codec(true, None),
            codec(false, Some(b"k")),
            codec(true, Some(b"k")),
        ] {
            for (piece, flush_every) in [(7_000, 0), (100_000, 3), (5 * CHUNK_PLAIN_BYTES, 0)] {
                let file = write(&c, &t, piece, flush_every);
                assert_eq!(
                    read(&file, Some(b"k")).unwrap(),
                    t,
                    "zstd {} enc {}",
                    c.zstd,
                    c.key.is_some()
                );
                if c.is_plain() {
                    assert_eq!(file, t, "a plain file is the text itself");
                } else {
                    assert_eq!(&file[..8], MAGIC);
                }
            }
        }
        let empty = write(&codec(true, Some(b"k")), b"", 1, 0);
        assert_eq!(read(&empty, Some(b"k")).unwrap(), b"");
        // Compression compresses.
        assert!(write(&codec(true, None), &t, 7_000, 0).len() < t.len() / 10);
    }

    #[test]
    fn wrong_or_missing_key_fails_at_the_header() {
        let file = write(&codec(false, Some(b"right")), &text(1000), 100, 0);
        let e = read(&file, Some(b"wrong")).unwrap_err().to_string();
        assert!(e.contains("f.asb: wrong encryption key"), "{e}");
        let e = read(&file, None).unwrap_err().to_string();
        assert!(e.contains("give --encryption-key-file"), "{e}");
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        for c in [codec(true, None), codec(false, Some(b"k")), codec(true, Some(b"k"))] {
            let file = write(&c, &text(2 * CHUNK_PLAIN_BYTES + 100), 50_000, 5);
            // Every cut is an error, never a shorter text.
            for cut in (0..file.len()).step_by(file.len() / 97 + 1).skip(1) {
                assert!(read(&file[..cut], Some(b"k")).is_err(), "cut at {cut}");
            }
            // Any flipped byte past the magic is an error (header, chunk header, payload, tag).
            for at in (8..file.len()).step_by(file.len() / 89 + 1) {
                let mut bad = file.clone();
                bad[at] ^= 0x40;
                assert!(
                    read(&bad, Some(b"k")).is_err(),
                    "flip at {at} zstd {} enc {}",
                    c.zstd,
                    c.key.is_some()
                );
            }
            let mut longer = file.clone();
            longer.push(0);
            assert!(read(&longer, Some(b"k")).is_err());
        }
    }

    #[test]
    fn a_file_cut_at_a_flush_point_is_sealed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.asb");
        let t = text(300_000);
        for c in [codec(true, None), codec(true, Some(b"k"))] {
            let mut w = FileWriter::new(Vec::new(), &c).unwrap();
            w.write_all(&t[..100_000]).unwrap();
            w.flush().unwrap();
            let cut = w.bytes_out() as usize;
            w.write_all(&t[100_000..]).unwrap();
            let full = w.finish().unwrap();
            std::fs::write(&path, &full[..cut]).unwrap();
            assert!(read(&full[..cut], Some(b"k")).is_err(), "cut file is truncated");
            seal_truncated(&path, c.key.as_ref()).unwrap();
            assert_eq!(read(&std::fs::read(&path).unwrap(), Some(b"k")).unwrap(), &t[..100_000]);
            if c.key.is_some() {
                std::fs::write(&path, &full[..cut]).unwrap();
                let wrong = MasterKey::from_bytes(b"x");
                assert!(seal_truncated(&path, Some(&wrong)).is_err());
            }
        }
    }

    proptest::proptest! {
        /// The decoder never panics and never returns text from a damaged file: random bytes
        /// after a valid header (each codec), and random edits of a valid file, read to an error
        /// or to exactly the written text.
        #[test]
        fn proptest_garbage_and_edits_never_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            edits in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 0..4),
            which in 0usize..3,
        ) {
            let c = [codec(true, None), codec(false, Some(b"k")), codec(true, Some(b"k"))][which].clone();
            let header = write(&c, b"", 1, 0);
            let fixed = if c.key.is_some() { 12 + SALT_BYTES + CHECK_BYTES } else { 12 };
            let mut garbage = header[..fixed].to_vec();
            garbage.extend_from_slice(&tail);
            let _ = read(&garbage, Some(b"k"));

            let t = text(3000);
            let mut file = write(&c, &t, 500, 2);
            let mut changed = false;
            // Past the magic: a file without it is read as plain text, which the .asb reader
            // then rejects at its version line.
            for (at, x) in edits {
                let at = MAGIC.len() + at % (file.len() - MAGIC.len());
                changed |= x != 0;
                file[at] ^= x;
            }
            match read(&file, Some(b"k")) {
                Ok(got) => proptest::prop_assert!(got == t, "a damaged file read as different text"),
                Err(_) => proptest::prop_assert!(changed, "an intact file failed to read"),
            }
        }
    }
}
