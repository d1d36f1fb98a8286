//! io_uring block device: one ring per device per core, `O_DIRECT`, a registered file and
//! (optionally) registered buffers.
//!
//! [`UringDevice`] implements [`BlockDevice`] over a regular file or a block device. Each
//! `submit_*` call pushes one SQE (user_data = the index of the I/O's slot in an in-flight slab
//! of `queue_depth` entries); [`BlockDevice::submit`] hands the whole batch to the kernel in one
//! `io_uring_enter`; [`BlockDevice::reap`] waits (bounded by [`UringOptions::wait_timeout`]) and
//! drains the CQ. Failed I/Os are reported, never retried.
//!
//! # Buffer ownership
//!
//! This is the only module with unsafe code. The rule that makes it sound: from the moment an
//! SQE naming a buffer is pushed until its CQE is reaped, the driver owns that [`IoBuf`] in the
//! in-flight slab, so the memory the kernel reads or writes is never freed, moved or handed to
//! the caller (moving an `IoBuf` does not move its heap memory). On drop, the device waits for
//! every I/O handed to the kernel to complete before the slab (and so the buffers) is freed; if
//! that wait times out, the buffers are leaked rather than freed under the kernel.
//!
//! # Semantics shared with the simulator
//!
//! `reap` never hands queued SQEs to the kernel: it waits only for I/Os already handed over by
//! `submit`, and `min_complete` is capped at their number, so it never waits for an I/O that was
//! never submitted. A flush is `fsync(DATASYNC)`: it covers writes completed before it was
//! submitted (io_uring does not order it after writes still in flight).

#![allow(unsafe_code)]

use crate::buf::{BufPool, IoBuf, SECTOR_SIZE};
use crate::device::{check_io, BlockDevice, Completion, DeviceError, DeviceInfo, IoKind, IoStatus, SubmitError};
use io_uring::{opcode, squeue, types, EnterFlags, IoUring};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest `queue_depth` accepted (SQ entries; the CQ gets twice as many).
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// Largest single read or write, bytes. Larger I/Os are refused with `Invalid` (the kernel would
/// cut a transfer over about 2 GiB short, and an SQE length is 32 bits).
pub const MAX_IO_BYTES: usize = 1 << 30;

/// Size of the registered-buffer table, in buffers, summed over every registered pool (the
/// kernel's own limit is 16384).
pub const MAX_REGISTERED_BUFFERS: u32 = 16384;

/// The one registered file's index in the ring's file table.
const FILE_INDEX: types::Fixed = types::Fixed(0);

const _: () = assert!(MAX_IO_BYTES.is_multiple_of(SECTOR_SIZE) && MAX_IO_BYTES <= u32::MAX as usize);

/// How to open a [`UringDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringOptions {
    /// SQ entries, and the most I/Os queued plus in flight ([`DeviceInfo::max_in_flight`]).
    /// 1..=[`MAX_QUEUE_DEPTH`]; default 128.
    pub queue_depth: u32,
    /// Open with `O_DIRECT` (bypass the page cache). Default true. Some filesystems refuse it;
    /// [`UringDevice::open`] then fails with [`OpenError::DirectUnsupported`].
    pub direct: bool,
    /// Open with `O_DSYNC`, so a completed write is durable ([`DeviceInfo::durable_writes`]).
    /// Default false.
    pub dsync: bool,
    /// For a regular file: create it (sparse) with this size in bytes if it is missing, or grow
    /// it to this size if it is smaller. Ignored for block devices. Default `None`: the file must
    /// exist.
    pub create_size_bytes: Option<u64>,
    /// Longest a [`BlockDevice::reap`] (or the drop of the device) waits for completions before
    /// it reports `ETIME`. Default 30 s.
    pub wait_timeout: Duration,
}

impl Default for UringOptions {
    fn default() -> UringOptions {
        UringOptions {
            queue_depth: 128,
            direct: true,
            dsync: false,
            create_size_bytes: None,
            wait_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`UringDevice::open`] failed. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An option is out of range.
    #[error("cannot open {path}: {reason}")]
    Options {
        /// The path being opened.
        path: PathBuf,
        /// Which option, and its range.
        reason: String,
    },
    /// The filesystem refused `O_DIRECT` (`EINVAL` at open or on the first read), e.g. tmpfs
    /// before Linux 6.6.
    #[error(
        "cannot open {path}: O_DIRECT is not supported on this filesystem (EINVAL); put the file \
         on a filesystem that supports it (ext4, xfs, a block device) or set `direct = false`"
    )]
    DirectUnsupported {
        /// The path being opened.
        path: PathBuf,
    },
    /// A system call on the path failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// The step that failed: "open", "stat", "resize", "find the size of", "read the first
        /// sector of", "set up an io_uring for", "register with io_uring".
        action: &'static str,
        /// The path being opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path is a directory, socket, character device, ...
    #[error("{path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice {
        /// The path being opened.
        path: PathBuf,
    },
    /// The file or device holds less than one sector.
    #[error("{path} holds {bytes} bytes, less than one {SECTOR_SIZE}-byte sector")]
    TooSmall {
        /// The path being opened.
        path: PathBuf,
        /// Its size, bytes.
        bytes: u64,
    },
}

/// One I/O in the slab, owned by the driver until its CQE arrives.
#[derive(Debug)]
struct InFlight {
    tag: u64,
    kind: IoKind,
    offset: u64,
    len: usize,
    /// The buffer the kernel reads or writes; `None` for a flush.
    buf: Option<IoBuf>,
}

/// A pool registered in the ring's buffer table at `base..base + regions.len()`.
#[derive(Debug)]
struct RegisteredPool {
    pool_id: u32,
    base: u32,
    /// `(address, length)` of each buffer, as registered.
    regions: Vec<(usize, usize)>,
}

/// A block device driven through io_uring. See the module docs.
pub struct UringDevice {
    ring: IoUring,
    /// Kept open for the ring's registered file table (and for the device's lifetime).
    _file: File,
    /// An eventfd the kernel signals on every CQE (`IORING_REGISTER_EVENTFD`), so a poll loop
    /// can sleep in epoll and wake for device completions.
    completion_fd: File,
    /// Whether the kernel signals `completion_fd` now (`IORING_CQ_EVENTFD_DISABLED` clear), and
    /// whether it may hold a count that `reap` must clear.
    signals: bool,
    fd_may_be_set: bool,
    info: DeviceInfo,
    wait_timeout: Duration,
    /// Slot `i` holds the I/O whose SQE carries user_data `i`; `None` when free.
    slots: Vec<Option<InFlight>>,
    /// Free slot indexes.
    free: Vec<u32>,
    /// Slots whose SQEs are pushed but not yet handed to the kernel, in push order (the kernel
    /// consumes SQEs in that order).
    unsubmitted: VecDeque<u32>,
    /// Whether the sparse buffer table has been set up.
    buffer_table: bool,
    registered: Vec<RegisteredPool>,
    /// Buffer-table entries used by `registered`.
    registered_count: u32,
}

impl std::fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDevice")
            .field("info", &self.info)
            .field("in_flight", &self.in_flight())
            .field("registered_buffers", &self.registered_count)
            .finish()
    }
}

impl UringDevice {
    /// Opens a regular file or block device read-write and sets up its ring: `queue_depth` SQ
    /// entries, the file registered as fixed file 0.
    ///
    /// Capacity: a regular file's size rounded down to a multiple of 4096; a block device's size
    /// (what `BLKGETSIZE64` reports, read with `lseek(SEEK_END)`, which needs no ioctl).
    /// `info().durable_writes` is `opts.dsync`. With `opts.direct` the first sector is read once
    /// to check that the filesystem accepts `O_DIRECT` I/O.
    ///
    /// # Errors
    /// [`OpenError`]: bad options, `O_DIRECT` unsupported, a failed system call (open, stat,
    /// resize, ring setup, file registration), not a file or block device, or under one sector.
    pub fn open(path: &Path, opts: &UringOptions) -> Result<UringDevice, OpenError> {
        let io_err = |action: &'static str| {
            move |source: io::Error| OpenError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        if opts.queue_depth == 0 || opts.queue_depth > MAX_QUEUE_DEPTH {
            return Err(OpenError::Options {
                path: path.to_path_buf(),
                reason: format!("queue_depth {} is not in 1..={MAX_QUEUE_DEPTH}", opts.queue_depth),
            });
        }

        let mut flags = 0;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        if opts.dsync {
            flags |= libc::O_DSYNC;
        }
        let mut oo = OpenOptions::new();
        oo.read(true)
            .write(true)
            .create(opts.create_size_bytes.is_some())
            .custom_flags(flags);
        let mut file = match oo.open(path) {
            Ok(f) => f,
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(OpenError::DirectUnsupported {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err("open")(e)),
        };

        let meta = file.metadata().map_err(io_err("stat"))?;
        let file_type = meta.file_type();
        let bytes = if file_type.is_file() {
            let mut len = meta.len();
            if let Some(want) = opts.create_size_bytes {
                if len < want {
                    file.set_len(want).map_err(io_err("resize"))?;
                    len = want;
                }
            }
            len
        } else if file_type.is_block_device() {
            // The block device inode's size is the device size, the same figure BLKGETSIZE64
            // reports; seeking to the end reads it without an ioctl (and without unsafe).
            file.seek(SeekFrom::End(0)).map_err(io_err("find the size of"))?
        } else {
            return Err(OpenError::NotFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        };
        let capacity_bytes = bytes - bytes % SECTOR_SIZE as u64;
        if capacity_bytes == 0 {
            return Err(OpenError::TooSmall {
                path: path.to_path_buf(),
                bytes,
            });
        }

        if opts.direct {
            // Some filesystems accept O_DIRECT at open and refuse the I/O itself.
            let mut probe = IoBuf::new(SECTOR_SIZE);
            match file.read_at(probe.as_mut_slice(), 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(OpenError::DirectUnsupported {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(io_err("read the first sector of")(e)),
            }
        }

        let ring = IoUring::new(opts.queue_depth).map_err(io_err("set up an io_uring for"))?;
        ring.submitter()
            .register_files(&[file.as_raw_fd()])
            .map_err(io_err("register with io_uring"))?;

        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io_err("create a completion eventfd for")(io::Error::last_os_error()));
        }
        // SAFETY: `efd` is a fresh, valid descriptor that nothing else owns.
        let completion_fd = File::from(unsafe { OwnedFd::from_raw_fd(efd) });
        ring.submitter()
            .register_eventfd(completion_fd.as_raw_fd())
            .map_err(io_err("register a completion eventfd for"))?;

        let depth = opts.queue_depth as usize;
        debug_assert!(ring.params().sq_entries() as usize >= depth);
        debug_assert!(ring.params().cq_entries() as usize >= depth);
        let info = DeviceInfo {
            name: path.display().to_string(),
            capacity_bytes,
            sector_size_bytes: SECTOR_SIZE,
            max_in_flight: depth,
            durable_writes: opts.dsync,
            max_transfer_bytes: None,
            lba_bytes: SECTOR_SIZE,
            volatile_write_cache: false,
        };
        Ok(UringDevice {
            ring,
            _file: file,
            completion_fd,
            signals: true,
            fd_may_be_set: true,
            info,
            wait_timeout: opts.wait_timeout,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..opts.queue_depth).rev().collect(),
            unsubmitted: VecDeque::with_capacity(depth),
            buffer_table: false,
            registered: Vec::new(),
            registered_count: 0,
        })
    }

    /// Buffers registered with the kernel so far, summed over pools.
    pub fn registered_buffers(&self) -> u32 {
        self.registered_count
    }

    /// I/Os handed to the kernel and not yet reaped.
    fn with_kernel(&self) -> usize {
        self.in_flight() - self.unsubmitted.len()
    }

    /// The fixed-buffer index for `buf`, when it comes from a registered pool and still sits
    /// exactly inside its registered region.
    fn fixed_index(&self, buf: &mut IoBuf) -> Option<u16> {
        let slot = buf.reg_slot()?;
        let pool = self.registered.iter().find(|p| p.pool_id == slot.pool_id)?;
        let (addr, len) = *pool.regions.get(slot.index as usize)?;
        if buf.as_mut_ptr() as usize != addr || buf.len() > len {
            return None;
        }
        u16::try_from(pool.base + u32::from(slot.index)).ok()
    }

    fn error(&self, op: IoKind, offset: u64, len: usize, status: IoStatus) -> DeviceError {
        DeviceError {
            op,
            device: self.info.name.clone(),
            offset,
            len,
            status,
        }
    }

    /// Pushes one SQE for `io` into a free slot. On failure the buffer comes back.
    fn push(&mut self, sqe: impl FnOnce(u64) -> squeue::Entry, io: InFlight) -> Result<(), SubmitError> {
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::QueueFull(io.buf));
        };
        let entry = sqe(u64::from(slot));
        // SAFETY: the SQE names (for reads and writes) the memory of `io.buf`, which is moved
        // into `self.slots[slot]` right below, before any io_uring_enter can hand the SQE to the
        // kernel, and stays there until the CQE with user_data `slot` is reaped (or, on drop,
        // until the kernel has finished with it). Moving an IoBuf does not move its heap memory,
        // so the address in the SQE stays valid. The file is fixed file 0, registered at open
        // for the ring's whole life.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen while in-flight I/Os ≤ queue_depth ≤ SQ entries; refuse rather than
            // grow.
            self.free.push(slot);
            return Err(SubmitError::QueueFull(io.buf));
        }
        self.slots[slot as usize] = Some(io);
        self.unsubmitted.push_back(slot);
        Ok(())
    }

    fn submit_rw(&mut self, kind: IoKind, offset: u64, mut buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        let len = buf.len();
        let refuse = |reason: String, buf| {
            let reason = format!(
                "{kind} of {len} bytes at offset {offset} on {}: {reason}",
                self.info.name
            );
            Err(SubmitError::Invalid { reason, buf: Some(buf) })
        };
        if let Err(reason) = check_io(&self.info, offset, len) {
            return refuse(reason, buf);
        }
        if len > MAX_IO_BYTES {
            return refuse(format!("longer than the {MAX_IO_BYTES}-byte limit"), buf);
        }
        let fixed = self.fixed_index(&mut buf);
        let ptr = buf.as_mut_ptr();
        let len32 = len as u32; // ≤ MAX_IO_BYTES, checked above.
        let sqe = move |user_data: u64| {
            let e = match (kind, fixed) {
                (IoKind::Read, Some(i)) => opcode::ReadFixed::new(FILE_INDEX, ptr, len32, i).offset(offset).build(),
                (IoKind::Read, None) => opcode::Read::new(FILE_INDEX, ptr, len32).offset(offset).build(),
                (_, Some(i)) => opcode::WriteFixed::new(FILE_INDEX, ptr, len32, i)
                    .offset(offset)
                    .build(),
                (_, None) => opcode::Write::new(FILE_INDEX, ptr, len32).offset(offset).build(),
            };
            e.user_data(user_data)
        };
        self.push(
            sqe,
            InFlight {
                tag,
                kind,
                offset,
                len,
                buf: Some(buf),
            },
        )
    }

    /// Waits until the CQ holds at least `want` entries, at most `wait_timeout`.
    fn wait_for(&mut self, want: usize) -> Result<(), DeviceError> {
        let deadline = Instant::now() + self.wait_timeout;
        // Each pass either sees enough CQEs, or sleeps in the kernel until the deadline or a
        // signal; the deadline bounds the loop.
        loop {
            if self.ring.completion().len() >= want {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.stalled(libc::ETIME));
            }
            let ts = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            let flags = (EnterFlags::GETEVENTS | EnterFlags::EXT_ARG).bits();
            let want32 = u32::try_from(want).unwrap_or(u32::MAX);
            // SAFETY: to_submit is 0, so the kernel consumes no SQE here (queued SQEs wait for
            // `submit`); EXT_ARG tells it `args` is an io_uring_getevents_arg, which `enter`
            // passes by pointer with its size, and `args` and `ts` outlive the call.
            let r = unsafe { self.ring.submitter().enter(0, want32, flags, Some(&args)) };
            match r {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => {}
                Err(e) => return Err(self.stalled(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
    }

    /// An error naming one I/O the kernel holds (the one in the lowest slot).
    fn stalled(&self, errno: i32) -> DeviceError {
        let io = self
            .slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.as_ref().filter(|_| !self.unsubmitted.contains(&(i as u32))));
        match io {
            Some(io) => self.error(io.kind, io.offset, io.len, IoStatus::Os(errno)),
            None => self.error(IoKind::Flush, 0, 0, IoStatus::Os(errno)),
        }
    }

    /// Moves every CQE into `out` as a completion. Returns how many.
    fn drain(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let io = self
                .slots
                .get_mut(slot)
                .and_then(Option::take)
                .unwrap_or_else(|| panic!("{}: CQE for free or unknown slot {slot}", self.info.name));
            self.free.push(slot as u32);
            let res = cqe.result();
            let status = if res < 0 {
                Some(IoStatus::Os(-res))
            } else if io.kind != IoKind::Flush && res as usize != io.len {
                Some(IoStatus::Short {
                    done_bytes: res as usize,
                })
            } else {
                None
            };
            let result = match status {
                None => Ok(()),
                Some(status) => Err(DeviceError {
                    op: io.kind,
                    device: self.info.name.clone(),
                    offset: io.offset,
                    len: io.len,
                    status,
                }),
            };
            out.push(Completion {
                tag: io.tag,
                kind: io.kind,
                offset: io.offset,
                buf: io.buf,
                result,
            });
            n += 1;
        }
        n
    }
}

impl BlockDevice for UringDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Registers `pool`'s buffers as io_uring fixed buffers, so reads and writes from them use
    /// `ReadFixed`/`WriteFixed` (no per-I/O page pinning). Several pools may be registered, up to
    /// [`MAX_REGISTERED_BUFFERS`] buffers in all; registering a pool again is a no-op. The pool's
    /// memory stays pinned until the device is dropped (pinned pages count against
    /// `RLIMIT_MEMLOCK` for processes without `CAP_IPC_LOCK`).
    ///
    /// # Errors
    /// Reported as a `DeviceError` with `op` read, offset 0 and `len` the pool's total bytes
    /// (the error type has no "register" operation): `Os(ENOSPC)` when the table is full, or the
    /// kernel's errno (e.g. `ENOMEM` over `RLIMIT_MEMLOCK`). The device stays usable; the pool's
    /// buffers then take the unregistered path.
    fn register_buffers(&mut self, pool: &BufPool) -> Result<(), DeviceError> {
        if self.registered.iter().any(|p| p.pool_id == pool.id()) {
            return Ok(());
        }
        let total = pool.count() * pool.buf_len();
        let name = self.info.name.clone();
        let fail = move |status| DeviceError {
            op: IoKind::Read,
            device: name.clone(),
            offset: 0,
            len: total,
            status,
        };
        let count = u32::try_from(pool.count()).unwrap_or(u32::MAX);
        if count > MAX_REGISTERED_BUFFERS - self.registered_count {
            return Err(fail(IoStatus::Os(libc::ENOSPC)));
        }
        if !self.buffer_table {
            self.ring
                .submitter()
                .register_buffers_sparse(MAX_REGISTERED_BUFFERS)
                .map_err(|e| fail(IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))))?;
            self.buffer_table = true;
        }
        let regions = pool.regions().to_vec();
        let iovecs: Vec<libc::iovec> = regions
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        let base = self.registered_count;
        // SAFETY: each iovec is one buffer of `pool`, a live allocation of `len` bytes owned by
        // an IoBuf that never moves or frees its memory while it lives. The kernel pins those
        // pages and keeps them until the table is freed with the ring, so it never touches
        // freed memory. It only transfers into a registered buffer for a ReadFixed/WriteFixed
        // SQE, and `fixed_index` issues one only for the live IoBuf whose address and slot match
        // the registered region, which the slab owns until its CQE arrives.
        unsafe { self.ring.submitter().register_buffers_update(base, &iovecs, None) }
            .map_err(|e| fail(IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))))?;
        self.registered.push(RegisteredPool {
            pool_id: pool.id(),
            base,
            regions,
        });
        self.registered_count += count;
        Ok(())
    }

    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.submit_rw(IoKind::Read, offset, buf, tag)
    }

    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.submit_rw(IoKind::Write, offset, buf, tag)
    }

    /// Queues `fsync(IORING_FSYNC_DATASYNC)`.
    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        let sqe = |user_data| {
            opcode::Fsync::new(FILE_INDEX)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(user_data)
        };
        self.push(
            sqe,
            InFlight {
                tag,
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                buf: None,
            },
        )
    }

    /// One `io_uring_enter` for every queued SQE (none when nothing is queued).
    ///
    /// # Errors
    /// `io_uring_enter` failed (e.g. `EAGAIN`, `EBUSY`); the error names the first I/O not
    /// handed over. The SQEs stay queued and a later `submit` hands them over.
    fn submit(&mut self) -> Result<usize, DeviceError> {
        if self.unsubmitted.is_empty() {
            return Ok(0);
        }
        match self.ring.submit() {
            Ok(n) => {
                let n = n.min(self.unsubmitted.len());
                self.unsubmitted.drain(..n);
                Ok(n)
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let slot = self.unsubmitted[0] as usize;
                let io = self.slots[slot].as_ref().expect("an unsubmitted slot is occupied");
                Err(self.error(io.kind, io.offset, io.len, IoStatus::Os(errno)))
            }
        }
    }

    /// Waits (when `min_complete > 0`) for `min(min_complete, I/Os handed to the kernel)` CQEs,
    /// then moves every CQE into `out`. A CQE with `res < 0` becomes `IoStatus::Os(-res)`; a
    /// transfer of fewer bytes than asked becomes `IoStatus::Short`.
    ///
    /// # Errors
    /// The wait failed or lasted longer than [`UringOptions::wait_timeout`] (`Os(ETIME)`); the
    /// error names an I/O the kernel still holds. Nothing is lost: CQEs stay in the ring for the
    /// next `reap`.
    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError> {
        // Clear the completion eventfd before draining the CQ: a CQE posted after the clear
        // signals it again, so a poll loop sleeping on it never misses one.
        // With signals off (the loop is running, not sleeping on the fd) the count can only be
        // left from before they were turned off: clear it once, not on every reap.
        if self.fd_may_be_set {
            let mut counter = [0u8; 8];
            let _ = (&self.completion_fd).read(&mut counter);
            self.fd_may_be_set = self.signals;
        }
        let want = min_complete.min(self.with_kernel());
        if want > 0 {
            self.wait_for(want)?;
        }
        Ok(self.drain(out))
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.completion_fd.as_fd())
    }

    fn set_completion_signals(&mut self, on: bool) {
        if on == self.signals {
            return;
        }
        let cq = self.ring.completion();
        if on {
            cq.enable_eventfd();
            self.fd_may_be_set = true;
        } else {
            cq.disable_eventfd();
        }
        self.signals = on;
    }

    fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }
}

impl Drop for UringDevice {
    /// Waits for every I/O handed to the kernel to finish before the buffers are freed. SQEs never
    /// handed over are dropped unexecuted (without SQPOLL the kernel reads SQEs only in
    /// `io_uring_enter` with `to_submit > 0`). If the kernel has not finished within
    /// `wait_timeout`, the remaining buffers are leaked instead of freed.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        for slot in std::mem::take(&mut self.unsubmitted) {
            self.slots[slot as usize] = None;
            self.free.push(slot);
        }
        if self.with_kernel() > 0 {
            let want = self.with_kernel();
            if let Err(e) = self.wait_for(want) {
                tracing::error!(error = %e, "io_uring device dropped with I/O still in the kernel; leaking its buffers");
                for io in self.slots.iter_mut().filter_map(Option::take) {
                    std::mem::forget(io);
                }
                return;
            }
        }
        self.drain(&mut sink);
    }
}
