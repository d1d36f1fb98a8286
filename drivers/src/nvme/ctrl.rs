//! The controller: VFIO handles, BAR0, bring-up (Base spec 3.5.1 "Memory-based Controller
//! Initialization"), the admin queue, I/O queue creation and deletion, and shutdown (3.6.1).
//! One `Controller` per PCI function per process, shared (`Arc`) by every core's queue pair.

use super::dma::DmaRegion;
use super::queue::QueuePair;
use super::spec::*;
use super::vfio::{self, Container, Mmio, PciDevice};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Why a controller could not be brought up or a queue made.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Vfio(#[from] vfio::VfioError),
    #[error("nvme {address}: {what}")]
    Controller { address: String, what: String },
    #[error("nvme {address}: admin command {opcode:#04x} failed: sct={sct:#x} sc={sc:#x}")]
    Admin {
        address: String,
        opcode: u8,
        sct: u8,
        sc: u8,
    },
    #[error("nvme {address}: DMA memory: {source}")]
    Dma {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// BAR0 and its doorbell stride.
pub struct Bar {
    pub mmio: Mmio,
    pub doorbell_stride_bytes: usize,
}

/// Admin queue depth (entries).
const ADMIN_ENTRIES: u16 = 32;
/// I/O queues asked for with Set Features (Number of Queues).
const IO_QUEUES_WANTED: u16 = 64;
/// First IOVA the driver hands out; below it sit the x86 MSI window and legacy holes.
const IOVA_BASE: u64 = 1 << 32;
/// Longest an admin command may take, ms.
const ADMIN_TIMEOUT_MS: u64 = 10_000;

struct Admin {
    qp: QueuePair,
    data: DmaRegion,
    next_cid: u16,
}

pub struct Controller {
    pub address: String,
    pub container: Arc<Container>,
    pub bar: Arc<Bar>,
    _pci: PciDevice,
    pub cap: Cap,
    pub version: u32,
    pub identify: IdentifyController,
    admin: Mutex<Admin>,
    iova_next: AtomicU64,
    qids: Mutex<Vec<bool>>,
    /// Set after a reset for a timeout or a fatal status: every queue fails its I/O.
    failed: AtomicBool,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Controller>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Controller>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Controller {
    /// The controller at `address`, brought up on first use and shared afterwards.
    ///
    /// # Errors
    /// VFIO setup, a register timeout, a fatal status or a failed admin command.
    pub fn get(address: &str) -> Result<Arc<Controller>, NvmeError> {
        let mut r = registry().lock().unwrap();
        if let Some(c) = r.get(address).and_then(Weak::upgrade) {
            return Ok(c);
        }
        // A controller whose last device was just dropped may still be closing its VFIO group on
        // another thread (the group opens once at a time): retry EBUSY for up to two seconds.
        let mut tries = 0;
        let c = loop {
            match Controller::bring_up(address) {
                Err(NvmeError::Vfio(e)) if e.source.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break Arc::new(r?),
            }
        };
        r.insert(address.to_string(), Arc::downgrade(&c));
        Ok(c)
    }

    fn err(&self, what: impl Into<String>) -> NvmeError {
        NvmeError::Controller {
            address: self.address.clone(),
            what: what.into(),
        }
    }

    /// Reserves `len` bytes of IOVA space (4 KiB-aligned).
    pub fn alloc_iova(&self, len: u64) -> u64 {
        self.iova_next
            .fetch_add(len.next_multiple_of(2 << 20), Ordering::Relaxed)
    }

    /// New DMA memory of `len` bytes at a fresh IOVA.
    pub fn dma(&self, len: usize) -> Result<DmaRegion, NvmeError> {
        let iova = self.alloc_iova(len.next_multiple_of(2 << 20) as u64);
        DmaRegion::new(&self.container, len, iova).map_err(|source| NvmeError::Dma {
            address: self.address.clone(),
            source,
        })
    }

    fn bring_up(address: &str) -> Result<Controller, NvmeError> {
        let (container, pci, mmio) = vfio::open(address)?;
        let container = Arc::new(container);
        let cap_raw = mmio.read64(REG_CAP);
        let cap = Cap::decode(cap_raw);
        let version = mmio.read32(REG_VS);
        let cerr = |what: String| NvmeError::Controller {
            address: address.to_string(),
            what,
        };
        if !cap.nvm_command_set {
            return Err(cerr(format!("CAP {cap_raw:#x}: no NVM command set")));
        }
        if cap.min_page_bytes > PAGE_BYTES {
            return Err(cerr(format!("CAP.MPSMIN {} bytes > 4096", cap.min_page_bytes)));
        }
        let bar = Arc::new(Bar {
            mmio,
            doorbell_stride_bytes: cap.doorbell_stride_bytes,
        });
        // Reset: CC.EN = 0, then wait for CSTS.RDY = 0.
        let cc = bar.mmio.read32(REG_CC);
        if cc & CC_EN != 0 {
            bar.mmio.write32(REG_CC, cc & !CC_EN);
        }
        wait_ready(&bar.mmio, &cap, false).map_err(cerr)?;

        let iova_next = AtomicU64::new(IOVA_BASE);
        let region = |len: usize| -> Result<DmaRegion, NvmeError> {
            let iova = iova_next.fetch_add((len as u64).next_multiple_of(2 << 20), Ordering::Relaxed);
            DmaRegion::new(&container, len, iova).map_err(|source| NvmeError::Dma {
                address: address.to_string(),
                source,
            })
        };
        let asq = region(ADMIN_ENTRIES as usize * SQE_BYTES)?;
        let acq = region(ADMIN_ENTRIES as usize * CQE_BYTES)?;
        let data = region(PAGE_BYTES)?;
        let qp = QueuePair::new(0, ADMIN_ENTRIES, asq, acq, bar.clone());
        let aqa = (ADMIN_ENTRIES as u32 - 1) | (ADMIN_ENTRIES as u32 - 1) << 16;
        bar.mmio.write32(REG_AQA, aqa);
        bar.mmio.write64(REG_ASQ, qp.sq_iova());
        bar.mmio.write64(REG_ACQ, qp.cq_iova());
        // CSS = 000b (NVM), MPS = 0 (4 KiB), AMS = round robin.
        bar.mmio.write32(REG_CC, CC_IOSQES_IOCQES | CC_EN);
        wait_ready(&bar.mmio, &cap, true).map_err(cerr)?;

        let mut c = Controller {
            address: address.to_string(),
            container,
            bar,
            _pci: pci,
            cap,
            version,
            identify: IdentifyController::decode(&[0u8; 4096]),
            admin: Mutex::new(Admin { qp, data, next_cid: 0 }),
            iova_next,
            qids: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
        };
        let id = c.admin_data(
            &Sqe {
                opcode: ADMIN_IDENTIFY,
                cdw10: CNS_CONTROLLER,
                ..Default::default()
            },
        )?;
        c.identify = IdentifyController::decode(&id);
        let r = c.admin_cmd(&Sqe {
            opcode: ADMIN_SET_FEATURES,
            cdw10: FEAT_NUM_QUEUES,
            cdw11: (IO_QUEUES_WANTED as u32 - 1) | (IO_QUEUES_WANTED as u32 - 1) << 16,
            ..Default::default()
        })?;
        // Dword 0: NSQA (15:0) and NCQA (31:16), both 0-based.
        let n = ((r & 0xffff).min(r >> 16) + 1).min(IO_QUEUES_WANTED as u32) as usize;
        *c.qids.lock().unwrap() = vec![false; n];
        tracing::info!(
            address,
            model = %c.identify.model,
            serial = %c.identify.serial,
            version = format!("{:#x}", version),
            io_queues = n,
            mdts = c.identify.mdts,
            "nvme controller ready"
        );
        Ok(c)
    }

    /// Runs one admin command and waits for it; returns completion dword 0.
    ///
    /// # Errors
    /// A non-zero status or no completion within the admin timeout.
    pub fn admin_cmd(&self, sqe: &Sqe) -> Result<u32, NvmeError> {
        let mut a = self.admin.lock().unwrap();
        self.admin_locked(&mut a, sqe, None)
    }

    /// Runs an admin command that transfers one 4 KiB page from the controller; returns the page.
    fn admin_data(&self, sqe: &Sqe) -> Result<Vec<u8>, NvmeError> {
        let mut a = self.admin.lock().unwrap();
        let iova = a.data.iova(0);
        a.data.zero(0, PAGE_BYTES);
        self.admin_locked(&mut a, sqe, Some(iova))?;
        let mut out = vec![0u8; PAGE_BYTES];
        a.data.read(0, &mut out);
        Ok(out)
    }

    fn admin_locked(&self, a: &mut Admin, sqe: &Sqe, prp1: Option<u64>) -> Result<u32, NvmeError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.err("controller failed and was reset"));
        }
        let cid = a.next_cid;
        a.next_cid = (a.next_cid + 1) % 0x8000;
        let mut s = *sqe;
        s.cid = cid;
        if let Some(p) = prp1 {
            s.prp1 = p;
        }
        a.qp.push(&s);
        a.qp.ring();
        let deadline = Instant::now() + Duration::from_millis(ADMIN_TIMEOUT_MS);
        loop {
            if let Some(c) = a.qp.poll() {
                a.qp.ack();
                if c.cid != cid {
                    // A late completion of an earlier (timed-out) command: drop it.
                    continue;
                }
                if !c.ok() {
                    return Err(NvmeError::Admin {
                        address: self.address.clone(),
                        opcode: sqe.opcode,
                        sct: c.sct,
                        sc: c.sc,
                    });
                }
                return Ok(c.result);
            }
            if Instant::now() > deadline {
                return Err(self.err(format!(
                    "admin command {:#04x} not completed within {ADMIN_TIMEOUT_MS} ms",
                    sqe.opcode
                )));
            }
            std::hint::spin_loop();
        }
    }

    /// Identify Namespace `nsid`.
    ///
    /// # Errors
    /// The command failed (e.g. no such namespace: SC 0x0b).
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, NvmeError> {
        let d = self.admin_data(&Sqe {
            opcode: ADMIN_IDENTIFY,
            nsid,
            cdw10: CNS_NAMESPACE,
            ..Default::default()
        })?;
        Ok(IdentifyNamespace::decode(&d))
    }

    /// Creates an I/O completion queue and submission queue pair of `entries` entries,
    /// physically contiguous, polled (interrupts off).
    ///
    /// # Errors
    /// No queue id left (the controller granted fewer than asked), DMA memory, or the
    /// Create I/O CQ/SQ command failed.
    pub fn create_io_queue(self: &Arc<Self>, entries: u16) -> Result<QueuePair, NvmeError> {
        let entries = entries.clamp(2, self.cap.max_queue_entries.min(4096) as u16);
        let qid = {
            let mut q = self.qids.lock().unwrap();
            let i = q.iter().position(|used| !used).ok_or_else(|| {
                self.err(format!("all {} I/O queue pairs are in use (one per worker)", q.len()))
            })?;
            q[i] = true;
            i as u16 + 1
        };
        let release = |c: &Controller| c.qids.lock().unwrap()[qid as usize - 1] = false;
        let made = (|| {
            let sq = self.dma(entries as usize * SQE_BYTES)?;
            let cq = self.dma(entries as usize * CQE_BYTES)?;
            let qp = QueuePair::new(qid, entries, sq, cq, self.bar.clone());
            let size = (entries as u32 - 1) << 16 | qid as u32;
            self.admin_cmd(&Sqe {
                opcode: ADMIN_CREATE_CQ,
                prp1: qp.cq_iova(),
                cdw10: size,
                cdw11: 1, // PC = 1, IEN = 0
                ..Default::default()
            })?;
            if let Err(e) = self.admin_cmd(&Sqe {
                opcode: ADMIN_CREATE_SQ,
                prp1: qp.sq_iova(),
                cdw10: size,
                cdw11: (qid as u32) << 16 | 1, // CQID, PC = 1
                ..Default::default()
            }) {
                let _ = self.delete_cq(qid);
                return Err(e);
            }
            Ok(qp)
        })();
        if made.is_err() {
            release(self);
        }
        made
    }

    fn delete_cq(&self, qid: u16) -> Result<u32, NvmeError> {
        self.admin_cmd(&Sqe {
            opcode: ADMIN_DELETE_CQ,
            cdw10: qid as u32,
            ..Default::default()
        })
    }

    /// Deletes I/O queue pair `qid` (SQ first, then CQ) and frees its id.
    pub fn delete_io_queue(&self, qid: u16) {
        if !self.failed() {
            let sq = self.admin_cmd(&Sqe {
                opcode: ADMIN_DELETE_SQ,
                cdw10: qid as u32,
                ..Default::default()
            });
            let cq = self.delete_cq(qid);
            if let Err(e) = sq.and(cq) {
                tracing::warn!("nvme {}: deleting I/O queue {qid}: {e}", self.address);
            }
        }
        self.qids.lock().unwrap()[qid as usize - 1] = false;
    }

    /// Asks the controller to abort command `cid` of SQ `sqid` (Base spec 5.1). Returns whether
    /// the controller reports it aborted (dword 0 bit 0 clear).
    pub fn abort(&self, sqid: u16, cid: u16) -> bool {
        match self.admin_cmd(&Sqe {
            opcode: ADMIN_ABORT,
            cdw10: sqid as u32 | (cid as u32) << 16,
            ..Default::default()
        }) {
            Ok(dw0) => dw0 & 1 == 0,
            Err(_) => false,
        }
    }

    /// Disables the controller (CC.EN = 0): it stops all DMA and drops every queue. Used after a
    /// command timed out and could not be aborted; every queue pair fails from now on.
    pub fn reset_failed(&self, why: &str) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("nvme {}: resetting the controller: {why}", self.address);
            let cc = self.bar.mmio.read32(REG_CC);
            self.bar.mmio.write32(REG_CC, cc & !CC_EN);
            let _ = wait_ready(&self.bar.mmio, &self.cap, false);
        }
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

fn wait_ready(mmio: &Mmio, cap: &Cap, want_ready: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(cap.timeout_ms);
    loop {
        let csts = mmio.read32(REG_CSTS);
        if csts == u32::MAX {
            return Err("CSTS reads all ones: the device is gone".into());
        }
        if want_ready && csts & CSTS_CFS != 0 {
            return Err(format!("controller fatal status (CSTS {csts:#x})"));
        }
        if (csts & CSTS_RDY != 0) == want_ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "CSTS.RDY did not become {} within CAP.TO ({} ms)",
                want_ready as u8, cap.timeout_ms
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl Drop for Controller {
    /// Normal shutdown notification (CC.SHN = 01b), waiting up to CAP.TO for CSTS.SHST = 10b.
    fn drop(&mut self) {
        if self.failed() {
            return;
        }
        let m = &self.bar.mmio;
        let cc = m.read32(REG_CC);
        m.write32(REG_CC, (cc & !(3 << 14)) | CC_SHN_NORMAL);
        let deadline = Instant::now() + Duration::from_millis(self.cap.timeout_ms);
        while m.read32(REG_CSTS) & CSTS_SHST_MASK != CSTS_SHST_COMPLETE {
            if Instant::now() > deadline {
                tracing::warn!("nvme {}: shutdown not complete within CAP.TO", self.address);
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        tracing::info!("nvme {}: shut down", self.address);
    }
}
