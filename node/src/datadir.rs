//! One node per data directory and per device: an exclusive advisory lock held for the life of
//! the process (`docs/FAULT_MODEL.md`, "Two nodes on one data directory").
//!
//! [`DirLock::acquire`] opens (or creates) `<dir>/bolide.lock`, takes an exclusive `flock(2)` on
//! it without waiting, and writes the holder's pid into it. A second node on the same directory
//! (another process, or the same process through another open file) gets
//! [`LockError::Held`] naming the path and the pid recorded by the holder. The lock goes away
//! with the process (the kernel drops `flock` locks when the last descriptor closes, so a crash
//! never leaves a stale lock behind); the pid written in the file is only for the message.
//!
//! [`DeviceLock::acquire`] takes the same kind of lock on a device path itself (a regular file
//! or a block device node), so two nodes with different data directories cannot share one
//! device either. `flock` on a block device node is advisory: it keeps Bolide processes apart,
//! not other programs.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a data directory.
pub const LOCK_FILE: &str = "bolide.lock";

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another open of the same path) holds the lock.
    #[error("{path} is locked by another Bolide node{}: two nodes on one data directory or device would overwrite each other's data; stop the other node or use another path", holder_text(*.holder_pid))]
    Held {
        path: PathBuf,
        /// The pid the holder wrote into the lock file, when it could be read.
        holder_pid: Option<u32>,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!(" (pid {p})"),
        None => String::new(),
    }
}

/// The data directory's lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) through `dir/bolide.lock` and records this process's pid.
    ///
    /// # Errors
    /// [`LockError::Held`] when another holder has it; [`LockError::Io`] when the file cannot be
    /// opened, locked or written.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { action, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        try_lock(&file, &path)?;
        file.set_len(0).map_err(io("truncate", &path))?;
        file.seek(SeekFrom::Start(0)).map_err(io("seek", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("write", &path))?;
        file.sync_all().map_err(io("sync", &path))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A device path's lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DeviceLock {
    _file: File,
}

impl DeviceLock {
    /// Locks the existing file or block device `path` itself (opened read-only, so nothing is
    /// written to it).
    ///
    /// # Errors
    /// [`LockError::Held`] (the pid is not known: a device has no room for it) or
    /// [`LockError::Io`].
    pub fn acquire(path: &Path) -> Result<DeviceLock, LockError> {
        let file = File::open(path).map_err(|source| LockError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(DeviceLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                path: path.to_path_buf(),
                holder_pid: None,
            }),
            Err(TryLockError::Error(source)) => Err(LockError::Io {
                action: "lock",
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

fn try_lock(file: &File, path: &Path) -> Result<(), LockError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            // The holder wrote its pid after locking; read it for the message.
            let mut text = String::new();
            let holder_pid = File::open(path)
                .and_then(|mut f| f.read_to_string(&mut text))
                .ok()
                .and_then(|_| text.trim().parse().ok());
            Err(LockError::Held {
                path: path.to_path_buf(),
                holder_pid,
            })
        }
        Err(TryLockError::Error(source)) => Err(LockError::Io {
            action: "lock",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_data_dir_is_refused_naming_path_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process would.
        match DirLock::acquire(dir.path()) {
            Err(e @ LockError::Held { .. }) => {
                let LockError::Held { path, holder_pid } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &dir.path().join(LOCK_FILE));
                assert_eq!(*holder_pid, Some(std::process::id()));
                let msg = e.to_string();
                assert!(msg.contains(&dir.path().join(LOCK_FILE).display().to_string()), "{msg}");
                assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        // Released with its holder: a new node may start.
        let again = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(again.path(), dir.path().join(LOCK_FILE));
    }

    #[test]
    fn a_device_path_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev.img");
        std::fs::write(&dev, [0u8; 4096]).unwrap();
        let first = DeviceLock::acquire(&dev).unwrap();
        assert!(matches!(
            DeviceLock::acquire(&dev),
            Err(LockError::Held { holder_pid: None, .. })
        ));
        drop(first);
        DeviceLock::acquire(&dev).unwrap();
        // The device's bytes are untouched by locking.
        assert_eq!(std::fs::read(&dev).unwrap(), vec![0u8; 4096]);
    }
}
