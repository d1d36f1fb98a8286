//! NVMe facts used by the driver: controller registers, opcodes, the 64-byte submission entry,
//! the 16-byte completion entry and the Identify fields read (NVM Express Base Specification 2.0,
//! sections 3.1 "Controller Registers", 4.2 "Submission Queue Entry", 4.6 "Completion Queue
//! Entry", 5.17 "Identify"; NVM Command Set Specification 1.0, 3.3 "I/O Commands").

/// Controller Capabilities (64-bit).
pub const REG_CAP: usize = 0x00;
/// Version.
pub const REG_VS: usize = 0x08;
/// Controller Configuration.
pub const REG_CC: usize = 0x14;
/// Controller Status.
pub const REG_CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const REG_AQA: usize = 0x24;
/// Admin Submission Queue base address (64-bit).
pub const REG_ASQ: usize = 0x28;
/// Admin Completion Queue base address (64-bit).
pub const REG_ACQ: usize = 0x30;
/// First doorbell.
pub const REG_DOORBELL_BASE: usize = 0x1000;

pub const CC_EN: u32 = 1;
/// CC.IOSQES = 6 (64-byte SQ entries), CC.IOCQES = 4 (16-byte CQ entries).
pub const CC_IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
/// CC.SHN = 01b, normal shutdown notification.
pub const CC_SHN_NORMAL: u32 = 1 << 14;
pub const CSTS_RDY: u32 = 1;
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST = 10b: shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;
pub const CSTS_SHST_MASK: u32 = 3 << 2;

/// Capabilities decoded from CAP.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// Maximum queue entries supported (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// Worst-case time for CSTS.RDY to change, ms (CAP.TO × 500).
    pub timeout_ms: u64,
    /// Doorbell stride, bytes (4 << CAP.DSTRD).
    pub doorbell_stride_bytes: usize,
    /// Smallest memory page size, bytes (4096 << CAP.MPSMIN).
    pub min_page_bytes: usize,
    /// CAP.CSS bit 0: the NVM command set.
    pub nvm_command_set: bool,
}

impl Cap {
    pub fn decode(cap: u64) -> Cap {
        Cap {
            max_queue_entries: (cap & 0xffff) as u32 + 1,
            timeout_ms: ((cap >> 24) & 0xff).max(1) * 500,
            doorbell_stride_bytes: 4 << ((cap >> 32) & 0xf),
            min_page_bytes: 4096 << ((cap >> 48) & 0xf),
            nvm_command_set: (cap >> 37) & 1 == 1,
        }
    }
}

// Admin opcodes (Base spec 5, figure 28).
pub const ADMIN_DELETE_SQ: u8 = 0x00;
pub const ADMIN_CREATE_SQ: u8 = 0x01;
pub const ADMIN_DELETE_CQ: u8 = 0x04;
pub const ADMIN_CREATE_CQ: u8 = 0x05;
pub const ADMIN_IDENTIFY: u8 = 0x06;
pub const ADMIN_ABORT: u8 = 0x08;
pub const ADMIN_SET_FEATURES: u8 = 0x09;
/// Feature "Number of Queues".
pub const FEAT_NUM_QUEUES: u32 = 0x07;
/// Identify CNS values.
pub const CNS_NAMESPACE: u32 = 0x00;
pub const CNS_CONTROLLER: u32 = 0x01;

// NVM command set opcodes.
pub const NVM_FLUSH: u8 = 0x00;
pub const NVM_WRITE: u8 = 0x01;
pub const NVM_READ: u8 = 0x02;
pub const NVM_DSM: u8 = 0x09;
/// Command Dword 12, Force Unit Access (read and write).
pub const CDW12_FUA: u32 = 1 << 30;
/// DSM Command Dword 11, Attribute – Deallocate.
pub const DSM_AD: u32 = 1 << 2;

pub const SQE_BYTES: usize = 64;
pub const CQE_BYTES: usize = 16;
/// Memory page size the driver configures (CC.MPS = 0).
pub const PAGE_BYTES: usize = 4096;
/// PRP entries in one list page.
pub const PRPS_PER_PAGE: usize = PAGE_BYTES / 8;

/// A submission queue entry, built field by field.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sqe {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
}

impl Sqe {
    /// The 64 little-endian bytes (PSDT = 0: PRPs; FUSE = 0).
    pub fn to_bytes(&self) -> [u8; SQE_BYTES] {
        let mut b = [0u8; SQE_BYTES];
        let dw0 = self.opcode as u32 | (self.cid as u32) << 16;
        b[0..4].copy_from_slice(&dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        b[40..44].copy_from_slice(&self.cdw10.to_le_bytes());
        b[44..48].copy_from_slice(&self.cdw11.to_le_bytes());
        b[48..52].copy_from_slice(&self.cdw12.to_le_bytes());
        b[52..56].copy_from_slice(&self.cdw13.to_le_bytes());
        b
    }
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific (DW0).
    pub result: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// Status Code Type (3 bits).
    pub sct: u8,
    /// Status Code (8 bits).
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Cqe {
    /// Decodes DW0, DW2 and DW3 (the phase bit is checked by the caller).
    pub fn decode(dw0: u32, dw2: u32, dw3: u32) -> Cqe {
        Cqe {
            result: dw0,
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            sc: ((dw3 >> 17) & 0xff) as u8,
            sct: ((dw3 >> 25) & 0x7) as u8,
            dnr: dw3 >> 31 == 1,
        }
    }

    pub fn ok(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
}

/// The Identify Controller fields the driver uses.
#[derive(Clone, Debug)]
pub struct IdentifyController {
    pub serial: String,
    pub model: String,
    /// Maximum Data Transfer Size as a power of two of the minimum page size; 0 = no limit.
    pub mdts: u8,
    /// Number of namespaces.
    pub nn: u32,
    /// ONCS bit 2: Dataset Management.
    pub dsm: bool,
    /// VWC bit 0: a volatile write cache is present.
    pub volatile_write_cache: bool,
    /// SGLS bits 1:0 non-zero: SGLs supported for NVM commands.
    pub sgl: bool,
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

impl IdentifyController {
    /// Decodes the 4096-byte data structure (Base spec figure 275).
    pub fn decode(d: &[u8]) -> IdentifyController {
        assert!(d.len() >= 4096);
        IdentifyController {
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            mdts: d[77],
            nn: u32::from_le_bytes(d[516..520].try_into().unwrap()),
            dsm: u16::from_le_bytes(d[520..522].try_into().unwrap()) & (1 << 2) != 0,
            volatile_write_cache: d[525] & 1 == 1,
            sgl: u32::from_le_bytes(d[536..540].try_into().unwrap()) & 3 != 0,
        }
    }
}

/// The Identify Namespace fields the driver uses (NVM Command Set spec figure 97).
#[derive(Clone, Copy, Debug)]
pub struct IdentifyNamespace {
    /// Namespace size, logical blocks.
    pub nsze: u64,
    /// Bytes per logical block of the formatted LBA format.
    pub lba_bytes: u32,
    /// Index of the formatted LBA format (FLBAS).
    pub lba_format: u8,
    /// Metadata bytes per block of that format (the driver needs 0).
    pub metadata_bytes: u16,
    /// DLFEAT bits 2:0 = 001b: a deallocated block reads as zeros.
    pub deallocated_reads_zeros: bool,
}

impl IdentifyNamespace {
    pub fn decode(d: &[u8]) -> IdentifyNamespace {
        assert!(d.len() >= 4096);
        let nsze = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let flbas = d[26];
        let idx = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
        let off = 128 + 4 * idx as usize;
        let lbaf = u32::from_le_bytes(d[off..off + 4].try_into().unwrap());
        IdentifyNamespace {
            nsze,
            lba_bytes: 1u32 << ((lbaf >> 16) & 0xff),
            lba_format: idx,
            metadata_bytes: lbaf as u16,
            deallocated_reads_zeros: d[33] & 0x7 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_layout() {
        let s = Sqe {
            opcode: NVM_READ,
            cid: 0x1234,
            nsid: 1,
            prp1: 0x1000,
            prp2: 0x2000,
            cdw10: 5,
            cdw11: 6,
            cdw12: 7 | CDW12_FUA,
            cdw13: 0,
        };
        let b = s.to_bytes();
        assert_eq!(&b[0..4], &[0x02, 0, 0x34, 0x12]);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_le_bytes(b[48..52].try_into().unwrap()), 7 | (1 << 30));
    }

    #[test]
    fn cqe_status_fields() {
        // SCT 1 (command specific), SC 0x80, DNR, phase 1, cid 9.
        let dw3 = 9 | 1 << 16 | 0x80 << 17 | 1 << 25 | 1 << 31;
        let c = Cqe::decode(0, 3 | 2 << 16, dw3);
        assert_eq!((c.cid, c.sct, c.sc, c.dnr, c.sq_head, c.sq_id), (9, 1, 0x80, true, 3, 2));
        assert!(!c.ok());
    }

    #[test]
    fn cap_fields() {
        let c = Cap::decode(0x7ff | 20 << 24 | 1 << 37);
        assert_eq!(c.max_queue_entries, 2048);
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.doorbell_stride_bytes, 4);
        assert!(c.nvm_command_set);
    }

    #[test]
    fn identify_namespace_lba_format() {
        let mut d = vec![0u8; 4096];
        d[0..8].copy_from_slice(&1000u64.to_le_bytes());
        d[26] = 1;
        d[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = IdentifyNamespace::decode(&d);
        assert_eq!((ns.nsze, ns.lba_bytes, ns.lba_format, ns.metadata_bytes), (1000, 4096, 1, 0));
        assert!(!ns.deallocated_reads_zeros);
    }
}
