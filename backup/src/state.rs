//! The resume state of a directory backup (`<dir>/<ns>.asb.state`, `--continue`).
//!
//! A text file, replaced atomically (write a temporary file, rename) at every checkpoint:
//!
//! ```text
//! bolide-backup state 1
//! unit <pid>                  every partition of the backup (or `after <pid> <b64 digest>`)
//! done <pid>                  partitions finished
//! partial <pid> <b64 digest>  partitions started: every record up to this digest is in a file
//! file <name> <bytes>         each backup file and its length at the checkpoint
//! ```
//!
//! A checkpoint is taken only after the job's file is flushed to the OS, so after a kill every
//! byte up to the recorded length holds whole records, all of them covered by `done`/`partial`;
//! a resume cuts each file back to its length, removes files the state does not list, and scans
//! the remaining partitions (a partial one strictly after its digest). No record is lost or
//! written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

const MAGIC: &str = "bolide-backup state 1";

/// One scan unit: a whole partition, or the records after a digest in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Pid(usize),
    After(usize, [u8; 20]),
}

impl Unit {
    pub fn pid(&self) -> usize {
        match self {
            Unit::Pid(p) | Unit::After(p, _) => *p,
        }
    }
}

/// The partition a digest belongs to (wire spec §4).
pub fn pid_of(digest: &[u8; 20]) -> usize {
    u16::from_le_bytes([digest[0], digest[1]]) as usize % crate::backup::PARTITIONS
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub units: Vec<Unit>,
    pub done: BTreeSet<usize>,
    pub partial: BTreeMap<usize, [u8; 20]>,
    /// File name (in the backup directory) → bytes at the checkpoint.
    pub files: BTreeMap<String, u64>,
}

fn b64_digest(s: &str) -> Option<[u8; 20]> {
    B64.decode(s).ok().and_then(|v| <[u8; 20]>::try_from(v).ok())
}

impl State {
    pub fn to_text(&self) -> String {
        let mut out = format!("{MAGIC}\n");
        for u in &self.units {
            match u {
                Unit::Pid(p) => out.push_str(&format!("unit {p}\n")),
                Unit::After(p, d) => out.push_str(&format!("after {p} {}\n", B64.encode(d))),
            }
        }
        for p in &self.done {
            out.push_str(&format!("done {p}\n"));
        }
        for (p, d) in &self.partial {
            out.push_str(&format!("partial {p} {}\n", B64.encode(d)));
        }
        for (f, len) in &self.files {
            out.push_str(&format!("file {f} {len}\n"));
        }
        out
    }

    pub fn parse(text: &str, name: &str) -> Result<State, String> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(format!("{name}:1: not a bolide-backup state file"));
        }
        let mut st = State::default();
        for (i, line) in lines {
            let bad = || format!("{name}:{}: bad state line {line:?}", i + 1);
            let parts: Vec<&str> = line.split(' ').collect();
            let pid = |s: &str| s.parse::<usize>().ok().filter(|p| *p < crate::backup::PARTITIONS);
            match parts.as_slice() {
                ["unit", p] => st.units.push(Unit::Pid(pid(p).ok_or_else(bad)?)),
                ["after", p, d] => st
                    .units
                    .push(Unit::After(pid(p).ok_or_else(bad)?, b64_digest(d).ok_or_else(bad)?)),
                ["done", p] => {
                    st.done.insert(pid(p).ok_or_else(bad)?);
                }
                ["partial", p, d] => {
                    st.partial
                        .insert(pid(p).ok_or_else(bad)?, b64_digest(d).ok_or_else(bad)?);
                }
                ["file", f, len] if !f.contains('/') => {
                    st.files.insert(f.to_string(), len.parse().map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(st)
    }

    /// The units still to scan.
    pub fn remaining(&self) -> Vec<Unit> {
        self.units
            .iter()
            .filter(|u| !self.done.contains(&u.pid()))
            .map(|u| match self.partial.get(&u.pid()) {
                Some(d) => Unit::After(u.pid(), *d),
                None => *u,
            })
            .collect()
    }

    /// Writes the state atomically as file `name` of `target`.
    pub fn save_to(&self, target: &crate::target::Target, name: &str) -> Result<(), String> {
        target.write_small(name, self.to_text().as_bytes())
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = tmp_path(path);
        fs::write(&tmp, self.to_text()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, path).map_err(|e| format!("rename {} to {}: {e}", tmp.display(), path.display()))
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Cuts the backup files in `dir` back to the state's lengths and removes `.asb` files the state
/// does not list; returns the next free file index.
pub fn rewind_dir(dir: &Path, st: &State, namespace: &str) -> Result<u64, String> {
    let mut next = 0u64;
    for entry in fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("read {}: {e}", dir.display()))?.path();
        if path.extension().is_none_or(|x| x != "asb" && x != "asbd") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        match st.files.get(&name) {
            Some(len) => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                let have = f.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?.len();
                if have < *len {
                    return Err(format!(
                        "{} is shorter ({have}) than the state says ({len})",
                        path.display()
                    ));
                }
                f.set_len(*len)
                    .map_err(|e| format!("truncate {}: {e}", path.display()))?;
            }
            None => fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?,
        }
    }
    for name in st.files.keys() {
        next = next.max(file_index(name, namespace)? + 1);
    }
    Ok(next)
}

/// The index of a backup file `<ns>_NNNNN.asb` or its deletion file `<ns>_NNNNN.asbd`.
fn file_index(name: &str, namespace: &str) -> Result<u64, String> {
    name.strip_prefix(&format!("{namespace}_"))
        .and_then(|s| s.strip_suffix(".asb").or_else(|| s.strip_suffix(".asbd")))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| format!("state names an unexpected file {name:?}"))
}

/// The object-store counterpart of [`rewind_dir`]: an object exists only once its upload
/// completed, and the state names a file only then, so every `.asb` object the state lists must
/// have exactly its recorded size (anything else is damage, reported), and every other `.asb`
/// object (completed after the last state save) and any `deletes.asbd` is removed; returns the
/// next free file index.
pub fn rewind_objects(target: &crate::target::Target, st: &State, namespace: &str) -> Result<u64, String> {
    for (name, size) in target.list()? {
        if name == crate::backup::DELETES_FILE {
            target.remove(&name)?;
            continue;
        }
        if !name.ends_with(".asb") && !name.ends_with(".asbd") {
            continue;
        }
        match st.files.get(&name) {
            Some(len) if *len == size => {}
            Some(len) => {
                return Err(format!(
                    "{} holds {size} bytes, the state says {len}",
                    target.describe(&name)
                ))
            }
            None => target.remove(&name)?,
        }
    }
    let have: std::collections::BTreeSet<String> = target.list()?.into_iter().map(|(n, _)| n).collect();
    let mut next = 0u64;
    for name in st.files.keys() {
        if !have.contains(name) {
            return Err(format!("{} is missing (the state names it)", target.describe(name)));
        }
        next = next.max(file_index(name, namespace)? + 1);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_remaining() {
        let mut st = State {
            units: vec![Unit::Pid(1), Unit::Pid(2), Unit::Pid(3), Unit::After(7, [9; 20])],
            ..State::default()
        };
        st.done.insert(1);
        st.partial.insert(2, [5; 20]);
        st.files.insert("test_00000.asb".into(), 1234);
        let back = State::parse(&st.to_text(), "s").unwrap();
        assert_eq!(back, st);
        assert_eq!(
            st.remaining(),
            vec![Unit::After(2, [5; 20]), Unit::Pid(3), Unit::After(7, [9; 20])]
        );
        assert!(State::parse("nope\n", "s").is_err());
        assert!(State::parse(&format!("{MAGIC}\ndone 5000\n"), "s").is_err());
    }
}
