//! Truncate cut-offs of one namespace and their durable file ("system metadata").
//!
//! `truncate:namespace=..;set=..[;lut=..]` and `truncate-namespace:namespace=..[;lut=..]` delete
//! every record of the set (or namespace) whose last-update time (LUT) is at or before a cut-off.
//! A [`TruncateTable`] holds the cut-offs: one for the namespace and one per set, each in
//! milliseconds since the Citrusleaf epoch (2010-01-01 UTC, [`crate::clock`]), 0 meaning "never
//! truncated". Cut-offs only move forward.
//!
//! Truncation removes index entries without writing tombstones, so older copies of a truncated
//! record stay in wblocks until defrag frees them and a cold start can find them again. The
//! table is what keeps them dead: it is saved ([`TruncateTable::save`]) **before** a truncate is
//! applied to the shards, and every start re-applies it
//! ([`crate::shard::Shard::reapply_truncate_table`]) and filters reads with
//! [`TruncateTable::covers`]. On Aerospike CE truncated records come back after a cold restart;
//! here they do not.
//!
//! File format (`docs/DISK_FORMAT.md`, "Truncate table"): TOML, written atomically (temporary
//! file, fsync, rename, directory fsync).

use crate::index::MAX_LUT_MS;
use crate::record::SET_NAME_MAX_BYTES;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `version` key of the file format this code writes and reads.
pub const TRUNCATE_FILE_VERSION: i64 = 1;

/// The greatest cut-off, ms since 2010-01-01 (in 2044): the LUT range ends at [`MAX_LUT_MS`] and
/// a write after a truncate needs a LUT above the cut-off
/// ([`crate::shard::Shard::set_lut_floor`]).
pub const MAX_CUTOFF_MS: u64 = MAX_LUT_MS - 2;

/// Unix nanoseconds (the `lut=` argument of the info commands, wire spec §2.2) to milliseconds
/// since the Citrusleaf epoch, rounded down; 0 for instants before 2010-01-01.
pub fn cl_ms_from_unix_ns(unix_ns: u64) -> u64 {
    (unix_ns / 1_000_000).saturating_sub(crate::clock::CITRUSLEAF_EPOCH_UNIX_S * 1000)
}

/// The truncate cut-offs of one namespace. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TruncateTable {
    /// Namespace cut-off, ms since 2010-01-01; 0 = never.
    namespace_lut_ms: u64,
    /// Set name (1..=63 arbitrary bytes) → cut-off, ms since 2010-01-01; never 0.
    sets: BTreeMap<Vec<u8>, u64>,
    /// Greatest of all cut-offs (0 when empty).
    max_cutoff_ms: u64,
}

/// Why the truncate table file could not be loaded or saved. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TruncateFileError {
    #[error("truncate table {}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file exists but is not a valid table; nothing is assumed about its contents.
    #[error("truncate table {}: malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// Saving failed at `step`; the previous file (if any) is left as it was.
    #[error("truncate table {}: cannot save ({step}): {source}", path.display())]
    Write {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
}

impl TruncateTable {
    /// An empty table: nothing truncated.
    pub fn new() -> TruncateTable {
        TruncateTable::default()
    }

    /// True when no cut-off is set.
    pub fn is_empty(&self) -> bool {
        self.max_cutoff_ms == 0
    }

    /// The namespace cut-off, ms since 2010-01-01; 0 = never truncated.
    pub fn namespace_lut_ms(&self) -> u64 {
        self.namespace_lut_ms
    }

    /// The cut-off of `set` alone (the namespace cut-off not included), ms since 2010-01-01;
    /// 0 = never truncated.
    pub fn set_cutoff_ms(&self, set: &[u8]) -> u64 {
        self.sets.get(set).copied().unwrap_or(0)
    }

    /// The greatest cut-off of the namespace and every set, ms since 2010-01-01; 0 when empty.
    /// A record whose LUT is above it is covered by nothing.
    pub fn max_cutoff_ms(&self) -> u64 {
        self.max_cutoff_ms
    }

    /// Every set with a cut-off, in byte order of the name: (name, cut-off ms since 2010).
    pub fn sets(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.sets.iter().map(|(k, v)| (k.as_slice(), *v))
    }

    /// Records a truncate of `set` (`None`: the whole namespace) at `cutoff_lut_ms` (ms since
    /// 2010-01-01). Cut-offs only move forward: an earlier or equal one changes nothing. A cut-off
    /// of 0 changes nothing. Returns whether the table changed (and must be saved).
    ///
    /// # Panics
    /// If `set` is empty or longer than [`SET_NAME_MAX_BYTES`], or `cutoff_lut_ms` is above
    /// [`MAX_CUTOFF_MS`] (callers refuse cut-offs in the future first).
    pub fn apply(&mut self, set: Option<&[u8]>, cutoff_lut_ms: u64) -> bool {
        assert!(
            cutoff_lut_ms <= MAX_CUTOFF_MS,
            "truncate cut-off {cutoff_lut_ms} ms is above the LUT range"
        );
        let slot = match set {
            None => &mut self.namespace_lut_ms,
            Some(name) => {
                assert!(
                    !name.is_empty() && name.len() <= SET_NAME_MAX_BYTES,
                    "truncate of a set name of {} bytes (1..={SET_NAME_MAX_BYTES})",
                    name.len()
                );
                if cutoff_lut_ms == 0 {
                    return false;
                }
                self.sets.entry(name.to_vec()).or_insert(0)
            }
        };
        if cutoff_lut_ms <= *slot {
            return false;
        }
        *slot = cutoff_lut_ms;
        self.max_cutoff_ms = self.max_cutoff_ms.max(cutoff_lut_ms);
        true
    }

    /// True when a record of `set` (empty: no set) last updated at `lut_ms` (ms since 2010) is
    /// truncated: its LUT is at or before the namespace cut-off or its set's cut-off.
    pub fn covers(&self, lut_ms: u64, set: &[u8]) -> bool {
        if !self.may_cover(lut_ms) {
            return false;
        }
        self.covers_namespace(lut_ms) || (!set.is_empty() && at_or_before(lut_ms, self.set_cutoff_ms(set)))
    }

    /// True when a record last updated at `lut_ms` is truncated whatever its set.
    pub fn covers_namespace(&self, lut_ms: u64) -> bool {
        at_or_before(lut_ms, self.namespace_lut_ms)
    }

    /// True when some record last updated at `lut_ms` could be truncated (its LUT is at or before
    /// the greatest cut-off): the caller must then ask [`covers`](Self::covers) with the record's
    /// set. False means no set's record with that LUT is truncated; cheap (one comparison).
    pub fn may_cover(&self, lut_ms: u64) -> bool {
        at_or_before(lut_ms, self.max_cutoff_ms)
    }

    /// Loads the table saved at `path`. A missing file is an empty table; a leftover
    /// `<path>.tmp` of an interrupted save is ignored.
    ///
    /// # Errors
    /// `Read` when the file exists but cannot be read; `Malformed` when it is not a valid table
    /// of a version this code knows (the reason names the key). Never an empty table instead.
    pub fn load(path: &Path) -> Result<TruncateTable, TruncateFileError> {
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TruncateTable::new()),
            Err(source) => {
                return Err(TruncateFileError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        parse(&text).map_err(|reason| TruncateFileError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Saves the table at `path` atomically: writes `<path>.tmp`, fsyncs it, renames it over
    /// `path` and fsyncs the directory. After a crash at any point `path` holds either the old
    /// or the new table. Blocks (a few small syscalls and two fsyncs).
    ///
    /// # Errors
    /// `Write`, naming the step that failed; `path` is then unchanged.
    pub fn save(&self, path: &Path) -> Result<(), TruncateFileError> {
        let err = |step: &'static str| {
            move |source| TruncateFileError::Write {
                path: path.to_path_buf(),
                step,
                source,
            }
        };
        let text = self.to_toml();
        let tmp = tmp_path(path);
        let mut f = std::fs::File::create(&tmp).map_err(err("create temporary file"))?;
        f.write_all(text.as_bytes()).map_err(err("write temporary file"))?;
        f.sync_all().map_err(err("fsync temporary file"))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err("rename over the table"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory"))?;
        Ok(())
    }

    /// The file contents [`save`](Self::save) writes.
    pub fn to_toml(&self) -> String {
        let file = FileV1 {
            version: TRUNCATE_FILE_VERSION,
            namespace_lut_ms: self.namespace_lut_ms as i64,
            set: self
                .sets
                .iter()
                .map(|(name, &lut)| {
                    let readable = std::str::from_utf8(name)
                        .ok()
                        .filter(|s| !s.chars().any(char::is_control));
                    SetEntry {
                        name: readable.map(str::to_owned),
                        name_hex: if readable.is_some() { None } else { Some(hex(name)) },
                        lut_ms: lut as i64,
                    }
                })
                .collect(),
        };
        let body = toml::to_string(&file).expect("the truncate table always serialises");
        format!(
            "# Bolide truncate table (one namespace). Written atomically by the node; do not edit while it runs.\n\
             # lut_ms: cut-off in ms since 2010-01-01 UTC; records with LUT <= cut-off are truncated.\n\
             # A set is named by `name` (UTF-8) or, when its bytes are not printable UTF-8, `name_hex`.\n\
             {body}"
        )
    }
}

fn at_or_before(lut_ms: u64, cutoff_ms: u64) -> bool {
    cutoff_ms != 0 && lut_ms <= cutoff_ms
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The file layout, version 1. TOML integers are signed 64-bit, hence `i64`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: i64,
    namespace_lut_ms: i64,
    #[serde(default)]
    set: Vec<SetEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_hex: Option<String>,
    lut_ms: i64,
}

fn parse(bytes: &[u8]) -> Result<TruncateTable, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let raw: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
    match raw.get("version") {
        None => return Err("no `version` key".into()),
        Some(toml::Value::Integer(TRUNCATE_FILE_VERSION)) => {}
        Some(v) => {
            return Err(format!(
                "unsupported version {v} (this node reads {TRUNCATE_FILE_VERSION})"
            ))
        }
    }
    let file: FileV1 = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let lut = |what: &str, v: i64, allow_zero: bool| -> Result<u64, String> {
        if v < 0 || v as u64 > MAX_CUTOFF_MS || (v == 0 && !allow_zero) {
            return Err(format!(
                "{what} = {v} is out of range ({}..={MAX_CUTOFF_MS})",
                !allow_zero as u8
            ));
        }
        Ok(v as u64)
    };
    let mut t = TruncateTable::new();
    t.apply(None, lut("namespace_lut_ms", file.namespace_lut_ms, true)?);
    for (i, s) in file.set.iter().enumerate() {
        let name = match (&s.name, &s.name_hex) {
            (Some(n), None) => n.as_bytes().to_vec(),
            (None, Some(h)) => unhex(h).ok_or_else(|| format!("set #{i}: name_hex {h:?} is not hex"))?,
            _ => return Err(format!("set #{i}: needs exactly one of `name` and `name_hex`")),
        };
        if name.is_empty() || name.len() > SET_NAME_MAX_BYTES {
            return Err(format!(
                "set #{i}: name of {} bytes (1..={SET_NAME_MAX_BYTES})",
                name.len()
            ));
        }
        if t.sets.contains_key(&name) {
            return Err(format!("set #{i}: {name:?} appears twice"));
        }
        let cutoff = lut(&format!("set #{i} lut_ms"), s.lut_ms, false)?;
        t.apply(Some(&name), cutoff);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TruncateTable {
        let mut t = TruncateTable::new();
        assert!(t.apply(None, 1_000));
        assert!(t.apply(Some(b"demo"), 5_000));
        assert!(t.apply(Some(b"\x00\xff bin\n"), 7_000));
        assert!(t.apply(Some("café".as_bytes()), 3_000));
        assert!(t.apply(Some(b"with \"quotes\" = ; [x]"), 2_000));
        assert!(t.apply(Some(&[b'z'; SET_NAME_MAX_BYTES]), 4_000));
        t
    }

    #[test]
    fn cutoffs_are_monotonic() {
        let mut t = TruncateTable::new();
        assert!(t.is_empty());
        assert!(!t.apply(None, 0), "a cut-off of 0 changes nothing");
        assert!(!t.apply(Some(b"s"), 0));
        assert!(t.is_empty());
        assert!(t.apply(None, 100));
        assert!(!t.apply(None, 100), "equal cut-off changes nothing");
        assert!(!t.apply(None, 50), "a cut-off never moves back");
        assert_eq!(t.namespace_lut_ms(), 100);
        assert!(
            t.apply(Some(b"s"), 80),
            "a set keeps its own cut-off even under the namespace's"
        );
        assert!(!t.apply(Some(b"s"), 70));
        assert!(t.apply(Some(b"s"), 300));
        assert_eq!(t.set_cutoff_ms(b"s"), 300);
        assert_eq!(t.set_cutoff_ms(b"other"), 0);
        assert_eq!(t.max_cutoff_ms(), 300);
        assert!(t.apply(None, 200));
        assert_eq!(t.max_cutoff_ms(), 300);
        assert_eq!(t.sets().collect::<Vec<_>>(), vec![(&b"s"[..], 300)]);
    }

    #[test]
    fn covers_is_at_or_before_the_namespace_or_set_cutoff() {
        let mut t = TruncateTable::new();
        assert!(!t.covers(0, b""), "an empty table covers nothing, not even LUT 0");
        assert!(!t.may_cover(0));
        t.apply(None, 100);
        t.apply(Some(b"a"), 200);
        assert!(t.covers(100, b""));
        assert!(t.covers(100, b"zzz"));
        assert!(!t.covers(101, b""));
        assert!(!t.covers(101, b"b"));
        assert!(t.covers(200, b"a"));
        assert!(!t.covers(201, b"a"));
        assert!(t.covers_namespace(100));
        assert!(!t.covers_namespace(150));
        assert!(t.may_cover(200));
        assert!(!t.may_cover(201));
    }

    #[test]
    fn unix_nanos_convert_to_citrusleaf_ms() {
        let epoch_ns = crate::clock::CITRUSLEAF_EPOCH_UNIX_S * 1_000_000_000;
        assert_eq!(cl_ms_from_unix_ns(epoch_ns), 0);
        assert_eq!(cl_ms_from_unix_ns(epoch_ns + 1_999_999), 1);
        assert_eq!(cl_ms_from_unix_ns(epoch_ns + 2_000_000), 2);
        assert_eq!(cl_ms_from_unix_ns(5), 0);
    }

    #[test]
    fn round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truncate.toml");
        assert_eq!(
            TruncateTable::load(&path).unwrap(),
            TruncateTable::new(),
            "missing file = empty"
        );
        let t = sample();
        t.save(&path).unwrap();
        let back = TruncateTable::load(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.max_cutoff_ms(), 7_000);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("name = \"demo\""), "{text}");
        assert!(text.contains("name_hex = \"00ff2062696e0a\""), "{text}");
        assert!(text.contains("version = 1"), "{text}");
        assert!(!dir.path().join("truncate.toml.tmp").exists());
        // Saving again replaces the file.
        let mut t2 = back;
        t2.apply(None, 9_000);
        t2.save(&path).unwrap();
        assert_eq!(TruncateTable::load(&path).unwrap(), t2);
    }

    #[test]
    fn a_leftover_tmp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truncate.toml");
        std::fs::write(dir.path().join("truncate.toml.tmp"), "garbage = [").unwrap();
        assert_eq!(TruncateTable::load(&path).unwrap(), TruncateTable::new());
        let t = sample();
        t.save(&path).unwrap();
        std::fs::write(
            dir.path().join("truncate.toml.tmp"),
            "version = 1\nnamespace_lut_ms = 99999\n",
        )
        .unwrap();
        assert_eq!(TruncateTable::load(&path).unwrap(), t);
    }

    #[test]
    fn a_failed_save_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truncate.toml");
        let t = sample();
        t.save(&path).unwrap();
        // A directory where the temporary file goes makes the save fail even as root.
        std::fs::create_dir(dir.path().join("truncate.toml.tmp")).unwrap();
        let mut t2 = t.clone();
        t2.apply(None, 8_000);
        let err = t2.save(&path).unwrap_err();
        assert!(
            matches!(
                err,
                TruncateFileError::Write {
                    step: "create temporary file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("truncate.toml"), "{err}");
        assert_eq!(TruncateTable::load(&path).unwrap(), t);
    }

    #[test]
    fn malformed_files_are_errors_naming_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let cases: &[(&str, &str)] = &[
            ("", "version"),
            ("version = 1\nnamespace_lut_ms = [", "invalid"),
            ("namespace_lut_ms = 5\n", "version"),
            ("version = 2\nnamespace_lut_ms = 5\n", "unsupported version 2"),
            ("version = \"1\"\nnamespace_lut_ms = 5\n", "unsupported version"),
            ("version = 1\n", "namespace_lut_ms"),
            ("version = 1\nnamespace_lut_ms = -1\n", "out of range"),
            ("version = 1\nnamespace_lut_ms = 1099511627776\n", "out of range"),
            ("version = 1\nnamespace_lut_ms = 1099511627774\n", "out of range"),
            ("version = 1\nnamespace_lut_ms = 5\nextra = 1\n", "extra"),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nlut_ms = 4\n", "exactly one"),
            (
                "version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"a\"\nname_hex = \"61\"\nlut_ms = 4\n",
                "exactly one",
            ),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nname_hex = \"6g\"\nlut_ms = 4\n", "not hex"),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nname_hex = \"616\"\nlut_ms = 4\n", "not hex"),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"\"\nlut_ms = 4\n", "0 bytes"),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"a\"\nlut_ms = 0\n", "out of range"),
            (
                "version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"a\"\nlut_ms = 1\n[[set]]\nname_hex = \"61\"\nlut_ms = 2\n",
                "twice",
            ),
            ("version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"a\"\n", "lut_ms"),
        ];
        for (text, want) in cases {
            std::fs::write(&path, text).unwrap();
            match TruncateTable::load(&path) {
                Err(e @ TruncateFileError::Malformed { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("t.toml"), "{msg}");
                    assert!(msg.contains(want), "{text:?}: {msg} lacks {want:?}");
                }
                other => panic!("{text:?} loaded as {other:?}"),
            }
        }
        let long = format!(
            "version = 1\nnamespace_lut_ms = 5\n[[set]]\nname = \"{}\"\nlut_ms = 4\n",
            "x".repeat(SET_NAME_MAX_BYTES + 1)
        );
        std::fs::write(&path, long).unwrap();
        assert!(matches!(
            TruncateTable::load(&path),
            Err(TruncateFileError::Malformed { .. })
        ));
        std::fs::write(&path, [0xffu8, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            TruncateTable::load(&path),
            Err(TruncateFileError::Malformed { .. })
        ));
        // A directory where the file should be is a read error, not an empty table.
        let d = dir.path().join("d.toml");
        std::fs::create_dir(&d).unwrap();
        assert!(matches!(TruncateTable::load(&d), Err(TruncateFileError::Read { .. })));
    }

    #[test]
    #[should_panic(expected = "set name of 0 bytes")]
    fn an_empty_set_name_is_a_programmer_error() {
        TruncateTable::new().apply(Some(b""), 5);
    }
}
