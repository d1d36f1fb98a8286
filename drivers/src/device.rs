//! The block-device trait: one core's queue to one device.
//!
//! Shape (as SPDK's `spdk_nvme_qpair` and io_uring's SQ/CQ): the caller queues reads, writes and
//! flushes with [`BlockDevice::submit_read`] and friends, hands the batch to the device with
//! [`BlockDevice::submit`] (one syscall or doorbell write for the whole batch), and later collects
//! [`Completion`]s with [`BlockDevice::reap`]. A buffer is owned by the driver from submit until
//! its completion gives it back. A device is used by one thread; it is `Send` so it can be moved
//! to the core that owns it.
//!
//! Offsets and lengths are in bytes and must be multiples of [`DeviceInfo::sector_size_bytes`];
//! I/O past [`DeviceInfo::capacity_bytes`] is refused at submit.

use crate::buf::{BufPool, IoBuf};
use std::fmt;

/// What an I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
}

impl fmt::Display for IoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
        })
    }
}

/// Why an I/O failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// An OS error number (`errno`), as io_uring reports it in `cqe.res`.
    Os(i32),
    /// An NVMe completion status: status code type and status code (NVMe base spec, "Status
    /// Field").
    Nvme { sct: u8, sc: u8 },
    /// The transfer moved fewer bytes than asked.
    Short { done_bytes: usize },
    /// A fault injected by the simulator; the text names the fault.
    Injected(&'static str),
    /// The device has failed or been closed; nothing more is accepted.
    Failed,
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::Os(e) => write!(f, "os error {e} ({})", std::io::Error::from_raw_os_error(*e)),
            IoStatus::Nvme { sct, sc } => write!(f, "nvme status sct={sct:#x} sc={sc:#x}"),
            IoStatus::Short { done_bytes } => write!(f, "short transfer ({done_bytes} bytes)"),
            IoStatus::Injected(what) => write!(f, "injected fault: {what}"),
            IoStatus::Failed => f.write_str("device failed"),
        }
    }
}

/// A failed I/O: operation, device, byte offset, byte length and status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} of {len} bytes at offset {offset} on {device} failed: {status}")]
pub struct DeviceError {
    pub op: IoKind,
    pub device: String,
    pub offset: u64,
    pub len: usize,
    pub status: IoStatus,
}

/// Why a submit was refused. The buffer (if any) comes back so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// `max_in_flight` I/Os are already queued or in flight; reap first.
    #[error("device queue full")]
    QueueFull(Option<IoBuf>),
    /// Offset or length not sector-aligned, zero-length, or past the end of the device.
    #[error("invalid I/O: {reason}")]
    Invalid { reason: String, buf: Option<IoBuf> },
    /// The device has failed (after an unrecoverable error) or been closed.
    #[error("device failed: {0}")]
    Failed(DeviceError, Option<IoBuf>),
}

impl SubmitError {
    /// Takes back the buffer that was refused.
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            SubmitError::QueueFull(b) => b,
            SubmitError::Invalid { buf, .. } => buf,
            SubmitError::Failed(_, b) => b,
        }
    }
}

/// One finished I/O.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag given at submit.
    pub tag: u64,
    pub kind: IoKind,
    /// Byte offset of the I/O (0 for flush).
    pub offset: u64,
    /// The buffer given at submit (None for flush). For a successful read it holds the data.
    pub buf: Option<IoBuf>,
    pub result: Result<(), DeviceError>,
}

/// Facts about a device the caller needs before it submits anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Path, PCI address or simulator name; used in every error.
    pub name: String,
    /// Usable bytes, a multiple of `sector_size_bytes`.
    pub capacity_bytes: u64,
    /// I/O granularity and alignment, bytes (4096 for every backend today).
    pub sector_size_bytes: usize,
    /// Most I/Os queued plus in flight at once; submit returns `QueueFull` past it.
    pub max_in_flight: usize,
    /// True when a completed write is durable without a flush (O_DSYNC / FUA / the simulator).
    pub durable_writes: bool,
    /// Largest transfer the device takes in one command, bytes (NVMe MDTS); `None`: unknown or
    /// no limit. Informational: backends split larger I/Os themselves.
    pub max_transfer_bytes: Option<usize>,
    /// The device's logical block, bytes (NVMe LBA format; 4096 for files).
    pub lba_bytes: usize,
    /// True when the device has a volatile write cache, so only a flush (or FUA) makes a
    /// completed write durable (NVMe Identify Controller VWC; unknown for files: false).
    pub volatile_write_cache: bool,
}

/// One core's queue to a block device. See the module docs for the life of an I/O.
pub trait BlockDevice: Send {
    fn info(&self) -> &DeviceInfo;

    /// Registers a buffer pool for the backend's fast path (io_uring fixed buffers). Optional:
    /// the default does nothing; buffers of unregistered pools still work.
    ///
    /// # Errors
    /// The registration failed; the device stays usable without it.
    fn register_buffers(&mut self, pool: &BufPool) -> Result<(), DeviceError> {
        let _ = pool;
        Ok(())
    }

    /// Queues a read of `buf.len()` bytes at byte `offset` into `buf`.
    ///
    /// # Errors
    /// `QueueFull`, `Invalid` (alignment or range) or `Failed`; the buffer comes back inside.
    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError>;

    /// Queues a write of `buf.len()` bytes from `buf` at byte `offset`.
    ///
    /// # Errors
    /// As [`BlockDevice::submit_read`].
    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError>;

    /// Queues a flush: when it completes, every write completed before it was submitted is
    /// durable.
    ///
    /// # Errors
    /// `QueueFull` or `Failed`.
    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError>;

    /// Hands every queued I/O to the device. Returns how many were handed over.
    ///
    /// # Errors
    /// The hand-over itself failed (e.g. `io_uring_enter` returned an error).
    fn submit(&mut self) -> Result<usize, DeviceError>;

    /// Moves finished I/Os into `out`, waiting until at least `min_complete` are available (0:
    /// never wait). `min_complete` is capped at the number of I/Os already handed over by
    /// [`BlockDevice::submit`] (reap never submits), so it never waits forever.
    /// Returns how many were added.
    ///
    /// # Errors
    /// Waiting itself failed. Failed I/Os are not errors here: they come back as completions
    /// whose `result` is `Err`.
    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError>;

    /// I/Os queued or in flight (submitted but not yet reaped).
    fn in_flight(&self) -> usize;

    /// A descriptor that becomes readable when completions arrive, for poll loops that sleep in
    /// epoll between turns; `None` when the backend has none (poll it instead). `reap` clears it.
    fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Turns the completion fd's signals on (before a poll loop sleeps on it) or off (while it
    /// runs and reaps anyway), so a busy loop pays no eventfd write per completion and no read
    /// per reap. Off, completions still arrive and [`BlockDevice::reap`] still finds them; a
    /// loop must turn signals on, then check [`BlockDevice::has_completions`], before it sleeps.
    /// Backends without a completion fd ignore it.
    fn set_completion_signals(&mut self, _on: bool) {}

    /// Whether finished I/Os are waiting to be reaped, without a system call where the backend
    /// can tell (io_uring: the CQ ring's head and tail). `true` when the backend cannot tell.
    fn has_completions(&mut self) -> bool {
        self.in_flight() > 0
    }
}

/// Checks the common submit preconditions; backends call it first.
///
/// # Errors
/// `Invalid` naming what is wrong.
pub fn check_io(info: &DeviceInfo, offset: u64, len: usize) -> Result<(), String> {
    let ss = info.sector_size_bytes as u64;
    if len == 0 {
        return Err("zero-length I/O".into());
    }
    if !offset.is_multiple_of(ss) || !(len as u64).is_multiple_of(ss) {
        return Err(format!("offset {offset} / length {len} not aligned to {ss} bytes"));
    }
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > info.capacity_bytes)
    {
        return Err(format!(
            "I/O [{offset}, +{len}) past the end of {} ({} bytes)",
            info.name, info.capacity_bytes
        ));
    }
    Ok(())
}
