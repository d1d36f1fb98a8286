//! Bolide's user-space NVMe driver over VFIO (`DESIGN.md`, "Drivers"), after SPDK's `lib/nvme`:
//! one [`Controller`] per PCI function per process, brought up once and shared; one polled I/O
//! queue pair per [`NvmeDevice`], that is per worker core, with no lock and no system call on the
//! I/O path (the doorbells are BAR0 stores, completions are found by their phase tag).
//!
//! * I/O: Read, Write (with FUA when [`NvmeOptions::fua`], for `commit_to_device`) and Flush, each
//!   data command described by PRPs (PRP1, PRP2 or a PRP list page per command id) and split at
//!   the controller's MDTS (and at 2 MiB, one PRP list page); [`NvmeDevice::deallocate`] (Dataset
//!   Management, TRIM) for freed space.
//! * Buffers: a buffer of a pool given to [`BlockDevice::register_buffers`] is mapped into the
//!   IOMMU once (zero copy, no system call per I/O); any other [`IoBuf`] is mapped for the
//!   duration of its I/O (`VFIO_IOMMU_MAP_DMA`/`UNMAP_DMA`: correct, but a system call each way).
//! * Errors: a failed command completes its I/O with [`IoStatus::Nvme`] (SCT/SC). A command that
//!   has not completed within [`NvmeOptions::timeout`] is aborted (Abort command); if the abort
//!   does not bring it back within a second the controller is disabled (CC.EN = 0, which stops
//!   all DMA) and every I/O of every queue on it fails; the device reports `Failed` from then on.
//! * Shutdown: the controller gets a normal shutdown notification (CC.SHN) when the last device on
//!   it is dropped; each device deletes its queue pair when dropped.
//!
//! Unsafe code lives only in [`vfio`] (ioctls, the BAR mapping) and [`dma`] (DMA memory).

mod ctrl;
pub mod dma;
mod queue;
pub mod spec;
pub mod vfio;

pub use ctrl::{Controller, NvmeError};

use crate::buf::{BufPool, IoBuf, SECTOR_SIZE};
use crate::device::{check_io, BlockDevice, Completion, DeviceError, DeviceInfo, IoKind, IoStatus, SubmitError};
use dma::{DmaRegion, MappedBuf};
use queue::QueuePair;
use spec::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest buffer mapped per I/O (one IOVA window per I/O slot), bytes.
pub const DYN_WINDOW_BYTES: u64 = 16 << 20;
/// Largest data transfer of one NVMe command the driver builds: one PRP list page.
pub const MAX_CMD_BYTES: usize = PRPS_PER_PAGE * PAGE_BYTES;

/// How to open a namespace.
#[derive(Clone, Debug)]
pub struct NvmeOptions {
    /// Namespace id (1 for the first).
    pub nsid: u32,
    /// Most I/Os queued plus in flight (`DeviceInfo::max_in_flight`), 1..=4096. The queue pair
    /// gets `queue_depth + 1` entries (at most CAP.MQES + 1 and 4096); commands beyond what it
    /// holds wait in the driver.
    pub queue_depth: u32,
    /// Set Force Unit Access on every write, so a completed write is on stable media.
    pub fua: bool,
    /// Expose only `[offset, offset + len)` bytes of the namespace (4 KiB-aligned), for sharing
    /// a namespace between devices; `None`: all of it.
    pub region: Option<(u64, u64)>,
    /// A command not completed after this long is aborted (then the controller reset).
    pub timeout: Duration,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            nsid: 1,
            queue_depth: 128,
            fua: false,
            region: None,
            timeout: Duration::from_secs(30),
        }
    }
}

enum Mem {
    None,
    Mapped(MappedBuf),
    Pool(IoBuf, u64),
}

impl Mem {
    fn iova(&self) -> u64 {
        match self {
            Mem::None => 0,
            Mem::Mapped(m) => m.iova(),
            Mem::Pool(_, iova) => *iova,
        }
    }
}

struct Io {
    tag: u64,
    kind: IoKind,
    offset: u64,
    len: usize,
    mem: Mem,
    parts_left: u32,
    err: Option<DeviceError>,
}

#[derive(Clone, Copy)]
struct Chunk {
    io: usize,
    /// Byte offset of the chunk in the I/O.
    off: usize,
    bytes: usize,
}

struct Cmd {
    io: usize,
    started: Instant,
}

/// One core's queue pair on one namespace: a [`BlockDevice`].
pub struct NvmeDevice {
    ctrl: Arc<Controller>,
    qp: QueuePair,
    info: DeviceInfo,
    nsid: u32,
    lba_shift: u32,
    deallocated_reads_zeros: bool,
    base_bytes: u64,
    fua: bool,
    max_cmd_bytes: usize,
    timeout: Duration,
    prp_pages: DmaRegion,
    dyn_iova_base: u64,
    ios: Vec<Option<Io>>,
    free_ios: Vec<usize>,
    cmds: Vec<Option<Cmd>>,
    free_cids: Vec<u16>,
    queued: Vec<usize>,
    backlog: VecDeque<Chunk>,
    outstanding: usize,
    done: VecDeque<Completion>,
    /// IOVA of each buffer of each registered pool, and the buffers' length.
    pools: HashMap<u32, (Vec<u64>, usize)>,
    inject_invalid_nsid: u32,
    inject_lost_doorbell: u32,
    failed: Option<DeviceError>,
    last_timeout_check: Instant,
}

/// Why [`NvmeDevice::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    #[error("nvme {address} namespace {nsid}: {what}")]
    Namespace { address: String, nsid: u32, what: String },
}

impl NvmeDevice {
    /// Opens namespace `opts.nsid` of the controller at PCI `address` (`DDDD:BB:DD.F`, bound to
    /// `vfio-pci`) with a new I/O queue pair.
    ///
    /// # Errors
    /// Controller bring-up ([`NvmeError`]), no such namespace, an LBA format the driver does not
    /// take (metadata, or blocks over 4 KiB), a region outside the namespace, no queue pair left.
    pub fn open(address: &str, opts: &NvmeOptions) -> Result<NvmeDevice, OpenError> {
        let ns_err = |what: String| OpenError::Namespace {
            address: address.to_string(),
            nsid: opts.nsid,
            what,
        };
        if !(1..=4096).contains(&opts.queue_depth) {
            return Err(ns_err(format!("queue_depth {} outside 1..=4096", opts.queue_depth)));
        }
        let ctrl = Controller::get(address)?;
        if opts.nsid == 0 || opts.nsid > ctrl.identify.nn {
            return Err(ns_err(format!("the controller has namespaces 1..={}", ctrl.identify.nn)));
        }
        let ns = ctrl.identify_namespace(opts.nsid)?;
        if ns.nsze == 0 {
            return Err(ns_err("inactive (size 0)".into()));
        }
        if ns.metadata_bytes != 0 || ns.lba_bytes as usize > SECTOR_SIZE || ns.lba_bytes < 512 {
            return Err(ns_err(format!(
                "LBA format {} ({} bytes + {} metadata): the driver needs 512..=4096-byte blocks without metadata",
                ns.lba_format, ns.lba_bytes, ns.metadata_bytes
            )));
        }
        let ns_bytes = ns.nsze * ns.lba_bytes as u64 / SECTOR_SIZE as u64 * SECTOR_SIZE as u64;
        let (base_bytes, capacity_bytes) = match opts.region {
            None => (0, ns_bytes),
            Some((off, len)) => {
                let ss = SECTOR_SIZE as u64;
                if !off.is_multiple_of(ss) || !len.is_multiple_of(ss) || len == 0 || off + len > ns_bytes {
                    return Err(ns_err(format!(
                        "region [{off}, +{len}) is not a non-empty 4 KiB-aligned part of the {ns_bytes}-byte namespace"
                    )));
                }
                (off, len)
            }
        };
        let id = &ctrl.identify;
        let mdts_bytes = if id.mdts == 0 {
            usize::MAX
        } else {
            ctrl.cap.min_page_bytes << id.mdts
        };
        let max_cmd_bytes = mdts_bytes
            .min(MAX_CMD_BYTES)
            .min(65536 * ns.lba_bytes as usize)
            / SECTOR_SIZE
            * SECTOR_SIZE;
        let depth = opts.queue_depth as usize;
        let qp = ctrl.create_io_queue((depth + 1).min(4096) as u16)?;
        let entries = qp.entries() as usize;
        let qid = qp.qid;
        let made = (|| {
            let prp_pages = ctrl.dma((entries - 1) * PAGE_BYTES)?;
            let dyn_iova_base = ctrl.alloc_iova(depth as u64 * DYN_WINDOW_BYTES);
            Ok::<_, NvmeError>((prp_pages, dyn_iova_base))
        })();
        let (prp_pages, dyn_iova_base) = match made {
            Ok(x) => x,
            Err(e) => {
                ctrl.delete_io_queue(qid);
                return Err(e.into());
            }
        };
        let info = DeviceInfo {
            name: format!("nvme:{address}/ns{}", opts.nsid),
            capacity_bytes,
            sector_size_bytes: SECTOR_SIZE,
            max_in_flight: depth,
            durable_writes: opts.fua || !id.volatile_write_cache,
            max_transfer_bytes: Some(max_cmd_bytes),
            lba_bytes: ns.lba_bytes as usize,
            volatile_write_cache: id.volatile_write_cache,
        };
        tracing::debug!(device = %info.name, qid, entries, max_cmd_bytes, "nvme queue pair ready");
        Ok(NvmeDevice {
            qp,
            info,
            nsid: opts.nsid,
            lba_shift: ns.lba_bytes.trailing_zeros(),
            deallocated_reads_zeros: ns.deallocated_reads_zeros,
            base_bytes,
            fua: opts.fua,
            max_cmd_bytes,
            timeout: opts.timeout,
            prp_pages,
            dyn_iova_base,
            ios: (0..depth).map(|_| None).collect(),
            free_ios: (0..depth).rev().collect(),
            cmds: (0..entries - 1).map(|_| None).collect(),
            free_cids: (0..entries as u16 - 1).rev().collect(),
            queued: Vec::with_capacity(depth),
            backlog: VecDeque::new(),
            outstanding: 0,
            done: VecDeque::with_capacity(depth),
            pools: HashMap::new(),
            inject_invalid_nsid: 0,
            inject_lost_doorbell: 0,
            failed: None,
            last_timeout_check: Instant::now(),
            ctrl,
        })
    }

    /// The controller's Identify data (model, serial, MDTS, features).
    pub fn identify(&self) -> &IdentifyController {
        &self.ctrl.identify
    }

    /// Whether a deallocated block reads as zeros (Identify Namespace DLFEAT).
    pub fn deallocated_reads_zeros(&self) -> bool {
        self.deallocated_reads_zeros
    }

    /// The I/O queue id of this device's queue pair.
    pub fn qid(&self) -> u16 {
        self.qp.qid
    }

    /// Error injection (as SPDK's `spdk_nvme_qpair_add_cmd_error_injection`): the next `count`
    /// data commands are sent to an invalid namespace id, so the controller fails them with
    /// SCT 0 / SC 0x0b (Invalid Namespace or Format).
    pub fn inject_invalid_namespace(&mut self, count: u32) {
        self.inject_invalid_nsid = count;
    }

    /// Error injection: the doorbell is not rung for the next `count` batches, so their commands
    /// sit in the SQ unseen and time out (to test the timeout, abort and reset path).
    pub fn inject_lost_doorbell(&mut self, count: u32) {
        self.inject_lost_doorbell = count;
    }

    fn dev_err(&self, op: IoKind, offset: u64, len: usize, status: IoStatus) -> DeviceError {
        DeviceError {
            op,
            device: self.info.name.clone(),
            offset,
            len,
            status,
        }
    }

    fn queue_io(&mut self, kind: IoKind, offset: u64, buf: Option<IoBuf>, tag: u64) -> Result<(), SubmitError> {
        if let Some(e) = &self.failed {
            return Err(SubmitError::Failed(e.clone(), buf));
        }
        let len = buf.as_ref().map_or(0, IoBuf::len);
        if let Some(b) = &buf {
            if let Err(reason) = check_io(&self.info, offset, b.len()) {
                return Err(SubmitError::Invalid { reason, buf });
            }
        }
        let Some(slot) = self.free_ios.pop() else {
            return Err(SubmitError::QueueFull(buf));
        };
        let mem = match buf {
            None => Mem::None,
            Some(b) => match b.reg_slot().and_then(|r| Some(self.pools.get(&r.pool_id)?.0[r.index as usize])) {
                Some(iova) => Mem::Pool(b, iova),
                None if len as u64 > DYN_WINDOW_BYTES => {
                    self.free_ios.push(slot);
                    return Err(SubmitError::Invalid {
                        reason: format!(
                            "{len}-byte buffer over the {DYN_WINDOW_BYTES}-byte limit for unregistered buffers"
                        ),
                        buf: Some(b),
                    });
                }
                None => {
                    let iova = self.dyn_iova_base + slot as u64 * DYN_WINDOW_BYTES;
                    match MappedBuf::map(&self.ctrl.container, b, iova) {
                        Ok(m) => Mem::Mapped(m),
                        Err((b, e)) => {
                            self.free_ios.push(slot);
                            let err = self.dev_err(kind, offset, len, IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO)));
                            return Err(SubmitError::Failed(err, Some(b)));
                        }
                    }
                }
            },
        };
        self.ios[slot] = Some(Io {
            tag,
            kind,
            offset,
            len,
            mem,
            parts_left: 0,
            err: None,
        });
        self.queued.push(slot);
        Ok(())
    }

    /// Moves backlog chunks into the SQ while command ids and SQ slots last; rings once.
    fn pump(&mut self) {
        while !self.backlog.is_empty() && self.qp.sq_free() > 0 {
            let Some(cid) = self.free_cids.pop() else { break };
            let ch = self.backlog.pop_front().expect("non-empty");
            let io = self.ios[ch.io].as_ref().expect("chunk of a live I/O");
            let mut nsid = self.nsid;
            if self.inject_invalid_nsid > 0 {
                self.inject_invalid_nsid -= 1;
                nsid = 0xffff_fff0;
            }
            let mut sqe = Sqe {
                cid,
                nsid,
                ..Default::default()
            };
            if io.kind == IoKind::Flush {
                sqe.opcode = NVM_FLUSH;
            } else {
                sqe.opcode = if io.kind == IoKind::Read { NVM_READ } else { NVM_WRITE };
                let iova = io.mem.iova() + ch.off as u64;
                let pages = ch.bytes / PAGE_BYTES;
                sqe.prp1 = iova;
                if pages == 2 {
                    sqe.prp2 = iova + PAGE_BYTES as u64;
                } else if pages > 2 {
                    let base = cid as usize * PAGE_BYTES;
                    debug_assert!(pages - 1 <= PRPS_PER_PAGE);
                    let mut list = [0u8; PAGE_BYTES];
                    for k in 1..pages {
                        let e = iova + (k * PAGE_BYTES) as u64;
                        list[(k - 1) * 8..k * 8].copy_from_slice(&e.to_le_bytes());
                    }
                    self.prp_pages.write(base, &list[..(pages - 1) * 8]);
                    sqe.prp2 = self.prp_pages.iova(base);
                }
                let slba = (self.base_bytes + io.offset + ch.off as u64) >> self.lba_shift;
                let nlb = (ch.bytes >> self.lba_shift) as u32;
                sqe.cdw10 = slba as u32;
                sqe.cdw11 = (slba >> 32) as u32;
                sqe.cdw12 = nlb - 1;
                if io.kind == IoKind::Write && self.fua {
                    sqe.cdw12 |= CDW12_FUA;
                }
            }
            self.cmds[cid as usize] = Some(Cmd {
                io: ch.io,
                started: Instant::now(),
            });
            self.qp.push(&sqe);
        }
        if self.inject_lost_doorbell > 0 && self.qp.unrung() {
            self.inject_lost_doorbell -= 1;
            return;
        }
        self.qp.ring();
    }

    fn finish(&mut self, slot: usize) {
        let io = self.ios[slot].take().expect("finishing a live I/O");
        self.free_ios.push(slot);
        self.outstanding -= 1;
        let mut result = io.err.map_or(Ok(()), Err);
        let buf = match io.mem {
            Mem::None => None,
            Mem::Pool(b, _) => Some(b),
            Mem::Mapped(m) => match m.into_buf() {
                Ok(b) => Some(b),
                Err(e) => {
                    result = Err(self.dev_err(io.kind, io.offset, io.len, IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))));
                    None
                }
            },
        };
        self.done.push_back(Completion {
            tag: io.tag,
            kind: io.kind,
            offset: if io.kind == IoKind::Flush { 0 } else { io.offset },
            buf,
            result,
        });
    }

    /// Consumes every posted completion; returns how many commands completed.
    fn process_cq(&mut self) -> usize {
        let mut n = 0;
        while let Some(c) = self.qp.poll() {
            n += 1;
            let Some(cmd) = self.cmds.get_mut(c.cid as usize).and_then(Option::take) else {
                tracing::warn!(device = %self.info.name, cid = c.cid, "completion for no command in flight");
                continue;
            };
            self.free_cids.push(c.cid);
            let io = self.ios[cmd.io].as_mut().expect("command of a live I/O");
            if !c.ok() && io.err.is_none() {
                io.err = Some(DeviceError {
                    op: io.kind,
                    device: self.info.name.clone(),
                    offset: io.offset,
                    len: io.len,
                    status: IoStatus::Nvme { sct: c.sct, sc: c.sc },
                });
            }
            io.parts_left -= 1;
            if io.parts_left == 0 {
                self.finish(cmd.io);
            }
        }
        if n > 0 {
            self.qp.ack();
            self.pump();
        }
        n
    }

    /// Fails every I/O not yet completed with `status` and latches the device failed.
    fn fail_all(&mut self, status: IoStatus) {
        let err = self.dev_err(IoKind::Read, 0, 0, status.clone());
        self.failed.get_or_insert(err);
        for c in &mut self.cmds {
            *c = None;
        }
        self.free_cids = (0..self.cmds.len() as u16).rev().collect();
        self.backlog.clear();
        self.outstanding += self.queued.len();
        self.queued.clear();
        for slot in 0..self.ios.len() {
            if let Some(io) = self.ios[slot].as_mut() {
                if io.err.is_none() {
                    io.err = Some(DeviceError {
                        op: io.kind,
                        device: self.info.name.clone(),
                        offset: io.offset,
                        len: io.len,
                        status: status.clone(),
                    });
                }
                self.finish(slot);
            }
        }
    }

    /// Aborts and, failing that, resets for the oldest command past the timeout.
    fn check_timeouts(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_timeout_check) < Duration::from_millis(1) {
            return;
        }
        self.last_timeout_check = now;
        if self.ctrl.failed() {
            self.fail_all(IoStatus::Failed);
            return;
        }
        let Some((cid, _)) = self
            .cmds
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.started)))
            .filter(|(_, t)| now.duration_since(*t) > self.timeout)
            .min_by_key(|(_, t)| *t)
        else {
            return;
        };
        tracing::error!(device = %self.info.name, cid, timeout_ms = self.timeout.as_millis() as u64, "nvme command timed out; aborting");
        let aborted = self.ctrl.abort(self.qp.qid, cid as u16);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.cmds[cid].is_some() && Instant::now() < deadline {
            self.process_cq();
            std::hint::spin_loop();
        }
        if self.cmds[cid].is_some() {
            self.ctrl
                .reset_failed(&format!("command {cid} on queue {} timed out (abort {})", self.qp.qid, if aborted { "accepted" } else { "refused" }));
            self.fail_all(IoStatus::Os(libc::ETIMEDOUT));
        }
    }
}

impl NvmeDevice {
    /// Deallocates (TRIMs) `[offset, offset + len)` with Dataset Management, attribute
    /// Deallocate (NVM Command Set spec 3.2.3), and waits for it. For freed wblocks: the
    /// controller may then read the range as zeros (Identify Namespace DLFEAT says whether it
    /// does) and need not keep its data. The queue pair must be idle.
    ///
    /// # Errors
    /// `Invalid` when the range is not sector-aligned or past the end, the controller has no
    /// Dataset Management (ONCS bit 2), or I/O is in flight; `Failed` with the NVMe status when
    /// the command fails or times out.
    pub fn deallocate(&mut self, offset: u64, len: u64) -> Result<(), SubmitError> {
        let invalid = |reason: String| SubmitError::Invalid { reason, buf: None };
        if let Some(e) = &self.failed {
            return Err(SubmitError::Failed(e.clone(), None));
        }
        if !self.ctrl.identify.dsm {
            return Err(invalid(format!("{}: no Dataset Management (ONCS bit 2 clear)", self.info.name)));
        }
        if self.in_flight() != 0 {
            return Err(invalid(format!("{}: deallocate needs an idle queue pair", self.info.name)));
        }
        let n = usize::try_from(len).map_err(|_| invalid(format!("length {len} too large")))?;
        check_io(&self.info, offset, n).map_err(invalid)?;
        let nlb = len >> self.lba_shift;
        if nlb > u32::MAX as u64 {
            return Err(invalid(format!("{len} bytes is more than one range holds")));
        }
        let cid = self.free_cids.pop().expect("an idle queue pair has every command id free");
        // One range (16 bytes: context attributes, length in LBAs, starting LBA) in the command
        // id's PRP list page.
        let slba = (self.base_bytes + offset) >> self.lba_shift;
        let mut range = [0u8; 16];
        range[4..8].copy_from_slice(&(nlb as u32).to_le_bytes());
        range[8..16].copy_from_slice(&slba.to_le_bytes());
        let page = cid as usize * PAGE_BYTES;
        self.prp_pages.write(page, &range);
        self.qp.push(&Sqe {
            opcode: NVM_DSM,
            cid,
            nsid: self.nsid,
            prp1: self.prp_pages.iova(page),
            cdw10: 0, // one range (0-based)
            cdw11: DSM_AD,
            ..Default::default()
        });
        self.qp.ring();
        let deadline = Instant::now() + self.timeout;
        let cqe = loop {
            if let Some(c) = self.qp.poll() {
                self.qp.ack();
                if c.cid == cid {
                    break Some(c);
                }
                continue;
            }
            if Instant::now() > deadline {
                break None;
            }
            std::hint::spin_loop();
        };
        let status = match cqe {
            Some(c) if c.ok() => None,
            Some(c) => Some(IoStatus::Nvme { sct: c.sct, sc: c.sc }),
            None => {
                self.ctrl.reset_failed("dataset management timed out");
                self.failed = Some(self.dev_err(IoKind::Write, offset, n, IoStatus::Os(libc::ETIMEDOUT)));
                Some(IoStatus::Os(libc::ETIMEDOUT))
            }
        };
        self.free_cids.push(cid);
        match status {
            None => Ok(()),
            Some(st) => Err(SubmitError::Failed(self.dev_err(IoKind::Write, offset, n, st), None)),
        }
    }
}

impl BlockDevice for NvmeDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn register_buffers(&mut self, pool: &BufPool) -> Result<(), DeviceError> {
        if self.pools.contains_key(&pool.id()) {
            return Ok(());
        }
        let stride = (pool.buf_len() as u64).next_multiple_of(PAGE_BYTES as u64);
        let base = self.ctrl.alloc_iova(stride * pool.count() as u64);
        let iovas = dma::map_pool(&self.ctrl.container, pool, base, stride).map_err(|e| {
            self.dev_err(IoKind::Read, 0, 0, IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        self.pools.insert(pool.id(), (iovas, pool.buf_len()));
        Ok(())
    }

    fn submit_read(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.queue_io(IoKind::Read, offset, Some(buf), tag)
    }

    fn submit_write(&mut self, offset: u64, buf: IoBuf, tag: u64) -> Result<(), SubmitError> {
        self.queue_io(IoKind::Write, offset, Some(buf), tag)
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError> {
        self.queue_io(IoKind::Flush, 0, None, tag)
    }

    fn submit(&mut self) -> Result<usize, DeviceError> {
        let n = self.queued.len();
        let queued = std::mem::take(&mut self.queued);
        for &slot in &queued {
            let io = self.ios[slot].as_mut().expect("queued I/O");
            if io.kind == IoKind::Flush {
                io.parts_left = 1;
                self.backlog.push_back(Chunk { io: slot, off: 0, bytes: 0 });
            } else {
                let mut off = 0;
                while off < io.len {
                    let bytes = (io.len - off).min(self.max_cmd_bytes);
                    self.backlog.push_back(Chunk { io: slot, off, bytes });
                    io.parts_left += 1;
                    off += bytes;
                }
            }
        }
        self.queued = queued;
        self.queued.clear();
        self.outstanding += n;
        self.pump();
        Ok(n)
    }

    fn reap(&mut self, out: &mut Vec<Completion>, min_complete: usize) -> Result<usize, DeviceError> {
        let want = min_complete.min(self.outstanding + self.done.len());
        let mut got = 0;
        loop {
            self.process_cq();
            got += self.done.len();
            out.extend(self.done.drain(..));
            if got >= want {
                break;
            }
            self.check_timeouts();
            std::hint::spin_loop();
        }
        if self.outstanding > 0 {
            self.check_timeouts();
        }
        Ok(got)
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.outstanding + self.done.len()
    }

    /// Finished I/Os waiting, or a completion posted in the CQ (no system call: one load).
    fn has_completions(&mut self) -> bool {
        !self.done.is_empty() || self.qp.has_completion()
    }
}

impl Drop for NvmeDevice {
    fn drop(&mut self) {
        // Let commands in flight finish (bounded), then delete the queue pair: the controller
        // completes or aborts the SQ's commands before Delete I/O SQ completes, so no DMA reaches
        // a buffer after this.
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.cmds.iter().any(Option::is_some) && Instant::now() < deadline && !self.ctrl.failed() {
            self.process_cq();
        }
        self.ctrl.delete_io_queue(self.qp.qid);
        for (_, (iovas, len)) in self.pools.drain() {
            for iova in iovas {
                let _ = self.ctrl.container.unmap_dma(iova, len);
            }
        }
    }
}
