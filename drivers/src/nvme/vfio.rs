//! VFIO: a container with the IOMMU type-1 (v2) backend, one group, one PCI device, its BAR0
//! mapped and its config space reachable (Linux `Documentation/driver-api/vfio.rst`).
//!
//! Structures come from rust-vmm's `vfio-bindings`; the ioctl numbers are `_IO(VFIO_TYPE,
//! VFIO_BASE + n)` as in `<linux/vfio.h>`. Every raw call is in this file or in [`super::dma`].
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use vfio_bindings::bindings::vfio as sys;

const fn vfio_io(nr: u32) -> libc::c_ulong {
    // _IO(type, nr): no direction, no size.
    ((sys::VFIO_TYPE as u32) << 8 | (sys::VFIO_BASE + nr)) as libc::c_ulong
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// PCI command register (PCI Local Bus spec 3.0, 6.2.2): memory space and bus master enables.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Why VFIO setup failed: the step and the OS error or the reason.
#[derive(Debug, thiserror::Error)]
#[error("vfio: {step}: {source}")]
pub struct VfioError {
    pub step: String,
    #[source]
    pub source: io::Error,
}

fn verr(step: impl Into<String>) -> impl FnOnce(io::Error) -> VfioError {
    move |source| VfioError {
        step: step.into(),
        source,
    }
}

fn other(step: impl Into<String>, why: impl Into<String>) -> VfioError {
    VfioError {
        step: step.into(),
        source: io::Error::other(why.into()),
    }
}

/// Runs an ioctl whose argument is a pointer, returning its non-negative result.
///
/// # Safety
/// `arg` must point to memory of the type and size the ioctl `req` expects, valid for the call.
unsafe fn ioctl_ptr<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<i32> {
    // SAFETY: the caller guarantees `arg` matches `req`; `fd` is an open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Runs an ioctl whose argument is an integer.
fn ioctl_val(fd: &impl AsRawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: these VFIO ioctls take their argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A VFIO container (one IOMMU address space) with one group attached.
pub struct Container {
    fd: File,
    _group: File,
}

impl Container {
    /// Maps `len` bytes at `vaddr` to I/O virtual address `iova`, readable and writable by the
    /// device. The kernel pins the pages until [`Container::unmap_dma`].
    ///
    /// # Safety
    /// `[vaddr, vaddr + len)` must be memory of this process that stays mapped until the range is
    /// unmapped, and nothing may rely on its contents while a device may write it.
    pub unsafe fn map_dma(&self, vaddr: usize, iova: u64, len: usize) -> io::Result<()> {
        let mut m = sys::vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<sys::vfio_iommu_type1_dma_map>() as u32,
            flags: sys::VFIO_DMA_MAP_FLAG_READ | sys::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: `m` is the structure VFIO_IOMMU_MAP_DMA takes; the caller keeps the range alive.
        unsafe { ioctl_ptr(&self.fd, VFIO_IOMMU_MAP_DMA, &mut m) }.map(|_| ())
    }

    /// Removes the mapping of `[iova, iova + len)`.
    pub fn unmap_dma(&self, iova: u64, len: usize) -> io::Result<()> {
        let mut u = sys::vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<sys::vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
            data: Default::default(),
        };
        // SAFETY: `u` is the structure VFIO_IOMMU_UNMAP_DMA takes (no bitmap: flags 0).
        unsafe { ioctl_ptr(&self.fd, VFIO_IOMMU_UNMAP_DMA, &mut u) }.map(|_| ())
    }
}

/// One PCI function opened through VFIO (its descriptor; BAR0 is mapped separately).
pub struct PciDevice {
    pub address: String,
    device: File,
    config_offset: u64,
}

/// The IOMMU group of a PCI function, from sysfs.
fn iommu_group(address: &str) -> Result<u32, VfioError> {
    let link = PathBuf::from(format!("/sys/bus/pci/devices/{address}/iommu_group"));
    let target = std::fs::read_link(&link).map_err(verr(format!(
        "read {} (no such device, or the IOMMU is off: boot with intel_iommu=on)",
        link.display()
    )))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| other("parse the iommu group", format!("{}", target.display())))
}

/// Opens the container, the group and the device at `address` (`DDDD:BB:DD.F`), maps BAR0 and
/// enables memory space and bus mastering.
///
/// # Errors
/// Each step names itself: no vfio driver bound, group not viable (another device of the group
/// is bound to a host driver), no type-1 IOMMU, BAR0 not mappable.
pub fn open(address: &str) -> Result<(Container, PciDevice, Mmio), VfioError> {
    let group_no = iommu_group(address)?;
    let fd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vfio/vfio")
        .map_err(verr("open /dev/vfio/vfio (is the vfio module loaded?)"))?;
    let api = ioctl_val(&fd, VFIO_GET_API_VERSION, 0).map_err(verr("VFIO_GET_API_VERSION"))?;
    if api != sys::VFIO_API_VERSION as i32 {
        return Err(other("VFIO_GET_API_VERSION", format!("unknown API version {api}")));
    }
    let has = ioctl_val(&fd, VFIO_CHECK_EXTENSION, sys::VFIO_TYPE1v2_IOMMU as libc::c_ulong)
        .map_err(verr("VFIO_CHECK_EXTENSION"))?;
    if has != 1 {
        return Err(other("VFIO_CHECK_EXTENSION", "no type-1 v2 IOMMU (vfio_iommu_type1 loaded?)"));
    }
    let gpath = format!("/dev/vfio/{group_no}");
    let group = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gpath)
        .map_err(verr(format!("open {gpath} (is {address} bound to vfio-pci?)")))?;
    let mut status = sys::vfio_group_status {
        argsz: std::mem::size_of::<sys::vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: `status` is the structure VFIO_GROUP_GET_STATUS fills.
    unsafe { ioctl_ptr(&group, VFIO_GROUP_GET_STATUS, &mut status) }.map_err(verr("VFIO_GROUP_GET_STATUS"))?;
    if status.flags & sys::VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(other(
            "VFIO_GROUP_GET_STATUS",
            format!("group {group_no} is not viable: bind every device in it to vfio-pci"),
        ));
    }
    let mut cfd = fd.as_raw_fd();
    // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to the container's descriptor.
    unsafe { ioctl_ptr(&group, VFIO_GROUP_SET_CONTAINER, &mut cfd) }.map_err(verr("VFIO_GROUP_SET_CONTAINER"))?;
    ioctl_val(&fd, VFIO_SET_IOMMU, sys::VFIO_TYPE1v2_IOMMU as libc::c_ulong).map_err(verr("VFIO_SET_IOMMU"))?;

    let name = CString::new(address).map_err(|_| other("device name", "NUL in the PCI address"))?;
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD takes a NUL-terminated device name.
    let dfd = unsafe { ioctl_ptr(&group, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as *mut libc::c_char) }
        .map_err(verr(format!("VFIO_GROUP_GET_DEVICE_FD {address}")))?;
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    let device = File::from(unsafe { OwnedFd::from_raw_fd(dfd) });

    let region = |index: u32| -> Result<sys::vfio_region_info, VfioError> {
        let mut info = sys::vfio_region_info {
            argsz: std::mem::size_of::<sys::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `info` is the structure VFIO_DEVICE_GET_REGION_INFO fills.
        unsafe { ioctl_ptr(&device, VFIO_DEVICE_GET_REGION_INFO, &mut info) }
            .map_err(verr(format!("VFIO_DEVICE_GET_REGION_INFO {index}")))?;
        Ok(info)
    };
    let cfg = region(sys::VFIO_PCI_CONFIG_REGION_INDEX)?;
    let bar = region(sys::VFIO_PCI_BAR0_REGION_INDEX)?;
    if bar.flags & sys::VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size < 0x2000 {
        return Err(other("BAR0", format!("not mappable (flags {:#x}, {} bytes)", bar.flags, bar.size)));
    }
    let bar0 = Mmio::map(&device, bar.offset, bar.size as usize).map_err(verr("mmap BAR0"))?;
    let dev = PciDevice {
        address: address.to_string(),
        device,
        config_offset: cfg.offset,
    };
    let mut cmd = [0u8; 2];
    dev.device
        .read_exact_at(&mut cmd, dev.config_offset + PCI_COMMAND)
        .map_err(verr("read the PCI command register"))?;
    let v = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    dev.device
        .write_all_at(&v.to_le_bytes(), dev.config_offset + PCI_COMMAND)
        .map_err(verr("enable bus mastering"))?;
    Ok((Container { fd, _group: group }, dev, bar0))
}

/// A mapped register window (BAR0), accessed only with volatile 32- and 64-bit loads and stores
/// at checked, aligned offsets.
pub struct Mmio {
    base: *mut u8,
    len: usize,
}

// SAFETY: the window is device memory; concurrent volatile accesses to distinct registers (one
// doorbell per queue) are what the hardware expects, and nothing here holds Rust references to it.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    fn map(fd: &File, offset: u64, len: usize) -> io::Result<Mmio> {
        // SAFETY: a fresh shared mapping of the device region; the kernel checks offset and length.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmio { base: p.cast(), len })
    }

    fn at<T>(&self, off: usize) -> *mut T {
        assert!(
            off.is_multiple_of(std::mem::align_of::<T>()) && off + std::mem::size_of::<T>() <= self.len,
            "register offset {off:#x} outside the {}-byte BAR or unaligned",
            self.len
        );
        self.base.wrapping_add(off).cast()
    }

    pub fn read32(&self, off: usize) -> u32 {
        // SAFETY: `at` checked the offset lies inside the mapping and is aligned.
        unsafe { self.at::<u32>(off).read_volatile() }
    }

    pub fn write32(&self, off: usize, v: u32) {
        // SAFETY: as in read32.
        unsafe { self.at::<u32>(off).write_volatile(v) }
    }

    /// A 64-bit register read as two 32-bit halves (low first), as the NVMe spec allows.
    pub fn read64(&self, off: usize) -> u64 {
        let lo = self.read32(off) as u64;
        let hi = self.read32(off + 4) as u64;
        lo | hi << 32
    }

    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with this length and is unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
